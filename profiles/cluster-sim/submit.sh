#!/usr/bin/env bash
# Submit a Snakemake jobscript as a detached local process; print its job id (like sbatch).
#   submit.sh NAME JOBSCRIPT
# The job runs in its own session (setsid), so it outlives this script and Snakemake; its
# folder $CLUSTER_SIM_DIR/<id>/ holds `name`, `pid`, `log` and, once it ends, `exit`.
set -euo pipefail
name="$1"
jobscript="$2"
root="${CLUSTER_SIM_DIR:-.snakemake/cluster-sim}"
mkdir -p "$root"
jobdir="$(mktemp -d "$root/job-XXXXXXXX")"
echo "$name" > "$jobdir/name"
setsid nohup bash -c '
    echo $$ > "$1/pid"
    bash "$2"
    rc=$?
    echo $rc > "$1/exit.tmp"
    mv "$1/exit.tmp" "$1/exit"
' cluster-sim-job "$jobdir" "$jobscript" > "$jobdir/log" 2>&1 < /dev/null &
basename "$jobdir"
