"""The frames of a ragged split (samples of different frame counts, all frames of the split
concatenated, one frame per chunk), written and read chunk file by chunk file.

zarr-python 3 spends ~0.7 ms of Python on each chunk it writes or reads, ten times the cost of
compressing a 32 KiB frame; a ragged store has tens of frames per sample. So the build
compresses each frame with the array's own codec (Blosc, as `compressor` configures it) in its
workers and writes the chunk files under the keys the array's metadata gives, and dvsgkit reads
them back the same way. The files are the ones zarr would write: any Zarr reader opens the
store (docs/formats.md)."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

# Counts are small and mostly zero: bit-shuffled zstd level 1 packs uint8 frames ~9x (synthetic
# data at the real density) at ~1 ms per 512 KiB sample; levels 5-9 gain 5-15 % for 4-80x the
# encoding time.
BLOSC = {"cname": "zstd", "clevel": 1}


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


def encode(frames: np.ndarray) -> list[bytes]:
    """One chunk file's bytes per frame of `frames` [F, 2, H, W] (little-endian, C order)."""
    blosc = codec()
    return [bytes(blosc.encode(np.ascontiguousarray(f, f.dtype.newbyteorder("<")))) for f in frames]


def chunk_file(array: Any, folder: Path, frame: int) -> Path:
    """The file of `frame`'s chunk in the array stored at `folder`."""
    return folder / chunk_key(array, frame)


def write_chunks(array: Any, folder: Path, first: int, chunks: list[bytes]) -> None:
    """Write frames first, first + 1, ... of `array` (at `folder`) from their encoded bytes."""
    made: set[Path] = set()
    for k, data in enumerate(chunks):
        file = chunk_file(array, folder, first + k)
        if file.parent not in made:  # format 3 keys are paths: c/<frame>/0/0/0
            file.parent.mkdir(parents=True, exist_ok=True)
            made.add(file.parent)
        file.write_bytes(data)


def read_chunks(array: Any, folder: Path, a: int, b: int) -> np.ndarray:
    """Frames [a, b) of `array` (at `folder`) decoded from their chunk files. A missing file
    raises FileNotFoundError, a file that does not decode to one frame ValueError."""
    blosc = codec()
    dtype = np.dtype(array.dtype).newbyteorder("<")
    shape = tuple(array.shape[1:])
    out = np.empty((b - a, *shape), dtype)
    for k in range(b - a):
        data = blosc.decode(chunk_file(array, folder, a + k).read_bytes())
        frame = np.frombuffer(data, dtype)
        if frame.size != out[k].size:
            raise ValueError(f"chunk of frame {a + k} holds {frame.size} values, not {out[k].size}")
        out[k] = frame.reshape(shape)
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
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return f"chunks {key}{chunk_key(self.array, a)} to {key}{chunk_key(self.array, b - 1)}"

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
    return array.metadata.encode_chunk_key((index,) + (0,) * (len(array.shape) - 1))
