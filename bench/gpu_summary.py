"""OUT/summary.json from what bench/gpu_run.sh's parts left under OUT (rewritten after each part).

python bench/gpu_summary.py OUT
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tests(path: Path) -> dict[str, Any] | None:
    """Counts and failing test ids from a pytest --junitxml file."""
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return {"error": f"unreadable {path.name}: {exc}"}
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failed: list[str] = []
    skips: dict[str, int] = {}
    for case in root.iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
            failed.append(test_id)
        elif (skip := case.find("skipped")) is not None:
            counts["skipped"] += 1
            reason = (skip.get("message") or "").strip()[:120]
            skips[reason] = skips.get(reason, 0) + 1
        else:
            counts["passed"] += 1
    return {**counts, "failed_ids": failed, "skip_reasons": skips}


def by_name(results: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """The results that measured what their name says (no error; a "compiled" network that ran
    eagerly, where it could not compile, is left out)."""
    return {
        r["name"]: r
        for r in results or []
        if "error" not in r and (r.get("compiled_steps", True) or "compiled" not in r["name"])
    }


def ratios(step: dict | None, epochs: dict | None) -> dict[str, float]:
    """The targets' ratios, from whatever was measured."""
    nets = by_name((step or {}).get("results"))
    out: dict[str, float] = {}

    def ratio(key: str, num: str, den: str, field: str) -> None:
        a, b = nets.get(num, {}).get(field), nets.get(den, {}).get(field)
        if a is not None and b:
            out[key] = a / b

    cext = "SpikingJelly CextNet, seed cuDNN flags"
    python = "SpikingJelly PythonNet, seed cuDNN flags"
    for layer in ("dvsgkit layer CuPy NHWC", "dvsgkit layer CuPy NHWC fused"):
        ratio(f"{layer} / CextNet ms (target <= 0.5)", layer, cext, "ms_per_step")
        ratio(f"{layer} / CextNet peak (target <= 0.7)", layer, cext, "peak_gib")
    for step in ("dvsgkit step NHWC", "dvsgkit step NHWC compiled"):
        ratio(f"{step} / PythonNet ms (target <= 0.6)", step, python, "ms_per_step")
    runs = by_name((epochs or {}).get("results"))
    for name, compute in (("dvsgkit train --cupy --amp", "dvsgkit layer CuPy NHWC"),
                          ("dvsgkit train --cupy --amp --fused", "dvsgkit layer CuPy NHWC fused"),
                          ("dvsgkit train --amp", "dvsgkit step NHWC")):  # fmt: skip
        trained, alone = runs.get(name), nets.get(compute, {}).get("ms_per_step")
        if trained and alone and len(trained["ms_per_train_step"]) > 1:
            key = f"{name}: train step in the epoch / compute-only step (target <= 1.15)"
            out[key] = trained["ms_per_train_step"][-1] / alone
    return out


def main() -> int:
    out = Path(sys.argv[1])
    parts = [json.loads(line) for line in (out / "parts.jsonl").read_text().splitlines()
             if line.strip()] if (out / "parts.jsonl").is_file() else []  # fmt: skip
    step, epochs = _json(out / "train_step.json"), _json(out / "train_gpu.json")
    summary = {
        "env": (out / "env.txt").read_text() if (out / "env.txt").is_file() else None,
        "parts": parts,
        "tests_gpu": tests(out / "tests_gpu.xml"),
        "tests_gpu_slow": tests(out / "tests_gpu_slow.xml"),
        "train_step": step,
        "train_epochs": epochs,
        "ratios": ratios(step, epochs),
        "lif_kernel": _json(out / "lif_kernel.json"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
