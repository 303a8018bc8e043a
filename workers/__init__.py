"""What an operator runs, from a checkout: Celery app modules over `notify.worker`; not installed.

    celery -A workers.email worker   # one channel's queues (also workers.sms, workers.push)
    celery -A workers.app worker -Q ...   # the app itself, queues of your choosing

A module named after a channel serves that channel: a new channel's module is a
copy of workers/email.py under the channel's name.
"""
