"""Cutting recordings into samples: the reference rule [start, end), order, and edge cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dvsgkit.constants import EVENT_DTYPE
from dvsgkit.io.aedat import AedatError
from dvsgkit.io.aedat_writer import write_aedat
from dvsgkit.io.labels import WINDOW_DTYPE, write_labels
from dvsgkit.samples import (
    CutBuffers,
    Recording,
    cut,
    cut_chunks,
    cut_recording,
    cut_recording_columns,
    list_all_recordings,
    list_recordings,
)


def events_at(t: list[int] | np.ndarray) -> np.ndarray:
    ev = np.zeros(len(t), dtype=EVENT_DTYPE)
    ev["t"] = t
    ev["x"] = np.arange(len(t)) % 128
    ev["y"] = np.arange(len(t)) // 128 % 128
    ev["p"] = np.arange(len(t)) % 2
    return ev


def windows_of(rows: list[tuple[int, int, int]]) -> np.ndarray:
    return np.array([(c - 1, s, e, i) for i, (c, s, e) in enumerate(rows)], dtype=WINDOW_DTYPE)


def reference(events: np.ndarray, windows: np.ndarray) -> list[np.ndarray]:
    """SpikingJelly's rule, literally: a mask over the whole recording per CSV row."""
    return [events[(events["t"] >= w["start"]) & (events["t"] < w["end"])] for w in windows]


def assert_samples_equal(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == EVENT_DTYPE
        np.testing.assert_array_equal(g, w)


def test_start_inclusive_end_exclusive_absolute_times() -> None:
    ev = events_at([5, 10, 10, 11, 19, 20, 21])
    (sample,) = cut(ev, windows_of([(3, 10, 20)]))
    assert sample["t"].tolist() == [10, 10, 11, 19]
    assert sample["x"].tolist() == [1, 2, 3, 4]


def test_overlapping_repeated_unordered_empty_and_tiny_windows() -> None:
    ev = events_at(np.repeat(np.arange(0, 1000, 10), 3))
    rows = [(8, 500, 700), (1, 100, 300), (8, 250, 550), (8, 500, 700), (2, 995, 2000),
            (4, 0, 0), (5, 30, 40), (11, 0, 15)]  # fmt: skip
    windows = windows_of(rows)
    got = cut(ev, windows)
    assert_samples_equal(got, reference(ev, windows))
    assert [len(s) for s in got][4:] == [0, 0, 3, 6]  # empty, empty, N < 16
    np.testing.assert_array_equal(got[0], got[3])


def test_unsorted_timestamps_keep_recorded_order() -> None:
    ev = events_at([50, 10, 60, 20, 55, 5])
    windows = windows_of([(1, 10, 56), (2, 0, 100)])
    got = cut(ev, windows)
    assert got[0]["t"].tolist() == [50, 10, 20, 55]
    assert_samples_equal(got, reference(ev, windows))


@pytest.mark.parametrize("chunk", [1, 7, 100, 10_000])
def test_chunked_cut_equals_whole(chunk: int) -> None:
    rng = np.random.default_rng(3)
    ev = events_at(np.sort(rng.integers(0, 10_000, 3000)))
    windows = windows_of([(1, 2000, 4000), (2, 0, 10_000), (3, 3900, 4100), (4, 9000, 20_000)])
    chunks = [ev[i : i + chunk] for i in range(0, len(ev), chunk)]
    assert_samples_equal(cut_chunks(chunks, windows), reference(ev, windows))


def make_recording(folder: Path, stem: str, ev: np.ndarray, rows: list) -> Recording:
    write_aedat(folder / f"{stem}.aedat", ev, packet_events=64)
    write_labels(folder / f"{stem}_labels.csv", windows_of(rows))
    return Recording("train", stem, folder / f"{stem}.aedat", folder / f"{stem}_labels.csv")


def test_cut_recording_and_columns_agree_with_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ev = events_at(np.sort(rng.integers(0, 1 << 33, 5000)))  # crosses tsOverflow boundaries
    ev["x"], ev["y"] = rng.integers(0, 128, 5000), rng.integers(0, 128, 5000)
    rows = [(8, 1 << 31, 1 << 32), (1, 0, 1 << 30), (8, 1 << 31, 1 << 32), (11, 5, 6)]
    rec = make_recording(tmp_path, "user01_lab", ev, rows)
    windows, samples = cut_recording(rec, chunk_events=500)
    want = reference(ev, windows_of(rows))
    assert_samples_equal(samples, want)
    windows2, lengths, columns = cut_recording_columns(rec, chunk_events=500)
    np.testing.assert_array_equal(windows, windows2)
    assert lengths.tolist() == [len(s) for s in want]
    flat = np.concatenate(want)
    for name in EVENT_DTYPE.names:
        np.testing.assert_array_equal(columns[name], flat[name])
        assert columns[name].dtype == EVENT_DTYPE[name]


def test_columns_into_uint8_with_the_sensor_checked(tmp_path: Path) -> None:
    """The event cache's form: x, y, p decoded straight into uint8 columns, which is exact only
    on the sensor, so events off it are an error, and uint8 columns without the check too."""
    rng = np.random.default_rng(1)
    ev = events_at(np.sort(rng.integers(0, 1 << 20, 4000)))
    ev["x"], ev["y"] = rng.integers(0, 128, 4000), rng.integers(0, 128, 4000)
    rows = [(3, 1000, 1 << 19), (8, 0, 1 << 21), (8, 5, 6)]
    rec = make_recording(tmp_path, "user01_lab", ev, rows)

    def alloc(n: int) -> dict[str, np.ndarray]:
        return {k: np.empty(n, np.int64 if k == "t" else np.uint8) for k in "txyp"}

    buffers = CutBuffers()
    for _ in range(2):  # the second cut reuses the first one's memory
        _, lengths, columns = cut_recording_columns(
            rec, chunk_events=700, alloc=alloc, sensor=(128, 128), buffers=buffers
        )
        flat = np.concatenate(reference(ev, windows_of(rows)))
        assert lengths.sum() == len(flat)
        for name in EVENT_DTYPE.names:
            np.testing.assert_array_equal(columns[name], flat[name])
    with pytest.raises(ValueError, match="holding up to 255 need a `sensor` that fits them"):
        cut_recording_columns(rec, alloc=alloc)
    with pytest.raises(ValueError, match="got \\(260, 346\\)"):
        cut_recording_columns(rec, alloc=alloc, sensor=(260, 346))
    ev["y"][3000] = 200  # inside a window; uint8 would hold it, the sensor does not
    rec = make_recording(tmp_path, "user01_lab", ev, rows)
    with pytest.raises(AedatError, match=r"user01_lab.aedat: events with x up to 127 and y up "
                       r"to 200 do not fit the 128x128 sensor"):  # fmt: skip
        cut_recording_columns(rec, alloc=alloc, sensor=(128, 128))


def test_list_recordings_follows_trials_order(tmp_path: Path) -> None:
    for stem in ("user02_lab", "user01_led"):
        make_recording(tmp_path, stem, events_at([1, 2]), [(1, 0, 5)])
    (tmp_path / "trials_to_train.txt").write_text("user02_lab.aedat\n\nuser01_led.aedat\n")
    recs = list_recordings(tmp_path, "train")
    assert [r.trial for r in recs] == ["user02_lab", "user01_led"]
    assert recs[0].labels == tmp_path / "user02_lab_labels.csv"


def test_trials_list_naming_a_missing_recording(tmp_path: Path) -> None:
    (tmp_path / "trials_to_test.txt").write_text("user24_lab.aedat\n")
    with pytest.raises(FileNotFoundError, match=r"trials_to_test.txt names 'user24_lab.aedat'"):
        list_recordings(tmp_path, "test")
    with pytest.raises(ValueError, match="split must be one of"):
        list_recordings(tmp_path, "val")


@pytest.mark.parametrize("spelling", ["./user24_led.aedat", "sub/../user24_led.aedat",
                                      "sub//..//./user24_led.aedat", "alias.aedat"])  # fmt: skip
def test_a_recording_in_both_splits_under_another_spelling_is_refused(
    tmp_path: Path, spelling: str
) -> None:
    for stem in ("user02_lab", "user24_led"):
        make_recording(tmp_path, stem, events_at([1, 2]), [(1, 0, 5)])
    (tmp_path / "sub").mkdir()
    (tmp_path / "alias.aedat").symlink_to("user24_led.aedat")  # a link: the same recording
    (tmp_path / "alias_labels.csv").symlink_to("user24_led_labels.csv")
    (tmp_path / "trials_to_train.txt").write_text("user02_lab.aedat\nuser24_led.aedat\n")
    (tmp_path / "trials_to_test.txt").write_text(f"{spelling}\n")
    with pytest.raises(ValueError) as err:
        list_all_recordings(tmp_path)
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(f"{tmp_path / 'trials_to_test.txt'}, line 1: {spelling!r} is also "
                           f"listed in {tmp_path / 'trials_to_train.txt'}, line 2 as "
                           "'user24_led.aedat' (both name "), line  # fmt: skip
    assert "a recording belongs to one split only: remove it from one list" in line


def test_a_recording_in_both_splits_is_refused(tmp_path: Path) -> None:
    for stem in ("user02_lab", "user24_led"):
        make_recording(tmp_path, stem, events_at([1, 2]), [(1, 0, 5)])
    (tmp_path / "trials_to_train.txt").write_text("user02_lab.aedat\nuser24_led.aedat\n")
    (tmp_path / "trials_to_test.txt").write_text("\nuser24_led.aedat\n")
    with pytest.raises(ValueError, match=r"trials_to_test.txt, line 2: 'user24_led.aedat' is also "
                       r"listed in .*trials_to_train.txt, line 2; .*one split only"):  # fmt: skip
        list_all_recordings(tmp_path)
    (tmp_path / "trials_to_test.txt").write_text("user24_led.aedat\n")
    (tmp_path / "trials_to_train.txt").write_text("user02_lab.aedat\n")
    recs = list_all_recordings(tmp_path)
    assert [(r.split, r.trial) for r in recs] == [("train", "user02_lab"), ("test", "user24_led")]
