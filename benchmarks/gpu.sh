#!/usr/bin/env bash
# The GPU throughput figures: `mmzoo benchmark --suite gpu` on Keras' JAX
# backend, for a machine with an NVIDIA GPU, JAX and no TensorFlow.
#
#   bash benchmarks/gpu.sh wheels          # here: put what that machine lacks in .whl/
#   bash benchmarks/gpu.sh run OUT [FLAG]  # there: install .whl/ if Keras is missing, run
#
# `wheels` downloads, for CPython 3.12 on x86-64 Linux, the packages a
# JAX-only image lacks (Keras at this machine's version, and its
# dependencies namex and optree); nothing else travels: the sweep imports
# mmzoo and benchmarks/ from the checkout (PYTHONPATH), and needs only
# numpy, PyYAML, Pillow and matplotlib beside them. `run` writes
# OUT/results.json, OUT/results.md and the PNGs; FLAGs narrow the sweep as
# for `mmzoo benchmark` (e.g. --towers resnet50 --precisions mixed_bfloat16).
# benchmarks/README.md, "GPU figures", has the steps and the expected time.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: bash benchmarks/gpu.sh wheels | run OUT [mmzoo benchmark flags]" >&2
    exit 2
}

case "${1:-}" in
wheels)
    keras=$(python3 -c "import keras; print(keras.__version__)")
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 \
        -d .whl "keras==$keras" "namex>=0.0.8" "optree>=0.12"
    ls .whl
    ;;
run)
    [ $# -ge 2 ] || usage
    out=$2
    shift 2
    # The wheels go in only where Keras is missing (the GPU image).
    if ! KERAS_BACKEND=jax python3 -c "import keras" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile \
            --no-cache-dir --upgrade --target /tmp/mmzoo-site .whl/*.whl
        export PYTHONPATH=/tmp/mmzoo-site${PYTHONPATH:+:$PYTHONPATH}
    fi
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
    exec python3 -m benchmarks.suite --suite gpu --backend jax --out "$out" "$@"
    ;;
*)
    usage
    ;;
esac
