"""The worker side of notify: the Celery app, its tasks, and the `notify` CLI."""
