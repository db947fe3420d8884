"""Building the event cache ROOT/events.h5: recordings cut into samples by worker processes and
written in order by this one; a current cache is left as it is."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dvsgkit.constants import BUILD_WORKERS, SENSOR_SIZE, SPLITS, TRIALS_FILES
from dvsgkit.errors import InputError, NotFound, StorageError, storage_errors
from dvsgkit.eventcache import write as event_writer
from dvsgkit.eventcache.layout import FIELDS, STORED_DTYPES, event_cache_path
from dvsgkit.eventcache.read import recorded_sources
from dvsgkit.eventcache.spool import Slot, Spools, make_slots, memfds
from dvsgkit.eventcache.write import CacheWriter, RecordingSamples
from dvsgkit.fs import atomic_file, probe_writable, remove, require_free, scratch_dir, sweep
from dvsgkit.fs.lock import DEFAULT_LOCK_TIMEOUT, build_lock, lock_of, to_stderr
from dvsgkit.pool import BuildSignals, WorkerPool
from dvsgkit.samples import (
    CutBuffers,
    Recording,
    cut_recording_columns,
    dataset_dir,
    list_all_recordings,
)

# HDF5 does not survive a full disk: once a write fails with ENOSPC, its chunk cache and metadata
# flushes fail again while objects are released, and closing the file can crash the process. So
# a build checks free space before it starts, from an estimate of what it will write, and before
# each write, from the exact worst case of that write.
# Free space: the cache takes ~5.4 (the real density) to ~6.4 (sparse samples) bytes per event
# (bench/preprocess.py), an .aedat file 8. Each write is checked against its worst case (11
# bytes per event, uncompressed) plus what HDF5 may hold unwritten (metadata: the writer keeps
# no chunk cache).
ESTIMATE_BYTES_PER_EVENT = 6.5
WORST_BYTES_PER_EVENT = sum(d.itemsize for d in STORED_DTYPES.values())
WRITE_MARGIN = 16 << 20
SPACE_FIX = "free some space, or use another --root (copy extract/DvsGesture there)"


def _sha256(path: Path) -> str:
    # sha256 rather than md5: CPUs with SHA extensions hash it ~2-3x faster.
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _stat(folder: Path, name: str) -> dict[str, Any]:
    st = (folder / name).stat()
    return {"name": name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _source_names(recordings: list[Recording]) -> list[str]:
    names = [TRIALS_FILES[s] for s in SPLITS]
    for rec in recordings:
        names += [rec.aedat.name, rec.labels.name]
    return names


def _up_to_date(path: Path, folder: Path, recordings: list[Recording]) -> bool:
    """True when `path` is a complete cache of this layout, unchanged since its build (its
    seals match: 4 bytes read per chunk), whose recorded sources have the names, sizes and
    modification times of the files on disk now. (Hashing ~5 GB on every run would take
    seconds; the sha256s are recorded for provenance.)"""
    recorded = recorded_sources(path)
    if recorded is None:
        return False
    now = [_stat(folder, name) for name in _source_names(recordings)]
    return [{k: s.get(k) for k in ("name", "bytes", "mtime_ns")} for s in recorded] == now


_local = threading.local()  # per process (and thread): buffers and spool maps kept between jobs


def _reused() -> tuple[CutBuffers, Spools]:
    if not hasattr(_local, "buffers"):
        _local.buffers, _local.spools = CutBuffers(), Spools(STORED_DTYPES, writable=True)
    return _local.buffers, _local.spools


def _release_reused() -> None:
    for name in ("buffers", "spools"):
        _local.__dict__.pop(name, None)


def _alloc(n: int) -> dict[str, np.ndarray]:
    return {name: np.empty(n, STORED_DTYPES[name]) for name in FIELDS}


def _process(recording: Recording, spool: Slot | None = None) -> RecordingSamples:
    """Cut one recording; return its samples' columns (or, in a worker, the slot holding them:
    `spool`) and bookkeeping. Hashes the .aedat while reading it."""
    buffers, spools = _reused()
    alloc = _alloc if spool is None else functools.partial(spools.columns, spool)
    digest = hashlib.sha256()
    windows, lengths, columns = cut_recording_columns(
        recording, alloc=alloc, sensor=SENSOR_SIZE, digest=digest, buffers=buffers
    )
    return RecordingSamples(
        recording=recording,
        windows=windows,
        lengths=lengths,
        columns=columns if spool is None else None,
        slot=spool,
        sha256={
            recording.aedat.name: digest.hexdigest(),
            recording.labels.name: _sha256(recording.labels),
        },
    )


def _results(
    recordings: list[Recording],
    pool: WorkerPool | None,
    ahead: int,
    slots: list[Slot],
    signals: BuildSignals,
) -> Iterator[RecordingSamples]:
    """`_process` over the recordings, in order, with at most `ahead` jobs submitted and not yet
    consumed, so that memory stays bounded while the parent writes. A worker's exception is
    raised here. Workers leave their columns in `slots` (ahead + 1 of them), mapped here."""
    if pool is None:
        for rec in recordings:
            signals.check()
            yield _process(rec)
        return
    spools = Spools(STORED_DTYPES, writable=False)
    # ahead + 1 slots in turn: job k + ahead reuses the slot of job k - 1, which has been
    # consumed by the time job k + ahead is handed out.
    jobs = ((rec, slots[k % (ahead + 1)]) for k, rec in enumerate(recordings))
    for result in pool.map(jobs, ahead, signals.check):
        result.columns = spools.columns(result.slot, result.events)
        yield result
        result.columns = None
    spools.close()


def _space_needed(recordings: list[Recording], spool_files: bool, ahead: int) -> int:
    """Bytes a build writes, estimated from the .aedat sizes (8 bytes per event): the cache, and
    the spool files when the hand-over cannot use memory files (each of ahead + 1 slots grows
    to the largest recording's samples, with a quarter more room)."""
    sizes = [rec.aedat.stat().st_size for rec in recordings]
    need = int(sum(sizes) / 8 * ESTIMATE_BYTES_PER_EVENT) + WRITE_MARGIN
    if spool_files:
        need += int((ahead + 1) * max(sizes) / 8 * WORST_BYTES_PER_EVENT * 1.25)
    return need


def _discard(path: Path, reason: BaseException | None = None) -> None:
    """Remove the stale cache `path` if there is one. When that fails (a read-only mount) and
    `reason` is the error the caller will raise, the failure is noted on it instead."""
    try:
        with storage_errors(path, "remove the stale", SPACE_FIX):
            remove(path)
    except StorageError as exc:
        if reason is None:
            raise
        reason.add_note(str(exc))


def build_event_cache(
    root: Path,
    *,
    workers: int = BUILD_WORKERS,
    progress: bool = True,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> Path:
    """Cut every recording of ROOT/extract/DvsGesture/ into labelled samples and write
    ROOT/events.h5 (docs/formats.md); return its path.

    Worker processes parse recordings while this process writes. The file is written under a
    temporary name (`dvsgkit.fs.atomic_file`), so an error (named file and byte offset or CSV
    row), Ctrl-C or a kill never leaves an events.h5 that looks complete. A complete cache whose
    sources are unchanged (names, sizes, modification times) is returned as it is. Two builds of
    one root are serialised by ROOT/.events.h5.lock: the second waits (saying for whom, on
    stderr; LockTimeout after `lock_timeout` seconds) and then finds the cache up to date.
    """
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    root = Path(root)
    folder = dataset_dir(root)
    if not folder.is_dir():
        raise NotFound(
            f"{folder} not found; run 'dvsgkit download' (the real dataset) or 'dvsgkit synth' "
            "(a synthetic one) first"
        )
    out = event_cache_path(root)
    try:
        recordings = list_all_recordings(folder)  # trials lists checked before any work
    except (OSError, ValueError) as exc:
        _discard(out, exc)  # its sources are broken: it cannot be up to date
        raise
    if out.exists() and _up_to_date(out, folder, recordings):
        return out
    probe_writable(out, SPACE_FIX)  # a read-only mount: one line, nothing to undo
    with (
        storage_errors(lock_of(out), "write", SPACE_FIX),
        build_lock(lock_of(out), timeout=lock_timeout, what=str(out), notify=to_stderr),
    ):
        # Another build may have finished while this one waited for the lock.
        if out.exists() and _up_to_date(out, folder, recordings):
            return out
        _discard(out)  # stale: never leave a cache disagreeing with its sources
        sweep(out.parent, out.name)  # what killed builds left: partial files, spool folders
        _build(out, recordings, folder, workers, progress)
    return out


def _build(
    out: Path, recordings: list[Recording], folder: Path, workers: int, progress: bool
) -> None:
    """Write `out` from `recordings`, under a temporary name until it is complete."""
    ahead = workers + 1  # jobs submitted and not yet written
    pool_size = min(workers, len(recordings))
    pooled = pool_size > 1
    need = _space_needed(recordings, pooled and not memfds(), ahead)
    require_free(out.parent, need, out, SPACE_FIX)
    sources = {name: _stat(folder, name) for name in _source_names(recordings)}
    for name in (TRIALS_FILES[s] for s in SPLITS):
        sources[name]["sha256"] = _sha256(folder / name)
    with (
        BuildSignals() as signals,
        scratch_dir(out) as spool,  # the hand-over files, where there are no memfds
        make_slots(ahead + 1 if pooled else 0, spool) as slots,  # before the workers fork
        storage_errors(out, "write", SPACE_FIX),
        atomic_file(out) as partial,
        # Started before any other thread of ours (the progress bar's monitor).
        WorkerPool(_process, pool_size) if pooled else contextlib.nullcontext() as pool,
    ):
        try:
            results = _results(recordings, pool, ahead, slots, signals)
            _write(partial, out, results, len(recordings), sources, progress)
            signals.check()
        finally:
            _release_reused()


def _write(
    partial: Path,
    out: Path,
    results: Iterator[RecordingSamples],
    total: int,
    sources: dict[str, dict[str, Any]],
    progress: bool,
) -> None:
    """Write every recording's samples, as `results` yields them, to a complete cache at
    `partial` (the temporary name of `out`), recording the sha256 of each source in `sources`."""
    from tqdm import tqdm

    with (
        CacheWriter(partial) as writer,
        tqdm(total=total, unit="rec", disable=not progress, dynamic_ncols=True) as bar,
    ):
        events = 0
        for result in results:
            # HDF5 does not survive a failed write (see above): refuse it first.
            worst = (result.events + event_writer.CHUNK_EVENTS) * WORST_BYTES_PER_EVENT
            require_free(out.parent, worst + WRITE_MARGIN, out, SPACE_FIX)
            writer.add(result)
            for name, sha in result.sha256.items():
                sources[name]["sha256"] = sha
            events += result.events
            bar.set_postfix_str(f"{result.recording.trial}, {events:,} events", refresh=False)
            bar.update()
        writer.finish(list(sources.values()))
