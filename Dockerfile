FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends libolm-dev gcc \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/caliopen
COPY pyproject.toml README.md ./
COPY bridges ./bridges
COPY alembic ./alembic
RUN pip install --no-cache-dir .
# The schema lives beside the package in the image too.
RUN cp -r alembic /usr/local/lib/python3.11/site-packages/bridges/db/alembic
USER nobody
EXPOSE 29340
CMD ["caliopen", "run", "-c", "/data/config.yaml"]
