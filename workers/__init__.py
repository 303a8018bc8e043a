"""What an operator runs from a checkout: Celery app modules over `notify.worker`; not installed.

    celery -A workers.email worker   # one channel's queues: workers.<any registered channel>
    celery -A workers.app worker -Q ...   # the app itself, queues of your choosing

`workers.<channel>` is not a file: Celery reads `-A workers.email` as the
attribute `email` of this package, which `__getattr__` answers with the
worker's app serving only that channel, so a channel added to the registry
(an entry point's too) has its operator module with no file to copy.
"""

from __future__ import annotations

from celery import Celery


def __getattr__(name: str) -> Celery:
    from notify import channels as registry
    from notify.worker.app import serve_only

    if name.startswith("_") or name not in registry.channels():
        raise AttributeError(f"module 'workers' has no attribute {name!r}")
    return serve_only(name)
