"""Static report of dvsgkit's CuPy kernels on an H100 (sm_90), without a GPU.

Every kernel source the CuPy back end builds (LIF and PLIF, unfused and fused, float32, float16
and bfloat16, T = 16 and 20) is compiled with nvcc exactly as CuPy compiles it (the same source,
`-arch=sm_90 -ftz=true`), and per kernel the report gives:

- registers per thread and spill bytes (`ptxas -v`), and the warps resident per SM that the
  registers, the launch's threads per block and the SM's limits allow;
- its global loads (LDG in `cuobjdump -sass`) and, for each, the other global loads issued
  between it and the first instruction that reads what it loaded, in program order: "loads in
  flight at first use". A kernel that uses each load before issuing the next waits one memory
  latency per load;
- the Little's-law bound on the bytes an SM keeps in flight: resident warps x 32 x bytes per
  load x (1 + mean loads in flight at first use); an H100 needs about 16 KB per SM (25 GB/s per
  SM x ~0.6 us) to reach its bandwidth;
- the bytes it moves through GPU memory per training step of GestureNet at batch 16, C = 128
  (unfused kernels: the `--cupy` net; fused kernels: the `--cupy --fused` net).

    python bench/kernel_report.py                  # the table
    python bench/kernel_report.py --json           # one JSON object per kernel
    python bench/kernel_report.py --emit-cu DIR    # each source as DIR/NAME.cu, nvcc -cubin-able
    python bench/kernel_report.py --rev REV        # the kernels of git revision REV instead

Needs nvcc (CUDA 12 or 13), cuobjdump and nvdisasm (PATH, $CUOBJDUMP / $NVDISASM, or the
pip packages nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm of the `[dev]` extra). The compiling
and the reading of nvcc's outputs are in kernel_sass.py, beside this script.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kernel_sass import (  # beside this script
    Usage,
    compile_source,
    loads_in_flight,
    missing_tools,
    resident_warps,
)

REPO = Path(__file__).resolve().parents[1]
TARGET_BYTES_IN_FLIGHT = 16 * 1024
STEPS = (16, 20)
DTYPES = ("float32", "float16", "bfloat16")
NEURONS = ("lif", "plif")

# --- the kernels dvsgkit builds ---


@dataclass
class Unit:
    """One source CuPy compiles: its name, what it is for, and the threads per block of each of
    its kernels' launches."""

    name: str
    family: str  # "unfused" or "fused"
    neuron: str
    dtype: str
    steps: int
    source: str
    threads: dict[str, int] = field(default_factory=dict)


def units(steps_list=STEPS, dtypes=DTYPES, neurons=NEURONS) -> list[Unit]:
    """Every kernel source of the imported dvsgkit, through the modules' public kernel_source."""
    lif_cupy = importlib.import_module("dvsgkit.model.lif_cupy")
    plif_cupy = importlib.import_module("dvsgkit.model.plif_cupy")
    fused_cupy = importlib.import_module("dvsgkit.model.fused_cupy")
    out = []
    for neuron in neurons:
        unfused = lif_cupy if neuron == "lif" else plif_cupy
        for dtype in dtypes:
            for steps in steps_list:
                out.append(Unit(f"{neuron}_{dtype}", "unfused", neuron, dtype, steps,
                                unfused.kernel_source(dtype)))  # fmt: skip
                out.append(Unit(f"fused_{neuron}_{dtype}_T{steps}", "fused", neuron, dtype,
                                steps, fused_cupy.kernel_source(dtype, steps, neuron)))  # fmt: skip
    return out


def launch_threads(kernel: str) -> int:
    """Threads per block of `kernel`'s launches in the imported dvsgkit."""
    try:
        kernels = importlib.import_module("dvsgkit.model.kernels")
    except ModuleNotFoundError:  # a revision before dvsgkit.model.kernels: 256 everywhere
        return importlib.import_module("dvsgkit.model.lif_cupy").THREADS
    return kernels.block_threads(kernel)


def step_bytes(kernel: str, neuron: str, dtype: str, steps: int) -> int | None:
    """Bytes `kernel` moves per training step at batch 16, C = 128 (None: not modelled)."""
    try:
        kernels = importlib.import_module("dvsgkit.model.kernels")
    except ModuleNotFoundError:
        return None
    return kernels.step_traffic(kernel, neuron, dtype, steps)


@dataclass
class Row:
    kernel: str
    unit: str
    family: str
    neuron: str
    dtype: str
    steps: int
    registers: int
    spill_bytes: int
    threads: int
    resident_warps: int
    loads: int
    bytes_per_load: float
    loads_in_flight: float
    share_with_none_in_flight: float
    bytes_in_flight_per_sm: int
    step_mb: float | None

    @property
    def meets_target(self) -> bool:
        return self.spill_bytes == 0 and self.bytes_in_flight_per_sm >= TARGET_BYTES_IN_FLIGHT


def analyse(unit: Unit, folder: Path) -> list[Row]:
    """Rows of `unit`'s kernels, from its compiled SASS (everything but step_mb)."""
    usage, sass = compile_source(unit.source, folder, unit.name)
    rows = []
    for kernel, code in sass.items():
        use = usage.get(kernel, Usage())
        loads = loads_in_flight(code)
        n = len(loads)
        per_load = sum(b for b, _ in loads) / n if n else 0.0
        in_flight = sum(o for _, o in loads) / n if n else 0.0
        threads = launch_threads(kernel)
        warps = resident_warps(use.registers, threads, use.shared_bytes)
        rows.append(Row(
            kernel, unit.name, unit.family, unit.neuron, unit.dtype, unit.steps, use.registers,
            use.spill_bytes, threads, warps, n, round(per_load, 2), round(in_flight, 2),
            round(sum(1 for _, o in loads if o == 0) / n, 2) if n else 0.0,
            int(warps * 32 * per_load * (1 + in_flight)),
            None,  # step_mb: per T, filled in by report()
        ))  # fmt: skip
    return rows


def report(steps_list=STEPS, dtypes=DTYPES, neurons=NEURONS, emit: Path | None = None):
    """Rows for every kernel (compiled once per distinct source)."""
    rows: list[Row] = []
    seen: dict[str, list[Row]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for unit in units(steps_list, dtypes, neurons):
            if emit is not None:
                emit.mkdir(parents=True, exist_ok=True)
                (emit / f"{unit.name}.cu").write_text(unit.source)
            if unit.source not in seen:
                seen[unit.source] = analyse(unit, Path(tmp))
            for row in seen[unit.source]:  # an unfused source serves every T
                moved = step_bytes(row.kernel, unit.neuron, unit.dtype, unit.steps)
                mb = None if moved is None else round(moved / 1e6, 1)
                rows.append(Row(**{**asdict(row), "unit": unit.name, "steps": unit.steps,
                                   "step_mb": mb}))  # fmt: skip
    return rows


def table(rows: list[Row]) -> str:
    head = ("kernel", "neuron", "dtype", "T", "regs", "spill B", "threads", "warps/SM",
            "loads", "B/load", "in flight", "none", "KB in flight/SM", "MB/step")  # fmt: skip
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        cells = (r.kernel, r.neuron, r.dtype, r.steps, r.registers, r.spill_bytes, r.threads,
                 r.resident_warps, r.loads, r.bytes_per_load, r.loads_in_flight,
                 f"{r.share_with_none_in_flight:.0%}", f"{r.bytes_in_flight_per_sm / 1024:.1f}",
                 "-" if r.step_mb is None else r.step_mb)  # fmt: skip
        lines.append(" | ".join(map(str, cells)))
    return "\n".join(f"| {line} |" for line in lines)


def checkout(rev: str, folder: Path) -> Path:
    """The `dvsgkit` package of git revision `rev`, extracted under `folder`."""
    done = subprocess.run(["git", "-C", str(REPO), "archive", rev, "dvsgkit"],
                          capture_output=True, check=False)  # fmt: skip
    if done.returncode:
        raise SystemExit(f"git archive {rev} failed: {done.stderr.decode().strip()}")
    archive = folder / "rev.tar"
    archive.write_bytes(done.stdout)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="one JSON object per kernel")
    p.add_argument("--emit-cu", type=Path, metavar="DIR", help="write each source as DIR/NAME.cu")
    p.add_argument("--rev", help="report the kernels of this git revision")
    p.add_argument("--steps", default=",".join(map(str, STEPS)), help="T values (comma list)")
    p.add_argument("--dtypes", default=",".join(DTYPES))
    p.add_argument("--neurons", default=",".join(NEURONS))
    args = p.parse_args(argv)
    missing = missing_tools()
    if missing:
        print(f"kernel_report: cannot run without {' and '.join(missing)}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        if args.rev:
            sys.path.insert(0, str(checkout(args.rev, Path(tmp))))
        import dvsgkit

        print(f"# dvsgkit kernels from {Path(dvsgkit.__file__).parent}", file=sys.stderr)
        rows = report(
            tuple(int(s) for s in args.steps.split(",")),
            tuple(args.dtypes.split(",")),
            tuple(args.neurons.split(",")),
            args.emit_cu,
        )
    if args.json:
        for row in rows:
            print(json.dumps({**asdict(row), "meets_target": row.meets_target}))
    else:
        print(table(rows))
        short = [r for r in rows if not r.meets_target and r.steps == 16]
        print(f"\n{len(rows) - len([r for r in rows if not r.meets_target])} of {len(rows)} "
              f"kernels: 0 spills and >= {TARGET_BYTES_IN_FLIGHT // 1024} KB in flight per SM; "
              f"under the target at T=16: {len(short)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
