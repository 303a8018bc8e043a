"""The operator console, served by `notify web` under /console/ (server-rendered, no JavaScript).

GET  /console/                     queue depths, and deliveries per status per channel
GET  /console/deliveries?q=        search by notification id, delivery id, address or status
GET  /console/deliveries/<id>      one delivery: its facts, timeline and receipts
GET  /console/dead-letters         the dead letters, with Replay, Replay all and Purge
POST /console/dead-letters         those buttons (a CSRF token required)
GET  /console/templates            the templates
GET  /console/templates/<name>     each channel and locale rendered with its sample.json

guard.py     basic auth, CSRF tokens, the headers every page carries
pages.py     the routes
previews.py  template previews
templates/   the pages' Jinja2 templates (autoescaped)
"""

from notify.web.console.pages import PATH, Console

__all__ = ["PATH", "Console"]
