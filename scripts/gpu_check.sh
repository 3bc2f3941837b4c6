#!/usr/bin/env bash
# The device check (raydiff/bench/gpu_check.py): the scoring engine and training on one GPU,
# mvtec.yaml's variant settings, the ddad preset at 256 px. Writes gpu_check.json (or $OUT/…)
# and prints a table; finishes in under 8 minutes (items past --budget-s are skipped, and the
# JSON is rewritten after every item).
#
#   scripts/gpu_check.sh                         # on the GPU machine, from the repository root
#   scripts/gpu_check.sh --device cpu --preset tiny --size 32 --batches 2 --modes eager \
#       --quick --train-batch 4 --noise-shape 2 3 32 32          # CPU smoke run (what CI tests)
#
# Needs torch, numpy, scipy, safetensors, PyYAML and diffusers; not ray, polars,
# faiss, click or pyarrow. A machine without diffusers (and opensimplex, for the simplex
# reference) gets them as pure-Python wheels: prepare a wheelhouse here, where pip works,
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl \
#       diffusers==0.42.1 opensimplex==0.4.5.1 importlib_metadata zipp
#
# carry .whl to the machine and point WHEELHOUSE at it: the script installs them into
# /tmp/raydiff-site (no index, no dependencies) and puts that on PYTHONPATH. The rest of
# diffusers' needs (huggingface-hub, filelock, regex, requests, Pillow, safetensors, numpy) are
# on the project's GPU image; carry their wheels the same way where they are not.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ -n "${WHEELHOUSE:-}" ]]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/raydiff-site "$WHEELHOUSE"/*.whl
    export PYTHONPATH="/tmp/raydiff-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
JSON=${OUT:+$OUT/}gpu_check.json
exec timeout 470 "$PY" -m raydiff.bench.gpu_check --json "$JSON" "$@"
