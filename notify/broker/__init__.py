"""The broker side: where a delivery's message goes and how it gets there.

    routing.py          queues per channel and priority, the Celery configuration, bursts
    publisher.py        the one place store rows become broker messages
    relay.py            send()'s messages, published from a thread of the producer's own
    redis_publisher.py  the producer's fast path on plain redis:// (Celery's own message, pipelined)
    redis_transport.py  kombu's Redis transport with one client per channel
    embedded.py         the embedded broker: kombu's SQLAlchemy transport on SQLite, in priority order

The store, not the broker, is what makes a delivery survive a crash: nothing
here is trusted to keep a message.
"""
