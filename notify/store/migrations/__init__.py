"""The store's schema history, as Alembic revisions (`notify db upgrade`; notify.store.schema_version).

    env.py       how Alembic runs here: on the connection notify hands it, or offline for `--sql`
    versions/    one revision per change of the schema, oldest first

A new store is made at the newest revision directly (`Store` creates the
tables and records the revision); a store made by an older release is brought
up to date by `notify db upgrade`, which workers and `notify web` ask for.
"""
