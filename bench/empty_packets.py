"""Time the AEDAT reader on a zero-filled file: every 28 bytes read as an empty packet.

    .venv/bin/python bench/empty_packets.py              # 2 GiB written as zeros
    .venv/bin/python bench/empty_packets.py --gib 8 --sparse

It writes the 4-line header and then zeros (a sparse file with --sparse: no disk written, the
kernel supplies zero pages), then reads it in a fresh process, as `dvsgkit events` does (with
the sha256 of the file in the same pass) and as `predict` does (without), printing wall time,
throughput and the process's peak resident memory (VmHWM). The reader steps over the empty
packets in bulk with a window's memory and stops at the end with "truncated packet header".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HEADER = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"

READ = """
import hashlib, json, sys, time
from pathlib import Path
from dvsgkit.io.aedat import AedatError, iter_words

def peak_mib():
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if "VmHWM" in x)
    return int(line.split()[1]) / 1024

before = peak_mib()
digest = hashlib.sha256() if sys.argv[2] == "1" else None
start = time.perf_counter()
try:
    result = f"{sum(len(t) for t, _ in iter_words(sys.argv[1], digest=digest))} events"
except AedatError as exc:
    result = str(exc).split(": ", 1)[1]
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_mib": peak_mib(), "base_mib": before,
                  "result": result}))
"""


def write_zeros(path: Path, size: int, sparse: bool) -> None:
    with open(path, "wb") as f:
        f.write(HEADER)
        if sparse:
            f.truncate(size)
            return
        block = bytes(16 << 20)
        left = size - len(HEADER)
        while left > 0:
            left -= f.write(block[: min(left, len(block))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="file size in GiB")
    parser.add_argument("--sparse", action="store_true", help="a sparse file (no disk written)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the file")
    args = parser.parse_args()
    size = int(args.gib * (1 << 30))
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="dvsgkit-bench-") as tmp:
        path = Path(tmp) / "zeros.aedat"
        write_zeros(path, size, args.sparse)
        kind = "sparse" if args.sparse else "written"
        print(f"{path.name}: {size / 1e9:.2f} GB of zeros ({kind}), "
              f"{(size - len(HEADER)) // 28:,} empty packets")  # fmt: skip
        for _ in range(args.repeats):
            for digest in ("0", "1"):
                out = subprocess.run([sys.executable, "-c", READ, str(path), digest],
                                     capture_output=True, text=True, check=True)  # fmt: skip
                r = json.loads(out.stdout)
                what = "sha256, as events" if digest == "1" else "no digest, as predict"
                grown = r["peak_mib"] - r["base_mib"]
                print(f"  {what}: {r['seconds']:.2f} s, {size / r['seconds'] / 1e9:.2f} GB/s, "
                      f"peak RSS {r['peak_mib']:.0f} MiB ({grown:+.0f} MiB for the read); "
                      f"{r['result']}")  # fmt: skip


if __name__ == "__main__":
    main()
