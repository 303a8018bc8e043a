"""`celery -A workers.<this module> worker`: a worker for the channel this module is named after.

It consumes only that channel's queues on the configured broker, as `notify worker CHANNEL` does.
"""

from notify.worker.app import serve_only

CHANNEL = __name__.rpartition(".")[2]
app = serve_only(CHANNEL)
