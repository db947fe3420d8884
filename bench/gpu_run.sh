#!/usr/bin/env bash
# dvsgkit's GPU measurements in one run of at most 8 minutes (one NVIDIA GPU; repo root), most
# important first, each part under its own timeout and within the run's deadline; everything
# under $OUT, plus $OUT/summary.json (rewritten after every part, so a cut-off run keeps one):
#   a. every gpu-marked test but the slow ones (model, data loader, trainer, no-sync check)
#   b. bench/train_step.py: train-step ms and peak memory at b16 T16 C128 AMP on the same
#      GPU-resident frames, one process: SpikingJelly 0.0.0.0.14 CextNet and PythonNet (seed's
#      and dvsgkit's cuDNN flags), dvsgkit layer-by-layer (NHWC, fused, NCHW), step-by-step
#      (eager, compiled)
#   c. bench/train_gpu.py: 2 epochs of `dvsgkit train --cupy --amp` (then --fused, then the
#      step-by-step --amp) on a full-size store of random counts (1176 + 288 samples)
#   d. bench/sj_reference.py, bench/lif_kernel.py, the slow gpu tests (torch.compile)
#
# It needs torch, CuPy, numpy, h5py, tqdm and click installed. On a machine without a package
# index the rest can come as wheels in wheels/ (git-ignored), fetched elsewhere by
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux_2_28_x86_64 -d wheels spikingjelly==0.0.0.0.14 zarr==3.1.6 \
#     numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 pyyaml packaging \
#     typing_extensions pytest pluggy iniconfig pygments
# and installed below (only what does not import already) into a folder on PYTHONPATH. Never
# `pip install dvsgkit[cuda]` there: its cupy-cuda12x would clash with the machine's CuPy.
#
#   bash bench/gpu_run.sh              # on a machine with a GPU (wheels/ next to the code)
#   bash bench/gpu_run.sh --dry-run    # any CPU machine: tiny sizes, every part, summary.json
set -uo pipefail
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; fi
if [ "$DRY" = 1 ]; then OUT=${OUT:-/tmp/gpu_run_dry}; else OUT=${OUT:-/tmp/gpu_run}; fi
mkdir -p "$OUT"
# A part that is skipped or cut off must not leave the summary an earlier run's numbers.
rm -f "$OUT"/parts.jsonl "$OUT"/summary.json "$OUT"/*.json "$OUT"/*.xml "$OUT"/*.log
if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
BUDGET=${BUDGET:-465}  # seconds for the whole run (8 minutes, less setup and margin)
START=$(date +%s)
# Installed wheels, stores and run directories live outside $OUT (which keeps only results)
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_run.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
LIBS=$SCRATCH/pylibs
mkdir -p "$LIBS"
ln -sfn "$PWD/cli" "$LIBS/dvsgkit_cli"  # the CLI package, as an install would name it
export PYTHONPATH="$PWD:$LIBS${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
WORK=$SCRATCH/work  # stores and run directories: gigabytes, deleted on exit
mkdir -p "$WORK"
# Kernel caches (CuPy's, Triton's, Inductor's) too: a read-only home must not fail a compile
export CUPY_CACHE_DIR=$SCRATCH/cupy TRITON_CACHE_DIR=$SCRATCH/triton
export TORCHINDUCTOR_CACHE_DIR=$SCRATCH/inductor

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  "$PY" -c "import cupy; print('cupy', cupy.__version__)" 2>&1 | tail -n 1
  "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -n 1
  # torch.compile's Triton builds a C helper at first use: it needs a C compiler and Python.h
  echo "cc: $(command -v cc || command -v gcc || echo none)"
  "$PY" -c "import os, sysconfig; h = sysconfig.get_paths()['include'] + '/Python.h'; print('Python.h', os.path.exists(h))"
  # SpikingJelly's float16 kernels include cuda_fp16.h through NVRTC (dvsgkit's include nothing)
  "$PY" -c "import cupy; cupy.RawModule(code='#include <cuda_fp16.h>\nextern \"C\" __global__ void k(){}').get_function('k'); print('NVRTC cuda_fp16.h: ok')" 2>&1 | tail -n 1
  nproc
} >"$OUT/env.txt" 2>&1
# module:wheel name prefix; a module that imports already is left as the machine has it
for pair in zarr:zarr numcodecs:numcodecs donfig:donfig google_crc32c:google_crc32c \
  yaml:pyyaml packaging:packaging typing_extensions:typing_extensions pytest:pytest \
  pluggy:pluggy iniconfig:iniconfig pygments:pygments spikingjelly:spikingjelly; do
  module=${pair%%:*}
  wheel=$(ls wheels 2>/dev/null | grep -i "^${pair##*:}-" | head -n 1)
  if ! "$PY" -c "import $module" 2>/dev/null; then
    if [ -n "$wheel" ] && "$PY" -m pip --version >/dev/null 2>&1; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$LIBS" "wheels/$wheel" \
        >>"$OUT/env.txt" 2>&1 && echo "installed $wheel" >>"$OUT/env.txt"
    elif [ -n "$wheel" ]; then  # no pip: a wheel is a zip of what goes on the path
      "$PY" -m zipfile -e "wheels/$wheel" "$LIBS" >>"$OUT/env.txt" 2>&1 \
        && echo "unpacked $wheel" >>"$OUT/env.txt"
    else
      echo "missing: $module (no wheel in wheels/)" >>"$OUT/env.txt"
    fi
  fi
done
cat "$OUT/env.txt"

# part NAME LIMIT COMMAND...: run COMMAND with output in $OUT/NAME.log, under the smaller of
# LIMIT and what is left of the budget; record its status in parts.jsonl; refresh summary.json.
part() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - ($(date +%s) - START)))
  local t=$((limit < left - 5 ? limit : left - 5))
  local rc=skipped begin=$(date +%s)
  if [ "$t" -ge 15 ]; then
    echo "=== $name (limit ${t}s)"
    export PART_DEADLINE=$(($(date +%s) + t - 3))  # bench/train_gpu.py splits it among its jobs
    timeout -k 5 "$t" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    tail -n 25 "$OUT/$name.log"
  else
    echo "=== $name skipped: ${left}s left"
  fi
  printf '{"part": "%s", "rc": "%s", "seconds": %s, "limit": %s}\n' \
    "$name" "$rc" "$(($(date +%s) - begin))" "$t" >>"$OUT/parts.jsonl"
  "$PY" bench/gpu_summary.py "$OUT"
}

GPU_TESTS=$(grep -rl "pytest.mark.gpu" tests | sort)
if [ "$DRY" = 1 ]; then
  STEP_ARGS=(--device cpu --tiny)
  TRAIN_ARGS=(--dry-run --jobs 2 --workers 2)
  LIF_ARGS=()
else
  STEP_ARGS=()
  TRAIN_ARGS=(--workers 12)
  LIF_ARGS=(--reps 10 --dtypes float16 --sizes 128,32)
fi

# train_step.py exits 3 when a network broke the CUDA context: a fresh process continues
STEPS='for try in 1 2 3; do "$@" --continue; rc=$?; [ "$rc" -ne 3 ] && exit "$rc"; done; exit 3'

part tests_gpu 100 "$PY" -m pytest -q -p no:cacheprovider -rs -m "gpu and not slow" \
  --continue-on-collection-errors --junitxml="$OUT/tests_gpu.xml" $GPU_TESTS
part train_step 150 bash -c "$STEPS" train_step "$PY" bench/train_step.py \
  --json "$OUT/train_step.json" "${STEP_ARGS[@]}"
part train_gpu 120 "$PY" bench/train_gpu.py --root "$WORK/data" --out "$WORK/runs" \
  --json "$OUT/train_gpu.json" "${TRAIN_ARGS[@]}"
part sj_reference 40 "$PY" bench/sj_reference.py
part lif_kernel 40 "$PY" bench/lif_kernel.py --json "$OUT/lif_kernel.json" "${LIF_ARGS[@]}"
part tests_gpu_slow 90 "$PY" -m pytest -q -p no:cacheprovider -rs -m "gpu and slow" \
  --continue-on-collection-errors --junitxml="$OUT/tests_gpu_slow.xml" $GPU_TESTS

echo "summary: $OUT/summary.json ($(($(date +%s) - START)) s)"
