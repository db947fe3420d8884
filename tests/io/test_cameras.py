"""Camera files through faery: AEDAT 4, EVT 2 / 3, .dat and .es read back event for event with
the sensor size from the header; bad files and a missing faery are one line each."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dvsgkit.constants import EVENT_DTYPE
from dvsgkit.io.cameras import write_camera
from dvsgkit.io.recordings import RecordingError, check_recording, iter_recording, recording_sensor

SENSOR = (346, 260)


@pytest.fixture(scope="module")
def events() -> np.ndarray:
    """5000 events on a 346 x 260 sensor over 2 s, from t = 1 s (in time order, ties too)."""
    rng = np.random.default_rng(3)
    ev = np.zeros(5000, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(1_000_000, 3_000_000, len(ev)))
    ev["x"], ev["y"] = rng.integers(0, SENSOR[0], len(ev)), rng.integers(0, SENSOR[1], len(ev))
    ev["p"] = rng.integers(0, 2, len(ev))
    return ev


@pytest.mark.parametrize(
    ("name", "version"),
    [("rec.aedat4", None), ("rec.raw", "evt3"), ("rec.raw", "evt2"), ("rec.evt", None),
     ("rec.dat", None)],
)  # fmt: skip
def test_camera_files_read_back_event_for_event(
    tmp_path: Path, events: np.ndarray, name: str, version: str | None
) -> None:
    path = write_camera(tmp_path / name, events, SENSOR, version)
    assert recording_sensor(path) == SENSOR
    got = np.concatenate(list(iter_recording(path, chunk_events=700, time_order=True)))
    assert got.dtype == EVENT_DTYPE and np.array_equal(got, events)
    assert not [p for p in tmp_path.iterdir() if p.name != name]  # no temporary left


def test_an_aedat_file_holding_aedat_4_and_an_es_file(tmp_path: Path, events: np.ndarray) -> None:
    """DV names its files .aedat4, but a .aedat that starts with AEDAT 4's magic is one too;
    an .es file keeps times from its first event (the format starts its clock there)."""
    (tmp_path / "dv.aedat").write_bytes(write_camera(tmp_path / "a.aedat4", events, SENSOR)
                                        .read_bytes())  # fmt: skip
    assert recording_sensor(tmp_path / "dv.aedat") == SENSOR
    assert np.array_equal(np.concatenate(list(iter_recording(tmp_path / "dv.aedat"))), events)
    es = np.concatenate(list(iter_recording(write_camera(tmp_path / "a.es", events, SENSOR))))
    assert np.array_equal(es["t"], events["t"] - events["t"][0])
    assert all(np.array_equal(es[f], events[f]) for f in "xyp")


def test_bad_camera_files_are_one_line(tmp_path: Path, events: np.ndarray) -> None:
    """A truncated AEDAT 4 file (named with the events read before the damage), a file that is
    no event file, an EVT file whose header states no sensor size."""
    whole = write_camera(tmp_path / "whole.aedat4", events, SENSOR).read_bytes()
    cut = tmp_path / "cut.aedat4"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(RecordingError, match=r"^.*cut\.aedat4: (damaged after event \d+|not a "
                                             r"readable event file) \(failed to fill"):  # fmt: skip
        list(iter_recording(cut))
    text = tmp_path / "notes.aedat4"
    text.write_text("hello, world\n" * 10)
    with pytest.raises(RecordingError, match=r"notes\.aedat4: not a readable event file \(bad "):
        recording_sensor(text)
    raw = write_camera(tmp_path / "r.raw", events, SENSOR).read_bytes()
    header = raw.split(b"\n% t0 ")[0]  # "% evt 3.0", "% format ...;width=..", "% geometry .."
    assert b"% geometry 346x260" in header
    headless = tmp_path / "headless.raw"
    headless.write_bytes(b"% evt 3.0\n" + raw[raw.index(b"\n", len(header) + 1) + 1 :])
    with pytest.raises(RecordingError, match=r"headless\.raw: its header states no sensor size"):
        list(iter_recording(headless))


def test_without_faery_a_camera_file_is_one_line_naming_the_extra(
    tmp_path: Path, events: np.ndarray, monkeypatch: pytest.MonkeyPatch,
    run_cli: Callable[..., tuple[int, str]],
) -> None:  # fmt: skip
    """faery is optional: without it, a camera file is refused before anything runs, in one
    line that names the extra to install; DVS128 recordings need no faery."""
    path = write_camera(tmp_path / "rec.aedat4", events, SENSOR)
    monkeypatch.setitem(sys.modules, "faery", None)  # `import faery` raises ImportError
    with pytest.raises(ValueError) as err:
        check_recording(path)
    assert str(err.value) == (
        f"{path}: reading AEDAT 4, EVT (.raw), .dat and .es recordings needs the optional "
        "package faery: pip install 'dvsgkit[cameras]'"
    )
    for args in (["predict", str(path), str(path)], ["show", str(path)]):
        code, output = run_cli(*args, "--out-dir", tmp_path / "out")
        assert code == 1 and output.splitlines() == [f"Error: {err.value}"]
    assert not (tmp_path / "out").exists()
    npz = tmp_path / "dvs.npz"
    np.savez(npz, **{f: events[f] % 128 if f in "xy" else events[f] for f in "txyp"})
    assert recording_sensor(npz) == (128, 128)


def test_a_camera_file_is_opened_once_per_read(
    tmp_path: Path, events: np.ndarray, faery_opens: list[Path]
) -> None:
    """Reading a camera file opens it once: its header's sensor size and its events come from
    one faery stream; asking for the sensor size alone opens it once too."""

    path = write_camera(tmp_path / "rec.aedat4", events, SENSOR)
    opened = faery_opens
    assert np.array_equal(np.concatenate(list(iter_recording(path, time_order=True))), events)
    assert opened == [path]
    assert recording_sensor(path) == SENSOR and opened == [path, path]
