#!/usr/bin/env bash
# dvsgkit's evidence run on one NVIDIA GPU (repo root), sized for a lent machine: done within
# 6 minutes of command time (BUDGET, seconds), so that a fixed rerun fits the same lease, and at
# most 3 files under $OUT (env.txt, logs.tar.gz, summary.json; rewritten after every part, so a
# run cut off keeps what finished). Parts, most important first, each under its own timeout:
#   tests       the correctness subset of the gpu-marked tests (<= 90 s): the kernels and the
#               fused block against the torch chain, the recipe-size block and net under AMP,
#               the side-stream launch, the training step that never synchronises
#   train_step  bench/train_step.py: ms per train step and peak memory at b16 T16 C128 AMP, one
#               process, one GPU-resident batch: SpikingJelly 0.0.0.0.14 CextNet and PythonNet,
#               dvsgkit layer-by-layer CuPy NHWC, fused, and step-by-step NHWC
#   train       bench/train_gpu.py: 2 epochs of `dvsgkit train --cupy --amp` on a full-size store
#               of random counts (1176 + 288 samples, T=16)
# and last prints the summary as a compact table (bench/gpu_summary.py).
#
# It needs torch, CuPy, numpy, h5py, tqdm and click installed. The rest can come as wheels in
# wheels/ (git-ignored: copy it along with the working tree), fetched elsewhere by
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux_2_28_x86_64 -d wheels spikingjelly==0.0.0.0.14 zarr==3.1.6 \
#     numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 pyyaml packaging \
#     typing_extensions pytest pluggy iniconfig pygments
# and installed below (only what does not import already) into a folder on PYTHONPATH. Never
# `pip install dvsgkit[cuda]` there: its cupy-cuda12x would clash with the machine's CuPy.
#
#   bash bench/gpu_run.sh              # on a machine with a GPU
#   bash bench/gpu_run.sh --dry-run    # any CPU machine: tiny sizes, every part, same files
set -uo pipefail
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; fi
if [ "$DRY" = 1 ]; then OUT=${OUT:-/tmp/gpu_run_dry}; else OUT=${OUT:-/tmp/gpu_run}; fi
mkdir -p "$OUT"
rm -f "$OUT"/env.txt "$OUT"/logs.tar.gz "$OUT"/summary.json  # no earlier run's numbers
if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
BUDGET=${BUDGET:-330}  # seconds for the whole run: 6 minutes less a margin
START=$(date +%s)
# Logs, installed wheels, stores and run directories live outside $OUT, deleted on exit
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu_run.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
LOGS=$SCRATCH/logs LIBS=$SCRATCH/pylibs WORK=$SCRATCH/work
mkdir -p "$LOGS" "$LIBS" "$WORK"
ln -sfn "$PWD/cli" "$LIBS/dvsgkit_cli"  # the CLI package, as an install would name it
export PYTHONPATH="$PWD:$LIBS${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# Kernel caches (CuPy's, Triton's, Inductor's) too: a read-only home must not fail a compile
export CUPY_CACHE_DIR=$SCRATCH/cupy TRITON_CACHE_DIR=$SCRATCH/triton
export TORCHINDUCTOR_CACHE_DIR=$SCRATCH/inductor

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
    || echo "no nvidia-smi"
  "$PY" - <<'EOF' 2>&1
import importlib, os, sys, sysconfig
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
for name in ("cupy", "triton"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:  # any failure to import is what env.txt records
        print(name, "unavailable:", type(exc).__name__, str(exc)[:200])
print("Python.h", os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))
print("cpus", os.cpu_count())
EOF
  echo "cc: $(command -v cc || command -v gcc || echo none)"
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

# part NAME LIMIT COMMAND...: run COMMAND with output in LOGS/NAME.log, under the smaller of
# LIMIT and what is left of the budget; record its status; refresh the archive and summary.
part() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - ($(date +%s) - START)))
  local t=$((limit < left - 10 ? limit : left - 10))
  local rc=skipped begin=$(date +%s)
  if [ "$t" -ge 15 ]; then
    echo "=== $name (limit ${t}s)"
    export PART_DEADLINE=$(($(date +%s) + t - 3))  # bench/train_gpu.py fits its jobs in it
    timeout -k 5 "$t" "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    tail -n 15 "$LOGS/$name.log"
  else
    echo "=== $name skipped: ${left}s left"
  fi
  printf '{"part": "%s", "rc": "%s", "seconds": %s, "limit": %s}\n' \
    "$name" "$rc" "$(($(date +%s) - begin))" "$t" >>"$LOGS/parts.jsonl"
  tar -czf "$SCRATCH/logs.tar.gz" -C "$LOGS" . && mv "$SCRATCH/logs.tar.gz" "$OUT/logs.tar.gz"
  "$PY" bench/gpu_summary.py "$LOGS" "$OUT" >/dev/null
}

# The correctness subset: every gpu test of the kernels, the fused block and the networks,
# and the no-sync training step, but the slow ones (torch.compile); most important first
TESTS=(tests/model/test_fused_block.py tests/model/test_net.py tests/test_train_sync.py
  tests/model/test_lif_cupy.py tests/model/test_plif_cupy.py tests/model/test_cupy_runtime.py)
# The train-step table's networks (bench/train_step.py's names), most wanted first
NETS="SpikingJelly PythonNet, seed cuDNN flags|dvsgkit step NHWC"
if [ "$DRY" = 1 ]; then  # CPU substitutes: the torch twin of the layer network
  NETS="dvsgkit layer torch|$NETS"
  STEP_ARGS=(--device cpu --tiny)
  TRAIN_ARGS=(--dry-run --workers 2)
else
  NETS="SpikingJelly CextNet, seed cuDNN flags|$NETS"
  NETS="dvsgkit layer CuPy NHWC|dvsgkit layer CuPy NHWC fused|$NETS"
  STEP_ARGS=(--warmup 3 --steps 5 --rounds 3)
  TRAIN_ARGS=(--workers 12)
fi
# train_step.py exits 3 when a network broke the CUDA context: a fresh process continues
STEPS='for try in 1 2 3; do "$@" --continue; rc=$?; [ "$rc" -ne 3 ] && exit "$rc"; done; exit 3'

part tests 90 "$PY" -m pytest -v -p no:cacheprovider -rfEs -m "gpu and not slow" \
  --junitxml="$LOGS/tests.xml" "${TESTS[@]}"
part train_step 130 bash -c "$STEPS" train_step "$PY" bench/train_step.py \
  --json "$LOGS/train_step.json" --names "$NETS" "${STEP_ARGS[@]}"
part train 100 "$PY" bench/train_gpu.py --root "$WORK/data" --out "$WORK/runs" --jobs 1 \
  --json "$LOGS/train_gpu.json" "${TRAIN_ARGS[@]}"

echo "=== summary ($(($(date +%s) - START)) s; $OUT: $(ls "$OUT" | tr '\n' ' '))"
"$PY" bench/gpu_summary.py "$LOGS" "$OUT" --print
