"""Read the DvsGesture labels CSVs and trials lists (CRLF or LF, blank lines skipped)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dvsgkit.constants import NUM_CLASSES
from dvsgkit.errors import InputError, NotFound
from dvsgkit.fs import write_bytes

# One labelled window per row: dvsgkit label (class - 1), [start, end) in microseconds, and the
# 0-based data row of the CSV it came from.
WINDOW_DTYPE = np.dtype([("label", "u1"), ("start", "<i8"), ("end", "<i8"), ("row", "<i4")])
MAX_TIME_US = int(np.iinfo(np.int64).max)  # window times are int64 microseconds
LABELS_HEADER = "class,startTime_usec,endTime_usec"


def labels_path_for(aedat: str | os.PathLike[str]) -> Path:
    """`user01_natural.aedat` -> `user01_natural_labels.csv` beside it."""
    aedat = Path(aedat)
    return aedat.with_name(f"{aedat.stem}_labels.csv")


def _text(path: Path, what: str) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFound(
            f"{what} {path} not found; the DvsGesture folder is incomplete (extract the archive "
            "again with 'dvsgkit download', or write a synthetic set with 'dvsgkit synth')"
        ) from None
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: byte {exc.start} is not ASCII; expected a text file") from None


def read_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse a `*_labels.csv` file into WINDOW_DTYPE [rows], in file order.

    The first line is the header `class,startTime_usec,endTime_usec`; blank lines are skipped.
    Classes must be 1..11 and 0 <= start <= end; rows may come in any order, repeat a class and
    overlap. Raises InputError naming the file, the line and the data row on bad input.
    """
    path = Path(path)
    lines = _text(path, "labels file").splitlines()  # CRLF and LF alike
    if not lines or lines[0].strip().replace(" ", "") != LABELS_HEADER:
        first = lines[0] if lines else ""
        raise InputError(f"{path}, line 1: expected the header {LABELS_HEADER!r}, got {first!r}")
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        row = len(rows)
        where = f"{path}, line {lineno} (data row {row})"
        fields = line.split(",")
        try:
            cls, start, end = (int(f) for f in fields)
        except ValueError:
            msg = f"{where}: expected three integers class,start,end, got {line!r}"
            raise InputError(msg) from None
        if not 1 <= cls <= NUM_CLASSES:
            raise InputError(f"{where}: class {cls} is outside 1..{NUM_CLASSES}")
        if start < 0 or start > end:
            raise InputError(f"{where}: window start {start} must satisfy 0 <= start <= end {end}")
        if end > MAX_TIME_US:
            raise InputError(
                f"{where}: window end {end} does not fit int64 microseconds (at most "
                f"{MAX_TIME_US}); fix the row"
            )
        rows.append((cls - 1, start, end, row))
    if not rows:
        raise InputError(f"{path}: no labelled rows after the header")
    return np.array(rows, dtype=WINDOW_DTYPE)


def write_labels(path: str | os.PathLike[str], windows: np.ndarray, *, crlf: bool = True) -> Path:
    """Write WINDOW_DTYPE windows as a labels CSV (class = label + 1), CRLF like the real files.
    Written under a temporary name and renamed (`dvsgkit.fs`), so an interrupted write
    never leaves a partial file under the real name."""
    path = Path(path)
    eol = "\r\n" if crlf else "\n"
    body = [LABELS_HEADER] + [
        f"{int(w['label']) + 1},{int(w['start'])},{int(w['end'])}" for w in windows
    ]
    return write_bytes(path, (eol.join(body) + eol).encode("ascii"))


def recording_key(folder: str | os.PathLike[str], name: str) -> str:
    """What a trials-list name in `folder` refers to: the real path of FOLDER/NAME, so that
    `NAME`, `./NAME`, `sub/../NAME` and a link to NAME are one recording."""
    return os.path.realpath(Path(folder) / name)


def read_trials_numbered(path: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """(1-based line number, recording name) of a `trials_to_{train,test}.txt` list, in order
    (blanks skipped). A recording listed twice, under any spelling (`recording_key`), would
    duplicate its samples: InputError naming the file, both lines and both names."""
    path = Path(path)
    lines = [line.strip() for line in _text(path, "trials list").splitlines()]
    numbered = [(lineno, name) for lineno, name in enumerate(lines, start=1) if name]
    if not numbered:
        raise InputError(f"{path}: the trials list names no recording")
    first: dict[str, tuple[int, str]] = {}
    for lineno, name in numbered:
        key = recording_key(path.parent, name)
        if key in first:
            line, other = first[key]
            spelled = "" if name == other else f" as {other!r}; both name {key}"
            raise InputError(
                f"{path}, line {lineno}: {name!r} is listed again (first on line {line}"
                f"{spelled}); a recording may be listed once: remove the repeated line"
            )
        first[key] = (lineno, name)
    return numbered


def read_trials(path: str | os.PathLike[str]) -> list[str]:
    """The recording names of a trials list, in order (see `read_trials_numbered`)."""
    return [name for _, name in read_trials_numbered(path)]
