"""How small can a frame store get? Bytes per sample of a store's frames under standard codecs.

    python bench/frame_codecs.py data/bench-full/frames_number_16_split_by_number.zarr --samples 60

Encodes the first --samples training samples (one chunk each, as the store holds them) with each
codec and prints KB per sample and encoding ms per sample. The store uses Blosc zstd level 1 with
bit-shuffle; the rows show what higher levels or other codecs would buy, i.e. how close the store
is to what lossless compression can do on these frames.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import zarr
from numcodecs import Blosc, Zlib, Zstd

CODECS = {
    "blosc zstd 1 bitshuffle (the store's)": Blosc("zstd", 1, Blosc.BITSHUFFLE),
    "blosc zstd 5 bitshuffle": Blosc("zstd", 5, Blosc.BITSHUFFLE),
    "blosc zstd 9 bitshuffle": Blosc("zstd", 9, Blosc.BITSHUFFLE),
    "blosc zstd 9 no shuffle": Blosc("zstd", 9, Blosc.NOSHUFFLE),
    "zstd 19": Zstd(19),
    "zlib 6 (what np.savez_compressed uses)": Zlib(6),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="a dvsgkit frame store (.zarr)")
    parser.add_argument("--samples", type=int, default=60)
    args = parser.parse_args()
    frames = zarr.open_group(args.store, mode="r")["train"]["frames"]
    samples = [np.ascontiguousarray(x) for x in frames[: args.samples]]  # [T, 2, H, W] each
    print(f"{len(samples)} samples {samples[0].shape} {samples[0].dtype}, "
          f"{samples[0].nbytes / 1e3:.0f} KB each uncompressed")  # fmt: skip
    for name, codec in CODECS.items():
        start = time.perf_counter()
        size = sum(len(codec.encode(x)) for x in samples)
        ms = (time.perf_counter() - start) / len(samples) * 1e3
        assert all(np.array_equal(np.frombuffer(codec.decode(codec.encode(x)), x.dtype), x.ravel())
                   for x in samples[:3])  # fmt: skip
        print(f"{name:40s} {size / len(samples) / 1e3:7.1f} KB/sample {ms:8.1f} ms/sample")


if __name__ == "__main__":
    main()
