"""A recording to classify or look at, streamed in chunks: AEDAT 3.1 or an event array file of
the DVS128, or a camera file of any sensor (AEDAT 4, EVT, .dat, .es: `dvsgkit.io.cameras`)."""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dvsgkit.constants import EVENT_DTYPE, SENSOR_HEIGHT, SENSOR_WIDTH
from dvsgkit.errors import InputError, NotFound
from dvsgkit.io.aedat import DEFAULT_CHUNK_EVENTS, first_off_sensor, iter_events
from dvsgkit.io.cameras import CAMERA_SUFFIXES, faery_module, is_camera_file

AEDAT_SUFFIXES = (".aedat",)
NPZ_SUFFIXES = (".npz",)
H5_SUFFIXES = (".h5", ".hdf5")
SUFFIXES = AEDAT_SUFFIXES + NPZ_SUFFIXES + H5_SUFFIXES + CAMERA_SUFFIXES
DVS128 = (SENSOR_WIDTH, SENSOR_HEIGHT)  # (width, height) of AEDAT 3.1, .npz and .h5 recordings
FIELDS = ("t", "x", "y", "p")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|ms|us|µs)?\s*$")
_UNIT_US = {"s": 1_000_000, "ms": 1_000, "us": 1, "µs": 1, None: 1_000_000}


class RecordingError(InputError):
    """A recording that cannot be read or classified; the message names the file."""


def parse_duration(text: str | float, what: str = "duration", *, allow_zero: bool = False) -> int:
    """ "1.5s", "250ms", "250000us" or a bare number of seconds -> integer microseconds (> 0, or
    >= 0 with allow_zero)."""
    match = _DURATION.match(str(text))
    if match is None:
        raise InputError(f"{what} {text!r} is not a duration; write e.g. 1.5s, 250ms or 250000us")
    micros = round(float(match.group(1)) * _UNIT_US[match.group(2)])
    if micros < 0 or (micros == 0 and not allow_zero):
        raise InputError(f"{what} {text!r} must be longer than 0 µs")
    return micros


def check_recording(path: Path) -> bool:
    """Whether `path` is a camera file (`is_camera_file`); RecordingError for a file type
    dvsgkit cannot read, NotFound for no file, and InputError for a camera file without faery
    installed."""
    if path.suffix.lower() not in SUFFIXES:
        raise RecordingError(
            f"{path}: unknown recording type {path.suffix!r}; give an AEDAT 3.1 file (.aedat), "
            f"an event array file with t, x, y, p ({', '.join(NPZ_SUFFIXES + H5_SUFFIXES)}) or "
            f"a camera file ({', '.join(CAMERA_SUFFIXES)})"
        )
    if not path.is_file():
        raise NotFound(f"recording {path} not found")
    camera = is_camera_file(path)
    if camera:
        faery_module(path)
    return camera


def recording_sensor(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of a recording's sensor: 128 x 128 for AEDAT 3.1, .npz and .h5 (DVS128
    recordings), what the header declares for a camera file."""
    path = Path(path)
    return _camera_sensor(_camera_stream(path), path) if check_recording(path) else DVS128


def iter_recording(
    path: str | os.PathLike[str],
    *,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    time_order: bool = False,
) -> Iterator[np.ndarray]:
    """The events of a recording in recorded order, as EVENT_DTYPE chunks of at most about
    `chunk_events` events, checked against its sensor (`recording_sensor`) and polarity 0/1.

    `.aedat` (AEDAT 3.1), `.h5`/`.hdf5` (datasets t, x, y, p at the file's root) and camera
    files are read a chunk at a time, so memory stays bounded whatever the file size; `.npz`
    (arrays t, x, y, p, as `np.savez` writes them) is loaded whole. Timestamps are
    microseconds. Raises RecordingError (AedatError for an .aedat's bytes) naming the file and
    the byte offset or event index on bad input, and when the file holds no event. With
    `time_order`, also at the first event earlier than the one before it (a clock reset, files
    joined, shuffled events): readers that stream by time would otherwise lose such events
    without a word."""
    path = Path(path)
    camera, suffix, sensor = check_recording(path), path.suffix.lower(), DVS128
    if camera:
        stream = _camera_stream(path)  # one open: its header's size, then its events
        sensor, chunks = _camera_sensor(stream, path), _iter_camera(stream, path, chunk_events)
    elif suffix in AEDAT_SUFFIXES:
        chunks = iter_events(path, chunk_events=chunk_events)
    else:
        chunks = (_iter_npz if suffix in NPZ_SUFFIXES else iter_h5_events)(path, chunk_events)
    seen, last_t = 0, -1
    for chunk in chunks:  # AedatError and the array readers' errors name the file already
        _check_chunk(path, chunk, seen, sensor, camera)
        if time_order:
            last_t = _check_time_order(path, chunk, seen, last_t)
        seen += len(chunk)
        if len(chunk):
            yield chunk
    if seen == 0:
        raise RecordingError(f"{path}: the recording holds no events")


def _check_chunk(
    path: Path, chunk: np.ndarray, first: int, sensor: tuple[int, int], camera: bool
) -> None:
    """Raise RecordingError when an event lies off the (width, height) sensor or has a polarity
    other than 0/1, naming the first such event's index in the file (`camera`: a camera file's,
    whose header declares the sensor)."""
    if not len(chunk):
        return
    width, height = sensor
    bad = (chunk["x"] >= width) | (chunk["y"] >= height) | (chunk["p"] > 1)
    if bad.any():
        k = int(np.argmax(bad))
        ev = chunk[k]
        found = None
        if path.suffix.lower() in AEDAT_SUFFIXES and not camera:  # name the byte too
            found = first_off_sensor(path, (SENSOR_HEIGHT, SENSOR_WIDTH))
        at = f" at byte {found[1]}" if found is not None and found[0] == first + k else ""
        if not camera:
            what = f"the {width}x{height} DVS128 sensor"
            fix = ("AEDAT 3.1, .npz and .h5 recordings are DVS128 ones; give other sensors' "
                   "recordings as AEDAT 4 or EVT files, which state their sensor size")  # fmt: skip
        else:
            what, fix = f"the {width}x{height} sensor its header declares", "the file is damaged"
        raise RecordingError(
            f"{path}: event {first + k}{at} (x {ev['x']}, y {ev['y']}, p {ev['p']}) lies off "
            f"{what} or has a polarity other than 0/1; {fix}"
        )


def _check_time_order(path: Path, chunk: np.ndarray, first: int, last_t: int) -> int:
    """Raise RecordingError naming the first event (its index in the file) that is earlier than
    the event before it (`last_t`: the previous chunk's last time); return this chunk's last."""
    if not len(chunk):
        return last_t
    t = chunk["t"]
    if t[0] >= last_t:
        back = t[1:] < t[:-1]  # [n - 1]: event k + 1 is earlier than event k
        if not back.any():
            return int(t[-1])
        k = int(np.argmax(back)) + 1
    else:
        k = 0
    before = last_t if k == 0 else int(t[k - 1])
    raise RecordingError(
        f"{path}: event {first + k} (t {int(t[k])} µs) is earlier than the event before it "
        f"(t {before} µs): its timestamps go back (a clock reset, joined files or shuffled "
        "events); give the events in time order (sort them by t, or cut the file where its "
        "clock resets)"
    )


def to_events(path: Path, columns: dict[str, np.ndarray], where: str = "") -> np.ndarray:
    """Columns t, x, y, p of any integer (or bool) dtype -> EVENT_DTYPE, refusing values that
    the conversion would change (negative or too large), naming the file."""
    n = len(columns["t"])
    out = np.empty(n, dtype=EVENT_DTYPE)
    for name in FIELDS:
        values = np.asarray(columns[name])
        if values.dtype.kind not in "iub":
            raise RecordingError(
                f"{path}{where}: field {name!r} has dtype {values.dtype}; t, x, y, p must be "
                "integers (t in microseconds)"
            )
        if n and values.dtype.kind == "i" and int(values.min()) < 0:
            raise RecordingError(f"{path}{where}: field {name!r} holds negative values")
        if n and int(values.max()) > np.iinfo(EVENT_DTYPE[name]).max:
            raise RecordingError(f"{path}{where}: field {name!r} holds values too large")
        out[name] = values
    return out


def _iter_npz(path: Path, chunk_events: int) -> Iterator[np.ndarray]:
    # np.load takes anything that is not a zip archive for a .npy array or a pickle: ask first.
    if not zipfile.is_zipfile(path):
        raise RecordingError(
            f"{path}: not an .npz archive (a zip file of arrays); write the events with "
            "np.savez(path, t=..., x=..., y=..., p=...)"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [name for name in FIELDS if name not in data.files]
            if missing:
                raise RecordingError(
                    f"{path}: no array(s) {', '.join(missing)}; an event file needs t, x, y, p "
                    f"(found {', '.join(data.files) or 'none'})"
                )
            columns = {name: _npz_array(path, data, name) for name in FIELDS}
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise RecordingError(f"{path}: not a readable .npz file ({exc})") from exc
    lengths = {name: columns[name].shape for name in FIELDS}
    if len({*lengths.values()}) != 1 or len(lengths["t"]) != 1:
        raise RecordingError(f"{path}: t, x, y, p must be 1-D arrays of one length, got {lengths}")
    events = to_events(path, columns)
    for start in range(0, len(events), chunk_events):
        yield events[start : start + chunk_events]


def _npz_array(path: Path, data: np.lib.npyio.NpzFile, name: str) -> np.ndarray:
    """Array `name` of an open .npz; an array of Python objects (stored as a pickle, which can
    run code when loaded) is refused, naming the file and the array."""
    try:
        return data[name]
    except ValueError as exc:  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
        if "allow_pickle" not in str(exc):
            raise
        raise RecordingError(
            f"{path}: array {name!r} holds Python objects, not numbers; t, x, y, p must be "
            "integer arrays (t in microseconds)"
        ) from None


def iter_h5_events(path: Path, chunk_events: int) -> Iterator[np.ndarray]:
    """EVENT_DTYPE chunks of the root datasets t, x, y, p of an HDF5 file, in stored order."""
    import h5py  # only for .h5 recordings: `dvsgkit download` needs no h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:  # h5py's "unable to open / truncated file"
        raise RecordingError(f"{path}: not a readable HDF5 file ({exc})") from exc
    with f:
        missing = [name for name in FIELDS if not isinstance(f.get(name), h5py.Dataset)]
        if missing:
            raise RecordingError(
                f"{path}: no dataset(s) {', '.join(missing)} at the file's root; an event file "
                f"needs 1-D datasets t, x, y, p (found {', '.join(sorted(f)) or 'none'})"
            )
        shapes = {name: f[name].shape for name in FIELDS}
        if len({*shapes.values()}) != 1 or len(shapes["t"]) != 1:
            raise RecordingError(
                f"{path}: t, x, y, p must be 1-D datasets of one length, got {shapes}"
            )
        n = shapes["t"][0]
        for start in range(0, n, chunk_events):
            stop = min(n, start + chunk_events)
            try:
                columns = {name: f[name][start:stop] for name in FIELDS}
            except OSError as exc:  # a damaged chunk
                raise RecordingError(
                    f"{path}: events {start}..{stop - 1} cannot be read ({exc})"
                ) from exc
            yield to_events(path, columns, f", events {start}..{stop - 1}")


def _camera_stream(path: Path) -> Any:
    """faery's stream of a camera file; its size (0, 0) when the header states none."""
    faery = faery_module(path)
    try:
        return faery.events_stream_from_file(path, dimensions_fallback=(0, 0))
    except Exception as exc:  # faery raises Exception or RuntimeError for every bad file
        raise RecordingError(f"{path}: not a readable event file ({exc})") from exc


def _camera_sensor(stream: Any, path: Path) -> tuple[int, int]:
    """(width, height) that the header of `path` (its faery `stream`) states."""
    width, height = stream.dimensions()
    if width < 1 or height < 1:
        raise RecordingError(
            f"{path}: its header states no sensor size (EVT and .dat files carry it as "
            "'% geometry WxH' or '% Width' and '% Height'); record or convert it with the "
            "camera's own software, which writes it"
        )
    return int(width), int(height)


def _iter_camera(stream: Any, path: Path, chunk_events: int) -> Iterator[np.ndarray]:
    """The events of a camera file (its faery `stream`) as EVENT_DTYPE chunks, polarity 1 for
    ON: faery's packets (DV writes one every few ms) joined up to about `chunk_events` events,
    so that a reader by time does little work per chunk."""
    packets = iter(stream)
    held: list[np.ndarray] = []
    size, seen = 0, 0
    while True:
        try:
            packet = next(packets, None)
        except Exception as exc:  # faery: a truncated or damaged file
            raise RecordingError(f"{path}: damaged after event {seen + size} ({exc})") from exc
        if packet is not None and len(packet):
            held.append(packet)
            size += len(packet)
        if held and (packet is None or size >= chunk_events):
            joined = np.concatenate(held)
            columns = {"t": joined["t"], "x": joined["x"], "y": joined["y"], "p": joined["on"]}
            yield to_events(path, columns, f", events {seen}..{seen + size - 1}")
            held, seen, size = [], seen + size, 0
        if packet is None:
            return
