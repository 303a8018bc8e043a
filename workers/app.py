"""The notify worker's Celery app, for `celery -A workers.app worker -Q <queues>`."""

from notify.worker.app import app

__all__ = ["app"]
