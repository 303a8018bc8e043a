"""Delivery: what a worker does with a delivery id, Celery-free.

    attempt.py      one attempt: claim, render, deliver, record (the Deliverer)
    heartbeat.py    renews the claims of the attempts a process runs
    gate.py         high attempts first within a process
    maintenance.py  release what is due, hand on what nobody works on, purge

Nothing here imports Celery or the broker: whatever runs an attempt (the
Celery task, an express lane, a test) gets the same rules.
"""
