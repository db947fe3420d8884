"""What starting a store build's worker pool costs, by start method: the time from creating a
`ProcessPoolExecutor` of --workers workers to every worker having answered once, averaged over
--reps pools. `forkserver (cold)` includes starting the fork server itself (once per process,
with the store modules imported); `forkserver` is a later pool of the same process, which is
what every build but the first pays. Run in a process that has imported what a build imports.

    .venv/bin/python bench/pool_start.py --workers 2 --reps 5
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import dvsgkit.store.events  # noqa: F401 (what a build has imported)
import dvsgkit.store.frames  # noqa: F401
from dvsgkit.store.workers import pool_context


def _pid(_: int) -> int:
    time.sleep(0.05)  # keeps a worker busy, so that each worker answers one
    return os.getpid()


def start(context: multiprocessing.context.BaseContext, workers: int) -> float:
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        list(pool.map(_pid, range(workers)))
        elapsed = time.perf_counter() - t0
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    print(f"forkserver (cold): {start(pool_context(), args.workers) * 1e3:7.1f} ms")
    contexts = {"forkserver": pool_context(), "fork": multiprocessing.get_context("fork"),
                "spawn": multiprocessing.get_context("spawn")}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in contexts}
    for _ in range(args.reps):  # alternating
        for name, context in contexts.items():
            times[name].append(start(context, args.workers))
    for name, ts in times.items():
        print(f"{name + ':':18} {sum(ts) / len(ts) * 1e3:7.1f} ms (mean of {len(ts)}; "
              f"min {min(ts) * 1e3:.1f})")  # fmt: skip
    print("(each includes ~50 ms of work per worker)")


if __name__ == "__main__":
    main()
