"""bench/gpu_run.sh --dry-run: every part of the GPU measurement run executes on the CPU, at tiny
sizes, and leaves summary.json with each part's status and numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = ["tests_gpu", "train_step", "train_gpu", "sj_reference", "lif_kernel", "tests_gpu_slow"]


@pytest.mark.slow
def test_gpu_run_dry_run_executes_every_part(tmp_path: Path) -> None:
    pytest.importorskip("spikingjelly")
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", "bench/gpu_run.sh", "--dry-run"], cwd=REPO, env=env, text=True,
        capture_output=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(p["part"], p["rc"]) for p in summary["parts"]] == [(p, "0") for p in PARTS]
    tests = summary["tests_gpu"]
    assert tests["failed"] == 0 and tests["skipped"] > 10 and tests["passed"] == 0
    steps = {r["name"]: r for r in summary["train_step"]["results"]}
    assert all("error" not in r and r["ms_per_step"] > 0 for r in steps.values()), steps
    seed = [name for name in steps if name.startswith("SpikingJelly PythonNet")]
    assert len(seed) == 2  # under the seed's cuDNN flags and under dvsgkit's
    runs = summary["train_epochs"]["results"]
    assert len(runs) == 2 and all(len(r["epoch_s"]) == 2 for r in runs), runs
    # Only logs and JSON come back from the device: stores and wheels stay outside OUT
    size = sum(f.stat().st_size for f in (tmp_path / "out").rglob("*") if f.is_file())
    assert size < 2_000_000, sorted((tmp_path / "out").rglob("*"))
