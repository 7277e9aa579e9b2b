#!/usr/bin/env bash
# Start distetl's Dask workers on this host, in the foreground: N processes, one thread
# each (chunks are CPU-bound pandas/pyarrow work).
#
#   cluster/worker.sh SCHEDULER_ADDRESS [N] [-- extra `dask worker` options]
#
# SCHEDULER_ADDRESS is what the scheduler printed (tcp://HOST:8786, or tls://HOST:8786).
# N defaults to the number of cores. This host needs the same Python minor version and
# the same distetl version as the driver, plus every package the flow files import
# (distetl checks all of that before a run and names the worker that lacks something).
# Set DISTETL_WORKER_HOST to the address other hosts reach this one at, if the default
# interface is not it. For TLS append e.g.
#   -- --tls-ca-file ca.pem --tls-cert worker.pem --tls-key worker-key.pem
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: $0 SCHEDULER_ADDRESS [N] [-- dask worker options]" >&2
    exit 2
fi
SCHEDULER="$1"
N="${2:-$(python3 -c 'import os; print(os.cpu_count() or 1)')}"
shift $(( $# < 2 ? $# : 2 ))
[ "${1:-}" = "--" ] && shift
HOST_ARGS=()
if [ -n "${DISTETL_WORKER_HOST:-}" ]; then
    HOST_ARGS=(--host "$DISTETL_WORKER_HOST")
fi
exec dask worker "$SCHEDULER" --nworkers "$N" --nthreads 1 ${HOST_ARGS[@]+"${HOST_ARGS[@]}"} "$@"
