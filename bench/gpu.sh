#!/usr/bin/env bash
# gpt2-shaped transcoders (12 layers, d_model 768, random weights, nothing downloaded) at
# every layer from one activation stream: prints tokens/s and peak GPU memory.
#
#   bench/gpu.sh            on a CUDA machine (under 5 minutes, start-up included)
#   bench/gpu.sh --tiny     anywhere, tiny shapes on the CPU (the smoke test)
#
# Options pass through to bench/gpu_stream.py (--steps N, --seconds S: training budget).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
exec timeout 295 python bench/gpu_stream.py "$@"
