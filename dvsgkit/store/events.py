"""The event cache ROOT/events.h5: every labelled sample of both splits, built in parallel."""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from dvsgkit import __version__
from dvsgkit.constants import (
    CLASS_NAMES,
    EVENT_DTYPE,
    SENSOR_SIZE,
    SPLITS,
    TRIALS_FILES,
)
from dvsgkit.samples import (
    CutBuffers,
    Recording,
    cut_recording_columns,
    dataset_dir,
    list_all_recordings,
)
from dvsgkit.store import integrity, space
from dvsgkit.store.signals import BuildSignals
from dvsgkit.store.spool import Slot, Spools, make_slots, memfds
from dvsgkit.store.workers import die_with_parent

LAYOUT = "dvsgkit.events"
# 3: Fletcher-32 on every dataset, seals, `trial` fixed-length ASCII (2: x, y as uint8, sources
# with sha256; 1: x, y uint16, md5)
LAYOUT_VERSION = 3
CACHE_NAME = "events.h5"
FIELDS = ("t", "x", "y", "p")
# What the cache stores: x and y fit uint8 on the 128 x 128 sensor (the build refuses events off
# it), which halves them and spares a filter; EventCache.sample returns EVENT_DTYPE all the same.
STORED_DTYPES = {"t": np.dtype(np.int64), "x": np.dtype(np.uint8), "y": np.dtype(np.uint8),
                 "p": np.dtype(np.uint8)}  # fmt: skip
# 64 Ki events per chunk: a 360 k-event sample spans ~6 chunks; scale-offset packs a small chunk
# tighter (its timestamps span less) at the same speed (layout 1, all columns filtered: 4.6
# bytes/event here, 5.1 at 256 Ki; layout 2: 5.4, of which t ~2.4).
CHUNK_EVENTS = 1 << 16
# Timestamps go through HDF5's built-in scale-offset filter, lossless for integers (minimum bits
# per chunk): every HDF5 reader decodes it without a plugin, and it writes ~3x faster than
# shuffle + LZF and ~5x faster than shuffle + gzip level 1. x, y, p (one byte each) are stored
# as they are: the filter would halve them but cost more time than the rest of the build.
SCALE_OFFSET = {"t": True, "x": False, "y": False, "p": False}
# Every dataset also gets HDF5's built-in Fletcher-32 filter (last in the pipeline, over the
# stored bytes): any HDF5 reader then fails the read of a damaged chunk instead of returning it.
FLETCHER32 = True
READ_CACHE_BYTES = 64 << 20  # chunk cache per dataset when reading samples
# Free space: the cache takes ~5.4 (the real density) to ~6.4 (sparse samples) bytes per event
# (bench/preprocess.py), an .aedat file 8. Each write is checked against its worst case (11
# bytes per event, uncompressed) plus what HDF5 may hold unwritten (metadata: the writer keeps
# no chunk cache).
ESTIMATE_BYTES_PER_EVENT = 6.5
WORST_BYTES_PER_EVENT = sum(d.itemsize for d in STORED_DTYPES.values())
WRITE_MARGIN = 16 << 20
SPACE_FIX = "free some space, or use another --root (copy extract/DvsGesture there)"


def event_cache_path(root: str | os.PathLike[str]) -> Path:
    """ROOT/events.h5."""
    return Path(root) / CACHE_NAME


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
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("layout") != LAYOUT or f.attrs.get("layout_version") != LAYOUT_VERSION:
                return False
            recorded = json.loads(f.attrs["sources"])
            if not all(s in f for s in SPLITS) or integrity.changed_datasets(f, SPLITS):
                return False
    except (OSError, KeyError, ValueError):
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


def _process(recording: Recording, spool: Slot | None = None) -> dict[str, Any]:
    """Cut one recording; return its samples' columns (or, in a worker, the slot holding them:
    `spool`) and bookkeeping. Hashes the .aedat while reading it."""
    buffers, spools = _reused()
    alloc = _alloc if spool is None else functools.partial(spools.columns, spool)
    digest = hashlib.sha256()
    windows, lengths, columns = cut_recording_columns(
        recording, alloc=alloc, sensor=SENSOR_SIZE, digest=digest, buffers=buffers
    )
    return {
        "recording": recording,
        "windows": windows,
        "lengths": lengths,
        "columns": columns if spool is None else None,
        "spool": spool,
        "sha256": {
            recording.aedat.name: digest.hexdigest(),
            recording.labels.name: _sha256(recording.labels),
        },
    }


def _init_worker() -> None:
    # Ctrl-C is handled once, by the parent, which then terminates the pool; the pool stops a
    # worker with SIGTERM, which must kill it even if the parent installed a handler for it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _release_reused()  # the parent's, if it had any: each worker makes its own
    die_with_parent()  # a build killed with SIGKILL leaves no worker behind


def _pool(workers: int, jobs: int) -> Any:
    """A process pool, or None when one process will do. Made before any other thread of ours
    (the progress bar's monitor) exists, since the workers are forked."""
    if workers <= 1 or jobs <= 1:
        return None
    method = "fork" if sys.platform == "linux" else "spawn"
    return multiprocessing.get_context(method).Pool(min(workers, jobs), initializer=_init_worker)


def _results(
    recordings: list[Recording], pool: Any, ahead: int, slots: list[Slot], signals: BuildSignals
) -> Iterator[dict[str, Any]]:
    """`_process` over the recordings, in order, with at most `ahead` jobs submitted and not yet
    consumed, so that memory stays bounded while the parent writes. A worker's exception is
    raised here. Workers leave their columns in `slots` (ahead + 1 of them), mapped here."""
    if pool is None:
        for rec in recordings:
            signals.check()
            yield _process(rec)
        return
    spools = Spools(STORED_DTYPES, writable=False)
    # multiprocessing.Pool never completes a task whose worker died (the OOM killer, a kill):
    # it starts a new worker and the task's result never comes. Watch the workers it started
    # (they live as long as the pool: no maxtasksperchild) and fail instead of waiting forever.
    workers = list(pool._pool)
    pending: collections.deque = collections.deque()
    jobs = iter(enumerate(recordings))

    def submit() -> None:
        job = next(jobs, None)
        if job is not None:
            # ahead + 1 slots in turn: job k + ahead reuses the slot of job k - 1, which has
            # been consumed by the time job k + ahead is submitted.
            slot = slots[job[0] % (ahead + 1)]
            pending.append(pool.apply_async(_process, (job[1], slot)))

    for _ in range(ahead):
        submit()
    while pending:
        job = pending.popleft()
        while not job.ready():  # wake up now and then to act on a signal or a dead worker
            signals.check()
            _check_alive(workers)
            job.wait(0.1)
        result = job.get()
        submit()
        result["columns"] = spools.columns(result["spool"], int(result["lengths"].sum()))
        yield result
        result["columns"] = None
    spools.close()


class WorkerError(RuntimeError):
    """A worker process of the build died (killed, out of memory); nothing was written."""


def _check_alive(workers: list[Any]) -> None:
    """Raise WorkerError naming the first worker process that has exited, and how."""
    for proc in workers:
        code = proc.exitcode
        if code is not None:
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            raise WorkerError(
                f"a worker process (pid {proc.pid}) died ({how}; SIGKILL is often the "
                "out-of-memory killer); nothing was written: rerun, with --workers 1 if memory "
                "is short"
            )


class _SplitWriter:
    """Append a split's events column by column, writing only whole chunks until `finish`, so
    that HDF5 never reads back and recompresses a partly written chunk."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.size = 0  # events written to the datasets
        self.pending = {name: np.empty(0, STORED_DTYPES[name]) for name in FIELDS}
        self.lengths: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.trials: list[str] = []

    def add(self, result: dict[str, Any]) -> None:
        windows = result["windows"]
        self.lengths.append(result["lengths"])
        self.labels.append(windows["label"])
        self.rows.append(windows["row"])
        self.trials += [result["recording"].trial] * len(windows)
        self._append(result["columns"])

    def _append(self, columns: dict[str, np.ndarray]) -> None:
        held, new = len(self.pending["t"]), len(columns["t"])
        if held + new < CHUNK_EVENTS:
            for name in FIELDS:
                self.pending[name] = np.concatenate([self.pending[name], columns[name]])
            return
        if self.size == 0:
            self._create(CHUNK_EVENTS)
        head = CHUNK_EVENTS - held  # new events that complete the held chunk
        whole = (new - head) // CHUNK_EVENTS * CHUNK_EVENTS  # then whole chunks straight from new
        for name in FIELDS:
            dset, col = self.group[name], columns[name]
            dset.resize((self.size + CHUNK_EVENTS + whole,))
            dset[self.size : self.size + CHUNK_EVENTS] = np.concatenate(
                [self.pending[name], col[:head]]
            )
            if whole:
                dset[self.size + CHUNK_EVENTS :] = col[head : head + whole]
            self.pending[name] = col[head + whole :].copy()
        self.size += CHUNK_EVENTS + whole

    def _create(self, chunk: int) -> None:
        import h5py

        for name in FIELDS:
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            if SCALE_OFFSET[name]:
                # Through the property list: h5py refuses its `scaleoffset` option beside
                # `fletcher32`, fearing lossy (float) scaling; for integers it is lossless.
                dcpl.set_scaleoffset(h5py.h5z.SO_INT, 0)
            self.group.create_dataset(
                name,
                shape=(0,),
                maxshape=(None,),
                dtype=STORED_DTYPES[name],
                chunks=(chunk,),
                dcpl=dcpl,
                fletcher32=FLETCHER32,
            )

    def finish(self) -> None:
        n = len(self.pending["t"])  # the last, partial chunk
        if self.size == 0:
            # A split smaller than a chunk gets one chunk of its size: scale-offset would store
            # the padding of a larger chunk at the full width of the timestamps.
            self._create(max(n, 1))
        for name in FIELDS:
            self.group[name].resize((self.size + n,))
            self.group[name][self.size :] = self.pending[name]
        self.size += n
        lengths = np.concatenate(self.lengths) if self.lengths else np.empty(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        if offsets[-1] != self.size:  # internal consistency, cheap to check, fatal if wrong
            raise RuntimeError(f"wrote {self.size} events but the samples add up to {offsets[-1]}")
        _small(self.group, "offsets", offsets)
        _small(self.group, "labels", _cat(self.labels, np.uint8))
        _small(self.group, "row", _cat(self.rows, np.int32))
        # Fixed-length ASCII: HDF5 cannot filter (checksum) variable-length strings.
        width = max((len(t) for t in self.trials), default=1)
        _small(self.group, "trial", np.array(self.trials, dtype=f"S{width}"))


def _small(group: Any, name: str, data: np.ndarray) -> None:
    """A per-sample dataset: one chunk, Fletcher-32 like the event columns."""
    group.create_dataset(name, data=data, chunks=(max(len(data), 1),), fletcher32=FLETCHER32)


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype)


def _remove_leftovers(out: Path) -> None:
    """Remove the partial files and spool folders of builds that were killed (their process is
    gone): the next run starts clean. Those of a build still running are left alone."""
    for path in out.parent.glob(f"{out.name}.*"):
        owner = path.name.rsplit("-", 1)[-1]
        if path.suffix.startswith((".partial", ".spool")) and owner.isdigit():
            try:
                os.kill(int(owner), 0)
                continue  # alive (or not ours to signal): still being written
            except (ProcessLookupError, OverflowError):  # no such process (or no such pid)
                pass
            except PermissionError:
                continue
        elif path.name not in (f"{out.name}.partial", f"{out.name}.spool"):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _space_needed(recordings: list[Recording], spool_files: bool, ahead: int) -> int:
    """Bytes a build writes, estimated from the .aedat sizes (8 bytes per event): the cache, and
    the spool files when the hand-over cannot use memory files (each of ahead + 1 slots grows
    to the largest recording's samples, with a quarter more room)."""
    sizes = [rec.aedat.stat().st_size for rec in recordings]
    need = int(sum(sizes) / 8 * ESTIMATE_BYTES_PER_EVENT) + WRITE_MARGIN
    if spool_files:
        need += int((ahead + 1) * max(sizes) / 8 * WORST_BYTES_PER_EVENT * 1.25)
    return need


def _discard(path: Path) -> None:
    """Remove the file `path` if there is one. (Checked first: on a read-only mount, unlinking
    a missing file fails with EROFS rather than FileNotFoundError.)"""
    if path.exists():
        try:
            path.unlink()
        except OSError as exc:
            error = space.storage_error(exc, path, "remove the stale", SPACE_FIX)
            if error is None:
                raise
            raise error from exc


def _discard_stale(out: Path, reason: BaseException) -> None:
    """Remove a cache whose sources are broken; when that fails too (a read-only mount), note
    it on `reason`, the error the caller raises, rather than replace it."""
    try:
        _discard(out)
    except space.StorageError as exc:
        reason.add_note(str(exc))


def build_event_cache(root: Path, *, workers: int = 2, progress: bool = True) -> Path:
    """Cut every recording of ROOT/extract/DvsGesture/ into labelled samples and write
    ROOT/events.h5 (layout in the README); return its path.

    Worker processes parse recordings while this process writes. The file is written as
    `events.h5.partial-<pid>` and renamed only when complete, so an error (named file and byte
    offset or CSV row), Ctrl-C or a kill never leaves an events.h5 that looks complete. A
    complete cache whose sources are unchanged (names, sizes, modification times) is returned
    as it is.
    """
    import h5py
    from tqdm import tqdm

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root = Path(root)
    folder = dataset_dir(root)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} not found; run 'dvsgkit download' (the real dataset) or 'dvsgkit synth' "
            "(a synthetic one) first"
        )
    out = event_cache_path(root)
    try:
        recordings = list_all_recordings(folder)  # trials lists checked before any work
    except (OSError, ValueError) as exc:
        _discard_stale(out, exc)  # its sources are broken: it cannot be up to date
        raise
    if out.exists() and _up_to_date(out, folder, recordings):
        return out
    # Names unique to this process, so that two builds of one root cannot trip over each other.
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    spool = out.with_name(f"{out.name}.spool-{os.getpid()}")  # hand-over files, if not memfds
    ahead = workers + 1  # jobs submitted and not yet written
    pooled = min(workers, len(recordings)) > 1
    space.probe_writable(partial, SPACE_FIX)  # a read-only mount: one line, nothing to undo
    _discard(out)  # stale: never leave a cache disagreeing with its sources
    _remove_leftovers(out)
    space.require_free(root, _space_needed(recordings, pooled and not memfds(), ahead), out,
                       SPACE_FIX)  # fmt: skip
    sources = {name: _stat(folder, name) for name in _source_names(recordings)}
    for name in (TRIALS_FILES[s] for s in SPLITS):
        sources[name]["sha256"] = _sha256(folder / name)
    with BuildSignals() as signals:
        # The slots exist before the pool forks its workers, which inherit them.
        slots = make_slots(ahead + 1, spool) if pooled else []
        pool = _pool(workers, len(recordings))
        bar = tqdm(total=len(recordings), unit="rec", disable=not progress, dynamic_ncols=True)
        try:
            # No chunk cache: _SplitWriter writes whole chunks, which then go straight to the
            # file, so that free space seen before a write is free space indeed.
            with h5py.File(partial, "w", rdcc_nbytes=0) as f:
                writers = {split: _SplitWriter(f.create_group(split)) for split in SPLITS}
                events = 0
                for result in _results(recordings, pool, ahead, slots, signals):
                    rec = result["recording"]
                    # HDF5 does not survive a failed write (see space.py): refuse it first.
                    worst = (len(result["columns"]["t"]) + CHUNK_EVENTS) * WORST_BYTES_PER_EVENT
                    space.require_free(root, worst + WRITE_MARGIN, partial, SPACE_FIX)
                    writers[rec.split].add(result)
                    for name, sha in result["sha256"].items():
                        sources[name]["sha256"] = sha
                    events += len(result["columns"]["t"])
                    bar.set_postfix_str(f"{rec.trial}, {events:,} events", refresh=False)
                    bar.update()
                for writer in writers.values():
                    writer.finish()
                integrity.seal(f, SPLITS)
                f.attrs["layout"] = LAYOUT
                f.attrs["layout_version"] = LAYOUT_VERSION
                f.attrs["dvsgkit_version"] = __version__
                f.attrs["sensor_size"] = np.array(SENSOR_SIZE, dtype=np.int64)
                f.attrs["class_names"] = list(CLASS_NAMES)
                f.attrs["sources"] = json.dumps(list(sources.values()))
            signals.check()
            os.replace(partial, out)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            error = space.storage_error(exc, partial, "write", SPACE_FIX)
            if error is None or isinstance(exc, space.StorageError):
                raise
            raise error from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            bar.close()
            _release_reused()
            if pool is not None:
                pool.terminate()  # stops the workers on an error or Ctrl-C; idle ones otherwise
                pool.join()
            for slot in slots:
                if isinstance(slot, int):
                    os.close(slot)
            shutil.rmtree(spool, ignore_errors=True)
    return out


class EventCache:
    """Read access to events.h5: `with EventCache(path) as cache: cache.sample("train", 0)`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} not found; run 'dvsgkit events' first")
        self._file = h5py.File(self.path, "r", rdcc_nbytes=READ_CACHE_BYTES)
        layout = self._file.attrs.get("layout")
        version = self._file.attrs.get("layout_version")
        if layout != LAYOUT or version != LAYOUT_VERSION:
            self._file.close()
            raise ValueError(
                f"{self.path} is not a dvsgkit event cache of layout version {LAYOUT_VERSION} "
                f"(layout {layout!r}, version {version!r}); delete it and run 'dvsgkit events'"
            )
        needed = [
            f"{s}/{k}" for s in SPLITS for k in (*FIELDS, "offsets", "labels", "trial", "row")
        ]
        missing = [name for name in needed if name not in self._file]
        if missing:  # a damaged file: say so, and do not leave it open
            self._file.close()
            raise ValueError(
                f"{self.path} lacks {missing[0]!r} (a damaged event cache); delete it and run "
                "'dvsgkit events'"
            )
        self._offsets = {s: self._file[s]["offsets"][:] for s in SPLITS}
        self._labels = {s: self._file[s]["labels"][:] for s in SPLITS}

    def __enter__(self) -> EventCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def _split(self, split: str) -> str:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return split

    def num_samples(self, split: str) -> int:
        return len(self._labels[self._split(split)])

    def labels(self, split: str) -> np.ndarray:
        """uint8 [N], 0..10 (the CSV class - 1)."""
        return self._labels[self._split(split)].copy()

    def offsets(self, split: str) -> np.ndarray:
        """int64 [N + 1]: sample i is events [offsets[i], offsets[i + 1])."""
        return self._offsets[self._split(split)].copy()

    def trials(self, split: str) -> list[str]:
        """Each sample's recording stem, e.g. "user01_natural"."""
        return [t.decode() for t in self._file[self._split(split)]["trial"][:]]

    def rows(self, split: str) -> np.ndarray:
        """int32 [N]: each sample's 0-based data row in its labels CSV."""
        return self._file[self._split(split)]["row"][:]

    def sample(self, split: str, i: int) -> np.ndarray:
        """Sample i of `split` as EVENT_DTYPE [E] (absolute µs timestamps, recorded order)."""
        n = self.num_samples(split)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range for split {split!r} with {n} samples")
        i %= n
        a, b = self._offsets[split][i : i + 2]
        columns = integrity.read_columns(
            self._file[split], self.path, FIELDS, int(a), int(b), sensor=SENSOR_SIZE
        )
        out = np.empty(b - a, dtype=EVENT_DTYPE)
        for name in FIELDS:
            out[name] = columns[name]
        return out

    def verify(self) -> list[str]:
        """Read the whole file and return what is damaged, one line each naming the file, the
        split/dataset and the elements (and samples): chunks failing their Fletcher-32
        checksum, datasets changed after the build, offsets that do not partition the events,
        values out of range. An empty list: every byte is as built. Reads the whole file."""
        return integrity.verify(self._file, self.path, SPLITS, SENSOR_SIZE)

    def check_sealed(self) -> None:
        """ValueError naming the file, the dataset changed after the build (for a pixel off
        the sensor: the split and sample) and the fix; reads 4 bytes per chunk."""
        integrity.check_sealed(self._file, self.path, SPLITS, SENSOR_SIZE)

    @property
    def attrs(self) -> dict[str, Any]:
        """The root attributes as plain Python values (sources stays the JSON string it is
        stored as)."""
        plain = {}
        for key, value in self._file.attrs.items():
            plain[key] = value.tolist() if isinstance(value, np.ndarray | np.generic) else value
        return plain

    def checksum(self) -> str:
        """sha256 of the layout version, the sources (names, sizes, sha256s) and every split's
        offsets, labels, trials and rows: a cheap fingerprint that changes whenever the samples
        can, without reading the events (they are a function of the sources' bytes)."""
        digest = hashlib.sha256(f"{LAYOUT}/{LAYOUT_VERSION}".encode())
        sources = json.loads(self._file.attrs["sources"])
        named = [[s["name"], s["bytes"], s.get("sha256")] for s in sources]
        digest.update(json.dumps(named).encode())
        for split in SPLITS:
            digest.update(self._offsets[split].tobytes())
            digest.update(self._labels[split].tobytes())
            digest.update(self.rows(split).astype("<i4").tobytes())
            digest.update("\n".join(self.trials(split)).encode())
        return digest.hexdigest()
