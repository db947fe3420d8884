"""`dvsgkit.io.roi`: a region of any sensor mapped onto 128 x 128 by integer arithmetic, events
outside it dropped and counted."""

from __future__ import annotations

import numpy as np
import pytest

from dvsgkit.constants import EVENT_DTYPE
from dvsgkit.io.roi import Roi, check_roi, default_roi, in_roi, parse_roi, parse_sensor, to_dvs128


def events_on(x: list[int] | np.ndarray, y: list[int] | np.ndarray) -> np.ndarray:
    ev = np.zeros(len(x), EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"] = np.arange(len(x)), x, y
    ev["p"] = np.arange(len(x)) % 2
    return ev


def test_the_mapping_by_hand() -> None:
    """x' = (x - X) * 128 // W, y' = (y - Y) * 128 // H; the region's edges are exclusive on
    the far side; t and p are kept; events outside are dropped and marked."""
    roi = Roi(43, 0, 260, 260)
    ev = events_on([43, 44, 45, 302, 42, 303, 100], [0, 1, 2, 259, 0, 0, 260])
    mapped, inside = to_dvs128(ev, roi)
    assert inside.tolist() == [True, True, True, True, False, False, False]
    assert mapped["x"].tolist() == [0, 0, 0, 127]  # 1 * 128 // 260 = 0, 2 * 128 // 260 = 0
    assert mapped["y"].tolist() == [0, 0, 0, 127]
    assert mapped["t"].tolist() == [0, 1, 2, 3] and mapped["p"].tolist() == [0, 1, 0, 1]
    up = to_dvs128(events_on([10, 11, 73], [5, 5, 68]), Roi(10, 5, 64, 64))[0]  # 2x up
    assert up["x"].tolist() == [0, 2, 126] and up["y"].tolist() == [0, 0, 126]


def test_counts_add_up_on_a_whole_sensor() -> None:
    """One event on every pixel of a 346 x 260 sensor: the default region's 260 x 260 pixels
    land on the 128 x 128 pixels with every event counted once, each output pixel taking the
    2 or 3 columns (rows) that integer division gives it; the rest are outside."""
    xs, ys = np.meshgrid(np.arange(346), np.arange(260))
    ev = events_on(xs.ravel(), ys.ravel())
    roi = default_roi((346, 260))
    assert roi == Roi(43, 0, 260, 260)
    mapped, inside = to_dvs128(ev, roi)
    assert len(mapped) == 260 * 260 and int((~inside).sum()) == 346 * 260 - 260 * 260
    counts = np.bincount(mapped["y"].astype(np.int64) * 128 + mapped["x"], minlength=128 * 128)
    per_column = np.bincount(np.arange(260) * 128 // 260, minlength=128)  # [128] 2 or 3
    assert set(per_column.tolist()) == {2, 3}
    assert np.array_equal(counts.reshape(128, 128), np.outer(per_column, per_column))


def test_a_dvs128_recording_passes_unchanged_and_in_roi_counts() -> None:
    ev = events_on([0, 127, 5], [127, 0, 5])
    assert to_dvs128(ev, default_roi((128, 128)))[0] is ev
    counts: dict[str, int] = {}
    chunks = [events_on([0, 200], [0, 0]), events_on([300], [0]), events_on([1], [1])]
    got = list(in_roi(chunks, Roi(0, 0, 128, 128), counts))
    assert [len(c) for c in got] == [1, 1] and counts == {"outside_roi": 2}  # the empty skipped


def test_region_and_sensor_options() -> None:
    assert parse_roi(" 43, 0,260,260") == Roi(43, 0, 260, 260)
    assert parse_sensor("346x260") == (346, 260) and parse_sensor("1280×720") == (1280, 720)
    assert default_roi((1280, 720)) == Roi(280, 0, 720, 720)
    assert default_roi((128, 128)) == Roi(0, 0, 128, 128)
    for bad in ("1,2,3", "1,2,0,4", "-1,0,10,10", "a,b,c,d"):
        with pytest.raises(ValueError, match=f"--roi '{bad}' is not a region; write X,Y,W,H"):
            parse_roi(bad)
    for bad in ("346", "0x260", "346x"):
        with pytest.raises(ValueError, match=f"--sensor '{bad}' is not a sensor size"):
            parse_sensor(bad)
    assert check_roi(Roi(86, 0, 260, 260), (346, 260), "rec") == Roi(86, 0, 260, 260)
    with pytest.raises(ValueError) as err:
        check_roi(Roi(87, 0, 260, 260), (346, 260), "rec.aedat4")
    assert str(err.value) == (
        "rec.aedat4: --roi 87,0,260,260 lies off its 346x260 sensor; give X + W <= 346 and "
        "Y + H <= 260"
    )
