"""The baseline: the Celery email task teams write today, without notify.

One `@app.task` renders the same `welcome` templates with a plain
`jinja2.Environment(FileSystemLoader)` and sends with `aiosmtplib.send()`,
a new SMTP connection and a new event loop (`asyncio.run`) per message. Celery
defaults otherwise (early ack, prefetch multiplier 4, no store, no dedup, no
retry policy). Run it the way notify's worker runs, on the threads pool:

    BENCH_BROKER_URL=redis://127.0.0.1:6379/14 BENCH_SMTP_PORT=2525 \\
        celery -A benchmarks.handrolled_app worker -P threads -c 8 -Q handrolled -l warning

Configured from BENCH_* variables at import, as such modules usually are.
"""

from __future__ import annotations

import asyncio
import os
from email.message import EmailMessage

import aiosmtplib
from celery import Celery
from jinja2 import Environment, FileSystemLoader

QUEUE = "handrolled"
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/14")
TEMPLATES_DIR = os.environ.get("BENCH_TEMPLATES_DIR", "templates")
SMTP_HOST = os.environ.get("BENCH_SMTP_HOST", "127.0.0.1")
SMTP_PORT = int(os.environ.get("BENCH_SMTP_PORT", "25"))
EMAIL_FROM = os.environ.get("BENCH_EMAIL_FROM", "Bench <bench@example.com>")

app = Celery("handrolled", broker=BROKER_URL)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

jinja = Environment(loader=FileSystemLoader(TEMPLATES_DIR), trim_blocks=True, lstrip_blocks=True)


@app.task(name="handrolled.send_welcome_email", ignore_result=True)
def send_welcome_email(to: str, name: str) -> None:
    context = {"name": name}
    message = EmailMessage()
    message["From"] = EMAIL_FROM
    message["To"] = to
    message["Subject"] = jinja.get_template("welcome/email.subject.j2").render(context).strip()
    message.set_content(jinja.get_template("welcome/email.txt.j2").render(context))
    message.add_alternative(jinja.get_template("welcome/email.html.j2").render(context), subtype="html")
    asyncio.run(aiosmtplib.send(message, hostname=SMTP_HOST, port=SMTP_PORT, start_tls=False, timeout=30))
