"""Whole epochs of `dvsgkit train`, data path included, on a full-size store of random counts.

Builds ROOT's T=16 frame store with 1176 train / 288 test samples of random counts
(bench/random_store.py: seconds, not minutes of synthetic AEDAT), then runs the real command,
`python -m dvsgkit_cli.main train ... --epochs 2`, once per job, each job in its own output
folder (a run directory is named after the recipe, which execution options such as
--channels-last or --fused leave alone). Reports per job: seconds per epoch (train + test,
batches gathered on the GPU included; epoch 0 pays for compilation and autotuning and is
reported apart), ms per train step (from the trainer's samples/s), test accuracy, wall time.
Compare ms per train step with bench/train_step.py's compute-only step of the same network:
their ratio is what the data path costs. Each job is stopped after `--job-timeout` seconds, or
earlier so that the jobs after it keep `RESERVE_S` seconds each before `--deadline` (a Unix time;
default: $PART_DEADLINE, which bench/gpu_run.sh sets to the end of this part).

    python bench/train_gpu.py --root /tmp/dvsg_random --out OUT --json OUT/train_gpu.json
    python bench/train_gpu.py --root /tmp/tiny --out /tmp/o --json /tmp/o/x.json --dry-run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# (name, extra options), most wanted first; --dry-run keeps the names, runs CPU options
JOBS = [
    ("dvsgkit train --cupy --amp", ["--cupy", "--amp"]),
    ("dvsgkit train --cupy --amp --fused", ["--cupy", "--amp", "--fused"]),
    ("dvsgkit train --amp", ["--amp"]),
]


RESERVE_S = 30.0  # seconds kept for each job still waiting, when a deadline is set


def job_timeout(limit: float, deadline: float | None, jobs_left: int) -> float:
    """Seconds the next job may run: `limit`, less what the jobs after it need before
    `deadline`, and never less than an equal share of the time left."""
    if deadline is None:
        return limit
    left = deadline - time.time()
    return max(1.0, min(limit, max(left - RESERVE_S * (jobs_left - 1), left / jobs_left)))


def job_dirs(out: Path, jobs: list[tuple[str, list[str]]]) -> list[Path]:
    """One output folder per job, distinct even where the run names agree."""
    return [out / f"job{i}" for i in range(len(jobs))]


def run_job(name: str, options: list[str], common: list[str], out_dir: Path,
            timeout: float) -> dict[str, Any]:  # fmt: skip
    command = [sys.executable, "-m", "dvsgkit_cli.main", "train", *common, *options,
               "--out-dir", str(out_dir)]  # fmt: skip
    print(f"--- {name}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, timeout=timeout, text=True, capture_output=True)
    wall = time.perf_counter() - start
    print(done.stdout[-4000:], done.stderr[-4000:], sep="\n", flush=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"name": name, "error": f"exit {done.returncode}: {tail[0]}", "wall_s": wall}
    (run_dir,) = [p.parent for p in out_dir.glob("*/metrics.jsonl")]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    batch = json.loads((run_dir / "config.json").read_text())["batch_size"]
    return {
        "name": name,
        "options": options,
        "epoch_s": [r["total_time"] for r in records],
        "ms_per_train_step": [1000 * batch / r["train_samples_per_s"] for r in records],
        "test_acc": records[-1]["test_acc"],
        "train_samples": records[-1]["train_samples"],
        "test_samples": records[-1]["test_samples"],
        "wall_s": wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the jobs' output folders")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=len(JOBS), help="run the first N jobs")
    parser.add_argument("--job-timeout", type=float, default=150.0)
    parser.add_argument(
        "--deadline", type=float, default=os.environ.get("PART_DEADLINE") or None,
        help="Unix time by which every job must be done  [default: $PART_DEADLINE]",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="tiny store, CPU, no --cupy/--amp")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).parent))
    from random_store import build_random_store

    size = {"T": 4, "train_trials": 1, "test_trials": 1} if args.dry_run else {"T": 16}
    store, prep = build_random_store(args.root, **size, workers=args.workers)
    print(f"store {store}: {json.dumps(prep)}", flush=True)
    common = ["--root", str(args.root), "-T", str(size["T"]), "--epochs", str(args.epochs),
              "--workers", str(args.workers), "--no-progress"]  # fmt: skip
    if args.dry_run:
        common += ["--device", "cpu", "--channels", "4", "-b", "4"]
    jobs = JOBS[: args.jobs]
    results: list[dict[str, Any]] = []
    dirs = job_dirs(args.out, jobs)
    for i, ((name, options), out_dir) in enumerate(zip(jobs, dirs, strict=True)):
        if args.dry_run:
            options = [o for o in options if o not in ("--cupy", "--amp", "--fused")]
        timeout = job_timeout(args.job_timeout, args.deadline, len(jobs) - i)
        try:
            results.append(run_job(name, options, common, out_dir, timeout))
        except subprocess.TimeoutExpired:
            results.append({"name": name, "error": f"timed out after {timeout:.0f} s"})
        meta = {"store": str(store), "prepare": prep, "epochs": args.epochs,
                "dry_run": args.dry_run}  # fmt: skip
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
