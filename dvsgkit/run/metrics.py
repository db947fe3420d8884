"""RUN_DIR/metrics.jsonl: one JSON record per epoch, appended by training, read by plots and
resumes, cut back to a checkpoint's epoch when a run continues from it."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dvsgkit.errors import InputError, NotFound
from dvsgkit.fs import write_text
from dvsgkit.run import METRICS


def read_metrics(run_dir: Path, required: Sequence[str] = ("epoch",)) -> list[dict[str, Any]]:
    """A run's per-epoch records, in the order written, each a JSON object holding a number
    for every key in `required` ("epoch" an integer >= 0). Text after the last newline is a
    line whose write was cut short (a crash mid-append): it is ignored, not an error. Any other
    bad line is a ValueError naming the file, the line and what is wrong."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise NotFound(f"{path} not found; is {run_dir} a dvsgkit run directory?")
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]  # every record is written with its newline
    records = []
    for number, line in enumerate(complete.split(b"\n")[:-1], 1):
        if line.strip():
            records.append(_check_record(line, required, f"{path}:{number}"))
    return records


def _check_record(line: bytes, required: Sequence[str], where: str) -> dict[str, Any]:
    fix = "fix or delete that line"
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{where} is not JSON ({exc}); {fix}") from exc
    if not isinstance(record, dict):
        raise InputError(f"{where} is a JSON {type(record).__name__}, not a record; {fix}")
    for key in required:
        if key not in record:
            raise InputError(f"{where} has no {key!r}; {fix}")
        value = record[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise InputError(f"{where}: {key!r} is {value!r}, not a number; {fix}")
    epoch = record.get("epoch", 0)
    if "epoch" in required and not (isinstance(epoch, int) and epoch >= 0):
        raise InputError(f"{where}: 'epoch' is {epoch!r}, not an integer >= 0; {fix}")
    return record


def append_line(path: Path, line: str) -> None:
    """Append one line; on a failed write (a full disk) cut the file back to where it was, so no
    torn line is left behind."""
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
    except OSError as exc:
        if path.exists() and path.stat().st_size > size:
            os.truncate(path, size)
        exc.filename = exc.filename or str(path)
        raise


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one epoch's record as a line; a failed write leaves no torn line."""
    append_line(Path(run_dir) / METRICS, json.dumps(record) + "\n")


def truncate_metrics(run_dir: Path, last_epoch: int) -> None:
    """Drop records after the checkpoint's epoch (a crash between the metrics line and the
    checkpoint, or a resume from checkpoint_max) and a line cut short, so metrics.jsonl stays
    one line per epoch."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return
    keep = [m for m in read_metrics(run_dir) if m["epoch"] <= last_epoch]
    write_text(path, "".join(json.dumps(m) + "\n" for m in keep))
