#!/usr/bin/env bash
# Measure the CUDA engine against docs/performance.md's targets on a GPU machine, in stages that each end well
# inside ten minutes, leaving a few small files (logs, bench JSONs, the comparison report) in OUT.
#
#   scripts/gpu-measure.sh STAGES OUT       # STAGES: tests, bench, agree, grid or all; several with commas
#
#   tests  pytest tests/test_cuda.py and tests/test_fused.py (the Triton kernels compiled for the GPU)
#   bench  python -m prefit.bench on 2x32, 3x128, 3x512 and 8x1024 (steady state, every form) with 100 members,
#          and again with 60 (the 8x1024 target's chunk, and what the independent protocol's first stage fits)
#   agree  the same four cells (AGREE_CELLS) trained one at a time (GRID_EPOCHS epochs), then
#          python -m prefit.bench.compare with OUT's bench JSONs: the benchmark against training's own steady
#          rate (each job alone on the GPU)
#   grid   the whole grid (42 cells, 20 triples, independent protocol, jobs side by side as a sweep runs them)
#          at GRID_EPOCHS epochs (default 200), then python -m prefit.bench.compare: the targets filled
#
# TRAIN_ARGS: more overrides for agree's and grid's training (e.g. TRAIN_ARGS='model.hfs=32,64' narrows the grid).
#
# Runs without the project installed: python3 (PYTHON) with the repository on PYTHONPATH, and the wheels of
# scripts/offline-wheels.sh installed from WHEELS (default .whl) when Hydra is missing. Training reads CIFAR
# images from DATA (default: the sample in ../shared/data, else .device/cifar10-jpeg-sample); sweeps go to a
# new folder under SWEEP_ROOT (default /tmp), and only their run.json records come back (OUT/*_runs.tar.gz).
# ALLOW_CPU=1 lets it run without a GPU (to check the script itself; its figures are then the CPU's).
# Relative paths (OUT, DATA, WHEELS, SWEEP_ROOT) are taken from the current folder.
set -uo pipefail
usage="usage: scripts/gpu-measure.sh STAGE[,STAGE...] OUT (stages: tests, bench, agree, grid, all)"
[ $# -eq 2 ] || { echo "error: $usage" >&2; exit 2; }
stages=${1//,/ }
[ "$stages" = all ] && stages="tests bench agree grid"
for stage in $stages; do
    case $stage in
        tests|bench|agree|grid) ;;
        *) echo "error: unknown stage '$stage' (tests, bench, agree, grid or all)" >&2; exit 2 ;;
    esac
done
[ -n "${stages// /}" ] || { echo "error: $usage" >&2; exit 2; }
absolute() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
out=$(absolute "$2")
data=${DATA:+$(absolute "$DATA")}
wheels=$(absolute "${WHEELS:-.whl}")
sweep_root=$(absolute "${SWEEP_ROOT:-/tmp}")
cd "$(dirname "$0")/.." || exit 2
py=${PYTHON:-python3}
epochs=${GRID_EPOCHS:-200}
mkdir -p "$out" || exit 2
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$py" -c "import hydra, omegaconf, pooch, platformdirs, hydra_plugins.hydra_joblib_launcher" 2>/dev/null; then
    ls "$wheels"/*.whl >/dev/null 2>&1 || { echo "error: Hydra is missing and $wheels holds no wheels" \
        "(make them with scripts/offline-wheels.sh where there is internet)" >&2; exit 2; }
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$wheels"/*.whl || exit 2
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
device=cuda
if [ "${ALLOW_CPU:-0}" = 1 ]; then
    device=auto
else
    "$py" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'" || exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1

find_data() {
    if [ -z "$data" ]; then
        for d in ../shared/data/cifar10-jpeg-sample .device/cifar10-jpeg-sample; do
            [ -d "$d" ] && data=$PWD/$d && break
        done
    fi
    [ -n "$data" ] && [ -d "$data" ] || { echo "error: no CIFAR sample: set DATA=DIR" >&2; return 2; }
}

compare() {  # compare NAME SWEEP: the sweep's records to OUT/NAME_runs.tar.gz, the report to OUT/NAME.md
    local rc=0 benches=()
    (cd "$2" && find . -name run.json | tar -czf - -T -) > "$out/$1_runs.tar.gz" || rc=$?
    for f in "$out"/bench_cuda*.json; do [ -f "$f" ] && benches+=("$f"); done
    [ ${#benches[@]} -gt 0 ] || benches=(docs/bench.json)
    "$py" -m prefit.bench.compare "${benches[@]}" --sweep "$2" --out "$out/$1.md" || rc=$?
    return $rc
}

run_tests() {
    "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_fused.py 2>&1 | tee "$out/tests.log"
}

run_bench() {
    local rc=0
    "$py" -m prefit.bench --device $device --cells 2x32,3x128,3x512,8x1024 --engines batched,sequential \
        --subset 2 --budget 10 --out "$out/bench_cuda.json" 2>&1 | tee "$out/bench.log" || rc=$?
    "$py" -m prefit.bench --device $device --cells 2x32,3x128,3x512,8x1024 --members 60 --engines batched \
        --budget 10 --out "$out/bench_cuda_60.json" 2>&1 | tee -a "$out/bench.log" || rc=$?
    return $rc
}

run_agree() {
    find_data || return 2
    local rc=0 sweep cell
    sweep=$(mktemp -d "$sweep_root/prefit-agree.XXXXXX") || return 2
    for cell in ${AGREE_CELLS:-2x32 3x128 3x512 8x1024}; do  # one job at a time: alone on the GPU
        "$py" -m prefit.train dataset=cifar_dir "dataset.path=$data" "model.hls=${cell%x*}" "model.hfs=${cell#*x}" \
            "train.epochs=$epochs" train.progress=false "hydra.run.dir=$sweep/$cell" ${TRAIN_ARGS:-} \
            >> "$out/agree.log" 2>&1 || rc=$?
    done
    compare agree "$sweep" || rc=$?
    return $rc
}

run_grid() {
    find_data || return 2
    local rc=0 sweep started=$SECONDS
    sweep=$(mktemp -d "$sweep_root/prefit-grid.XXXXXX") || return 2
    "$py" -m prefit.train -m +experiment=grid dataset=cifar_dir "dataset.path=$data" "train.epochs=$epochs" \
        train.progress=false "hydra.sweep.dir=$sweep" ${TRAIN_ARGS:-} > "$out/grid.log" 2>&1 || rc=$?
    echo "grid: exit $rc after $((SECONDS - started)) s" | tee -a "$out/grid.log"
    compare grid "$sweep" || rc=$?
    return $rc
}

rc=0
for stage in $stages; do  # each runs whatever an earlier one did; the exit status is the last failure's
    "run_$stage" || rc=$?
done
exit $rc
