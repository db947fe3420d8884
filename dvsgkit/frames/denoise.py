"""Tonic's background-activity filter (`tonic.functional.denoise_numpy`, `Denoise(filter_time)`),
vectorised: exactly the events it keeps, per sample, at a small fraction of its per-event loop.

Tonic walks the events in recorded order with a timestamp memory per pixel, starting at F
(filter_time) and set to t + F at each event; an event is kept when the memory of one of its 4
neighbours is > t (neighbours outside [0, max x] x [0, max y] of the sample are skipped). So an
event is kept iff the last earlier event (in recorded order) at some neighbour has
t_j + F > t, or that in-bounds neighbour has not fired yet and t < F.
"""

from __future__ import annotations

import numpy as np

TABLE_CELLS = 1 << 18  # cells of the fast path's tables: 1 MiB each, in cache
NONE = np.iinfo(np.int32).min // 2  # "no event here" in the table of times
DENSE = 64  # events per time slice from which the fast path beats the general one


def denoise_keep(x: np.ndarray, y: np.ndarray, t: np.ndarray, filter_time: int) -> np.ndarray:
    """bool [E]: which events of one sample `denoise_numpy(events, filter_time)` keeps."""
    if t.size == 0:
        return np.zeros(0, bool)
    span = int(t[-1]) - int(t[0])
    small = span < 2**30 and filter_time < 2**30  # the fast path's int32 times
    ordered = small and int(t[0]) >= 0 and bool((t[1:] >= t[:-1]).all())
    if ordered and t.size >= DENSE * (span // filter_time + 1):
        return _keep_ordered(x, y, t, filter_time)
    return _keep_any(x, y, t, filter_time)


def denoise_many(
    events: dict[str, np.ndarray], offsets: np.ndarray, filter_time: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each of S concatenated samples filtered on its own (as a Tonic transform sees one
    sample): the kept events (every field of `events`) and their offsets int64 [S + 1]."""
    keep = np.zeros(events["x"].size, bool)
    base = int(offsets[0])
    for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
        part = slice(a - base, b - base)
        keep[part] = denoise_keep(events["x"][part], events["y"][part], events["t"][part],
                                  filter_time)  # fmt: skip
    taken = np.zeros(keep.size + 1, np.int64)
    np.cumsum(keep, out=taken[1:])
    return {name: column[keep] for name, column in events.items()}, taken[offsets - base]


def _in_bounds_neighbour(x: np.ndarray, y: np.ndarray, W: int, H: int) -> np.ndarray:
    return (x > 0) | (x < W - 1) | (y > 0) | (y < H - 1)


def _keep_any(x: np.ndarray, y: np.ndarray, t: np.ndarray, F: int) -> np.ndarray:
    """Any order of timestamps: for each neighbour direction, the last earlier event at that
    pixel by one search among the events sorted by (pixel, index)."""
    n = t.size
    x, y, t = x.astype(np.int64), y.astype(np.int64), t.astype(np.int64)
    W, H = int(x.max()) + 1, int(y.max()) + 1
    S = H + 2  # a ring of never-fired pixels around the sample's box
    pixel = (x + 1) * S + (y + 1)
    order = np.argsort(pixel, kind="stable")
    keys = pixel[order] * n + order  # sorted: by pixel, then recorded order
    keep = np.zeros(n, bool)
    for step, inside in ((-S, x > 0), (S, x < W - 1), (-1, y > 0), (1, y < H - 1)):
        target = pixel + step
        last = np.searchsorted(keys, target * n + np.arange(n)) - 1  # last key before (q, i)
        hit = last >= 0
        hit[hit] = keys[last[hit]] // n == target[hit]
        memory = np.where(hit, t[order[np.maximum(last, 0)]] + F, F)
        keep |= inside & (memory > t)
    return keep


def _keep_ordered(x: np.ndarray, y: np.ndarray, t: np.ndarray, F: int) -> np.ndarray:
    """Timestamps in order (0 <= t; span and F < 2**30 µs): the last earlier event at a neighbour is
    the latest one, so an event is kept iff a neighbour fired within F before it (or it comes
    before t = F). Time slices of width F: a candidate lies in the event's slice (any earlier
    one) or the slice before (one later than t - F). Per group of slices, tables [slice,
    pixel] of the first index and the last time there; 4 neighbour look-ups in each."""
    n = t.size
    W, H = int(x.max()) + 1, int(y.max()) + 1
    S = H + 2
    P = (W + 2) * S
    pixel = (x.astype(np.int32) + 1) * S + (y.astype(np.int32) + 1)
    rel = (t - t[0]).astype(np.int32)  # µs since the first event
    slice_ = rel // np.int32(F)
    slices = int(slice_[-1]) + 1
    G = min(max(2, TABLE_CELLS // P - 1), slices)  # slices per group (>= 2: see `last`)
    edges = np.arange(0, slices + G, G)
    starts, befores = np.searchsorted(slice_, edges), np.searchsorted(slice_, edges - 1)
    # Row r of a group starting at slice g0 is slice g0 - 1 + r. `last` is never cleared: what
    # an older group left lies >= 2 slices back, more than F before any event looking at it.
    last = np.full((G + 1) * P, NONE, np.int32)
    first = np.full((G + 1) * P, n, np.int32)
    index = np.arange(n, dtype=np.int32)
    steps = (-S, S, -1, 1)
    # Views such that view[c] is the table at cell c + P + S + step (same slice) or c + S + step
    # (the slice before) for c = cell - P - S: look-ups without shifted index arrays.
    same = [first[P + S + d :] for d in steps]
    before = [last[S + d :] for d in steps]
    keep = np.empty(n, bool)
    for g in range(edges.size - 1):
        lo, a, b = befores[g], starts[g], starts[g + 1]
        if a == b:
            continue
        cell = slice_[lo:b] - np.int32(edges[g] - 1)
        cell *= np.int32(P)
        cell += pixel[lo:b]
        np.maximum.at(last, cell, rel[lo:b])
        np.minimum.at(first, cell, index[lo:b])
        c = cell[a - lo :] - np.int32(P + S)
        found = np.take(same[0], c)
        for view in same[1:]:
            np.minimum(found, np.take(view, c), out=found)
        ok = found < index[a:b]  # an earlier event at a neighbour, in this slice
        latest = np.take(before[0], c)
        for view in before[1:]:
            np.maximum(latest, np.take(view, c), out=latest)
        ok |= latest > rel[a:b] - np.int32(F)  # or one in the slice before, within F
        keep[a:b] = ok
        first[cell] = n
    early = t < F  # Tonic's memory starts at F: before t = F any in-bounds neighbour counts
    if early.any():
        keep[early] |= _in_bounds_neighbour(x[early], y[early], W, H)
    return keep
