"""The worker side of notify: the Celery app (`notify.worker.app`), its task and the express lanes.

Importing this package imports nothing else: `import notify` never loads Celery's worker.
"""
