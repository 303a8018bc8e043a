FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
# templates/ before the install: the package carries them (notify/sample_templates links to them)
COPY templates ./templates
COPY notify ./notify
RUN pip install --no-cache-dir .
# Not installed: the operator modules, for `celery -A workers.email worker` run in /app.
COPY workers ./workers
# nobody cannot write under /app (root's), and a worker refuses to start on
# a NOTIFY_HOME it cannot write: the embedded broker and store, the outbox and
# the scheduler's files live in a folder nobody owns.
RUN install -d -o nobody -g nogroup /var/lib/notify
ENV NOTIFY_TEMPLATES_DIR=/app/templates \
    NOTIFY_HOME=/var/lib/notify
USER nobody
ENTRYPOINT ["notify"]
