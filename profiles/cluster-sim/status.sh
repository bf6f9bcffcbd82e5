#!/usr/bin/env bash
# Print the state of a job submitted by submit.sh: running, success or failed (like sacct).
#   status.sh JOBID
# A job whose process is gone without writing its exit code (killed) has failed.
set -uo pipefail
root="${CLUSTER_SIM_DIR:-.snakemake/cluster-sim}"
jobdir="$root/$1"
if [[ ! -d "$jobdir" ]]; then
    echo failed
elif [[ -f "$jobdir/exit" ]]; then
    if [[ "$(cat "$jobdir/exit")" == "0" ]]; then echo success; else echo failed; fi
elif [[ ! -f "$jobdir/pid" ]]; then
    echo running  # submitted, not started yet
else
    pid="$(cat "$jobdir/pid")"
    state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
    if [[ -z "$state" || "$state" == "Z" || "$state" == "X" ]]; then
        # gone (or a zombie nobody reaps): check the exit file once more, it may have just
        # been written between the tests above
        if [[ -f "$jobdir/exit" && "$(cat "$jobdir/exit")" == "0" ]]; then echo success
        else echo failed; fi
    else
        echo running
    fi
fi
