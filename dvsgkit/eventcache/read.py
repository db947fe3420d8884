"""EventCache, the one reader of the event cache ROOT/events.h5 (its names: layout.py; its
checks: seal.py)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dvsgkit.constants import EVENT_DTYPE, NUM_CLASSES, SPLITS
from dvsgkit.errors import DvsgkitError, InputError, NotFound
from dvsgkit.eventcache import seal as integrity
from dvsgkit.eventcache.layout import FIELDS, LAYOUT, LAYOUT_VERSION, SAMPLE_DATASETS

READ_CACHE_BYTES = 64 << 20  # chunk cache per dataset when reading samples


@dataclass(frozen=True)
class SplitIndex:
    """One split's samples, without their events."""

    offsets: np.ndarray  # int64 [N + 1]: sample i is events [offsets[i], offsets[i + 1])
    labels: np.ndarray  # uint8 [N], 0..10
    sample_ids: list[str]  # [N] "{recording stem}:{row in its labels CSV}"


@dataclass(frozen=True)
class EventsIndex:
    """What a frame build works from, all read from one open file: the root attributes, each
    split's index, the cache's checksum and the file's identity (see `file_identity`)."""

    attrs: dict[str, Any]
    splits: dict[str, SplitIndex]
    checksum: str
    identity: tuple[int, int, int]


def file_identity(st: os.stat_result) -> tuple[int, int, int]:
    """What tells one events.h5 from another under the same name: inode, size and modification
    time (`mv` or `rsync` put a new inode there; a write in place changes the time)."""
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def check_unchanged(
    path: Path,
    identity: tuple[int, int, int],
    now: tuple[int, int, int],
    during: str,
    fix: str = "nothing was built from it: rerun",
) -> None:
    """ValueError naming the file and `fix` when `now` (the identity of the file read now) is
    not `identity` (that of the file read before): it was replaced `during` something."""
    if now != identity:
        raise InputError(
            f"{path} was replaced while {during} (by another 'dvsgkit events' of this root, or "
            f"a copy onto it?); {fix}"
        )


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray | np.generic) else value


class EventCache:
    """Read access to events.h5: `with EventCache(path) as cache: cache.sample("train", 0)`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise NotFound(f"{self.path} not found; run 'dvsgkit events' first")
        self._file = h5py.File(self.path, "r", rdcc_nbytes=READ_CACHE_BYTES)
        try:
            # The file this object reads, whatever the name points to later.
            self.identity = file_identity(os.fstat(self._file.id.get_vfd_handle()))
            self._check_layout()
            self._offsets = {s: self._file[s]["offsets"][:] for s in SPLITS}
            self._labels = {s: self._file[s]["labels"][:] for s in SPLITS}
        except BaseException:  # a damaged or foreign file: say so, and do not leave it open
            self._file.close()
            raise

    def _check_layout(self) -> None:
        import h5py

        layout = self._file.attrs.get("layout")
        version = self._file.attrs.get("layout_version")
        if layout != LAYOUT or version != LAYOUT_VERSION:
            raise InputError(
                f"{self.path} is not a dvsgkit event cache of layout version {LAYOUT_VERSION} "
                f"(layout {layout!r}, version {version!r}); delete it and run 'dvsgkit events'"
            )
        groups = [s for s in SPLITS if isinstance(self._file.get(s), h5py.Group)]
        present = {f"{s}/{k}" for s in groups for k in self._file[s]}  # one listing per split
        needed = [f"{s}/{k}" for s in SPLITS for k in (*FIELDS, *SAMPLE_DATASETS)]
        missing = [name for name in needed if name not in present]
        if missing:
            raise InputError(
                f"{self.path} lacks {missing[0]!r} (a damaged event cache); delete it and run "
                "'dvsgkit events'"
            )

    def __enter__(self) -> EventCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def _split(self, split: str) -> str:
        if split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, got {split!r}")
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
        stored = self._file[self._split(split)]["trial"][:]
        return [t.decode() if isinstance(t, bytes) else str(t) for t in stored]

    def rows(self, split: str) -> np.ndarray:
        """int32 [N]: each sample's 0-based data row in its labels CSV."""
        return self._file[self._split(split)]["row"][:]

    def columns(
        self,
        split: str,
        fields: tuple[str, ...],
        a: int,
        b: int,
        *,
        offsets: np.ndarray | None = None,
        first_sample: int = 0,
    ) -> dict[str, np.ndarray]:
        """Events [a, b) of `split`, one array per field (as stored). A chunk failing its
        checksum or a pixel off the sensor: one ValueError naming the file, split, dataset (and
        the sample, given the block's `offsets`, sample `first_sample` first) and the fix."""
        return integrity.read_columns(self._file[self._split(split)], self.path, fields, a, b,
                                      offsets=offsets, first_sample=first_sample)  # fmt: skip

    def spans(self, split: str) -> np.ndarray:
        """int64 [N]: each sample's last timestamp minus its first (in recorded order; 0 for an
        empty sample), from two events a sample."""
        offsets = self._offsets[self._split(split)]
        full = np.flatnonzero(np.diff(offsets) > 0)
        out = np.zeros(offsets.size - 1, np.int64)
        if full.size:
            ends = np.unique(np.concatenate([offsets[full], offsets[full + 1] - 1]))
            try:
                t = self._file[split]["t"][ends]
            except OSError as exc:  # a chunk failing its checksum
                raise InputError(f"{self.path}: {split}/t cannot be read ({exc}); "
                                 f"{integrity.fix_for(self.path)}") from exc  # fmt: skip
            first = t[np.searchsorted(ends, offsets[full])]
            out[full] = t[np.searchsorted(ends, offsets[full + 1] - 1)] - first
        return out

    def sample(self, split: str, i: int) -> np.ndarray:
        """Sample i of `split` as EVENT_DTYPE [E] (absolute µs timestamps, recorded order)."""
        n = self.num_samples(split)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range for split {split!r} with {n} samples")
        i %= n
        a, b = self._offsets[split][i : i + 2]
        columns = self.columns(split, FIELDS, int(a), int(b))
        out = np.empty(b - a, dtype=EVENT_DTYPE)
        for name in FIELDS:
            out[name] = columns[name]
        return out

    def index(self) -> EventsIndex:
        """The root attributes, each split's offsets, labels and sample ids, the checksum and
        the file's identity, after checking that the offsets and labels describe the event
        columns (ValueError naming the file, split and fix)."""
        splits, recorded = {}, {}
        for split in SPLITS:
            group, offsets, labels = self._file[split], self._offsets[split], self._labels[split]
            n, events = labels.shape[0], group["x"].shape[0]
            trials, rows = recorded[split] = self.trials(split), self.rows(split)
            if (
                offsets.shape != (n + 1,)
                or offsets[0] != 0
                or (np.diff(offsets) < 0).any()
                or offsets[-1] != events
                or any(group[k].shape[0] != events for k in FIELDS)
                or (n and int(labels.max()) >= NUM_CLASSES)
                or len(trials) != n
            ):
                raise InputError(
                    f"{self.path}:{split} has inconsistent offsets or labels; "
                    f"{integrity.fix_for(self.path)}"
                )
            ids = [f"{t}:{r}" for t, r in zip(trials, rows.tolist(), strict=True)]
            splits[split] = SplitIndex(offsets.astype(np.int64), labels.astype(np.uint8), ids)
        attrs = self._file.attrs
        scalars = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}
        return EventsIndex(scalars, splits, self._checksum(recorded), self.identity)

    def verify(self) -> list[str]:
        """Read the whole file and return what is damaged, one line each naming the file, the
        split/dataset and the elements (and samples): chunks failing their Fletcher-32
        checksum, datasets changed after the build, offsets that do not partition the events,
        values out of range. An empty list: every byte is as built. Reads the whole file."""
        return integrity.verify(self._file, self.path, SPLITS)

    def check_sealed(self) -> None:
        """ValueError naming the file, the dataset changed after the build (for a pixel off
        the sensor: the split and sample) and the fix; reads 4 bytes per chunk."""
        integrity.check_sealed(self._file, self.path, SPLITS)

    @property
    def attrs(self) -> dict[str, Any]:
        """The root attributes as plain Python values (sources stays the JSON string it is
        stored as)."""
        return {key: _plain(value) for key, value in self._file.attrs.items()}

    def checksum(self) -> str:
        """sha256 of the layout version, the sources (names, sizes, sha256s) and every split's
        offsets, labels, trials and rows: a cheap fingerprint that changes whenever the samples
        can, without reading the events (they are a function of the sources' bytes)."""
        return self._checksum({split: (self.trials(split), self.rows(split)) for split in SPLITS})

    def _checksum(self, recorded: dict[str, tuple[list[str], np.ndarray]]) -> str:
        """`checksum`, from each split's trials and rows as read already."""
        digest = hashlib.sha256(f"{LAYOUT}/{LAYOUT_VERSION}".encode())
        sources = json.loads(self._file.attrs["sources"])
        named = [[s["name"], s["bytes"], s.get("sha256")] for s in sources]
        digest.update(json.dumps(named).encode())
        for split in SPLITS:
            trials, rows = recorded[split]
            digest.update(self._offsets[split].tobytes())
            digest.update(self._labels[split].tobytes())
            digest.update(rows.astype("<i4").tobytes())
            digest.update("\n".join(trials).encode())
        return digest.hexdigest()


def read_events_index(events_path: Path) -> EventsIndex:
    """EventCache.index, from one open file whose seals match (`check_sealed`: 4 bytes read per
    chunk), with every failure a ValueError (FileNotFoundError when there is no file) naming
    the path and the fix: what a frame build and `dvsgkit info` rely on."""
    fix = integrity.fix_for(events_path)
    try:
        with EventCache(events_path) as cache:
            cache.check_sealed()  # a dataset changed after the build is never built on
            return cache.index()
    except FileNotFoundError:
        raise
    except OSError as exc:  # h5py's "unable to open / truncated file"
        raise InputError(
            f"{events_path} is not a readable HDF5 event cache ({exc}); {fix}"
        ) from exc
    except (KeyError, TypeError) as exc:
        raise InputError(f"{events_path} does not follow the event layout ({exc}); {fix}") from exc


def recorded_sources(path: Path) -> list[dict[str, Any]] | None:
    """The sources (name, bytes, mtime_ns, sha256 each) recorded in a complete cache of this
    layout whose seals still match (4 bytes read per chunk); None for anything else: no file, a
    foreign or older layout, a split missing, a dataset changed after the build."""
    try:
        with EventCache(path) as cache:
            if integrity.changed_datasets(cache._file, SPLITS):
                return None
            return json.loads(cache.attrs["sources"])
    except (DvsgkitError, OSError, KeyError, ValueError):
        return None
