#!/usr/bin/env bash
# Start the Dask scheduler of a distetl cluster on this host, in the foreground.
#
#   cluster/scheduler.sh [HOST] [PORT] [DASHBOARD_PORT] [-- extra `dask scheduler` options]
#
# HOST is the address the workers and the driver use to reach this machine (its name or
# IP; default: this host's fully qualified name). The dashboard (bokeh) listens on all
# interfaces at DASHBOARD_PORT. For TLS append the options cluster/README.md lists, e.g.
#   cluster/scheduler.sh sched.example 8786 8787 -- --protocol tls --tls-ca-file ca.pem \
#       --tls-cert scheduler.pem --tls-key scheduler-key.pem
set -euo pipefail
HOST="${1:-$(hostname -f)}"
PORT="${2:-8786}"
DASHBOARD_PORT="${3:-8787}"
shift $(( $# < 3 ? $# : 3 ))
[ "${1:-}" = "--" ] && shift
exec dask scheduler --host "$HOST" --port "$PORT" --dashboard-address ":$DASHBOARD_PORT" "$@"
