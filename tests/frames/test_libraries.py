"""Every frame option equals the library it comes from, run here on the project's synthetic
recordings and on edge cases: SpikingJelly 0.0.0.0.14 (fixed duration, frames number) and Tonic
(ToFrame time_window, Downsample, Denoise), alone and chained as a user chains them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dvsgkit.constants import EVENT_DTYPE
from dvsgkit.eventcache.layout import event_cache_path
from dvsgkit.eventcache.read import EventCache
from dvsgkit.frames import FrameSpec, integrate, integrate_samples
from dvsgkit.frames.denoise import _keep_any, _keep_ordered, denoise_keep

tonic = pytest.importorskip("tonic")
TONIC_DTYPE = tonic.datasets.DVSGesture.dtype


def samples(root: Path) -> list[np.ndarray]:
    """Every sample of both splits, EVENT_DTYPE."""
    with EventCache(event_cache_path(root)) as cache:
        return [cache.sample(s, i) for s in ("train", "test") for i in range(cache.num_samples(s))]


def as_tonic(ev: np.ndarray) -> np.ndarray:
    out = np.empty(ev.size, TONIC_DTYPE)
    for name in TONIC_DTYPE.names:
        out[name] = ev[name]
    return out


def as_sj(ev: np.ndarray) -> dict[str, np.ndarray]:
    """What SpikingJelly's events_np files hold: t, x, y, p as int arrays."""
    return {k: ev[k].astype(np.int64) for k in "txyp"}


def events(t, x, y, p=None) -> np.ndarray:
    ev = np.zeros(len(t), EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"] = t, x, y
    ev["p"] = 0 if p is None else p
    return ev


def tonic_frames(ev: np.ndarray, *transforms) -> np.ndarray:
    return tonic.transforms.Compose(list(transforms))(as_tonic(ev))


@pytest.mark.parametrize("duration", [30_000, 250_000, 1_000_000])
def test_duration_equals_spikingjelly(tiny_root: Path, sj_datasets, duration: int) -> None:
    for ev in samples(tiny_root):
        ref = sj_datasets.integrate_events_by_fixed_duration(as_sj(ev), duration, 128, 128)
        got = integrate(ev, FrameSpec(duration_us=duration))
        np.testing.assert_array_equal(got, ref)
        assert len(got) > 1


def test_duration_ties_gaps_and_disorder_equal_spikingjelly(sj_datasets) -> None:
    """A frame takes t - t_start <= duration (ties included); a gap makes no empty frame; an
    earlier timestamp after a later one is taken in recorded order, as SpikingJelly's loop."""
    cases = [
        ([0, 10, 20, 30, 1000, 1010], 10),  # ties at exactly the duration; a gap
        ([5, 3, 40, 7, 100, 60, 61, 200], 30),  # disorder
        ([7], 5),
    ]
    for t, d in cases:
        ev = events(t, np.arange(len(t)) % 128, np.arange(len(t)) % 7, np.arange(len(t)) % 2)
        ref = sj_datasets.integrate_events_by_fixed_duration(as_sj(ev), d, 128, 128)
        np.testing.assert_array_equal(integrate(ev, FrameSpec(duration_us=d)), ref)


@pytest.mark.parametrize("width", [20_000, 400_000, 5_000_000])
def test_bins_equal_tonic_to_frame(tiny_root: Path, width: int) -> None:
    to_frame = tonic.transforms.ToFrame(sensor_size=(128, 128, 2), time_window=width)
    for ev in samples(tiny_root):
        ref = tonic_frames(ev, to_frame)
        np.testing.assert_array_equal(integrate(ev, FrameSpec(bin_us=width)), ref)
        for T in (1, 8, 400):  # cut or padded to T bins
            got = integrate(ev, FrameSpec(bin_us=width, T=T))
            assert got.shape == (T, 2, 128, 128)
            keep = min(T, len(ref))
            np.testing.assert_array_equal(got[:keep], ref[:keep])
            assert not got[keep:].any()


def test_bins_of_disordered_and_short_samples_equal_tonic() -> None:
    to_frame = tonic.transforms.ToFrame(sensor_size=(128, 128, 2), time_window=10)
    for t in ([0, 3, 25, 12, 31, 50, 44], [5, 9], [100]):
        ev = events(t, np.arange(len(t)), np.arange(len(t)), np.arange(len(t)) % 2)
        np.testing.assert_array_equal(
            integrate(ev, FrameSpec(bin_us=10)), tonic_frames(ev, to_frame)
        )


@pytest.mark.parametrize("size", [64, 32])
def test_size_equals_tonic_downsample(tiny_root: Path, sj_datasets, size: int) -> None:
    """Tonic's Downsample (coordinates scaled and floored), then SpikingJelly's frames number,
    or Tonic's ToFrame, on the smaller sensor."""
    down = tonic.transforms.Downsample(spatial_factor=size / 128)
    to_frame = tonic.transforms.ToFrame(sensor_size=(size, size, 2), time_window=300_000)
    for ev in samples(tiny_root):
        small = tonic_frames(ev, down)
        for split_by in ("number", "time"):
            ref = sj_datasets.integrate_events_by_fixed_frames_number(
                as_sj(small), split_by, 8, size, size
            )
            got = integrate(ev, FrameSpec(8, split_by, size=size))
            np.testing.assert_array_equal(got, ref)
        ref = tonic_frames(ev, down, to_frame)
        np.testing.assert_array_equal(integrate(ev, FrameSpec(bin_us=300_000, size=size)), ref)
        assert got.sum() == len(ev)  # counts add up: no event is lost


@pytest.mark.parametrize("filter_time", [2_000, 10_000, 200_000])
def test_denoise_keeps_what_tonic_keeps(tiny_root: Path, sj_datasets, filter_time: int) -> None:
    denoise = tonic.transforms.Denoise(filter_time=filter_time)
    dropped = 0
    for ev in samples(tiny_root):
        kept = tonic_frames(ev, denoise)
        mask = denoise_keep(ev["x"], ev["y"], ev["t"], filter_time)
        np.testing.assert_array_equal(as_tonic(ev[mask]), kept)
        ref = sj_datasets.integrate_events_by_fixed_frames_number(
            as_sj(kept), "number", 4, 128, 128
        )
        np.testing.assert_array_equal(integrate(ev, FrameSpec(4, denoise_us=filter_time)), ref)
        dropped += len(ev) - len(kept)
    assert dropped > 0


def dense_events(rng: np.random.Generator, n: int, start: int, span: int) -> np.ndarray:
    """A blob of activity over a few pixels: many neighbours within any filter time."""
    t = np.sort(rng.integers(start, start + span, n))
    x = np.clip(rng.normal(40, 6, n), 0, 127).astype(int)
    y = np.clip(rng.normal(70, 6, n), 0, 127).astype(int)
    return events(t, x, y, rng.integers(0, 2, n))


@pytest.mark.parametrize("path", [_keep_ordered, _keep_any])
def test_both_denoise_paths_equal_tonic(path) -> None:
    """The ordered fast path and the general one, on dense and sparse samples, on samples that
    start before t = filter_time (Tonic's memory starts there), with timestamps tied and at
    exactly filter_time apart, on one pixel row (no neighbour above or below)."""
    rng = np.random.default_rng(3)
    cases = [
        (dense_events(rng, 20_000, 5_000_000, 2_000_000), 10_000),
        (dense_events(rng, 3_000, 0, 300_000), 10_000),  # starts at t = 0
        (events([0, 10, 10, 20, 30, 30], [5, 6, 4, 5, 6, 7], [3, 3, 3, 3, 3, 3]), 10),  # ties
        (events([0, 100, 200, 300], [0, 1, 2, 0], [0, 0, 0, 0]), 100),  # one row, exact F
        (events(np.arange(0, 5000, 7), np.arange(715) % 3, np.arange(715) % 2), 15),
    ]
    for ev, F in cases:
        kept = tonic.functional.denoise_numpy(as_tonic(ev), F)
        mask = path(ev["x"], ev["y"], ev["t"], F)
        np.testing.assert_array_equal(as_tonic(ev[mask]), kept)


def test_general_denoise_path_on_disordered_timestamps() -> None:
    rng = np.random.default_rng(5)
    ev = dense_events(rng, 5_000, 1_000_000, 100_000)
    ev["t"] = rng.permutation(ev["t"])  # Tonic's memory takes the last written, not the latest
    kept = tonic.functional.denoise_numpy(as_tonic(ev), 5_000)
    np.testing.assert_array_equal(
        as_tonic(ev[denoise_keep(ev["x"], ev["y"], ev["t"], 5_000)]), kept
    )


def test_options_chained_as_a_user_chains_tonic(tiny_root: Path, sj_datasets) -> None:
    """Denoise -> Downsample -> ToFrame(time_window), and Denoise -> Downsample -> SpikingJelly's
    fixed duration: every sample, and a block of samples at once as a store build integrates
    them."""
    chain = (tonic.transforms.Denoise(filter_time=20_000),
             tonic.transforms.Downsample(spatial_factor=0.25))  # fmt: skip
    to_frame = tonic.transforms.ToFrame(sensor_size=(32, 32, 2), time_window=200_000)
    by_bins = FrameSpec(bin_us="200ms", size=32, denoise_us="20ms")
    by_duration = FrameSpec(duration_us="100ms", size=32, denoise_us="20ms")
    all_events = samples(tiny_root)
    expected = []
    for ev in all_events:
        ref = tonic_frames(ev, *chain, to_frame)
        np.testing.assert_array_equal(integrate(ev, by_bins), ref)
        ref = sj_datasets.integrate_events_by_fixed_duration(
            as_sj(tonic_frames(ev, *chain)), 100_000, 32, 32
        )
        np.testing.assert_array_equal(integrate(ev, by_duration), ref)
        expected.append(ref)
    offsets = np.cumsum([0] + [len(ev) for ev in all_events])
    frames, frame_offsets = integrate_samples(np.concatenate(all_events), offsets, by_duration)
    np.testing.assert_array_equal(frame_offsets, np.cumsum([0] + [len(f) for f in expected]))
    np.testing.assert_array_equal(frames, np.concatenate(expected))
