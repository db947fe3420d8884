"""Sliding windows cut from events as they come, by their timestamps: the one cutter of a
recording read chunk by chunk (`sliding_windows`) and of a live stream (`WindowCutter.push`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from dvsgkit.constants import EVENT_DTYPE
from dvsgkit.errors import InputError
from dvsgkit.io.recordings import RecordingError

# A recording whose timestamps span more windows than this is refused before it runs for days:
# 69 hours at the default hop (a corrupt timestamp far ahead would otherwise do it).
MAX_WINDOWS = 1_000_000

Window = tuple[int, int, np.ndarray]  # (start µs, end µs, EVENT_DTYPE events start <= t < end)


class WindowCutter:
    """Windows [first + k*hop, first + k*hop + window) over consecutive EVENT_DTYPE chunks in
    time order, `first` the first event's time. A window is cut once an event at or after its
    end has been pushed (or at `close`: the last window is the last whole one), so only one
    window's events and one chunk are held. Windows in a quiet stretch may hold few events, or
    none. stats["first_t"] is the first event's time, stats["span_us"] the time pushed so far.
    An event that makes the stream span more than MAX_WINDOWS windows raises RecordingError
    naming `where` (the file or stream) before they run."""

    def __init__(self, window_us: int, hop_us: int, stats: dict[str, int], where: str = "") -> None:
        if window_us <= 0 or hop_us <= 0:
            raise InputError(f"window and hop must be > 0 µs, got {window_us} and {hop_us}")
        self.window_us, self.hop_us, self.stats, self.where = window_us, hop_us, stats, where
        # Events pushed and still needed are buf[head:tail]; buf_t holds their t, contiguous
        # (searching a strided view copies). A push writes after tail, so the windows given
        # out (views before tail) stay as they are; a full buffer is replaced, not overwritten.
        self.buf = np.empty(0, EVENT_DTYPE)
        self.buf_t = np.empty(0, np.int64)
        self.head = self.tail = 0
        self.first: int | None = None
        self.k, self.t_max, self.seen = 0, -1, 0

    @property
    def next_end(self) -> int | None:
        """The end of the next window (None before the first event): an event at or after it
        closes that window."""
        return None if self.first is None else self.first + self.k * self.hop_us + self.window_us

    def push(self, chunk: np.ndarray) -> Iterator[Window]:
        """Take the next chunk (its events not earlier than those pushed before) and return the
        windows it closes; take them all before the next push."""
        if not len(chunk):
            return iter(())
        t = np.ascontiguousarray(chunk["t"])
        if self.first is None:
            self.first = self.stats["first_t"] = int(t[0])
        # An event here makes window MAX_WINDOWS + 1 whole, by the stream's end at last.
        bound = self.first + MAX_WINDOWS * self.hop_us + self.window_us - 1
        if int(t[-1]) >= bound:
            i = int(np.argmax(t >= bound))
            raise RecordingError(
                f"{self.where}: event {self.seen + i} (t {int(t[i])} µs) lies "
                f"{(int(t[i]) - self.first) / 1e6:g} s after the first event: more than "
                f"{MAX_WINDOWS:,} windows every {self.hop_us / 1e6:g} s; check that timestamp, "
                "or give a longer --hop"
            )
        self.t_max = int(t[-1])
        self.seen += len(t)
        self._append(chunk, t)
        return self._cut(self.t_max)  # an event at t_max is in: windows ending by it are whole

    def _append(self, chunk: np.ndarray, t: np.ndarray) -> None:
        n, a, b = len(t), self.head, self.tail
        if b + n > len(self.buf):  # room for more pushes of this size before the next copy
            size = (b - a) + n + max(n, b - a)
            buf, buf_t = np.empty(size, EVENT_DTYPE), np.empty(size, np.int64)
            buf[: b - a], buf_t[: b - a] = self.buf[a:b], self.buf_t[a:b]
            self.buf, self.buf_t, self.head, self.tail = buf, buf_t, 0, b - a
        self.buf[self.tail : self.tail + n], self.buf_t[self.tail : self.tail + n] = chunk, t
        self.tail += n

    def close(self) -> Iterator[Window]:
        """The windows that the end of the stream makes whole (those ending by its last event)."""
        return iter(()) if self.first is None else self._cut(self.t_max + 1)

    def _cut(self, limit: int) -> Iterator[Window]:
        assert self.first is not None
        self.stats["span_us"] = self.t_max + 1 - self.first
        while self.first + self.k * self.hop_us + self.window_us <= limit:
            start = self.first + self.k * self.hop_us
            end = start + self.window_us
            held = self.buf_t[self.head : self.tail]
            lo, hi = self.head + np.searchsorted(held, [start, end], side="left")
            yield start, end, self.buf[lo:hi]
            self.k += 1  # drop what no later window needs
            self.head += int(np.searchsorted(held, start + self.hop_us, side="left"))


def sliding_windows(
    chunks: Iterable[np.ndarray],
    window_us: int,
    hop_us: int,
    stats: dict[str, int],
    where: str = "",
) -> Iterator[Window]:
    """The windows of a recording given as consecutive EVENT_DTYPE chunks in time order (as
    `iter_recording(path, time_order=True)` checks), each yielded as soon as the chunks read
    make it whole (`WindowCutter`)."""
    cutter = WindowCutter(window_us, hop_us, stats, where)
    for chunk in chunks:
        yield from cutter.push(chunk)
    yield from cutter.close()
