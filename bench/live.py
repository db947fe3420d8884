"""`dvsgkit predict --live` at 1 M events/s on 127.0.0.1: latency from a window's last event to
its printed prediction (median, 95th percentile), windows per second, events lost.

    taskset -c 0,1 .venv/bin/python bench/live.py [--checkpoint runs/demo/.../checkpoint_max.pth]

Runs on 2 CPU cores (pinned to them where it can be; `predict_live` gives torch one thread and
leaves the other core to its receiving thread). Without --checkpoint it first trains the demo's
network (`dvsgkit demo`'s recipe: 16 channels, T=8) for one epoch on a tiny synthetic set (a
minute): the work per window, and so the latency, is that of the demo's trained network whatever
its weights. The stream: the pixels of a synthetic recording, one event every 1e6 / --rate µs of
its clock for --seconds, sent by another process as a camera would (faery's format, 100 events a
datagram, each datagram once its last event is due) to `predict_live` in this process, which
prints a line per window as `dvsgkit predict --live` does. Latency is measured twice, on the one
monotonic clock of the machine: from the sending of the datagram that holds the window's last
event (the sender records it) to the window's printed line, and as the live run measures it
itself (from the arrival of the event that closes the window). Events lost: sent but not
received (the kernel's count of datagrams it dropped is printed too).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the dvsgkit command sets it

from dvsgkit.io.recordings import iter_recording  # noqa: E402
from dvsgkit.io.udp import send  # noqa: E402
from dvsgkit.predict.live import predict_live  # noqa: E402
from dvsgkit.synth import write_recording  # noqa: E402

PER_DATAGRAM = 100  # faery's default


def stream(folder: Path, rate: float, seconds: float) -> np.ndarray:
    """EVENT_DTYPE events at exactly `rate` per second for `seconds`: a synthetic recording's
    pixels and polarities in their order (repeated as needed), one every 1e6 / rate µs."""
    write_recording(folder, "user30_lab", np.random.default_rng(0), 100_000)
    source = np.concatenate(list(iter_recording(folder / "user30_lab.aedat")))
    n = int(rate * seconds) // PER_DATAGRAM * PER_DATAGRAM  # whole datagrams
    events = source[np.arange(n) % len(source)]
    events["t"] = 1_000_000 + (np.arange(n) * 1e6 / rate).astype(np.int64)
    return events


def sender(events: np.ndarray, address: tuple[str, int], out: Path) -> None:
    """Send `events` in real time in faery's format, PER_DATAGRAM a datagram (`udp.send`: each
    once its last event has happened, as a camera sends them), and save when each left."""
    np.save(out, send(events, address, PER_DATAGRAM, speed=1))


def demo_network(folder: Path) -> Path:
    """The demo's network (DEMO_CONFIG: 16 channels, T=8) trained one epoch on one synthetic
    recording per split: its best checkpoint."""
    import dataclasses

    from dvsgkit.config import TrainConfig
    from dvsgkit.demo import DEMO_CONFIG
    from dvsgkit.frames import FrameSpec
    from dvsgkit.framestore.build import build_frame_store
    from dvsgkit.run import BEST
    from dvsgkit.synth import write_synthetic_dataset
    from dvsgkit.train import train

    root = folder / "data"
    write_synthetic_dataset(root, seed=0, train_trials=1, test_trials=1, events_per_sample=2000)
    build_frame_store(root, FrameSpec(DEMO_CONFIG["T"], "number"), workers=1, progress=False)
    config = TrainConfig(root=str(root), out_dir=str(folder / "runs"), progress=False,
                         **DEMO_CONFIG)  # fmt: skip
    config = dataclasses.replace(config, epochs=1, T_max=1)
    return train(config).run_dir / BEST


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--rate", type=float, default=1e6, help="events per second")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--window", type=int, default=1_500_000, help="µs")
    ap.add_argument("--hop", type=int, default=250_000, help="µs")
    ap.add_argument("--port", type=int, default=47_777)
    args = ap.parse_args()
    torch.set_num_threads(2)
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 2:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = args.checkpoint or demo_network(folder)
        events = stream(folder, args.rate, args.seconds)
        address = ("127.0.0.1", args.port)
        process = multiprocessing.get_context("fork").Process(
            target=sender, args=(events, address, folder / "sent.npy")
        )
        stop, printed = threading.Event(), []

        def start(line: str) -> None:  # `predict_live` listens: start sending, stop after
            print(line, flush=True)
            if not line.startswith("listening"):  # a warning of bad input
                return
            process.start()

            def wait() -> None:
                process.join()
                time.sleep(0.5)
                stop.set()

            threading.Thread(target=wait, daemon=True).start()

        def echo(line: str) -> None:
            print(line, flush=True)
            printed.append(time.perf_counter())

        summary = predict_live(
            checkpoint, f"udp://{address[0]}:{address[1]}", (128, 128), window_us=args.window,
            hop_us=args.hop, out_dir=folder / "out", device="cpu", echo=echo, note=start,
            stop=stop,
        )  # fmt: skip
        print(summary.line())
        sent = np.load(folder / "sent.npy")  # [D] when datagram d left
        first = int(events["t"][0])
        ends = first + args.window + args.hop * np.arange(len(printed))  # [K] window ends
        last_event = np.searchsorted(events["t"], ends, side="left") - 1  # [K] index
        e2e = (np.array(printed) - sent[last_event // PER_DATAGRAM]) * 1e3  # [K] ms
        own = np.array(summary.latencies) * 1e3
        # The windows an event closed; the last is made whole only by the stop, 0.5 s after the
        # sender's end (a live stream's next event would close it): its latency is left out.
        closed = ends <= int(events["t"][-1])  # [K]
        e2e, own = e2e[closed], own[closed]
        # windows classified per second, from the first printed line to the last of those an
        # event closed (the stream closes one every --hop: 4/s at the defaults)
        lines = np.array(printed)[closed]
        rate = (len(lines) - 1) / (lines[-1] - lines[0]) if len(lines) > 1 else 0.0
        lost = len(events) - summary.counts["received"]
        print(
            f"\nrate {args.rate / 1e6:g} M events/s for {args.seconds:g} s, window "
            f"{args.window / 1e6:g} s every {args.hop / 1e6:g} s, {len(printed)} windows "
            f"({int((~closed).sum())} closed by the stop, not by an event: left out below)"
        )
        print("| measured from | median | p95 | max |")
        print("|---|---|---|---|")
        for label, ms in (
            ("the window's last event sent", e2e),
            ("its closing event received", own),
        ):
            print(
                f"| {label} | {np.median(ms):.0f} ms | {np.percentile(ms, 95):.0f} ms | "
                f"{ms.max():.0f} ms (window {int(ms.argmax())}) |"
            )
        print(f"windows/s: {rate:.2f} (one every --hop: {1e6 / args.hop:g}); events lost: "
              f"{lost:,} of {len(events):,} (the kernel dropped {summary.kernel_drops} "
              "datagrams)")  # fmt: skip


if __name__ == "__main__":
    main()
