"""OUT/summary.json from what bench/gpu_run.sh's parts left in LOGS (rewritten after each part),
and with --print the same as a compact table (at most 3,000 characters), the run's last output.

python bench/gpu_summary.py LOGS OUT [--print]
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from dvsgkit.fs import write_text

TABLE_CHARS = 3000  # the table must survive the last 12,000 characters of a run's output
CEXT = "SpikingJelly CextNet, seed cuDNN flags"
PYTHON = "SpikingJelly PythonNet, seed cuDNN flags"
TRAIN = "dvsgkit train --cupy --amp"


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tests(xml: Path, log: Path) -> dict[str, Any] | None:
    """Counts and failing test ids: from pytest's --junitxml file, or, where pytest was stopped
    before writing it, from the per-test lines of its -v log."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failed: list[str] = []
    skips: dict[str, int] = {}
    if xml.is_file():
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as exc:
            return {"error": f"unreadable {xml.name}: {exc}"}
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
        return {**counts, "failed_ids": failed, "skip_reasons": skips, "complete": True}
    if not log.is_file():
        return None
    for line in log.read_text(errors="replace").splitlines():
        m = re.match(r"(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED)", line)
        if m:
            outcome = {"PASSED": "passed", "SKIPPED": "skipped"}.get(m.group(2), "failed")
            counts[outcome] += 1
            if outcome == "failed":
                failed.append(m.group(1))
    return {**counts, "failed_ids": failed, "skip_reasons": skips, "complete": False}


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

    for layer in ("dvsgkit layer CuPy NHWC", "dvsgkit layer CuPy NHWC fused"):
        ratio(f"{layer} / CextNet ms (target <= 0.5)", layer, CEXT, "ms_per_step")
        ratio(f"{layer} / CextNet peak (target <= 0.7)", layer, CEXT, "peak_gib")
    ratio("dvsgkit step NHWC / PythonNet ms (target <= 0.6)", "dvsgkit step NHWC", PYTHON,
          "ms_per_step")  # fmt: skip
    trained = by_name((epochs or {}).get("results")).get(TRAIN)
    alone = nets.get("dvsgkit layer CuPy NHWC", {}).get("ms_per_step")
    if trained and alone and len(trained["ms_per_train_step"]) > 1:
        key = f"{TRAIN}: train step in the epoch / compute-only step (target <= 1.15)"
        out[key] = trained["ms_per_train_step"][-1] / alone
    return out


def summary(logs: Path, out: Path) -> dict[str, Any]:
    parts = [json.loads(line) for line in (logs / "parts.jsonl").read_text().splitlines()
             if line.strip()] if (logs / "parts.jsonl").is_file() else []  # fmt: skip
    step, epochs = _json(logs / "train_step.json"), _json(logs / "train_gpu.json")
    return {
        "env": (out / "env.txt").read_text() if (out / "env.txt").is_file() else None,
        "parts": parts,
        "tests": tests(logs / "tests.xml", logs / "tests.log"),
        "train_step": step,
        "train_epochs": epochs,
        "ratios": ratios(step, epochs),
    }


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(s: dict[str, Any]) -> str:
    """The summary in a few lines, for the end of the run's output."""
    env = (s["env"] or "").splitlines()
    lines = ["dvsgkit GPU run: " + "; ".join(line for line in env[1:4] if line)[:240]]
    lines.append("parts: " + ", ".join(f"{p['part']} rc {p['rc']} ({p['seconds']} s)"
                                       for p in s["parts"]))  # fmt: skip
    t = s["tests"]
    if t and "error" not in t:
        state = "" if t["complete"] else " (stopped early)"
        lines.append(f"tests: {t['passed']} passed, {t['failed']} failed, "
                     f"{t['skipped']} skipped{state}")  # fmt: skip
        lines += [f"  FAILED {i[-110:]}" for i in t["failed_ids"][:8]]
    results = (s["train_step"] or {}).get("results") or []
    if results:
        m = s["train_step"].get("meta", {})
        lines.append(f"train step b{m.get('batch')} T{m.get('T')} C{m.get('channels')} "
                     f"AMP {m.get('amp')} ({m.get('device')}): ms/step, peak GiB")  # fmt: skip
        for r in results:
            if "error" in r:
                lines.append(f"  {r['name'][:44]:44} {r['error'][:60]}")
            else:
                lines.append(f"  {r['name'][:44]:44} {_num(r['ms_per_step'], '8.2f')} "
                             f"{_num(r.get('peak_gib'), '6.2f')}")  # fmt: skip
    for r in (s["train_epochs"] or {}).get("results") or []:
        if "error" in r:
            lines.append(f"{r['name']}: {r['error'][:100]}")
            continue
        epochs = ", ".join(f"{e:.1f}" for e in r["epoch_s"])
        steps = ", ".join(f"{m:.1f}" for m in r["ms_per_train_step"])
        lines.append(f"{r['name']}: epochs {epochs} s, {steps} ms/step, "
                     f"test acc {r['test_acc']:.3f}")  # fmt: skip
    lines += [f"  {k}: {v:.2f}" for k, v in s["ratios"].items()]
    text = "\n".join(lines)
    return text if len(text) <= TABLE_CHARS else text[: TABLE_CHARS - 4] + "\n..."


def main() -> int:
    logs, out = Path(sys.argv[1]), Path(sys.argv[2])
    s = summary(logs, out)
    write_text(out / "summary.json", json.dumps(s, indent=2) + "\n")
    if "--print" in sys.argv[3:]:
        print(table(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
