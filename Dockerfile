# One image for every service; SERVICE_TYPE picks which one a container runs.
#   docker build -t worker .
#   docker run -e SERVICE_TYPE=quota -e DATABASE_URL=postgresql://... worker
# Two stages: `build` has uv and its cache and installs the locked runtime dependencies and
# the worker itself into /app/.venv; the runtime image copies that venv onto a fresh base,
# so it holds the venv, tini and the entrypoint script, and no uv, no uv cache, no sources.
FROM python:3.11-slim AS build

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_PYTHON_DOWNLOADS=never

RUN pip install --no-cache-dir uv==0.13.9

WORKDIR /app

# Dependencies first, from the lock file only, so code changes do not rebuild this layer.
# --no-dev leaves out the test tools and the embedded PostgreSQL (production has its own).
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project

# The worker as a regular package in the venv (--no-editable): the venv alone runs it.
COPY worker ./worker
RUN uv sync --frozen --no-dev --no-editable


FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ENVIRONMENT=production \
    PATH="/app/.venv/bin:$PATH"

# tini as PID 1: declared `command` jobs start child processes, and whatever those leave
# behind is reaped by tini, not inherited by a Python that never waits for it.
# Not pinned: Debian's security updates replace the version, and a pin would break the build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin worker

WORKDIR /app
COPY --from=build /app/.venv ./.venv
COPY railway_entrypoint.sh ./
USER 10001

# The HTTP endpoint, when WORKER_HTTP_PORT (or the platform's PORT) is set: /healthz, /metrics,
# the dashboard. 8080 is a suggestion; the variable decides.
EXPOSE 8080

# Exit 0 healthy, 1 unhealthy (Docker reserves 2). With the endpoint on: GET /healthz on
# loopback (200: loop alive and database answering). Without it: `worker status` (a job of
# this service stale or failing, or the database unreachable: status's own 2 is mapped to
# 1). A one-shot service (migrate) has no jobs to judge: nothing to check. The image has no
# curl: Python makes the request.
HEALTHCHECK --interval=30s --timeout=15s --start-period=120s --retries=3 \
    CMD ["sh", "-c", "port=\"${WORKER_HTTP_PORT:-${PORT:-}}\"; if [ -n \"$port\" ]; then python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)' \"http://127.0.0.1:$port/healthz\" || exit 1; elif [ \"${SERVICE_TYPE:-}\" = migrate ]; then exit 0; else worker status --service \"${SERVICE_TYPE:-all}\" || exit 1; fi"]

# tini is PID 1 and forwards the platform's SIGTERM; the entrypoint script execs Python, so
# the worker receives it directly and reaps nothing itself.
ENTRYPOINT ["tini", "--", "/app/railway_entrypoint.sh"]
