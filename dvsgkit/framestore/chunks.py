"""The frames of a ragged split (samples of different frame counts, all frames of the split
concatenated, RAGGED_CHUNK_FRAMES frames per chunk), written and read chunk file by chunk file.

zarr-python 3 spends ~0.7 ms of Python on each chunk it writes or reads, ten times the cost of
compressing a 32 KiB frame; a ragged store has tens to hundreds of frames per sample. So the
build compresses each chunk of K frames with the array's own codec (Blosc, as `compressor`
configures it) and writes the chunk files under the keys the array's metadata gives, and
dvsgkit reads them back the same way. The files are the ones zarr would write (the last chunk
padded with zeros to K frames, as zarr stores an edge chunk): any Zarr reader opens the store
(docs/formats.md)."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

# Counts are small and mostly zero: bit-shuffled zstd level 1 packs uint8 frames ~9x (synthetic
# data at the real density) at ~1 ms per 512 KiB sample; levels 5-9 gain 5-15 % for 4-80x the
# encoding time.
BLOSC = {"cname": "zstd", "clevel": 1}
# Frames per chunk of a ragged split: 16x fewer files, and 16x less per-file overhead, than one
# frame per chunk; a sample read decodes at most 2 * 15 frames it does not need.
RAGGED_CHUNK_FRAMES = 16


def compressor(zarr_format: int) -> Any:
    """The frames arrays' codec, for zarr's create_array."""
    if zarr_format == 2:
        return codec()
    from zarr.codecs import BloscCodec

    return BloscCodec(shuffle="bitshuffle", **BLOSC)


def codec() -> Any:
    """numcodecs' Blosc with the same settings: the bytes of a chunk file in either format (the
    format 3 pipeline is little-endian bytes, then Blosc)."""
    import numcodecs

    return numcodecs.Blosc(shuffle=numcodecs.Blosc.BITSHUFFLE, **BLOSC)


def encode(frames: np.ndarray, k: int = RAGGED_CHUNK_FRAMES) -> bytes:
    """One chunk file's bytes: `frames` [<= k, 2, H, W] padded with zeros to k frames (as zarr
    stores an edge chunk), little-endian, C order."""
    if len(frames) < k:
        frames = np.concatenate([frames, np.zeros((k - len(frames), *frames.shape[1:]),
                                                  frames.dtype)])  # fmt: skip
    return bytes(codec().encode(np.ascontiguousarray(frames, frames.dtype.newbyteorder("<"))))


def chunk_file(array: Any, folder: Path, index: int) -> Path:
    """The file of the chunk holding sample (ragged: frame) `index` of the array at `folder`."""
    return folder / chunk_key(array, index)


class ChunkWriter:
    """Writes the frames of a ragged array (at `folder`) in order, one chunk file per
    `array.chunks[0]` frames: `append` writes every chunk it completes and keeps the rest
    (less than one chunk) for the next; `flush` writes the last, partial chunk."""

    def __init__(self, array: Any, folder: Path) -> None:
        self.array, self.folder, self.k = array, Path(folder), int(array.chunks[0])
        self.written = 0  # frames in chunk files
        self.pending: list[np.ndarray] = []  # frames after those, fewer than k
        self.made: set[Path] = set()

    def append(self, frames: np.ndarray) -> None:
        """Add `frames` [n, 2, H, W] after those appended before."""
        if not len(frames):
            return
        if self.pending:
            frames = np.concatenate([*self.pending, frames])
        full = len(frames) // self.k * self.k
        for a in range(0, full, self.k):
            self._write(frames[a : a + self.k])
        self.pending = [frames[full:].copy()] if full < len(frames) else []

    def flush(self) -> None:
        """Write the frames left, zero-padded to a full chunk."""
        if self.pending:
            self._write(np.concatenate(self.pending))
            self.pending = []

    def _write(self, frames: np.ndarray) -> None:
        file = chunk_file(self.array, self.folder, self.written)
        if file.parent not in self.made:  # format 3 keys are paths: c/<chunk>/0/0/0
            file.parent.mkdir(parents=True, exist_ok=True)
            self.made.add(file.parent)
        file.write_bytes(encode(frames, self.k))
        self.written += len(frames)


def read_chunks(array: Any, folder: Path, a: int, b: int) -> np.ndarray:
    """Frames [a, b) of `array` (at `folder`) decoded from the chunk files that hold them. A
    missing file raises FileNotFoundError, a file that does not decode to one chunk ValueError."""
    blosc = codec()
    dtype = np.dtype(array.dtype).newbyteorder("<")
    k, shape = int(array.chunks[0]), tuple(array.shape[1:])
    out = np.empty((b - a, *shape), dtype)
    size = k * int(np.prod(shape))
    for c in range(a // k, -(-b // k)):
        values = np.frombuffer(blosc.decode(chunk_file(array, folder, c * k).read_bytes()), dtype)
        if values.size != size:
            raise ValueError(f"chunk {c} (frames {c * k} to {c * k + k - 1}) holds "
                             f"{values.size} values, not {size}")  # fmt: skip
        lo, hi = max(a, c * k), min(b, c * k + k)
        out[lo - a : hi - a] = values.reshape(k, *shape)[lo - c * k : hi - c * k]
    return out.astype(out.dtype.newbyteorder("="), copy=False)


def sample_checksum(frames: np.ndarray) -> int:
    """crc32 of one sample's counts [T, 2, H, W] in their stored dtype (C order, little-endian)."""
    a = np.ascontiguousarray(frames)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return zlib.crc32(a.view(np.uint8).ravel())


class SplitFrames:
    """One split's frames, sample by sample: sample i is `frames[i]` of a regular split, frames
    offsets[i]..offsets[i+1]-1 of a ragged one (read from their chunk files)."""

    def __init__(self, group: Any, folder: Path) -> None:
        self.array, self.folder = group["frames"], Path(folder)  # folder: the frames array's
        self.split = self.folder.parent.name
        self.offsets = group["frame_offsets"][:] if "frame_offsets" in group else None

    def __len__(self) -> int:
        return self.array.shape[0] if self.offsets is None else self.offsets.size - 1

    def lengths(self) -> np.ndarray | None:
        """int64 [N]: each sample's frame count (None: every sample has T)."""
        return None if self.offsets is None else np.diff(self.offsets)

    def where(self, i: int) -> str:
        """The chunk file(s) of sample i, relative to the split."""
        key = f"{self.split}/frames/"
        if self.offsets is None:
            return f"chunk {key}{chunk_key(self.array, i)}"
        first, last = (chunk_key(self.array, int(f)) for f in self.offsets[i : i + 2] - [0, 1])
        return f"chunk {key}{first}" if first == last else f"chunks {key}{first} to {key}{last}"

    def read(self, i: int) -> np.ndarray:
        """Sample i as stored, not checked ([T, 2, H, W]); a corrupt chunk raises whatever its
        codec raises."""
        if self.offsets is None:
            return self.array[i]
        return read_chunks(self.array, self.folder, int(self.offsets[i]), int(self.offsets[i + 1]))

    def read_all(self) -> np.ndarray:
        """Every sample: [N, T, 2, H, W], or ragged every frame [F, 2, H, W]."""
        if self.offsets is None:
            return self.array[:]
        return read_chunks(self.array, self.folder, 0, self.array.shape[0])

    def problem(self, i: int, expected: int, values: Any = None) -> str | None:
        """None when sample i decodes and matches its checksum `expected`, else what is wrong,
        naming the sample and its chunks. `values`: the sample already read, if it was."""
        where = f"{self.split} sample {i} ({self.where(i)})"
        if values is None:
            try:
                values = self.read(i)
            except Exception as exc:  # numcodecs/blosc raise several types for a corrupt chunk
                return f"{where} cannot be decoded ({type(exc).__name__}: {exc})"
        actual = sample_checksum(values)
        if actual != expected:
            return f"{where} does not match its checksum (crc32 {actual:08x}, built {expected:08x})"
        return None


def chunk_key(array: Any, index: int) -> str:
    """The store key (path inside the array's folder) of the chunk holding sample (or, ragged,
    frame) `index`."""
    chunk = index // int(array.chunks[0])
    return array.metadata.encode_chunk_key((chunk,) + (0,) * (len(array.shape) - 1))
