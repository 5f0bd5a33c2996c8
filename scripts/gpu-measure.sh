#!/usr/bin/env bash
# A time-boxed measurement of the CUDA engine against docs/performance.md's targets, for any machine with a GPU:
# the stages share one wall-time budget, and the script always ends with its files written.
#
#   scripts/gpu-measure.sh STAGES OUT       # STAGES: check, tests, bench, grid, agree or all; several with commas
#
#   check  python -m prefit.check: the probe's verdict on the fused step, the step auto runs, the jobs per GPU,
#          2x32 and 3x128 against the sequential engine, and the estimated wall time of the study here
#   tests  pytest tests/test_cuda.py and tests/test_fused.py (the Triton kernels compiled for the GPU)
#   bench  python -m prefit.bench: 2x32 with 100 members (the target's chunk; the sequential engine beside it),
#          then 2x32, 3x128, 3x512 and 8x1024 with 60 (the 8x1024 target's chunk, and what the independent
#          protocol's first stage fits); steady state, every form (fp32, 3xtf32 and TF32 products among them)
#   grid   the whole grid (42 cells, 20 triples, independent protocol, jobs side by side as a sweep runs them)
#          at GRID_EPOCHS epochs (default 200), then python -m prefit.bench.compare: the targets filled
#   agree  the benchmarked cells (AGREE_CELLS) trained one at a time (AGREE_EPOCHS, default 100), then
#          python -m prefit.bench.compare: the benchmark against training's own steady rate (each job alone)
#   all    check, tests, bench, grid, agree: in that order, the most needed first
#
# Options (environment variables):
#   MEASURE_S   the whole run's wall-time budget in seconds, default 570, counted from the script's start. Each
#               stage runs under `timeout` with at most its own cap (check 90 s, tests 150 s, the two benchmarks 60 and 150 s,
#               the grid 270 s, each agree job 120 s) and what is left of the budget less 15 s to pack; a stage
#               with under 30 s left is skipped. Set it some seconds under any limit the machine or its scheduler
#               puts on the run (the default fits a 600-second limit).
#   MAX_FILES   the most files the script leaves in OUT, default 8 (all of them), at least 2. The files are
#               summary.md (the machine, each stage's exit status and seconds, the grid's products), check.txt,
#               tests.log,
#               bench_cuda.json, bench_cuda_60.json, grid.md, agree.md and logs.tar.gz (every stage's log,
#               nvidia-smi's line and the sweeps' run.json records, to run python -m prefit.bench.compare again
#               elsewhere). summary.md and logs.tar.gz always stay; then check.txt, grid.md, agree.md,
#               bench_cuda_60.json, bench_cuda.json and tests.log, in that order, as many as the cap allows; the rest are moved into
#               logs.tar.gz (under out/), and summary.md says which. The summary and the reports are also
#               printed at the end, so the output's last lines hold them.
#   GRID_PRECISION  train.matmul_precision of the grid. auto (default): 3xtf32 when the benchmark's steady
#               8x1024 epoch with 60 members was faster with 3xtf32 products than with fp32 ones, else highest
#               (the target is fp32-level accuracy); or highest, 3xtf32, high.
#   TRAIN_ARGS  more overrides for grid's and agree's training (TRAIN_ARGS='model.hfs=32,64' narrows the grid).
#
# Runs without the project installed: python3 (PYTHON) with the repository on PYTHONPATH, and the wheels of
# scripts/offline-wheels.sh installed from WHEELS (default .whl) when Hydra is missing. Training reads CIFAR
# images from DATA (default: the sample in ../shared/data, else .device/cifar10-jpeg-sample); sweeps and logs go
# to a new folder under SWEEP_ROOT (default /tmp). ALLOW_CPU=1 lets it run without a GPU (to check the script
# itself; its figures are then the CPU's). Relative paths (OUT, DATA, WHEELS, SWEEP_ROOT) are the caller's.
# Bad arguments or options end with one line, `error: ...`, and exit status 2, before anything runs.
set -uo pipefail
usage="usage: scripts/gpu-measure.sh STAGE[,STAGE...] OUT (stages: check, tests, bench, grid, agree, all)"
[ $# -eq 2 ] || { echo "error: $usage" >&2; exit 2; }
stages=${1//,/ }
[ "$stages" = all ] && stages="check tests bench grid agree"
for stage in $stages; do
    case $stage in
        check|tests|bench|grid|agree) ;;
        *) echo "error: unknown stage '$stage' (check, tests, bench, grid, agree or all)" >&2; exit 2 ;;
    esac
done
[ -n "${stages// /}" ] || { echo "error: $usage" >&2; exit 2; }
case ${GRID_PRECISION:-auto} in
    auto|highest|3xtf32|high) ;;
    *) echo "error: GRID_PRECISION must be auto, highest, 3xtf32 or high, not '$GRID_PRECISION'" >&2; exit 2 ;;
esac
case ${MEASURE_S:-570} in
    *[!0-9]*) echo "error: MEASURE_S must be a whole number of seconds, not '$MEASURE_S'" >&2; exit 2 ;;
esac
case ${MAX_FILES:-8} in
    *[!0-9]*) max_files=0 ;;
    *) max_files=$((10#${MAX_FILES:-8})) ;;  # 10#: 08 is eight, not a bad octal number
esac
[ "$max_files" -ge 2 ] || { echo "error: MAX_FILES must be a whole number, at least 2, not '$MAX_FILES'" >&2; exit 2; }
deadline=$((SECONDS + 10#${MEASURE_S:-570}))
absolute() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
out=$(absolute "$2")
data=${DATA:+$(absolute "$DATA")}
wheels=$(absolute "${WHEELS:-.whl}")
sweep_root=$(absolute "${SWEEP_ROOT:-/tmp}")
cd "$(dirname "$0")/.." || exit 2
py=${PYTHON:-python3}
mkdir -p "$out" || exit 2
work=$(mktemp -d "$sweep_root/prefit-measure.XXXXXX") || exit 2  # new each run: a rerun never reads an old one
logs=$work/logs
mkdir -p "$logs" || exit 2
exec 3>&2
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$py" -c "import hydra, omegaconf, pooch, platformdirs, hydra_plugins.hydra_joblib_launcher" 2>/dev/null; then
    ls "$wheels"/*.whl >/dev/null 2>&1 || { echo "error: Hydra is missing and $wheels holds no wheels" \
        "(make them with scripts/offline-wheels.sh where there is internet)" >&2; exit 2; }
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" \
        "$wheels"/*.whl || exit 2
    export PYTHONPATH="$PYTHONPATH:$work/site"
fi
device=cuda
if [ "${ALLOW_CPU:-0}" = 1 ]; then
    device=auto
else
    "$py" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'" || exit 2
fi
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -4)
versions=$("$py" -c 'import torch, triton; print(f"torch {torch.__version__}, Triton {triton.__version__}")' 2>&1)
printf '%s\n' "$gpu" "$versions" > "$logs/gpu.txt"
summary=("# scripts/gpu-measure.sh $1" "" "machine: ${gpu//$'\n'/; }; ${versions//$'\n'/; }" ""
         "| stage | exit | seconds |" "| --- | --- | --- |")
notes=()

within() {  # within CAP WHAT CMD...: CMD under timeout, for at most CAP seconds and what the deadline leaves
    local left=$((deadline - SECONDS - 15))
    [ "$left" -lt "$1" ] || left=$1
    if [ "$left" -lt 30 ]; then
        echo "skipped: $2 ($left s left of MEASURE_S)" >&3  # the script's stderr, not the stage's log
        return 124
    fi
    shift 2
    timeout --kill-after=10 "$left" "$@"
}

find_data() {
    if [ -z "$data" ]; then
        for d in ../shared/data/cifar10-jpeg-sample .device/cifar10-jpeg-sample; do
            [ -d "$d" ] && data=$PWD/$d && break
        done
    fi
    [ -n "$data" ] && [ -d "$data" ] || { echo "error: no CIFAR sample: set DATA=DIR" >&2; return 2; }
}

compare() {  # compare NAME SWEEP: the sweep held against OUT's bench JSONs -> OUT/NAME.md (printed at the end)
    local benches=()
    for f in "$out"/bench_cuda*.json; do [ -f "$f" ] && benches+=("$f"); done
    [ ${#benches[@]} -gt 0 ] || benches=(docs/bench.json)
    "$py" -m prefit.bench.compare "${benches[@]}" --sweep "$2" --out "$out/$1.md" >> "$logs/$1.log"
}

run_check() {
    within 90 check "$py" -m prefit.check --device $device 2>&1 | tee "$out/check.txt"
}

run_tests() {
    within 150 tests "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_fused.py 2>&1 \
        | tee "$out/tests.log"
}

run_bench() {
    local rc=0
    within 60 "bench 2x32" "$py" -m prefit.bench --device $device --cells 2x32 --engines batched,sequential --subset 2 \
        --budget 5 --out "$out/bench_cuda.json" 2>&1 | tee "$logs/bench.log" || rc=$?
    within 150 "bench 60 members" "$py" -m prefit.bench --device $device --cells 2x32,3x128,3x512,8x1024 --members 60 \
        --engines batched --budget 5 --out "$out/bench_cuda_60.json" 2>&1 | tee -a "$logs/bench.log" || rc=$?
    return $rc
}

grid_precision() {  # auto: the faster of fp32 and 3xtf32 products in the benchmark's steady 8x1024 epoch
    [ "${GRID_PRECISION:-auto}" = auto ] || { echo "$GRID_PRECISION"; return; }
    "$py" - "$out/bench_cuda_60.json" <<'EOF' 2>/dev/null || echo highest
import json, sys
cells = json.load(open(sys.argv[1]))["cells"]
steady = next(c["steady_state"] for c in cells if (c["hls"], c["hfs"]) == (8, 1024))
fast = steady["fused_graph_3xtf32"]["ms_per_epoch"] < steady["fused_graph"]["ms_per_epoch"]
print("3xtf32" if fast else "highest")
EOF
}

run_grid() {
    find_data || return 2
    local rc=0 precision started=$SECONDS
    precision=$(grid_precision)
    notes+=("grid: train.matmul_precision=$precision (GRID_PRECISION=${GRID_PRECISION:-auto}), ${GRID_EPOCHS:-200} epochs")
    within 270 grid "$py" -m prefit.train -m +experiment=grid dataset=cifar_dir "dataset.path=$data" \
        "train.epochs=${GRID_EPOCHS:-200}" "train.matmul_precision=$precision" train.progress=false \
        "hydra.sweep.dir=$work/grid" ${TRAIN_ARGS:-} > "$logs/grid.log" 2>&1 || rc=$?
    echo "grid: exit $rc after $((SECONDS - started)) s" | tee -a "$logs/grid.log"
    [ -d "$work/grid" ] || return $((rc ? rc : 1))
    compare grid "$work/grid" || rc=$?
    return $rc
}

run_agree() {
    find_data || return 2
    local rc=0 cell
    for cell in ${AGREE_CELLS:-2x32 3x128 3x512 8x1024}; do  # one job at a time: alone on the GPU
        within 120 "agree $cell" "$py" -m prefit.train dataset=cifar_dir "dataset.path=$data" "model.hls=${cell%x*}" \
            "model.hfs=${cell#*x}" "train.epochs=${AGREE_EPOCHS:-100}" train.progress=false \
            "hydra.run.dir=$work/agree/$cell" ${TRAIN_ARGS:-} >> "$logs/agree.log" 2>&1 || rc=$?
    done
    [ -d "$work/agree" ] || return $((rc ? rc : 1))
    compare agree "$work/agree" || rc=$?
    return $rc
}

pack() {  # the logs, the sweeps' records and the files moved out of OUT -> OUT/logs.tar.gz, whole or not at all
    local records moved=()
    records=$(cd "$work" && find grid agree -name run.json 2>/dev/null)
    [ -d "$work/out" ] && moved=(out)
    tar -czf "$out/logs.tar.gz.tmp" -C "$work" logs $records "${moved[@]}" \
        && mv "$out/logs.tar.gz.tmp" "$out/logs.tar.gz"
}

cap() {  # at most MAX_FILES files in OUT: past summary.md and logs.tar.gz, the least needed move into logs.tar.gz
    local f keep=$((max_files - 2)) moved=()
    for f in check.txt grid.md agree.md bench_cuda_60.json bench_cuda.json tests.log; do
        [ -f "$out/$f" ] || continue
        if [ $keep -gt 0 ]; then keep=$((keep - 1)); else moved+=("$f"); fi
    done
    [ ${#moved[@]} -gt 0 ] || return 0
    mkdir -p "$work/out" && for f in "${moved[@]}"; do mv "$out/$f" "$work/out/"; done
    notes+=("moved into logs.tar.gz (out/), MAX_FILES=$max_files: ${moved[*]}")
    pack
}

rc=0
for stage in $stages; do  # each runs whatever an earlier one did; the exit status is the last failure's
    started=$SECONDS
    stage_rc=0
    "run_$stage" || stage_rc=$?
    [ $stage_rc -eq 0 ] || rc=$stage_rc
    summary+=("| $stage | $stage_rc$([ $stage_rc -eq 124 ] && echo ' (out of time)') | $((SECONDS - started)) |")
    pack
done
cap
printf '%s\n' "${summary[@]}" "" "${notes[@]}" > "$out/summary.md"
for f in "$out/summary.md" "$out/grid.md" "$work/out/grid.md" "$out/agree.md" "$work/out/agree.md"; do
    [ -f "$f" ] && { echo; cat "$f"; }
done
exit $rc
