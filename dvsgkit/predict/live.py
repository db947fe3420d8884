"""`dvsgkit predict --live`: the windows of a UDP event stream, cut by the events' timestamps
exactly as from a file (`WindowCutter`), each classified as soon as it closes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dvsgkit.constants import CLASS_NAMES
from dvsgkit.errors import OUT_DIR_FIX, storage_errors
from dvsgkit.fs import make_folder
from dvsgkit.io.roi import Roi, check_roi, default_roi, to_dvs128
from dvsgkit.io.udp import Datagram, Receiver, decode, parse_udp_url
from dvsgkit.predict.cutting import Window, WindowCutter
from dvsgkit.predict.outputs import DEFAULT_OUT_DIR, window_fields
from dvsgkit.predict.windows import (
    DEFAULT_HOP_US,
    DEFAULT_WINDOW_US,
    checkpoint_frames,
    classify,
    default_batch,
    load_checkpoint_net,
)

LIVE_FILE = "live_predictions.jsonl"
POLL_S = 0.05  # the longest the loop waits for a datagram before it looks at the clock again
# Datagrams come every 0.1 ms at 1 M events/s: taking them 5 ms at a time costs at most 5 ms of
# latency and saves the per-batch work of ~50 batches (bench/live.py).
GATHER_S = 0.005
# CPUs left to the receiving thread (and a sender on this machine) rather than to torch: on 2
# cores, one window of the demo's network takes ~15 ms on one thread and 40+ ms on two that
# share a core with the receiver (bench/live.py).
LIVE_SPARE_CPUS = 1
COUNTS = ("datagrams", "received", "malformed", "off_sensor", "out_of_order", "outside_roi")
# What the first of each kind of bad input gets said (once, as it comes; the summary counts all).
WARNINGS = {
    "malformed": "datagrams that are not whole t64_x16_y16_on8 records (13 bytes each) come; "
    "send that format (faery's default; not t32_x16_y15_on1)",
    "off_sensor": "events lie off the {width}x{height} sensor given by --sensor; give the "
    "camera's own size",
    "out_of_order": "events come earlier than events before them (a reordered network, or a "
    "sender that restarted its clock: restart this too)",
}


@dataclass
class LiveSummary:
    """What a live run saw: counts of COUNTS, the windows' latencies (s, from the arrival of
    the event that closed each window, or from the stop for the last ones, to its printed
    line), the seconds from the first event to the stop, and the datagrams the kernel dropped
    (None where it cannot say)."""

    url: str
    sensor: tuple[int, int]
    roi: Roi
    path: Path
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    kernel_drops: int | None = None

    def line(self) -> str:
        """One line for the terminal."""
        c, n = self.counts, len(self.latencies)
        line = f"{self.url}: {n} windows"
        if self.seconds > 0:
            line += f" in {self.seconds:.1f} s ({n / self.seconds:.2f}/s)"
        line += f" from {c['received']:,} events in {c['datagrams']:,} datagrams"
        if n:
            median, p95 = np.percentile(np.array(self.latencies) * 1e3, [50, 95])
            line += f"; latency median {median:.0f} ms, p95 {p95:.0f} ms"
        width, height = self.sensor
        line += (
            f"; dropped: {c['out_of_order']:,} events out of order, {c['malformed']:,} "
            f"malformed datagrams, {c['off_sensor']:,} events off the {width}x{height} sensor, "
            f"{c['outside_roi']:,} outside the region {self.roi}"
        )
        if self.kernel_drops is not None:
            line += f", {self.kernel_drops:,} datagrams lost in a full receive buffer"
        return line


def window_line(start_s: float, end_s: float, rates: np.ndarray, events: int, ms: float) -> str:
    """A window's printed line: its time (s from the first event), the gesture, its firing
    rate (the confidence), events, and the latency."""
    c = int(np.argmax(rates))
    return (
        f"{start_s:8.2f}-{end_s:.2f} s  {CLASS_NAMES[c]:<27} {float(rates[c]):.2f}  "
        f"{events:>9,} events  {ms:4.0f} ms"
    )


class _Run:
    """One live run's state: the ordering of what came, the cutter, the outputs."""

    def __init__(self, net: Any, frames: Any, device: Any, batch_size: int, summary: LiveSummary,
                 cutter: WindowCutter, echo: Callable[[str], None],
                 note: Callable[[str], None], out: Any) -> None:  # fmt: skip
        self.net, self.frames, self.device, self.batch_size = net, frames, device, batch_size
        self.summary, self.cutter, self.echo, self.note, self.out = summary, cutter, echo, note, out
        self.last_t = -1  # the latest event kept: an earlier one comes out of order
        self.first_arrival: float | None = None
        self.warned: set[str] = set()

    def take(self, datagrams: list[Datagram]) -> None:
        """Decode, keep what is in order and inside the region, push it to the cutter as it
        comes (so that a window's events are in place when it closes: closing it costs only its
        classification) and classify the windows it closes."""
        counts = self.summary.counts
        events, arrivals = decode(datagrams, self.summary.sensor, counts)
        if len(events):
            t = events["t"]
            before = np.maximum.accumulate(np.concatenate([[self.last_t], t[:-1]]))  # [n]
            in_order = t >= before
            counts["out_of_order"] += int(len(t) - in_order.sum())
            events, arrivals = events[in_order], arrivals[in_order]
        self.warn()  # also when a batch held nothing else: malformed datagrams only
        if not len(events):
            return
        self.last_t = int(events["t"][-1])
        mapped, inside = to_dvs128(events, self.summary.roi)
        counts["outside_roi"] += len(events) - len(mapped)
        if not len(mapped):
            return
        arrivals = arrivals[inside]
        if self.first_arrival is None:
            self.first_arrival = float(arrivals[0])
        windows = list(self.cutter.push(mapped))  # closed by the first event at or past its end
        closing = np.searchsorted(mapped["t"], [end for _, end, _ in windows], side="left")
        self.classify(windows, arrivals[closing].tolist())

    def warn(self) -> None:
        """`note` the first of each kind of bad input (WARNINGS)."""
        for kind, text in WARNINGS.items():
            if self.summary.counts[kind] and kind not in self.warned:
                self.warned.add(kind)
                width, height = self.summary.sensor
                self.note(f"{self.summary.url}: {text.format(width=width, height=height)} "
                          "(dropped, counted in the summary)")  # fmt: skip

    def classify(self, windows: list[Window], closed: list[float]) -> None:
        """Classify `windows` (closed at those perf_counter times) in batches; print a line and
        append a JSON line for each."""
        first = self.cutter.first or 0
        for i in range(0, len(windows), self.batch_size):
            part = windows[i : i + self.batch_size]
            starts, ends, counts, rates = classify(
                self.net, part, self.frames, device=self.device, batch_size=len(part)
            )
            for k in range(len(part)):
                start_s, end_s = (starts[k] - first) / 1e6, (ends[k] - first) / 1e6
                latency = time.perf_counter() - closed[i + k]  # to the line's print
                self.echo(window_line(start_s, end_s, rates[k], int(counts[k]), latency * 1e3))
                self.summary.latencies.append(latency)
                record = window_fields(starts[k], ends[k], counts[k], rates[k])
                record["latency_ms"] = round(latency * 1e3, 3)
                with storage_errors(self.summary.path, "write", OUT_DIR_FIX):
                    self.out.write(json.dumps(record) + "\n")
                    self.out.flush()


def predict_live(
    checkpoint: str | os.PathLike[str],
    url: str,
    sensor: tuple[int, int],
    *,
    roi: Roi | None = None,
    window_us: int = DEFAULT_WINDOW_US,
    hop_us: int = DEFAULT_HOP_US,
    duration_us: int | None = None,
    out_dir: str | os.PathLike[str] = DEFAULT_OUT_DIR,
    T: int | None = None,
    split_by: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    echo: Callable[[str], None] = print,
    note: Callable[[str], None] = print,
    stop: threading.Event | None = None,
) -> LiveSummary:
    """Listen on `url` (udp://HOST:PORT) for events of a (width, height) `sensor` in faery's
    UDP format, map `roi` (default: the largest centred square) onto 128 x 128, cut windows of
    `window_us` every `hop_us` by the events' timestamps exactly as `predict_recording` does,
    classify each as soon as it closes, `echo` a line for it and append its JSON line
    (`window_fields` plus latency_ms) to OUT_DIR/live_predictions.jsonl. Runs for
    `duration_us`, until `stop` is set or Ctrl-C; then the windows that the last event makes
    whole are classified too. `note` gets the line saying it listens, and one for the first of
    each kind of bad input (WARNINGS)."""
    from dvsgkit.device import default_device, parse_device, set_cpu_threads
    from dvsgkit.model.inference import for_inference

    host, port = parse_udp_url(url)
    roi = check_roi(roi or default_roi(sensor), sensor, url)
    dev = parse_device(device or default_device())
    cutter = WindowCutter(window_us, hop_us, {}, where=url)
    net, meta = load_checkpoint_net(Path(checkpoint))
    net, frames = for_inference(net, dev), checkpoint_frames(meta, T, split_by)
    batch_size = batch_size or default_batch(dev)
    path = make_folder(Path(out_dir), OUT_DIR_FIX) / LIVE_FILE
    summary = LiveSummary(url, tuple(sensor), roi, path)  # type: ignore[arg-type]
    stop = stop or threading.Event()
    with contextlib.ExitStack() as stack:
        if dev.type == "cpu":  # a CPU for the receiving thread, torch's threads as they were after
            import torch

            stack.callback(torch.set_num_threads, torch.get_num_threads())
            set_cpu_threads(spare=LIVE_SPARE_CPUS)
        receiver = stack.enter_context(Receiver(host, port))
        with storage_errors(path, "write", OUT_DIR_FIX):
            out = stack.enter_context(open(path, "a", encoding="utf-8"))
        stack.enter_context(_stop_on_ctrl_c(stop))
        run = _Run(net, frames, dev, batch_size, summary, cutter, echo, note, out)
        note(f"listening on {url} for a {sensor[0]}x{sensor[1]} sensor, region {roi}; "
             f"lines go to {path}; Ctrl-C stops")  # fmt: skip
        end = time.monotonic() + duration_us / 1e6 if duration_us else float("inf")
        while not stop.is_set() and time.monotonic() < end:
            run.take(receiver.take(min(POLL_S, max(0.0, end - time.monotonic())), GATHER_S))
        stopped = time.perf_counter()
        run.take(receiver.close())  # what came before the stop, to the last datagram
        last = list(cutter.close())
        run.classify(last, [stopped] * len(last))
    summary.kernel_drops = receiver.dropped
    if run.first_arrival is not None:
        summary.seconds = stopped - run.first_arrival
    return summary


@contextlib.contextmanager
def _stop_on_ctrl_c(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C sets `stop` (the run ends cleanly, with its summary); a second one interrupts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def first(signum: int, frame: Any) -> None:
        stop.set()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
