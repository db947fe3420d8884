"""bench/gpu_run.sh --dry-run: every part of the GPU evidence run executes on the CPU, at tiny
sizes, leaves at most 4 files under OUT (a GPU machine brings back 8 at most) with summary.json's
keys, and prints the summary table, at most 3,000 characters, as its last output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = ["tests", "train_step", "train"]


@pytest.mark.slow
def test_gpu_run_dry_run_executes_every_part(tmp_path: Path) -> None:
    pytest.importorskip("spikingjelly")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", "bench/gpu_run.sh", "--dry-run"], cwd=REPO, env=env, text=True,
        capture_output=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.name for p in out.rglob("*"))
    assert files == ["env.txt", "logs.tar.gz", "summary.json"]  # all plain files, one folder
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"env", "parts", "tests", "train_step", "train_epochs", "ratios"}
    assert [(p["part"], p["rc"]) for p in summary["parts"]] == [(p, "0") for p in PARTS]
    tests = summary["tests"]
    assert tests["complete"] and tests["failed"] == 0 and tests["passed"] == 0
    assert tests["skipped"] > 10  # the gpu tests, skipped here for want of a GPU
    steps = {r["name"]: r for r in summary["train_step"]["results"]}
    assert "SpikingJelly PythonNet, seed cuDNN flags" in steps and "dvsgkit step NHWC" in steps
    assert all("error" not in r and r["ms_per_step"] > 0 for r in steps.values()), steps
    runs = summary["train_epochs"]["results"]
    assert len(runs) == 1 and len(runs[0]["epoch_s"]) == 2, runs
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"tests.log", "tests.xml", "train_step.log", "train.log", "parts.jsonl"} <= names
    # the table is the last output, and short enough to survive a cut-off output tail
    table = done.stdout[done.stdout.rindex("=== summary") :].split("\n", 1)[1]
    assert table.startswith("dvsgkit GPU run:") and len(table) <= 3000, table
    assert "dvsgkit step NHWC" in table and "tests: 0 passed, 0 failed" in table
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert size < 2_000_000  # only logs and JSON: stores and wheels stay outside OUT
