#!/bin/sh
# Start the worker service named by SERVICE_TYPE: the worker reads SERVICE_TYPE itself when
# no command is given (quota or its alias tavily_quota_updater, cleanup, replenish, jobs,
# all, migrate; a missing or unknown value exits 2 listing them). `exec` replaces this shell,
# so SIGTERM from the platform reaches Python directly. No waiting for the database here: the
# worker's own connect backoff (DB_CONNECT_TIMEOUT_SECONDS) does that. Extra arguments pass
# through, e.g. `railway_entrypoint.sh --once`.
set -eu
exec python -m worker "$@"
