"""The worker side of notify: what runs under Celery's worker.

    app.py       the Celery app, and the one start path every worker takes (Celery's signals)
    startup.py   the checks a worker makes before it takes a message
    services.py  what a worker runs beside its pool, in one ordered list
    tasks.py     the task: a delivery, or a burst of them, through this process's deliverer
    express.py   the express lanes: the high queues' own consumers

Importing this package imports nothing else: `import notify` never loads Celery's worker.
"""
