"""Recordings to classify or look at (`dvsgkit.io.recordings`): AEDAT, .npz and .h5 read alike,
durations parsed, and timestamps that go back refused by index."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dvsgkit.io.aedat_writer import write_aedat
from dvsgkit.io.recordings import iter_recording, parse_duration


@pytest.mark.parametrize(
    ("text", "micros"),
    [("1.5s", 1_500_000), ("250ms", 250_000), ("250000us", 250_000), ("2", 2_000_000),
     (".5 s", 500_000)],
)  # fmt: skip
def test_parse_duration(text: str, micros: int) -> None:
    assert parse_duration(text) == micros


def test_parse_duration_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match=r"--window '1\.5 sec' is not a duration"):
        parse_duration("1.5 sec", "--window")
    with pytest.raises(ValueError, match="must be longer than 0"):
        parse_duration("0s", "--hop")
    assert parse_duration("0s", allow_zero=True) == 0


def _write_events(path: Path, ev: np.ndarray) -> Path:
    """`ev` as an .aedat, .npz or .h5 file (by the suffix of `path`)."""
    import h5py

    if path.suffix == ".aedat":
        return write_aedat(path, ev)
    if path.suffix == ".npz":
        np.savez(path, **{k: ev[k] for k in "txyp"})
    else:
        with h5py.File(path, "w") as f:
            for k in "txyp":
                f[k] = ev[k]
    return path


@pytest.mark.parametrize("suffix", [".aedat", ".npz", ".h5"])
@pytest.mark.parametrize(
    ("disorder", "index"),
    [("clock reset", 2500), ("shuffled", 8), ("back at a chunk's start", 1000)],
)
def test_recordings_out_of_time_order_are_refused(
    tmp_path: Path, events_at: Callable[..., np.ndarray], suffix: str, disorder: str, index: int
) -> None:
    """Read in time order (as sliding windows and show read), a recording whose timestamps go
    back is refused at its first such event, by index, whatever the format and chunking."""
    t = np.arange(3000, dtype=np.int64) * 1000
    if disorder == "clock reset":  # a second recording joined after the first
        t[2500:] -= t[2500]
    elif disorder == "shuffled":
        t[7], t[8] = t[8], t[7] - 1
    else:  # event 1000 opens the second chunk of 1000
        t[1000] = t[999] - 1
    path = _write_events(tmp_path / f"rec{suffix}", events_at(t))
    assert sum(len(c) for c in iter_recording(path)) == 3000  # read as recorded without the check
    with pytest.raises(ValueError) as err:
        for _ in iter_recording(path, chunk_events=1000, time_order=True):
            pass
    message = str(err.value)
    assert message.startswith(f"{path}: event {index} (t {t[index]} µs) is earlier than"), message
    assert f"(t {t[index - 1]} µs)" in message and "sort them by t" in message
