#!/bin/sh
# Start the worker service named by SERVICE_TYPE. `exec` replaces this shell, so SIGTERM from
# the platform reaches Python directly. No waiting for the database here: the worker's own
# connect backoff (DB_CONNECT_TIMEOUT_SECONDS) does that. Extra arguments pass through,
# e.g. `railway_entrypoint.sh --once`.
set -eu

SERVICES="quota (alias tavily_quota_updater), cleanup, replenish, jobs, all, migrate"

case "${SERVICE_TYPE:-}" in
    quota | tavily_quota_updater) set -- quota "$@" ;;
    cleanup | replenish | jobs | all | migrate) set -- "$SERVICE_TYPE" "$@" ;;
    "")
        echo "railway_entrypoint.sh: SERVICE_TYPE is not set; set it to one of: $SERVICES" >&2
        exit 64
        ;;
    *)
        echo "railway_entrypoint.sh: unknown SERVICE_TYPE '$SERVICE_TYPE'; use one of: $SERVICES" >&2
        exit 64
        ;;
esac

exec python -m worker "$@"
