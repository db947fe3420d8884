#!/usr/bin/env bash
# The model's GPU checks, in one run on the device machine (repo root; logs under $OUT):
#   1. tests/model with the gpu-marked tests (CuPy kernels == torch reference, AMP, errors),
#   2. bench/sj_reference.py: dvsgkit vs the real SpikingJelly 0.0.0.0.14 (CextNet with CuPy),
#   3. bench/lif_kernel.py: one LIF layer fwd+bwd, torch vs dvsgkit vs SpikingJelly vs HBM bound.
# SpikingJelly travels as a wheel in .whl/ (git-ignored), made here with:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl spikingjelly==0.0.0.0.14
# Device tool: run(command="bash bench/gpu_checks.sh", carry=[".whl"], timeout_s=480)
set -uo pipefail
OUT=${OUT:-/tmp/gpu_checks}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$PY" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
  "$PY" -c "import cupy; print('cupy', cupy.__version__)" || echo "cupy: not importable"
  nvcc --version | tail -n 2
} 2>&1 | tee "$OUT/env.txt"

if compgen -G ".whl/spikingjelly-*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/sj .whl/spikingjelly-*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/sj"
else
  echo "no .whl/spikingjelly-*.whl: the SpikingJelly columns and checks are skipped" | tee -a "$OUT/env.txt"
fi

timeout 240 "$PY" -m pytest -q tests/model -p no:cacheprovider -rs 2>&1 | tee "$OUT/tests_model.log"
rc_tests=$?
rc_ref=0
if compgen -G ".whl/spikingjelly-*.whl" >/dev/null; then
  timeout 120 "$PY" bench/sj_reference.py 2>&1 | tee "$OUT/sj_reference.log"
  rc_ref=$?
fi
timeout 240 "$PY" bench/lif_kernel.py --json "$OUT/lif_kernel.json" 2>&1 | tee "$OUT/lif_kernel.log"
rc_bench=$?

echo "tests/model rc=$rc_tests, sj_reference rc=$rc_ref, lif_kernel rc=$rc_bench" | tee "$OUT/summary.txt"
[ "$rc_tests" -eq 0 ] && [ "$rc_ref" -eq 0 ] && [ "$rc_bench" -eq 0 ]
