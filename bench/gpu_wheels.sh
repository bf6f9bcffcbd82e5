#!/usr/bin/env bash
# Wheels of what bench/gpu.sh imports beyond a CUDA PyTorch image (torch, numpy, pandas,
# pyarrow, transformers, huggingface_hub, safetensors, einops, jaxtyping, tqdm, yaml...), for
# a GPU machine that cannot reach a package index: pydantic (the spec), TransformerLens and
# datasets, and their own needs that such an image lacks. Each is pinned to the version this
# environment has installed (the one the tests ran with), for CPython $PYVER on x86-64 Linux.
#
#   bench/gpu_wheels.sh                 # -> bench/wheels/ (git-ignored)
#   PYVER=3.11 bench/gpu_wheels.sh      # for another Python
#
# bench/gpu.sh installs bench/wheels/*.whl, when there are any, into a folder of its own
# (--no-deps: nothing else is touched) and puts it on PYTHONPATH before it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
PYVER="${PYVER:-3.12}"
NAMES=(pydantic pydantic-core annotated-types typing-inspection transformer-lens better-abc
       fancy-einsum beartype typeguard datasets multiprocess dill)
platforms=()
for n in 17 24 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
pins=()
for name in "${NAMES[@]}"; do
    pins+=("$name==$("$PY" -c "import importlib.metadata as m; print(m.version('$name'))")")
done
rm -rf bench/wheels && mkdir -p bench/wheels
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp "${platforms[@]}" --platform manylinux2014_x86_64 -d bench/wheels "${pins[@]}"
ls bench/wheels
du -sh bench/wheels
