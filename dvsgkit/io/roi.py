"""Any sensor -> the 128 x 128 DVS128 sensor the network knows: a region of interest (ROI)
mapped onto it by integer arithmetic, the same for files and live streams."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from dvsgkit.constants import SENSOR_HEIGHT, SENSOR_WIDTH
from dvsgkit.errors import InputError

_ROI = re.compile(r"^\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*[x×]\s*(\d+)\s*$")


@dataclass(frozen=True)
class Roi:
    """The rectangle x <= X < x + w, y <= Y < y + h of a sensor, in its pixels."""

    x: int
    y: int
    w: int
    h: int

    def __str__(self) -> str:
        return f"{self.x},{self.y},{self.w},{self.h}"


def parse_sensor(text: str, what: str = "--sensor") -> tuple[int, int]:
    """ "346x260" -> (width, height), both >= 1."""
    match = _SIZE.match(str(text))
    if match is None or min(int(match[1]), int(match[2])) < 1:
        raise InputError(f"{what} {text!r} is not a sensor size; write WIDTHxHEIGHT, e.g. 346x260")
    return int(match[1]), int(match[2])


def parse_roi(text: str) -> Roi:
    """ "X,Y,W,H" -> Roi (W, H >= 1); whether it fits a sensor is `check_roi`'s question."""
    match = _ROI.match(str(text))
    if match is None or min(int(match[3]), int(match[4])) < 1:
        raise InputError(
            f"--roi {text!r} is not a region; write X,Y,W,H in sensor pixels (W, H >= 1), "
            "e.g. 43,0,260,260"
        )
    return Roi(*(int(v) for v in match.groups()))


def default_roi(sensor: tuple[int, int]) -> Roi:
    """The largest square centred on a (width, height) sensor: the whole DVS128 sensor for
    128 x 128, (43, 0, 260, 260) for a 346 x 260 DAVIS346."""
    width, height = sensor
    side = min(width, height)
    return Roi((width - side) // 2, (height - side) // 2, side, side)


def check_roi(roi: Roi, sensor: tuple[int, int], where: object) -> Roi:
    """`roi`, refused (InputError naming `where`: the file or stream) unless it lies on the
    (width, height) sensor."""
    width, height = sensor
    if roi.x + roi.w > width or roi.y + roi.h > height:
        raise InputError(
            f"{where}: --roi {roi} lies off its {width}x{height} sensor; give X + W <= {width} "
            f"and Y + H <= {height}"
        )
    return roi


def to_dvs128(events: np.ndarray, roi: Roi) -> tuple[np.ndarray, np.ndarray]:
    """EVENT_DTYPE events of any sensor -> (the events inside `roi` on the 128 x 128 sensor,
    bool [n]: which events lay inside; the others are dropped). x' = (x - X) * 128 // W and
    y' = (y - Y) * 128 // H: every event inside lands on exactly one pixel, so counts add up;
    t and p are kept."""
    x = events["x"].astype(np.int64) - roi.x  # [n] int64: no wrap below 0 or above 65535
    y = events["y"].astype(np.int64) - roi.y
    inside = (x >= 0) & (x < roi.w) & (y >= 0) & (y < roi.h)
    if roi == Roi(0, 0, SENSOR_WIDTH, SENSOR_HEIGHT) and inside.all():
        return events, inside  # DVS128 on its own sensor: nothing to do
    out = events[inside]  # a copy
    out["x"] = x[inside] * SENSOR_WIDTH // roi.w
    out["y"] = y[inside] * SENSOR_HEIGHT // roi.h
    return out, inside


def in_roi(chunks: Iterable[np.ndarray], roi: Roi, counts: dict[str, int]) -> Iterator[np.ndarray]:
    """`to_dvs128` of each chunk (those left empty skipped), with counts["outside_roi"] the events
    dropped so far."""
    counts.setdefault("outside_roi", 0)
    for chunk in chunks:
        mapped, _ = to_dvs128(chunk, roi)
        counts["outside_roi"] += len(chunk) - len(mapped)
        if len(mapped):
            yield mapped
