#!/usr/bin/env bash
# The GPU check of issue 5, in one go on a GPU machine whose Python has torch but no
# Spark, Petastorm or pyarrow 14 (this workplace's device machine):
#   1. installs the wheels carried in .whl/ (petastorm and its needs, pyarrow 14.0.2,
#      numpy 1.26.4, pandas 2.2.3) into /tmp/site, ahead of the image's own packages;
#   2. runs tests/test_gpu_decode.py, whose CUDA cases compare nvJPEG with the CPU path;
#   3. writes the data sets with tests/gpu/make_data.py (pyarrow, no Spark);
#   4. runs bench on every path but petastorm_converter (which needs Spark), with
#      --train-step: ResNet-50 training fed by each path against synthetic input.
# Results land in $OUT (default /tmp/gpu-check): versions, pytest output, bench JSON,
# chart and log. tests/gpu/fetch_wheels.sh fetches the wheels (run it here first).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-check}
WORK=${WORK:-/tmp/gpu-data}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
  python3 -c 'import sys, torch, torchvision, numpy, pyarrow, pandas, petastorm; print("python", sys.version.split()[0],
    "torch", torch.__version__, "torchvision", torchvision.__version__, "numpy", numpy.__version__, "pyarrow",
    pyarrow.__version__, "pandas", pandas.__version__, "petastorm", petastorm.__version__,
    "cuda", torch.cuda.is_available())'
} 2>&1 | tee "$OUT/machine.txt"
timeout 120 python3 -m pytest -q -s -p no:cacheprovider tests/test_gpu_decode.py -W ignore 2>&1 \
  | tee "$OUT/pytest_gpu_decode.txt" | grep -v "^cpu:" | tail -15
timeout 180 python3 -m tests.gpu.make_data --out "$WORK" ${MAKE_DATA_ARGS:-} 2>&1 | tee "$OUT/make_data.txt"
timeout 420 python3 -W ignore -m bench --images "$WORK/images" --data "$WORK/data" \
  --data-resized "$WORK/data_256" --paths raw_files,project,project_resized,project_gpu_decode,decode_ceiling \
  --out-json "$OUT/gpu_bench.json" --train-step ${BENCH_ARGS:---batch-size 256 --seconds 10 --rounds 1} \
  2>&1 | tee "$OUT/bench.log" | grep -v "^round"
