#!/usr/bin/env bash
# bf16 and TF32 against fp32 on a CUDA GPU (bench/gpu.py): per-layer ReLU and TopK
# transcoders, a CLT (ReLU and TopK) and the stream job, with peak memory, then a stopped
# training pass resumed in each precision (bench/resume.py); nothing downloaded (random
# weights). The figures go to $OUT/gpu.json and $OUT/gpu.md (default bench/gpu-out/).
#
#   bench/gpu.sh            on a CUDA machine (under 5 minutes on an H100, start-up included)
#   bench/gpu.sh --tiny     anywhere: tiny shapes on the CPU, seconds (the smoke test)
#
# Options pass through to bench/gpu.py (--steps N, --stream-seconds S, --device D, --out DIR).
# $PYTHON (default python3) runs it from this checkout (tcspec need not be installed). On a
# machine without a package index, bench/gpu_wheels.sh (run where pip works) leaves the
# wheels of what its image lacks in bench/wheels/: where $PYTHON cannot import those
# packages, they are installed first, into a folder of their own put on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
site=""
if compgen -G "bench/wheels/*.whl" > /dev/null &&
    ! "$PY" -c "import pydantic, transformer_lens, datasets" 2> /dev/null; then
    site="${TMPDIR:-/tmp}/tcspec-gpu-site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" bench/wheels/*.whl
fi
export PYTHONPATH="$PWD${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
exec timeout 295 "$PY" bench/gpu.py "$@"
