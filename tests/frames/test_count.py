"""frames.integrate against a per-frame loop that follows docs/reference.md §4 (SpikingJelly)."""

from __future__ import annotations

import numpy as np
import pytest

from dvsgkit.constants import EVENT_DTYPE
from dvsgkit.frames import FrameSpec, integrate, integrate_many

H = W = 128


def reference_ranges(
    t: np.ndarray, T: int, split_by: str, crash: bool = True
) -> list[tuple[int, int]]:
    """SpikingJelly's [j_l, j_r) per frame, written from docs/reference.md §4. Where it crashes (an
    empty time window) raise IndexError, or with crash=False apply dvsgkit's rule: empty window,
    empty frame."""
    n = t.size
    if split_by == "number":
        d = n // T
        ranges = [(i * d, (i + 1) * d) for i in range(T)]
        ranges[-1] = ((T - 1) * d, n)
        return ranges
    dt = (int(t[-1]) - int(t[0])) // T
    ranges = []
    for i in range(T):
        lo = int(t[0]) + i * dt
        inside = np.flatnonzero((t >= lo) & (t < lo + dt))
        if inside.size == 0 and crash:
            raise IndexError("empty time window: the reference crashes here")
        ranges.append((int(inside[0]), int(inside[-1]) + 1) if inside.size else (0, 0))
    later = np.flatnonzero(t >= int(t[0]) + (T - 1) * dt)  # the last frame takes all after
    ranges[-1] = (int(later[0]), n)
    return ranges


def reference_frames(ev: np.ndarray, T: int, split_by: str, crash: bool = True) -> np.ndarray:
    """Per-frame, per-event loop: the slow path the vectorised one must equal."""
    out = np.zeros((T, 2, H, W), dtype=np.int64)
    for i, (lo, hi) in enumerate(reference_ranges(ev["t"], T, split_by, crash)):
        for e in ev[lo:hi]:
            out[i, e["p"], e["y"], e["x"]] += 1
    return out


def make_events(t, x, y, p) -> np.ndarray:
    ev = np.zeros(len(t), dtype=EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["p"] = t, x, y, p
    return ev


def random_events(rng: np.random.Generator, n: int, span: int = 1_000_000) -> np.ndarray:
    t = np.sort(rng.integers(10**9, 10**9 + span, n))
    return make_events(t, rng.integers(0, W, n), rng.integers(0, H, n), rng.integers(0, 2, n))


@pytest.mark.parametrize("split_by", ["number", "time"])
@pytest.mark.parametrize("n", [16, 17, 31, 500, 1237])
@pytest.mark.parametrize("T", [1, 4, 16])
def test_equals_reference_on_random_samples(n: int, T: int, split_by: str) -> None:
    ev = random_events(np.random.default_rng(n * 100 + T), n)
    got = integrate(ev, FrameSpec(T, split_by))
    try:
        np.testing.assert_array_equal(got, reference_frames(ev, T, split_by))
    except IndexError:  # sparse random times left a window empty: an empty frame, not a crash
        np.testing.assert_array_equal(got, reference_frames(ev, T, split_by, crash=False))
        assert split_by == "time" and (got.sum(axis=(1, 2, 3)) == 0).any()


@pytest.mark.parametrize("n", [1, 5, 15])
def test_fewer_events_than_frames_all_land_in_last_frame(n: int) -> None:
    ev = random_events(np.random.default_rng(n), n)
    got = integrate(ev, FrameSpec(16, "number"))
    np.testing.assert_array_equal(got, reference_frames(ev, 16, "number"))
    assert got[:-1].sum() == 0 and got[-1].sum() == n


def test_sensor_corners_and_repeated_pixels() -> None:
    corners = [(0, 0), (127, 0), (0, 127), (127, 127)]
    x = [c[0] for c in corners] * 8
    y = [c[1] for c in corners] * 8
    p = [0, 1] * 16
    ev = make_events(np.arange(32) * 10, x, y, p)
    for split_by in ("number", "time"):
        got = integrate(ev, FrameSpec(4, split_by))
        np.testing.assert_array_equal(got, reference_frames(ev, 4, split_by))
        assert got.sum() == 32
    got = integrate(ev, FrameSpec(1, "number"))[0]
    # Corners cycle with period 4 and polarity with period 2: each corner has 8 events of one
    # polarity; pixel index is [p, y, x].
    assert got[0, 0, 0] == 8 and got[1, 0, 127] == 8 and got[0, 127, 0] == 8
    assert got[1, 127, 127] == 8 and got[1, 0, 0] == 0 and got[0, 0, 127] == 0
    assert got[:, 64, 64].sum() == 0


def test_time_split_empty_windows_give_empty_frames() -> None:
    # Events only at the start and the end: the middle windows are empty (the reference crashes).
    t = np.array([0, 1, 2, 997, 998, 1000])
    ev = make_events(t, [1, 2, 3, 4, 5, 6], [0] * 6, [0, 1, 0, 1, 0, 1])
    with pytest.raises(IndexError):
        reference_frames(ev, 4, "time")
    got = integrate(ev, FrameSpec(4, "time"))
    np.testing.assert_array_equal(
        got, reference_frames(ev, 4, "time", crash=False)
    )  # dt = 250: windows [0,250) [250,500) [500,750) [750,...)
    assert got[0].sum() == 3 and got[1].sum() == 0 and got[2].sum() == 0 and got[3].sum() == 3
    assert got[0, 1, 0, 2] == 1 and got[3, 1, 0, 6] == 1


def test_time_split_last_window_takes_everything_later() -> None:
    # dt = (1003 - 0) // 4 = 250, so the last window [750, 1000) also takes t = 1001..1003.
    t = np.array([0, 260, 510, 760, 1001, 1002, 1003])
    ev = make_events(t, np.arange(7), [9] * 7, [1] * 7)
    got = integrate(ev, FrameSpec(4, "time"))
    np.testing.assert_array_equal(got, reference_frames(ev, 4, "time"))
    assert [int(f.sum()) for f in got] == [1, 1, 1, 4]


def test_all_events_in_one_time_window() -> None:
    # Same timestamp for every event: dt == 0, everything belongs to the last frame.
    ev = make_events([5] * 10, np.arange(10), [3] * 10, [0] * 10)
    got = integrate(ev, FrameSpec(16, "time"))
    assert got[:-1].sum() == 0 and got[-1, 0, 3, :10].tolist() == [1] * 10
    # A burst at the start and one late event: frames 1..T-2 empty, burst in frame 0.
    ev = make_events([0] * 9 + [1600], np.arange(10), [3] * 10, [1] * 10)
    got = integrate(ev, FrameSpec(16, "time"))
    assert got[0].sum() == 9 and got[1:-1].sum() == 0 and got[-1].sum() == 1


@pytest.mark.parametrize("split_by", ["number", "time"])
def test_empty_sample_gives_empty_frames(split_by: str) -> None:
    got = integrate(make_events([], [], [], []), FrameSpec(8, split_by))
    assert got.shape == (8, 2, H, W) and got.sum() == 0


@pytest.mark.parametrize("split_by", ["number", "time"])
def test_integrate_many_equals_one_by_one(split_by: str) -> None:
    rng = np.random.default_rng(7)
    samples = [random_events(rng, n) for n in (0, 3, 40, 1000, 16)]
    events = np.concatenate(samples)
    offsets = np.cumsum([0] + [s.size for s in samples])
    many = integrate_many(events, offsets, FrameSpec(8, split_by))
    for i, s in enumerate(samples):
        np.testing.assert_array_equal(many[i], integrate(s, FrameSpec(8, split_by)))
    # A block that starts in the middle of a bigger array (offsets not starting at 0).
    sub = integrate_many(events[offsets[2] :], offsets[2:], FrameSpec(8, split_by))
    np.testing.assert_array_equal(sub, many[2:])


@pytest.mark.parametrize(
    ("T", "split_by", "match"),
    [(0, "number", "T .* >= 1, got 0"), (-3, "time", "got -3"), (16, "space", "'space'")],
)
def test_bad_parameters(T: int, split_by: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        integrate(make_events([0], [0], [0], [0]), FrameSpec(T, split_by))


@pytest.mark.parametrize(("x", "y", "p"), [(128, 0, 0), (0, 200, 0), (0, 0, 2)])
def test_events_off_the_sensor_are_rejected(x: int, y: int, p: int) -> None:
    with pytest.raises(ValueError, match="outside the 128x128 sensor"):
        integrate(make_events([0, 1], [0, x], [0, y], [0, p]), FrameSpec(2))


def test_offsets_that_do_not_span_the_events_say_which_and_the_fix() -> None:
    events = np.zeros(5, EVENT_DTYPE)
    with pytest.raises(ValueError, match=r"integrate_many: offsets span 7 events \(offsets\[0\] "
                       r"= 0, offsets\[-1\] = 7\) but `events` holds 5; pass the offsets of "
                       r"exactly these events"):  # fmt: skip
        integrate_many(events, np.array([0, 3, 7]), FrameSpec(2))


def test_time_split_out_of_order_timestamps_follow_each_event_time() -> None:
    # Not time-ordered: each event goes to the window of its own timestamp (reference.md §4); one
    # earlier than the first event goes to frame 0, one after the last window to the last frame.
    t = np.array([100, 900, 150, 50, 700, 1100, 400, 500])
    ev = make_events(t, np.arange(8), [0] * 8, [1] * 8)
    got = integrate(ev, FrameSpec(4, "time"))  # t0 = 100, dt = (500 - 100) // 4 = 100
    frame_of = {int(x): int(np.flatnonzero(got[:, 1, 0, x])[0]) for x in range(8)}
    assert frame_of == {0: 0, 1: 3, 2: 0, 3: 0, 4: 3, 5: 3, 6: 3, 7: 3}
    assert got.sum() == 8


def test_blocks_with_empty_samples_and_a_drop_in_time_between_samples() -> None:
    rng = np.random.default_rng(3)
    late, early = random_events(rng, 50), random_events(rng, 60)
    early["t"] -= 10**8  # the next sample starts earlier in time: still each sample in order
    samples = [make_events([], [], [], []), late, make_events([], [], [], []), early]
    many = integrate_many(
        np.concatenate(samples), np.cumsum([0] + [s.size for s in samples]), FrameSpec(4, "time")
    )
    for i, s in enumerate(samples):
        np.testing.assert_array_equal(
            many[i], reference_frames(s, 4, "time", crash=False) if s.size else 0
        )
