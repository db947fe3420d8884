"""`dvsgkit.predict.windows`: sliding windows cut as the recording streams, frames as in
training (the checkpoint's FrameSpec), and --windows labels equal to `dvsgkit evaluate`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dvsgkit.frames import FrameSpec
from dvsgkit.io.aedat_writer import write_aedat
from dvsgkit.io.labels import read_labels
from dvsgkit.io.recordings import iter_recording
from dvsgkit.model.inference import for_inference
from dvsgkit.predict.cutting import MAX_WINDOWS, WindowCutter, sliding_windows
from dvsgkit.predict.windows import (
    DEFAULT_BATCH,
    Prediction,
    checkpoint_frames,
    default_batch,
    load_checkpoint_net,
    predict_recording,
)

T = 4  # the trained network's (conftest)
Events = Callable[..., np.ndarray]


def test_checkpoint_frames_are_the_recorded_ones_with_the_options_over_them() -> None:
    """A dvsgkit checkpoint records its frames (as meta["frames"] or as T and split_by); a
    SpikingJelly one records none: 16 by number. -T and --split-by override either."""
    assert checkpoint_frames({"T": 8, "split_by": "time"}) == FrameSpec(8, "time")
    assert checkpoint_frames({"frames": FrameSpec(8, "time"), "T": 8}) == FrameSpec(8, "time")
    assert checkpoint_frames({"T": None, "split_by": None}) == FrameSpec(16, "number")
    assert checkpoint_frames({"T": 8, "split_by": "time"}, T=4) == FrameSpec(4, "time")
    assert checkpoint_frames({"T": None}, split_by="time") == FrameSpec(16, "time")
    with pytest.raises(ValueError, match="split_by must be one of number, time"):
        checkpoint_frames({"T": 8}, split_by="space")


@pytest.mark.parametrize("chunk", [7, 100, 10_000])
def test_sliding_windows_match_a_whole_array_cut(chunk: int, events_at: Events) -> None:
    """Whatever the chunking, window k holds exactly the events with start <= t < end, and the
    windows run from the first event to the last whole window."""
    rng = np.random.default_rng(1)
    ev = events_at(np.sort(rng.integers(1000, 21_000, 3000)))
    stats: dict[str, int] = {}
    chunks = [ev[a : a + chunk] for a in range(0, len(ev), chunk)]
    got = list(sliding_windows(chunks, 3000, 1000, stats))
    first, last = int(ev["t"][0]), int(ev["t"][-1])
    assert stats["first_t"] == first and stats["span_us"] == last + 1 - first
    assert len(got) == (last + 1 - first - 3000) // 1000 + 1
    for k, (start, end, events) in enumerate(got):
        assert (start, end) == (first + 1000 * k, first + 1000 * k + 3000)
        assert np.array_equal(events, ev[(ev["t"] >= start) & (ev["t"] < end)])


def test_sliding_windows_stream(events_at: Events) -> None:
    """A window is cut as soon as the chunks read reach its end: the recording is never read
    whole, and what is held is one window plus one chunk."""
    ev = events_at(np.arange(0, 100_000, 10))  # 10 000 events over 0.1 s
    read = []

    def chunks():
        for a in range(0, len(ev), 500):
            read.append(a)
            yield ev[a : a + 500]

    stats: dict[str, int] = {}
    windows = sliding_windows(chunks(), 10_000, 10_000, stats)
    start, end, events = next(windows)
    assert (start, end, len(events)) == (0, 10_000, 1000)
    assert len(read) == 3  # events up to t = 14 990 read: enough to know [0, 10 000) is whole
    assert sum(1 for _ in windows) == 8 and len(read) == 20  # the last ends at 90 000


def test_a_timestamp_far_ahead_is_refused_before_its_windows_run(events_at: Events) -> None:
    """Quiet windows are classified, so a corrupt timestamp 32 years ahead would make 10**12 of
    them: refused when it is read, naming the file and the event."""
    ev = events_at(np.array([0, 10, 20, 30, 10**15]))
    windows = sliding_windows([ev[:3], ev[3:]], 1000, 1000, {}, where="rec.npz")
    with pytest.raises(ValueError) as err:
        list(windows)
    assert str(err.value) == (
        "rec.npz: event 4 (t 1000000000000000 µs) lies 1e+09 s after the first event: more than "
        f"{MAX_WINDOWS:,} windows every 0.001 s; check that timestamp, or give a longer --hop"
    )
    edge = events_at(np.array([0, MAX_WINDOWS * 1000 + 998]))  # window 10**6 + 1 is not whole
    assert sum(1 for _ in sliding_windows([edge], 1000, 1000, {})) == MAX_WINDOWS
    edge["t"][1] += 1  # it is
    with pytest.raises(ValueError, match=f"event 1 .* more than {MAX_WINDOWS:,} windows"):
        next(sliding_windows([edge], 1000, 1000, {}))


def _assert_labels_mode_equals_evaluate(
    root: Path, ckpt: Path, recording: tuple[Path, Path]
) -> Prediction:
    """predict --windows labels on the test recording of `root` gives the very labels, rates
    and predictions that `dvsgkit evaluate` gives the test samples of ROOT's frame store."""
    from dvsgkit.data import make_loader
    from dvsgkit.evaluate import evaluate, predict
    from dvsgkit.framestore.build import build_frame_store, frame_store_path

    build_frame_store(
        root, FrameSpec(T, "number"), workers=1, progress=False
    )  # as it is, when it is
    net, meta = load_checkpoint_net(ckpt)
    loader = make_loader(frame_store_path(root, FrameSpec(T, "number")), "test", 16, shuffle=False,
                         drop_last=False)  # fmt: skip
    labels, preds, _ = predict(net, loader, "cpu")
    with torch.inference_mode():
        rates = torch.cat([net(x) for x, _ in loader]).numpy()
    aedat, csv = recording
    # as the CLI runs it: step by step, channels-last, 4 windows a batch
    ours = predict_recording(for_inference(net, "cpu"), meta, aedat, labels=csv, mode="labels")
    assert np.array_equal(ours.window_labels(), labels)
    assert np.array_equal(ours.preds, preds)
    np.testing.assert_array_equal(ours.rates, rates)
    result = evaluate(ckpt, root=root, progress=False)
    assert ours.score["window_accuracy"] == pytest.approx(result.accuracy)
    return ours


def test_windows_labels_equal_evaluate(
    trained: tuple[Path, Path], recording: tuple[Path, Path]
) -> None:
    """--windows labels classifies the very samples `dvsgkit evaluate` scores, with the same
    frames and so the same firing rates and predictions."""
    ours = _assert_labels_mode_equals_evaluate(*trained, recording)
    assert len(set(ours.preds.tolist())) > 1  # a net that answers one class would prove nothing


def test_quiet_stretches_are_classified_as_the_frame_store_integrates_them(
    trained: tuple[Path, Path], tmp_path: Path, recording_of: Callable
) -> None:
    """A recording falls quiet for 12.8 s: windows there hold a few events or none. Each is
    still classified, from the frames the frame rule gives (all events in the last frame, or
    none), and --windows labels equals evaluate on gestures of 2 events and of none."""
    import shutil

    from dvsgkit.constants import EXTRACT_DIR
    from dvsgkit.predict.outputs import summary

    trained_root, ckpt = trained
    root = tmp_path / "quiet"
    shutil.copytree(trained_root / EXTRACT_DIR, root / EXTRACT_DIR)
    aedat, csv = recording_of(root)
    gestures = read_labels(csv)
    events = np.concatenate(list(iter_recording(aedat)))
    t = events["t"]
    gap = (t >= gestures[0]["end"]) & (t < gestures[2]["end"])  # gestures 1 and 2, and between
    kept = np.flatnonzero(gap & (t >= gestures[1]["start"]))[:2]  # 2 events of gesture 1
    gap[kept] = False
    write_aedat(aedat, events[~gap])
    ours = _assert_labels_mode_equals_evaluate(root, ckpt, (aedat, csv))
    assert ours.counts[1] == 2 and ours.counts[2] == 0 and (ours.counts[3:] >= T).all()

    net, meta = load_checkpoint_net(ckpt)
    pred = predict_recording(for_inference(net, "cpu"), meta, aedat, window_us=1_500_000,
                             hop_us=250_000)  # fmt: skip
    first, last = int(t[0]), int(t[~gap][-1])
    k = (last + 1 - first - 1_500_000) // 250_000 + 1
    assert pred.starts.tolist() == [first + 250_000 * i for i in range(k)]  # every window
    inside = (pred.starts >= gestures[0]["end"]) & (pred.ends <= gestures[2]["end"])
    assert inside.sum() > 40 and (pred.counts[inside] <= 2).all()
    assert (pred.counts[inside] == 0).any() and (pred.counts[inside] == 2).any()
    assert np.isfinite(pred.rates).all() and pred.few_events == int((pred.counts < T).sum())
    assert f"({pred.few_events} with fewer than T={T} events)" in summary(pred)


def test_event_array_files_predict_like_the_aedat(
    trained: tuple[Path, Path], recording: tuple[Path, Path], tmp_path: Path, shortened: Callable
) -> None:
    """The same events as .npz (Tonic's dtypes) and as .h5 give the same windows and rates."""
    import h5py

    _, ckpt = trained
    net, meta = load_checkpoint_net(ckpt)
    aedat, _ = recording
    short = shortened(aedat, tmp_path / "short.aedat", 8_000_000)  # 8 s are enough here
    events = np.concatenate(list(iter_recording(short)))
    np.savez(tmp_path / "short.npz", t=events["t"], x=events["x"].astype(np.int16),
             y=events["y"].astype(np.int16), p=events["p"].astype(bool))  # fmt: skip
    with h5py.File(tmp_path / "short.h5", "w") as f:
        for name in "txyp":
            f[name] = events[name]
    runs = [
        predict_recording(
            net, meta, tmp_path / f"short{s}", window_us=2_000_000, hop_us=1_000_000
        )  # fmt: skip
        for s in (".aedat", ".npz", ".h5")
    ]
    for other in runs[1:]:
        assert np.array_equal(other.starts, runs[0].starts)
        assert np.array_equal(other.counts, runs[0].counts)
        np.testing.assert_array_equal(other.rates, runs[0].rates)
    first, last = int(events["t"][0]), int(events["t"][-1])
    assert len(runs[0].starts) == (last + 1 - first - 2_000_000) // 1_000_000 + 1 == 6


def test_windows_of_a_ragged_spec_are_rated_over_their_own_frames(
    trained: tuple[Path, Path], recording: tuple[Path, Path]
) -> None:
    """Frames of a fixed duration (a --duration checkpoint's): each window has as many frames
    as it needs, the windows of a batch are padded to the longest, and each window's rates are
    those of the network run on that window's frames alone."""
    from dvsgkit.frames import integrate

    _, ckpt = trained
    net, meta = load_checkpoint_net(ckpt)
    spec = FrameSpec(duration_us="200ms")
    aedat, csv = recording
    ours = predict_recording(for_inference(net, "cpu"), meta, aedat, labels=csv, mode="labels",
                             frames=spec, batch_size=4)  # fmt: skip
    events = np.concatenate(list(iter_recording(aedat)))
    lengths = set()
    for k, (start, end) in enumerate(zip(ours.starts, ours.ends, strict=True)):
        window = events[(events["t"] >= start) & (events["t"] < end)]
        frames = torch.from_numpy(integrate(window, spec)).float()[None]  # [1, T_k, 2, H, W]
        lengths.add(frames.shape[1])
        with torch.inference_mode():
            alone = net(frames)[0].numpy()
        np.testing.assert_allclose(ours.rates[k], alone, rtol=0, atol=1e-6)
    assert len(lengths) > 1 and ours.few_events == 0  # the batches were padded
    assert 0.0 < float(ours.rates.mean()) < 1.0


def test_pushing_pieces_as_a_stream_gives_the_windows_of_the_whole(events_at: Events) -> None:
    """The live mode pushes whatever has come (datagrams of any size, some empty) into the
    cutter: the windows are those of the recording cut whole, each given out by the first push
    that holds an event at or after its end (`next_end`), the last ones by `close`."""
    rng = np.random.default_rng(5)
    ev = events_at(np.sort(rng.integers(0, 40_000, 5000)))
    whole = list(sliding_windows([ev], 4000, 1500, {}))
    cutter, stats = WindowCutter(4000, 1500, {}), {}
    assert cutter.next_end is None
    got, cuts = [], np.sort(rng.integers(0, len(ev), 300))
    for piece in np.split(ev, cuts):
        end = cutter.next_end
        out = list(cutter.push(piece))
        closes = end is not None and len(piece) > 0 and int(piece["t"][-1]) >= end
        assert bool(out) == closes or (end is None and bool(out))
        got += out
    got += list(cutter.close())
    assert len(got) == len(whole) > 20
    for (s1, e1, w1), (s2, e2, w2) in zip(got, whole, strict=True):
        assert (s1, e1) == (s2, e2) and np.array_equal(w1, w2)
    with pytest.raises(ValueError, match="window and hop must be > 0 µs, got 4000 and 0"):
        WindowCutter(4000, 0, stats)


def test_the_default_batch_is_the_cpus_on_the_cpu_and_a_gpus_on_any_other_device() -> None:
    """Files and the live mode alike: "cpu" or a CPU torch.device get the CPU's batch; "cuda",
    "cuda:1", a CUDA torch.device and any other device type a GPU's."""
    devices = ["cpu", torch.device("cpu"), "cuda", "cuda:1", torch.device("cuda", 0), "mps"]
    cpu, gpu = DEFAULT_BATCH["cpu"], DEFAULT_BATCH["cuda"]
    assert [default_batch(d) for d in devices] == [cpu, cpu, gpu, gpu, gpu, gpu]
