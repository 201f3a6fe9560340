#!/usr/bin/env bash
# The GPU check (issues 5 and 16) in one command, on a GPU machine whose Python has torch
# but no Spark, Petastorm or pyarrow 14 (this workplace's device machine); an estimated 6-8
# minutes on an H200 with 16 cores (not yet run there), each step given a time limit so that
# the whole stays under 9.5 (BUDGET_S):
#   1. installs the wheels carried in .whl/ (tests/gpu/fetch_wheels.sh fetches them) into
#      /tmp/site, ahead of the image's own packages;
#   2. runs the GPU tests: tests/test_gpu_decode.py (nvJPEG vs the CPU path, the batched
#      crop-resize, decode-ahead order and resume on CUDA) and tests/gpu/test_fp16_resume.py
#      (fp16 with loss scaling in the real trainer, a resumed run equal bit for bit);
#   3. writes the data set with tests/gpu/make_data.py (512x384 JPEGs, pyarrow, no Spark);
#   4. python -m bench --train-step, ResNet-50, batch 256, 4 loader workers, full size:
#      bf16: --decode gpu (project_gpu_decode) and --decode cpu (project) against synthetic
#      input; fp16 (loss scaling): --decode gpu; --compile: synthetic with and without,
#      --decode gpu against the compiled ceiling;
#   5. after each step, tests/gpu/collect.py merges what exists into one JSON.
# Results in $OUT (default /tmp/gpu-check): h200_bench_<date>.json (or gpu_bench_... on
# another GPU) and run.log. Run from anywhere: bash tests/gpu/run.sh
#   --dry   on any machine, CPU only: no install, a small data set, ResNet-18 at 32 px, 1 s
#           per row (project_gpu_decode then decodes on the CPU; fp16 is fp32 with the loss
#           scaler forced on; --compile runs with TORCH_COMPILE_DISABLE=1): checks the
#           script and the code it runs, not speed.
set -uo pipefail
cd "$(dirname "$0")/../.."
DRY=0
[ "${1:-}" = "--dry" ] && DRY=1
OUT=${OUT:-/tmp/gpu-check$([ $DRY = 1 ] && echo -dry)}
WORK=${WORK:-/tmp/gpu-data$([ $DRY = 1 ] && echo -dry)}
BUDGET_S=${BUDGET_S:-570}  # the device machine runs a command for 600 s at most
mkdir -p "$OUT" "$WORK/results"
exec > >(tee -a "$OUT/run.log") 2>&1
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if [ $DRY = 1 ]; then
  PY=${PY:-.venv/bin/python}
  DATA_ARGS="--classes 2 --per-class 40 --row-groups 4"
  BENCH="--model resnet18 --image-size 32 --batch-size 8 --seconds 1 --rounds 1 --workers 2"
  FP16="--precision fp32" FP16_ENV="SPARKDP_FORCE_GRAD_SCALER=65536"  # fp16 needs CUDA: the scaler alone
  COMPILE_ENV="TORCH_COMPILE_DISABLE=1"  # compiling even ResNet-18 takes minutes on a small CPU
  export SPARKDP_GPU_DRY_RUN=1
  NAME=dry_run_bench
else
  PY=python3
  DATA_ARGS=""
  BENCH="--batch-size 256 --seconds 8 --rounds 1 --workers 4"
  FP16="--precision fp16" FP16_ENV="" COMPILE_ENV=""
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -q H200 && echo h200_bench || echo gpu_bench)
fi
JSON="$OUT/${NAME}_$(date -u +%Y-%m-%d).json"
CMD="bash tests/gpu/run.sh${1:+ $1}"

left() {  # seconds a step may take: its own limit, or what the budget has left
  local rest=$((BUDGET_S - SECONDS - 10))
  [ "$rest" -lt "$1" ] && echo "$rest" || echo "$1"
}
collect() {
  $PY -m tests.gpu.collect --out "$JSON" --command "$CMD" --pytest "$WORK/results/pytest.txt" \
    bf16="$WORK/results/bf16.json" fp16="$WORK/results/fp16.json" compile="$WORK/results/compile.json" >/dev/null
}
bench() {  # bench RUN LIMIT_S [VAR=VALUE] ARGS...: one bench --train-step run, if the budget allows
  local run=$1 limit env=; limit=$(left "$2"); shift 2
  case "${1:-}" in *=*) env=$1; shift;; esac
  [ "$limit" -lt 30 ] && { echo "== $run: skipped, ${limit}s of the budget left"; return; }
  echo "== bench $run (at most ${limit}s): $env $*"
  timeout "$limit" env $env $PY -W ignore -m bench --images "$WORK/images" --data "$WORK/data" --train-step $BENCH \
    --out-json "$WORK/results/$run.json" "$@" 2>&1 | grep -v "^round"
  collect
}

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
$PY -c 'import sys, torch, torchvision, numpy, pyarrow, petastorm; print("python", sys.version.split()[0],
  "torch", torch.__version__, "torchvision", torchvision.__version__, "numpy", numpy.__version__,
  "pyarrow", pyarrow.__version__, "petastorm", petastorm.__version__, "cuda", torch.cuda.is_available())'

echo "== GPU tests"
rm -f "$WORK/results/"*.json
CUBLAS_WORKSPACE_CONFIG=:4096:8 timeout "$(left 180)" $PY -m pytest -q -s -p no:cacheprovider -W ignore \
  tests/test_gpu_decode.py tests/gpu/test_fp16_resume.py 2>&1 | tee "$WORK/results/pytest.txt" | grep -v "^cpu:" | tail -25
collect

echo "== data"
[ -f "$WORK/data/manifest.json" ] || timeout "$(left 150)" $PY -m tests.gpu.make_data --out "$WORK" $DATA_ARGS

bench bf16 180 --paths project_gpu_decode,project
bench fp16 120 $FP16_ENV --paths project_gpu_decode $FP16
bench compile 240 $COMPILE_ENV --paths project_gpu_decode --compile
echo "== results: $JSON"
$PY -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["ratios"], indent=1))' "$JSON"
