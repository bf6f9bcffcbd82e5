#!/usr/bin/env bash
# bf16 against fp32 on a CUDA GPU (bench/gpu.py): per-layer ReLU and TopK transcoders, a CLT
# (ReLU and TopK) and the stream job, with peak memory; nothing downloaded (random weights).
# The figures go to $OUT/gpu.json and $OUT/gpu.md (default bench/gpu-out/).
#
#   bench/gpu.sh            on a CUDA machine (under 5 minutes on an H100, start-up included)
#   bench/gpu.sh --tiny     anywhere: tiny shapes on the CPU, seconds (the smoke test)
#
# Options pass through to bench/gpu.py (--steps N, --stream-seconds S, --device D, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
exec timeout 295 python bench/gpu.py "$@"
