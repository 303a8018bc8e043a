"""`notify web`: one ASGI app (Starlette, run by uvicorn) for what reaches notify over HTTP.

    GET  /healthz                 200 while the store and the broker answer, else 503
    POST /hooks/twilio/status     Twilio's SMS receipts (notify.receipts.twilio)
    GET  /u/<token>               a page with an Unsubscribe button: never unsubscribes by itself
    POST /u/<token>               RFC 8058 one-click: body List-Unsubscribe=One-Click
    /console/...                  the operator console (notify.web.console), behind basic auth

Bad requests get a 4xx and change nothing; no answer carries a stack trace,
a setting or a secret.
"""

from notify.web.app import create_app

__all__ = ["create_app"]
