#!/usr/bin/env bash
# Measure the CUDA engine against docs/performance.md's targets on a GPU machine, in stages that each end well
# inside ten minutes, leaving a few small files (logs, bench JSONs, the comparison report) in OUT.
#
#   scripts/gpu-measure.sh STAGE OUT        # STAGE: tests | bench | grid | all
#
#   tests  pytest tests/test_cuda.py and tests/test_fused.py (the Triton kernels compiled for the GPU)
#   bench  python -m prefit.bench on 2x32, 3x128, 3x512 and 8x1024 (steady state, every form) with 100 members,
#          and again with 60 (the 8x1024 target's chunk, and what the independent protocol's first stage fits)
#   grid   the whole grid (42 cells, 20 triples, independent protocol) at GRID_EPOCHS epochs (default 200), then
#          python -m prefit.bench.compare: the targets filled, the bench against the grid's own per-cell rates
#          (GRID_ARGS: more overrides, e.g. GRID_ARGS='model.hfs=32,64' narrows it)
#
# Runs without the project installed: python3 (PYTHON) with the repository on PYTHONPATH, and the wheels of
# scripts/offline-wheels.sh installed from WHEELS (default .whl) when Hydra is missing. The grid reads CIFAR
# images from DATA (default: the sample in ../shared/data, else .device/cifar10-jpeg-sample); the sweep itself
# goes to SWEEP (default /tmp/prefit-grid), and only its run.json records come back, as OUT/grid_runs.tar.gz.
# ALLOW_CPU=1 lets it run without a GPU (to check the script itself; its figures are then the CPU's).
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: scripts/gpu-measure.sh tests|bench|grid|all OUT}
out=${2:?usage: scripts/gpu-measure.sh tests|bench|grid|all OUT}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$py" -c "import hydra, omegaconf, pooch, platformdirs, hydra_plugins.hydra_joblib_launcher" 2>/dev/null; then
    wheels=${WHEELS:-.whl}
    ls "$wheels"/*.whl >/dev/null 2>&1 || { echo "error: Hydra is missing and $wheels holds no wheels" \
        "(make them with scripts/offline-wheels.sh where there is internet)" >&2; exit 2; }
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$wheels"/*.whl || exit 2
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if [ "${ALLOW_CPU:-0}" != 1 ]; then
    "$py" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'" || exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1

run_tests() {
    "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_fused.py 2>&1 | tee "$out/tests.log"
}

run_bench() {
    local device=cuda
    [ "${ALLOW_CPU:-0}" = 1 ] && device=auto
    "$py" -m prefit.bench --device $device --cells 2x32,3x128,3x512,8x1024 --engines batched,sequential \
        --subset 2 --budget 10 --out "$out/bench_cuda.json" 2>&1 | tee "$out/bench.log"
    "$py" -m prefit.bench --device $device --cells 2x32,3x128,3x512,8x1024 --members 60 --engines batched \
        --budget 10 --out "$out/bench_cuda_60.json" 2>&1 | tee -a "$out/bench.log"
}

run_grid() {
    local data=${DATA:-}
    if [ -z "$data" ]; then
        for d in ../shared/data/cifar10-jpeg-sample .device/cifar10-jpeg-sample; do
            [ -d "$d" ] && data=$d && break
        done
    fi
    [ -d "$data" ] || { echo "error: no CIFAR sample: set DATA=DIR (see ../shared/data/README.md)" >&2; return 2; }
    local sweep=${SWEEP:-/tmp/prefit-grid}
    local started=$SECONDS
    "$py" -m prefit.train -m +experiment=grid dataset=cifar_dir "dataset.path=$data" \
        "train.epochs=${GRID_EPOCHS:-200}" "hydra.sweep.dir=$sweep" ${GRID_ARGS:-} > "$out/grid.log" 2>&1
    local rc=$?
    echo "grid: exit $rc after $((SECONDS - started)) s" | tee -a "$out/grid.log"
    (cd "$sweep" && find . -name run.json | tar -czf - -T -) > "$out/grid_runs.tar.gz"
    local benches=()
    for f in "$out"/bench_cuda*.json; do [ -f "$f" ] && benches+=("$f"); done
    [ ${#benches[@]} -gt 0 ] || benches=(docs/bench.json)
    "$py" -m prefit.bench.compare "${benches[@]}" --sweep "$sweep" --out "$out/compare.md"
    return $rc
}

case $stage in
    tests) run_tests ;;
    bench) run_bench ;;
    grid) run_grid ;;
    all) run_tests; run_bench; run_grid ;;
    *) echo "error: unknown stage '$stage' (tests, bench, grid or all)" >&2; exit 2 ;;
esac
