"""bench/train_step.py's command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_names_that_match_no_network_are_refused_before_anything_runs(tmp_path: Path) -> None:
    out = tmp_path / "steps.json"
    cmd = [sys.executable, str(REPO / "bench" / "train_step.py"), "--device", "cpu", "--tiny",
           "--json", str(out), "--names", "dvsgkit step NHWC|dvsgkit nothing"]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert "--names 'dvsgkit nothing': no such network on cpu" in last
    assert "dvsgkit step NHWC" in last.split("the names are")[1]  # what to choose from
    assert not out.exists()
