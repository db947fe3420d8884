#!/usr/bin/env bash
# The training issue's GPU evidence, in one run on the device machine (repo root; logs under $OUT):
#   1. the gpu-marked training tests (AMP + GradScaler, --cupy, channels_last on CUDA),
#   2. bench/train_gpu.py at full size: synthetic 1176/288 samples at ~360k events each ->
#      events.h5 -> T=16 frames, then 3 epochs each of dvsgkit --cupy --amp, dvsgkit --amp
#      (step-by-step), SpikingJelly 0.0.0.0.14's CextNet and PythonNet, and dvsgkit without
#      channels_last; s/epoch, ms/step, peak GPU memory, test accuracy -> $OUT/train_gpu.json.
# The image has torch, CuPy, h5py, matplotlib, tqdm, click; zarr and SpikingJelly travel as wheels
# in .whl/ (git-ignored), made here with (python 3.12 on the device):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
#     -d .whl spikingjelly==0.0.0.0.14 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c
# Device tool: run(command="bash bench/train_gpu.sh", carry=[".whl"], timeout_s=590)
set -uo pipefail
OUT=${OUT:-/tmp/train_gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD:/tmp/pylibs${PYTHONPATH:+:$PYTHONPATH}"

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$PY" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  "$PY" -c "import cupy; print('cupy', cupy.__version__)" || echo "cupy: not importable"
  nproc
} 2>&1 | tee "$OUT/env.txt"

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/pylibs .whl/*.whl 2>&1 \
    | tail -n 3 | tee -a "$OUT/env.txt"
fi
"$PY" -c "import zarr; print('zarr', zarr.__version__)" 2>&1 | tee -a "$OUT/env.txt"

timeout 150 "$PY" -m pytest -q -m gpu tests/test_train.py -p no:cacheprovider -rs 2>&1 \
  | tee "$OUT/tests_train_gpu.log"
rc_tests=${PIPESTATUS[0]}
timeout 400 "$PY" bench/train_gpu.py --json "$OUT/train_gpu.json" --workers 14 2>&1 \
  | tee "$OUT/train_gpu.log"
rc_bench=${PIPESTATUS[0]}

echo "gpu tests rc=$rc_tests, train_gpu rc=$rc_bench" | tee "$OUT/summary.txt"
[ "$rc_tests" -eq 0 ] && [ "$rc_bench" -eq 0 ]
