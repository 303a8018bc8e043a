"""Size limits of what the store keeps, which send() validates against before anything is written.

The store's columns take their sizes from here; the checks on a producer's
input read them without importing the store's schema (or SQLAlchemy).
"""

from __future__ import annotations

MAX_ID = 36
MAX_TEMPLATE = 200
MAX_LOCALE = 35
MAX_ADDRESS = 512
MAX_DEDUP_KEY = 200
MAX_PROVIDER_ID = 300
MAX_CODE = 64
