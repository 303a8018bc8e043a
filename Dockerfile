FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY notify ./notify
COPY workers ./workers
RUN pip install --no-cache-dir .
COPY templates ./templates
ENV NOTIFY_TEMPLATES_DIR=/app/templates
USER nobody
ENTRYPOINT ["notify"]
