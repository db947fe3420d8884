"""AEDAT files that are mostly not events: runs of empty packets and zero-filled stretches (a
28-byte header of zeros declares eventCapacity 0, eventSize 0) are read exactly, in bulk, fast,
and with a window's memory."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dvsgkit.constants import EVENT_DTYPE
from dvsgkit.io.aedat import AedatError, decode_words, iter_words, read_events
from dvsgkit.io.aedat_writer import AedatWriter, encode_polarity, packet_header

HEADER = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"
MB = 1 << 20

# Empty packets that pass every check: zeros, an empty polarity packet, other types declaring
# no capacity or no event size.
EMPTY = [
    bytes(28),
    packet_header(1, 8, 0),
    packet_header(2, 12, 0),
    packet_header(7, 0, 5, number=5),
]


def make_events(n: int, seed: int, t0: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["t"] = t0 + np.cumsum(rng.integers(0, 50, n))
    ev["x"], ev["y"], ev["p"] = (
        rng.integers(0, 128, n),
        rng.integers(0, 128, n),
        rng.integers(0, 2, n),
    )
    return ev


# Run lengths around the reader's step sizes (16, 256, 4096, 65536 headers) and past the largest.
RUNS = [1, 15, 16, 17, 255, 256, 257, 4097, 65_536, 70_001]


def test_runs_of_empty_packets_are_skipped_and_every_event_is_read(tmp_path: Path) -> None:
    path = tmp_path / "holes.aedat"
    parts = []
    with AedatWriter(path, packet_events=97) as w:
        for k, run in enumerate(RUNS):
            ev = make_events(300 + k, seed=k, t0=k * 100_000)
            w.write(ev)
            parts.append(ev)
            w.write_raw(b"".join(EMPTY[(k + i) % len(EMPTY)] for i in range(run)))
    expected = np.concatenate(parts)
    assert sum(RUNS) > 140_000
    np.testing.assert_array_equal(read_events(path), expected)
    digest = hashlib.sha256()
    chunks = [decode_words(t, d) for t, d in iter_words(path, chunk_events=250, digest=digest)]
    np.testing.assert_array_equal(np.concatenate(chunks), expected)
    assert digest.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (packet_header(1, 4, 0), "polarity packet at byte {at} has eventSize 4"),
        (packet_header(1, 0, 3), "polarity packet at byte {at} has eventSize 0"),
        (
            packet_header(1, 8, 0, number=3),
            "packet at byte {at} has eventNumber 3 > eventCapacity 0",
        ),
        (packet_header(2, 8, 4), "packet at byte {at} declares 4 x 8 bytes"),
        (bytes(11), "truncated packet header at byte {at}: 11 bytes left"),
    ],
    ids=["event-size-4", "event-size-0", "number-over-capacity", "past-eof", "truncated"],
)
def test_a_bad_packet_after_a_run_is_named_at_its_byte(
    tmp_path: Path, bad: bytes, match: str
) -> None:
    """The bulk skip stops at the first packet that needs a check, whichever step it falls in."""
    for run in (3, 4_000, 70_001):
        path = tmp_path / f"bad{run}.aedat"
        path.write_bytes(HEADER + bytes(28) * run + bad)
        with pytest.raises(AedatError, match=match.format(at=len(HEADER) + 28 * run)):
            read_events(path)


def zero_filled(path: Path, size: int) -> Path:
    """The header, then zeros up to `size` bytes (a sparse file: no disk written)."""
    with open(path, "wb") as f:
        f.write(HEADER)
        f.truncate(size)
    return path


def test_a_zero_filled_gigabyte_is_stepped_over_in_seconds(tmp_path: Path) -> None:
    """1 GiB of zeros is ~38 M empty packets: one Python step each took 12-17 s here; in bulk
    it takes ~0.3 s. The file is read once first, so that the time is the reader's, not the
    kernel's filling its page cache; the bound leaves room for a loaded machine."""
    size = 1 << 30
    path = zero_filled(tmp_path / "zeros.aedat", size)
    with open(path, "rb") as f:
        while f.read(16 * MB):
            pass
    at = size - (size - len(HEADER)) % 28
    start = time.perf_counter()
    with pytest.raises(AedatError, match=f"truncated packet header at byte {at}"):
        read_events(path)
    seconds = time.perf_counter() - start
    path.unlink()
    assert seconds < 4.0, f"{seconds:.1f} s to step over 1 GiB of empty packets"


# Peak resident memory from the process's own high-water mark (VmHWM starts afresh at exec;
# getrusage's ru_maxrss would carry the parent's over).
MEASURE = """
import hashlib, json, sys
from pathlib import Path
from dvsgkit.io.aedat import AedatError, iter_words

def peak_kib():
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if "VmHWM" in x)
    return int(line.split()[1])

before = peak_kib()
events = 0
try:
    for t, data in iter_words(sys.argv[1], digest=hashlib.sha256()):
        events += len(t)
except AedatError as exc:
    events = str(exc)
print(json.dumps({"grown_mb": (peak_kib() - before) / 1024, "events": events}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("kind", ["zero-filled", "one-huge-packet"])
def test_memory_stays_a_window_on_a_file_without_events(tmp_path: Path, kind: str) -> None:
    """Peak resident memory of a read (and hash) of 512 MiB holding no events: the reader
    keeps a window (64 MiB) of the file mapped, not the file."""
    size = 512 * MB
    path = tmp_path / f"{kind}.aedat"
    if kind == "zero-filled":
        zero_filled(path, size)
        expected: int | str = "truncated packet header"
    else:  # one packet of another type declaring the whole file (a hole), then 10 events
        with open(path, "wb") as f:
            f.write(HEADER + packet_header(2, 1, size))
            f.truncate(len(HEADER) + 28 + size)
            f.seek(0, 2)
            f.write(packet_header(1, 8, 10) + encode_polarity(make_events(10, 1, 0)).tobytes())
        expected = 10
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    path.unlink()
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    if isinstance(expected, str):
        assert expected in result["events"]
    else:
        assert result["events"] == expected
    assert result["grown_mb"] < 200, f"{result['grown_mb']:.0f} MiB resident for a 512 MiB file"
