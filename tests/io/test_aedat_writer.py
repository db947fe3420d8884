"""AEDAT 3.1 writer: atomic (a failed or killed write never leaves a file under the real name)
and strict about what it encodes. Round trips through the reader: test_aedat.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from dvsgkit.constants import EVENT_DTYPE
from dvsgkit.fs import sweep
from dvsgkit.io.aedat import read_events
from dvsgkit.io.aedat_writer import AedatWriter, write_aedat

if TYPE_CHECKING:
    from conftest import Writers  # the `killable` fixture


def events(n: int) -> np.ndarray:
    ev = np.zeros(n, dtype=EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["p"] = np.arange(n), np.arange(n) % 128, 5, np.arange(n) % 2
    return ev


# Writes argv[1] and stops after the first packets, the file half written.
WRITER = """
import sys, time
import numpy as np
from dvsgkit.constants import EVENT_DTYPE
from dvsgkit.io.aedat_writer import AedatWriter
with AedatWriter(sys.argv[1], packet_events=4) as w:
    w.write(np.zeros(10, dtype=EVENT_DTYPE))
    w._file.flush()
    print("writing", flush=True)
    time.sleep(600)
"""


def test_writer_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "w.aedat"
    with pytest.raises(RuntimeError), AedatWriter(path) as w:
        w.write(events(10))
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_events(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dtype EVENT_DTYPE"):
        write_aedat(tmp_path / "x.aedat", np.zeros(3, dtype=np.int64))
    bad = events(3)
    bad["t"][0] = -1
    with pytest.raises(ValueError, match="timestamps must be >= 0"):
        write_aedat(tmp_path / "x.aedat", bad)
    bad = events(3)
    bad["p"][1] = 2
    with pytest.raises(ValueError, match="polarity must be 0 or 1, got 2"):
        write_aedat(tmp_path / "x.aedat", bad)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_write_leaves_only_a_temporary_file_that_is_swept(
    tmp_path: Path, killable: Writers
) -> None:
    path = tmp_path / "w.aedat"
    write_aedat(path, events(3))  # an old recording
    dead = killable.killed(WRITER, path)
    (leftover,) = tmp_path.glob(f".w.aedat.{dead}-*.partial")
    assert sorted(tmp_path.iterdir()) == [leftover, path]
    assert leftover.stat().st_size > 0  # half written, under no real name
    np.testing.assert_array_equal(read_events(path), events(3))  # the old one intact
    assert sweep(tmp_path) == [leftover]
    assert sorted(tmp_path.iterdir()) == [path]


def test_the_temporary_file_is_named_for_this_process(tmp_path: Path) -> None:
    with AedatWriter(tmp_path / "w.aedat") as w:
        assert w.partial.name.startswith(f".w.aedat.{os.getpid()}-") and w.partial.is_file()
    assert sorted(tmp_path.iterdir()) == [tmp_path / "w.aedat"]
