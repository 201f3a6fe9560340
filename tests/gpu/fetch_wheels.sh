#!/usr/bin/env bash
# Fetch what tests/gpu/run.sh installs on the GPU machine into .whl/ (git-ignored):
# CPython 3.12 x86_64 wheels of petastorm and its needs that the machine's image lacks,
# pyarrow 14.0.2 (petastorm's legacy API), numpy 1.26.4 (pyarrow 14) and pandas 2.2.3
# (pyarrow 14 + numpy 1). pyarrow is repacked without Flight, Substrait, headers and
# tests, which nothing here imports, so that all of it fits the 64 MiB a device call carries
# (checked at the end). TorchCodec is not carried: the one JPEG decode path is
# torchvision.io.decode_jpeg, which the image has (data/gpu_decode.py says why).
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_26_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  petastorm==0.12.1 dill diskcache future pyzmq pytz tzdata pyarrow==14.0.2 numpy==1.26.4 pandas==2.2.3
python3 - <<'PY'
import glob, os, zipfile
src = glob.glob(".whl/pyarrow-*.whl")[0]
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(src + ".tmp", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
    for item in zin.infolist():
        name = item.filename
        if (name.startswith(("pyarrow/include/", "pyarrow/tests/", "pyarrow/src/"))
                or any(x in os.path.basename(name) for x in ("flight", "substrait", "gandiva"))
                or name.endswith((".pyx", ".pxd", ".pxi", ".h", ".cc"))):
            continue
        zout.writestr(item, zin.read(name), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
os.replace(src + ".tmp", src)
PY
# What a device call carries: the working tree (tracked and untracked, not ignored) and .whl/.
python3 - <<'PY'
import os, subprocess
files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True, check=True).stdout
tree = sum(os.path.getsize(f) for f in files.decode().split("\0") if f and os.path.isfile(f))
wheels = sum(e.stat().st_size for e in os.scandir(".whl"))
total = (tree + wheels) / 2**20
print(f".whl {wheels / 2**20:.1f} MiB + working tree {tree / 2**20:.1f} MiB = {total:.1f} MiB of the 64 MiB a call carries")
raise SystemExit(0 if total < 64 else "too large for one device call")
PY
