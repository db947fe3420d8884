"""Writing events.h5: each split's samples appended in whole HDF5 chunks, then sealed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dvsgkit import __version__
from dvsgkit.constants import CLASS_NAMES, SENSOR_SIZE, SPLITS
from dvsgkit.eventcache import seal as integrity
from dvsgkit.eventcache.layout import FIELDS, LAYOUT, LAYOUT_VERSION, STORED_DTYPES
from dvsgkit.eventcache.spool import Slot
from dvsgkit.samples import Recording

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


@dataclass
class RecordingSamples:
    """One recording cut into samples, as a worker hands it to the writer."""

    recording: Recording
    windows: np.ndarray  # structured [N]: each sample's label and labels-CSV row, ...
    lengths: np.ndarray  # int64 [N]: events per sample
    # Their events back to back, one array per field of STORED_DTYPES ([lengths.sum()] each);
    # None while they lie in the spool `slot` (a worker's result, not yet mapped by the writer).
    columns: dict[str, np.ndarray] | None
    slot: Slot | None
    sha256: dict[str, str]  # file name -> sha256 of the recording's .aedat and labels CSV

    @property
    def events(self) -> int:
        return int(self.lengths.sum())


class SplitWriter:
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

    def add(self, samples: RecordingSamples) -> None:
        if samples.columns is None:  # still in its spool slot: a bug of the caller
            raise RuntimeError(f"{samples.recording.trial}: columns not mapped from their slot")
        windows = samples.windows
        self.lengths.append(samples.lengths)
        self.labels.append(windows["label"])
        self.rows.append(windows["row"])
        self.trials += [samples.recording.trial] * len(windows)
        self._append(samples.columns)

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


class CacheWriter:
    """A new events.h5 at `path`: `add` each recording's samples in order, then `finish` with
    the sources; closed (complete or not) on leaving the `with` block."""

    def __init__(self, path: Path) -> None:
        import h5py

        # No chunk cache: SplitWriter writes whole chunks, which then go straight to the file,
        # so that free space seen before a write is free space indeed.
        self.file = h5py.File(path, "w", rdcc_nbytes=0)
        self.splits = {split: SplitWriter(self.file.create_group(split)) for split in SPLITS}

    def add(self, samples: RecordingSamples) -> None:
        self.splits[samples.recording.split].add(samples)

    def finish(self, sources: list[dict[str, Any]]) -> None:
        """Write each split's per-sample datasets, seal every dataset and set the root
        attributes (layout, version, sensor, classes, `sources` as JSON)."""
        for writer in self.splits.values():
            writer.finish()
        f = self.file
        integrity.seal(f, SPLITS)
        f.attrs["layout"] = LAYOUT
        f.attrs["layout_version"] = LAYOUT_VERSION
        f.attrs["dvsgkit_version"] = __version__
        f.attrs["sensor_size"] = np.array(SENSOR_SIZE, dtype=np.int64)
        f.attrs["class_names"] = list(CLASS_NAMES)
        f.attrs["sources"] = json.dumps(sources)

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()
