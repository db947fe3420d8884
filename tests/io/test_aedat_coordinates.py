"""The reader's coordinate mask: x and y have 15 bits (0x7FFF, as libcaer and SpikingJelly), so
a corrupt word with x or y >= 8192 decodes to that value and is refused as off the sensor, by
the events build and by predict's reader, naming the file and the byte. With the dataset
README's 0x1FFF, x = 8195 would become 3 and land on the sensor unnoticed."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from dvsgkit.constants import EVENT_DTYPE
from dvsgkit.eventcache.build import build_event_cache
from dvsgkit.io.aedat import (
    AedatError,
    first_off_sensor,
    max_xy,
    read_events,
    read_header,
    unpack_data,
    xy_bound,
)
from dvsgkit.io.aedat_writer import packet_header
from dvsgkit.io.labels import read_labels
from dvsgkit.io.recordings import RecordingError, iter_recording
from dvsgkit.samples import dataset_dir

HEADER = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"
WIDE = [0, 127, 8191, 8192, 8195, 16383, 16384, 24576, 32767]  # 15-bit values around 2**13


def words_of(x: np.ndarray, y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Polarity data words built by hand from the layout (valid bit set), not by the writer."""
    x, y, p = (np.asarray(v, dtype=np.uint32) for v in (x, y, p))
    return (x << 17) | (y << 2) | (p << 1) | np.uint32(1)


def write_raw(path: Path, header: bytes, events: np.ndarray) -> Path:
    """One polarity packet holding `events`, whatever their x and y (up to 15 bits)."""
    words = np.empty((len(events), 2), dtype="<u4")
    words[:, 0] = words_of(events["x"], events["y"], events["p"])
    words[:, 1] = events["t"]
    path.write_bytes(header + packet_header(1, 8, len(events)) + words.tobytes())
    return path


def test_words_with_x_and_y_from_8192_to_32767_decode_to_those_values(tmp_path: Path) -> None:
    pairs = np.array(list(itertools.product(WIDE, WIDE)))
    ev = np.zeros(len(pairs), dtype=EVENT_DTYPE)
    ev["t"] = np.arange(len(pairs))
    ev["x"], ev["y"] = pairs[:, 0], pairs[:, 1]
    ev["p"] = np.arange(len(pairs)) % 2
    x, y, p = unpack_data(words_of(ev["x"], ev["y"], ev["p"]))
    np.testing.assert_array_equal(x, ev["x"])
    np.testing.assert_array_equal(y, ev["y"])
    np.testing.assert_array_equal(p, ev["p"])
    np.testing.assert_array_equal(read_events(write_raw(tmp_path / "w.aedat", HEADER, ev)), ev)
    for vx, vy in [(8195, 0), (0, 8195), (32767, 16384)]:
        word = words_of([vx, 0], [vy, 0], [1, 0])
        assert max_xy(word) == (vx, vy)
        bx, by = xy_bound(word)  # an upper bound that keeps all 15 bits
        assert bx >= vx and by >= vy


def _patched_recording(root: Path, field: str, value: int) -> tuple[Path, int, int]:
    """Rewrite a synthetic recording with one event (inside its first labelled window) given
    `field` = `value`; return (path, that event's index, the byte offset of its data word)."""
    path = dataset_dir(root) / "user01_fluorescent.aedat"
    assert first_off_sensor(path, (128, 128)) is None
    ev = read_events(path)
    start = int(read_labels(path.with_name(path.stem + "_labels.csv"))["start"].min())
    k = int(np.searchsorted(ev["t"], start)) + 5
    ev[field][k] = value
    header = path.read_bytes()[: read_header(path).data_offset]
    write_raw(path, header, ev)
    return path, k, len(header) + 28 + 8 * k


@pytest.fixture
def root(tiny_root: Path, copy_root, tmp_path: Path) -> Path:
    return copy_root(tiny_root, tmp_path, with_=("recordings",))


@pytest.mark.parametrize("field", ["x", "y"])
def test_the_events_build_refuses_a_word_off_the_sensor(root: Path, field: str) -> None:
    path, k, at = _patched_recording(root, field, 8195)
    found = first_off_sensor(path, (128, 128))
    assert found is not None and found[:2] == (k, at) and found["xy".index(field) + 2] == 8195
    with pytest.raises(AedatError) as info:
        build_event_cache(root, workers=1, progress=False)
    message = str(info.value)
    assert str(path) in message and f"{field} up to 8195" in message
    assert f"event {k} at byte {at}" in message
    assert not (root / "events.h5").exists()


@pytest.mark.parametrize("field", ["x", "y"])
def test_predicts_reader_refuses_a_word_off_the_sensor(root: Path, field: str) -> None:
    path, k, at = _patched_recording(root, field, 8195)
    with pytest.raises(RecordingError) as info:
        for _ in iter_recording(path):
            pass
    message = str(info.value)
    assert message.startswith(f"{path}: event {k} at byte {at} (")
    assert f"{field} 8195" in message and "off the 128x128 DVS128 sensor" in message
