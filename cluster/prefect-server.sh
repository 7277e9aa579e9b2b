#!/usr/bin/env bash
# Start the Prefect API server (and UI) that every distetl driver of the cluster reports
# to, in the foreground. Drivers use it with:  export PREFECT_API_URL=http://HOST:PORT/api
#
#   cluster/prefect-server.sh [BIND_HOST] [PORT]
#
# BIND_HOST 0.0.0.0 (the default) serves other hosts; 127.0.0.1 keeps it on this one.
# Dask workers never talk to Prefect; only drivers do.
set -euo pipefail
export DO_NOT_TRACK="${DO_NOT_TRACK:-1}"
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
exec prefect server start --host "${1:-0.0.0.0}" --port "${2:-4200}"
