#!/usr/bin/env bash
# Wheels for a GPU machine that has PyTorch and the scientific stack (numpy, pandas, pyarrow, scipy, numba,
# seaborn, tqdm, joblib, ...) but no internet (a cluster's compute node, a rented GPU machine): the packages
# prefit needs beyond those, at the versions installed in this project's virtual environment, for CPython 3.12
# on x86-64 Linux (PY_VERSION=3.11 ... to change).
#
#   scripts/offline-wheels.sh [DIR]          # here, with internet; DIR defaults to .whl
#   # there:
#   python3 -m pip install --no-index --no-deps --target /tmp/site DIR/*.whl && export PYTHONPATH=$PWD:/tmp/site
#
# antlr4-python3-runtime (OmegaConf's grammar) ships no wheel, so one is built here with `pip wheel`.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.whl}
py=${PYTHON:-.venv/bin/python}
version=${PY_VERSION:-3.12}
[ -x "$py" ] || { echo "error: $py not found: run 'make install' first (or set PYTHON)" >&2; exit 2; }
packages=(hydra-core omegaconf hydra-joblib-launcher hydra-submitit-launcher submitit pooch platformdirs)
pins=()
for name in "${packages[@]}" antlr4-python3-runtime; do
    v=$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null) \
        || { echo "error: $name is not installed in $py's environment: run 'make install' first" >&2; exit 2; }
    pins+=("$name==$v")
done
mkdir -p "$dir"
"$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$dir" "${pins[@]:0:${#packages[@]}}"
"$py" -m pip wheel --quiet --no-deps -w "$dir" "${pins[-1]}"
ls -1 "$dir"
