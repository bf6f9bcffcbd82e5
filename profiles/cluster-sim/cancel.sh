#!/usr/bin/env bash
# Cancel jobs submitted by submit.sh (like scancel): TERM each job's whole session.
#   cancel.sh JOBID [JOBID...]
set -uo pipefail
root="${CLUSTER_SIM_DIR:-.snakemake/cluster-sim}"
for id in "$@"; do
    pidfile="$root/$id/pid"
    if [[ -f "$pidfile" ]]; then
        kill -TERM -- "-$(cat "$pidfile")" 2>/dev/null || true
    fi
done
