"""`dvsgkit predict`: windows cut like the samples, frames as in training, scores, and every bad
input refused with one line naming the file and nothing written."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dvsgkit.constants import EVENT_DTYPE, NUM_CLASSES
from dvsgkit.frames import FrameSpec
from dvsgkit.io.aedat_writer import write_aedat
from dvsgkit.io.labels import read_labels, write_labels
from dvsgkit.io.recordings import iter_recording, parse_duration
from dvsgkit.model.inference import for_inference
from dvsgkit.predict.outputs import CSV_COLUMNS, RATE_COLUMNS
from dvsgkit.predict.windows import (
    Prediction,
    load_checkpoint_net,
    predict_recording,
    sliding_windows,
)
from dvsgkit.samples import dataset_dir, list_recordings
from dvsgkit_cli.main import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T = 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset root, best checkpoint) of a small network trained for 10 epochs on 72 synthetic
    samples at T=4 (~15 s on 2 cores; it learns: ~2/3 of the held-out recording's samples)."""
    from dvsgkit.config import TrainConfig
    from dvsgkit.framestore.build import build_frame_store
    from dvsgkit.run import BEST
    from dvsgkit.synth import write_synthetic_dataset
    from dvsgkit.train import train

    root = tmp_path_factory.mktemp("dvsg")
    write_synthetic_dataset(root, seed=0, train_trials=6, test_trials=1, events_per_sample=3000)
    build_frame_store(root, FrameSpec(T, "number"), workers=1, progress=False)
    config = TrainConfig(T=T, channels=8, batch_size=8, epochs=10, workers=0, device="cpu",
                         opt="adam", lr=1e-2, lr_scheduler="cosalr", T_max=10, root=str(root),
                         out_dir=str(root / "runs"), progress=False)  # fmt: skip
    return root, train(config).run_dir / BEST


def read_predictions_csv(path: Path) -> dict[str, np.ndarray]:
    """A predictions CSV back as columns (numbers as arrays, -1 for an empty true_label)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows and tuple(rows[0]) == CSV_COLUMNS
    out = {c: np.array([row[c] for row in rows]) for c in CSV_COLUMNS}
    for c in ("start_s", *RATE_COLUMNS):
        out[c] = out[c].astype(np.float64)
    for c in ("start_us", "end_us", "events", "predicted", "true_label"):
        out[c] = np.array([int(v) if v else -1 for v in out[c]], dtype=np.int64)
    return out


def _test_recording(root: Path) -> tuple[Path, Path]:
    rec = list_recordings(dataset_dir(root), "test")[0]
    return rec.aedat, rec.labels


def _events(t: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ev = np.zeros(len(t), EVENT_DTYPE)
    ev["t"], ev["p"] = t, rng.integers(0, 2, len(t))
    ev["x"], ev["y"] = rng.integers(0, 128, (2, len(t)))
    return ev


def _shortened(aedat: Path, out: Path, micros: int) -> Path:
    """The first `micros` of a recording, as another AEDAT file."""
    events = np.concatenate(list(iter_recording(aedat)))
    return write_aedat(out, events[events["t"] < events["t"][0] + micros])


@pytest.mark.parametrize(
    ("text", "micros"),
    [("1.5s", 1_500_000), ("250ms", 250_000), ("250000us", 250_000), ("2", 2_000_000),
     (".5 s", 500_000)],
)  # fmt: skip
def test_parse_duration(text: str, micros: int) -> None:
    assert parse_duration(text) == micros


def test_parse_duration_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match=r"--window '1\.5 sec' is not a duration"):
        parse_duration("1.5 sec", "--window")
    with pytest.raises(ValueError, match="must be longer than 0"):
        parse_duration("0s", "--hop")
    assert parse_duration("0s", allow_zero=True) == 0


@pytest.mark.parametrize("chunk", [7, 100, 10_000])
def test_sliding_windows_match_a_whole_array_cut(chunk: int) -> None:
    """Whatever the chunking, window k holds exactly the events with start <= t < end, and the
    windows run from the first event to the last whole window."""
    rng = np.random.default_rng(1)
    ev = _events(np.sort(rng.integers(1000, 21_000, 3000)))
    stats: dict[str, int] = {}
    chunks = [ev[a : a + chunk] for a in range(0, len(ev), chunk)]
    got = list(sliding_windows(chunks, 3000, 1000, stats))
    first, last = int(ev["t"][0]), int(ev["t"][-1])
    assert stats["first_t"] == first and stats["span_us"] == last + 1 - first
    assert len(got) == (last + 1 - first - 3000) // 1000 + 1
    for k, (start, end, events) in enumerate(got):
        assert (start, end) == (first + 1000 * k, first + 1000 * k + 3000)
        assert np.array_equal(events, ev[(ev["t"] >= start) & (ev["t"] < end)])


def test_sliding_windows_stream() -> None:
    """A window is cut as soon as the chunks read reach its end: the recording is never read
    whole, and what is held is one window plus one chunk."""
    ev = _events(np.arange(0, 100_000, 10))  # 10 000 events over 0.1 s
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


def test_a_timestamp_far_ahead_is_refused_before_its_windows_run() -> None:
    """Quiet windows are classified, so a corrupt timestamp 32 years ahead would make 10**12 of
    them: refused when it is read, naming the file and the event."""
    from dvsgkit.predict.windows import MAX_WINDOWS

    ev = _events(np.array([0, 10, 20, 30, 10**15]))
    windows = sliding_windows([ev[:3], ev[3:]], 1000, 1000, {}, where="rec.npz")
    with pytest.raises(ValueError) as err:
        list(windows)
    assert str(err.value) == (
        "rec.npz: event 4 (t 1000000000000000 µs) lies 1e+09 s after the first event: more than "
        f"{MAX_WINDOWS:,} windows every 0.001 s; check that timestamp, or give a longer --hop"
    )
    edge = _events(np.array([0, MAX_WINDOWS * 1000 + 998]))  # window 10**6 + 1 is not whole
    assert sum(1 for _ in sliding_windows([edge], 1000, 1000, {})) == MAX_WINDOWS
    edge["t"][1] += 1  # it is
    with pytest.raises(ValueError, match=f"event 1 .* more than {MAX_WINDOWS:,} windows"):
        next(sliding_windows([edge], 1000, 1000, {}))


def _write_events(path: Path, ev: np.ndarray) -> Path:
    """`ev` as an .aedat, .npz or .h5 file (by the suffix of `path`)."""
    import h5py

    if path.suffix == ".aedat":
        return write_aedat(path, ev)
    if path.suffix == ".npz":
        np.savez(path, **{k: ev[k] for k in "txyp"})
    else:
        with h5py.File(path, "w") as f:
            for k in "txyp":
                f[k] = ev[k]
    return path


@pytest.mark.parametrize("suffix", [".aedat", ".npz", ".h5"])
@pytest.mark.parametrize(
    ("disorder", "index"),
    [("clock reset", 2500), ("shuffled", 8), ("back at a chunk's start", 1000)],
)
def test_recordings_out_of_time_order_are_refused(
    tmp_path: Path, suffix: str, disorder: str, index: int
) -> None:
    """Read in time order (as sliding windows and show read), a recording whose timestamps go
    back is refused at its first such event, by index, whatever the format and chunking."""
    t = np.arange(3000, dtype=np.int64) * 1000
    if disorder == "clock reset":  # a second recording joined after the first
        t[2500:] -= t[2500]
    elif disorder == "shuffled":
        t[7], t[8] = t[8], t[7] - 1
    else:  # event 1000 opens the second chunk of 1000
        t[1000] = t[999] - 1
    path = _write_events(tmp_path / f"rec{suffix}", _events(t))
    assert sum(len(c) for c in iter_recording(path)) == 3000  # read as recorded without the check
    with pytest.raises(ValueError) as err:
        for _ in iter_recording(path, chunk_events=1000, time_order=True):
            pass
    message = str(err.value)
    assert message.startswith(f"{path}: event {index} (t {t[index]} µs) is earlier than"), message
    assert f"(t {t[index - 1]} µs)" in message and "sort them by t" in message


def test_predict_refuses_a_recording_out_of_time_order_and_labels_mode_cuts_it(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """A recording joined from two (its clock goes back): sliding windows would never see the
    second part, so predict refuses in one line naming the file and the event; --windows
    labels cuts each gesture from the whole recording in any order, as `dvsgkit events` does."""
    root, ckpt = trained
    aedat, csv = _test_recording(root)
    events = np.concatenate(list(iter_recording(aedat)))
    joined = np.concatenate([events, events])
    path = write_aedat(tmp_path / "joined.aedat", joined)
    out = tmp_path / "out"
    args = ["predict", str(ckpt), str(path), "--out-dir", str(out), "--device", "cpu"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"Error: {path}: event {len(events)} (t {events['t'][0]} µs)")
    assert not out.exists() or not any(out.iterdir())
    net, meta = load_checkpoint_net(ckpt)
    pred = predict_recording(for_inference(net, "cpu"), meta, path, labels=csv, mode="labels")
    for g, n in zip(read_labels(csv), pred.counts, strict=True):
        assert n == 2 * ((events["t"] >= g["start"]) & (events["t"] < g["end"])).sum() > 0


def _assert_labels_mode_equals_evaluate(root: Path, ckpt: Path) -> Prediction:
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
    aedat, csv = _test_recording(root)
    # as the CLI runs it: step by step, channels-last, 4 windows a batch
    ours = predict_recording(for_inference(net, "cpu"), meta, aedat, labels=csv, mode="labels")
    assert np.array_equal(ours.window_labels(), labels)
    assert np.array_equal(ours.preds, preds)
    np.testing.assert_array_equal(ours.rates, rates)
    result = evaluate(ckpt, root=root, progress=False)
    assert ours.score["window_accuracy"] == pytest.approx(result.accuracy)
    return ours


def test_windows_labels_equal_evaluate(trained: tuple[Path, Path]) -> None:
    """--windows labels classifies the very samples `dvsgkit evaluate` scores, with the same
    frames and so the same firing rates and predictions."""
    ours = _assert_labels_mode_equals_evaluate(*trained)
    assert len(set(ours.preds.tolist())) > 1  # a net that answers one class would prove nothing


def test_quiet_stretches_are_classified_as_the_frame_store_integrates_them(
    trained: tuple[Path, Path], tmp_path: Path
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
    aedat, csv = _test_recording(root)
    gestures = read_labels(csv)
    events = np.concatenate(list(iter_recording(aedat)))
    t = events["t"]
    gap = (t >= gestures[0]["end"]) & (t < gestures[2]["end"])  # gestures 1 and 2, and between
    kept = np.flatnonzero(gap & (t >= gestures[1]["start"]))[:2]  # 2 events of gesture 1
    gap[kept] = False
    write_aedat(aedat, events[~gap])
    ours = _assert_labels_mode_equals_evaluate(root, ckpt)
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


def test_a_spikingjelly_checkpoint_predicts_like_the_original(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """The trained net saved with PythonNet's keys and SpikingJelly's output order (its label
    folders sorted as strings) predicts the same classes; it records no T, so -T is given."""
    from dvsgkit.constants import SPIKINGJELLY_LABEL_ORDER
    from dvsgkit.run.checkpoint import load_checkpoint

    root, ckpt = trained
    ours = load_checkpoint(ckpt)["net"]
    sj = {"fc.2.weight": ours["fc1.weight"]}
    for i in range(5):
        sj[f"conv.{4 * i}.weight"] = ours[f"convs.{i}.weight"]
        for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            sj[f"conv.{4 * i + 1}.{key}"] = ours[f"bns.{i}.{key}"]
    groups = ours["fc2.weight"].reshape(11, 10, -1)
    sj["fc.5.weight"] = groups[list(SPIKINGJELLY_LABEL_ORDER)].reshape(110, -1).clone()
    sj_path = tmp_path / "checkpoint_max.pth"
    torch.save({"net": sj, "epoch": 3, "max_test_acc": 0.5}, sj_path)
    aedat, csv = _test_recording(root)
    outs = {}
    for name, path in (("ours", ckpt), ("sj", sj_path)):
        out = tmp_path / name
        args = ["predict", str(path), str(aedat), "--labels", str(csv), "--windows", "labels",
                "-T", str(T), "--out-dir", str(out), "--device", "cpu"]  # fmt: skip
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        outs[name] = json.loads((out / f"{aedat.stem}_predictions.json").read_text())
    assert outs["sj"]["source"] == "spikingjelly" and outs["sj"]["T"] == T
    assert [w["rates"] for w in outs["sj"]["windows"]] == [
        w["rates"] for w in outs["ours"]["windows"]
    ]


def test_predict_cli_writes_scores_and_learns(trained: tuple[Path, Path], tmp_path: Path) -> None:
    root, ckpt = trained
    aedat, csv = _test_recording(root)
    out = tmp_path / "out"
    args = ["predict", str(ckpt), str(aedat), "--labels", str(csv), "--window", "3s",
            "--hop", "1s", "--out-dir", str(out), "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    stem = aedat.stem
    assert sorted(p.name for p in out.iterdir()) == [
        f"{stem}_predictions.csv",
        f"{stem}_predictions.json",
        f"{stem}_timeline.png",
    ]
    data = json.loads((out / f"{stem}_predictions.json").read_text())
    table = read_predictions_csv(out / f"{stem}_predictions.csv")
    first = min(int(c["t"].min()) for c in iter_recording(aedat))
    last = max(int(c["t"].max()) for c in iter_recording(aedat))
    k = (last + 1 - first - 3_000_000) // 1_000_000 + 1
    assert len(data["windows"]) == len(table["start_us"]) == k
    assert table["start_us"].tolist() == [first + 1_000_000 * i for i in range(k)]
    assert [w["predicted"] for w in data["windows"]] == table["predicted"].tolist()
    rates = np.array([w["rates"] for w in data["windows"]])
    assert rates.shape == (k, NUM_CLASSES)
    assert np.array_equal(rates.argmax(1), table["predicted"])
    # Truth: a window lying whole inside a labelled gesture gets its label, others -1.
    gestures = read_labels(csv)
    for start, end, truth in zip(table["start_us"], table["end_us"], table["true_label"],
                                 strict=True):  # fmt: skip
        inside = gestures[(gestures["start"] <= start) & (gestures["end"] >= end)]
        assert truth == (inside[0]["label"] if len(inside) else -1)
    score = data["score"]
    scored = table["true_label"] >= 0
    assert score["windows_scored"] == scored.sum()
    acc = (table["predicted"][scored] == table["true_label"][scored]).mean()
    assert score["window_accuracy"] == pytest.approx(acc)
    assert acc > 3 / NUM_CLASSES, f"window accuracy {acc:.2f} is not well above chance (0.09)"
    assert len(score["gestures"]) == 12 and score["gestures_scored"] == 12
    assert (out / f"{stem}_timeline.png").read_bytes()[:8] == PNG_MAGIC
    assert "window accuracy" in result.output


def test_predict_writes_into_predictions_here_and_says_how_many_are_right(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --out-dir the outputs go to ./predictions/, never into the dataset folder; the
    summary says how many windows and gestures are right of how many scored."""
    root, ckpt = trained
    aedat, csv = _test_recording(root)
    before = sorted(p.name for p in aedat.parent.iterdir())
    monkeypatch.chdir(tmp_path)
    args = ["predict", str(ckpt), str(aedat), "--labels", str(csv), "--window", "3s", "--hop",
            "1s", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in aedat.parent.iterdir()) == before
    out = Path("predictions")
    assert sorted(p.name for p in out.iterdir()) == [
        f"{aedat.stem}_predictions.csv",
        f"{aedat.stem}_predictions.json",
        f"{aedat.stem}_timeline.png",
    ]
    assert f"csv: {out / aedat.stem}_predictions.csv" in result.output
    score = json.loads((out / f"{aedat.stem}_predictions.json").read_text())["score"]
    windows_right = round(score["window_accuracy"] * score["windows_scored"])
    gestures_right = sum(g["correct"] for g in score["gestures"])
    assert score["gestures_scored"] == 12
    assert (
        f"window accuracy {100 * score['window_accuracy']:.1f} % "
        f"({windows_right} of {score['windows_scored']} right), "
        f"gesture accuracy {100 * score['gesture_accuracy']:.1f} % ({gestures_right} of 12 right)"
    ) in result.output


def test_inputs_are_checked_before_any_recording_runs(
    trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing or bad --labels file (named as such, not as a dataset fault), a missing
    recording, or two recordings of one name: refused before the first recording runs."""
    import dvsgkit.predict.windows

    root, ckpt = trained
    aedat, csv = _test_recording(root)
    ran: list[Path] = []
    monkeypatch.setattr(
        dvsgkit.predict.windows, "predict_recording", lambda *a, **k: ran.append(a[2])
    )
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other.aedat"
    other.write_bytes(aedat.read_bytes())
    missing = tmp_path / "nope_labels.csv"
    bad = tmp_path / "bad_labels.csv"
    bad.write_text(csv.read_text().replace("\n3,", "\n13,", 1))
    twin = tmp_path / "twin" / aedat.name
    twin.parent.mkdir()
    twin.write_bytes(aedat.read_bytes())
    cases = [
        ([aedat, other, "--labels", csv, "--labels", missing], f"--labels {missing} not found"),
        ([aedat, other, "--labels", csv, "--labels", bad], f"{bad}, line"),
        ([aedat, tmp_path / "gone.aedat"], f"recording {tmp_path / 'gone.aedat'} not found"),
        ([aedat, twin], "would write the same outputs in predictions;"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli, ["predict", str(ckpt), *map(str, args), "--device", "cpu"])
        assert result.exit_code == 1, result.output
        assert result.output.startswith("Error: ") and len(result.output.splitlines()) == 1
        assert message in result.output, result.output
        assert "DvsGesture" not in result.output and "None" not in result.output
    assert ran == []
    assert not Path("predictions").exists() or not any(Path("predictions").iterdir())


def test_several_recordings_show_progress(trained: tuple[Path, Path], tmp_path: Path) -> None:
    root, ckpt = trained
    aedat, _ = _test_recording(root)
    recordings = [str(_shortened(aedat, tmp_path / f"r{i}.aedat", 3_000_000)) for i in (1, 2)]
    args = ["predict", str(ckpt), *recordings, "--window", "1s", "--hop", "1s", "--device",
            "cpu", "--out-dir", str(tmp_path / "out")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "0/2 [" in result.stderr and "rec/s" in result.stderr, result.stderr  # tqdm
    quiet = CliRunner().invoke(cli, [*args, "--no-progress"])
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr
    assert quiet.stdout.count("windows") == 2


def test_event_array_files_predict_like_the_aedat(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """The same events as .npz (Tonic's dtypes) and as .h5 give the same windows and rates."""
    import h5py

    root, ckpt = trained
    net, meta = load_checkpoint_net(ckpt)
    aedat, csv = _test_recording(root)
    short = _shortened(aedat, tmp_path / "short.aedat", 8_000_000)  # 8 s are enough here
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


def test_timeline_names_the_labelled_gestures() -> None:
    """The label bands beneath the timeline carry the gestures' names, not class numbers."""
    from dvsgkit.constants import CLASS_NAMES
    from dvsgkit.io.labels import WINDOW_DTYPE
    from dvsgkit.predict.outputs import timeline_figure
    from dvsgkit.predict.windows import score

    gestures = np.array([(3, 1_000_000, 3_000_000, 0), (10, 4_000_000, 6_000_000, 1)],
                        dtype=WINDOW_DTYPE)  # fmt: skip
    pred = Prediction(recording="r.aedat", checkpoint="c.pth", meta={}, frames=FrameSpec(T),
                      mode="labels",
                      window_us=None, hop_us=None, first_t=0, starts=gestures["start"],
                      ends=gestures["end"], counts=np.array([50, 60]),
                      rates=np.eye(NUM_CLASSES, dtype=np.float32)[[3, 2]],
                      gestures=gestures)  # fmt: skip
    pred.score = score(pred)
    figure = timeline_figure(pred)
    bands = [text.get_text().replace("\n", " ") for text in figure.axes[1].texts]
    assert bands == [CLASS_NAMES[3], CLASS_NAMES[10]]


# --- bad input: one line naming the file, exit 1, nothing written --------------------------


def _bad_recordings(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (recording, a regex the error line must match)."""
    data = good.read_bytes()
    cases = {}
    empty = folder / "empty.aedat"
    empty.write_bytes(b"")
    cases["empty"] = (empty, "empty file at byte 0")
    header_only = folder / "header_only.aedat"
    header_only.write_bytes(data[: data.index(b"#!END-HEADER\r\n") + 14])
    cases["no events"] = (header_only, "holds no events")
    truncated = folder / "truncated.aedat"
    truncated.write_bytes(data[: len(data) // 2 + 13])
    cases["truncated"] = (truncated, r"truncated|remain")
    big = _events(np.arange(0, 4_000_000, 100))
    big["x"][1234] = 200
    wide = folder / "davis.npz"
    np.savez(wide, t=big["t"], x=big["x"], y=big["y"], p=big["p"])
    cases["sensor"] = (wide, r"event 1234 \(x 200.*off the 128x128 DVS128 sensor")
    shuffled = _events(np.arange(0, 4_000_000, 100))
    shuffled["t"][[500, 501]] = shuffled["t"][[501, 500]]
    back = folder / "shuffled.npz"
    np.savez(back, **{k: shuffled[k] for k in "txyp"})
    cases["out of time order"] = (back, r"event 501 \(t 50000 µs\) is earlier than the event")
    not_zip = folder / "text.npz"
    not_zip.write_text("t,x,y,p\n0,1,2,1\n")
    cases["npz not a zip"] = (not_zip, r"not an \.npz archive \(a zip file of arrays\); write")
    npy = folder / "array.npz"
    with open(npy, "wb") as f:
        np.save(f, big["t"])
    cases["npz holding one .npy"] = (npy, r"not an \.npz archive")
    objects = folder / "objects.npz"
    np.savez(objects, t=np.array([0, "1"], dtype=object), x=[0, 0], y=[0, 0], p=[0, 0])
    cases["npz of objects"] = (objects, r"array 't' holds Python objects, not numbers")
    short = folder / "short.npz"
    np.savez(short, **{k: big[k][:100] for k in "txyp"})
    cases["shorter than a window"] = (short, "shorter than one 1.5 s window")
    foreign = folder / "events.txt"
    foreign.write_text("0 1 2 1\n")
    cases["suffix"] = (foreign, "unknown recording type '.txt'")
    missing_field = folder / "nop.npz"
    np.savez(missing_field, t=big["t"], x=big["x"], y=big["y"])
    cases["npz without p"] = (missing_field, r"no array\(s\) p")
    broken_h5 = folder / "broken.h5"
    broken_h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    cases["broken h5"] = (broken_h5, "not a readable HDF5 file")
    return cases


def test_bad_recordings_fail_with_one_line_and_write_nothing(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    root, ckpt = trained
    aedat, _ = _test_recording(root)
    good = _shortened(aedat, tmp_path / "good.aedat", 4_000_000)
    cases = _bad_recordings(tmp_path, aedat)
    for name, (path, pattern) in cases.items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        # A good recording first: its outputs must not be written either.
        args = ["predict", str(ckpt), str(good), str(path), "--out-dir", str(out),
                "--device", "cpu", "--window", "1.5s", "--hop", "5s", "--no-progress"]  # fmt: skip
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, (name, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), (name, result.output)
        assert str(path) in lines[0], (name, lines[0])
        assert re.search(pattern, lines[0]), (name, lines[0])
        assert "pickle" not in lines[0], (name, lines[0])  # never suggest loading unsafely
        assert not out.exists() or not any(out.iterdir()), (name, list(out.iterdir()))


def test_bad_checkpoints_and_options_fail_with_one_line(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    root, ckpt = trained
    aedat, csv = _test_recording(root)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    other = tmp_path / "resnet.pth"
    torch.save({"net": {"layer1.weight": torch.zeros(3)}}, other)
    cases = [
        ([str(junk), str(aedat)], f"{junk} is not a readable checkpoint"),
        ([str(other), str(aedat)], f"{other}: not a SpikingJelly DVS128 Gesture checkpoint"),
        ([str(ckpt), str(aedat), "--windows", "labels"], "--windows labels needs a labels CSV"),
        ([str(ckpt), str(aedat), "--window", "soon"], "--window 'soon' is not a duration"),
        ([str(ckpt), str(aedat), "--labels", str(csv), "--labels", str(csv)],
         "got 2 labels file(s) for 1 recording(s)"),
        ([str(ckpt), str(aedat), str(aedat)], "share a file name"),
    ]  # fmt: skip
    for args, message in cases:
        out = tmp_path / "out"
        result = CliRunner().invoke(cli, ["predict", *args, "--out-dir", str(out)])
        assert result.exit_code in (1, 2), result.output
        assert message in result.output, result.output
        assert not out.exists() or not any(out.iterdir())
    bad_labels = tmp_path / "bad_labels.csv"
    write_labels(bad_labels, read_labels(csv))
    text = bad_labels.read_bytes()
    assert b"\r\n3," in text
    bad_labels.write_bytes(text.replace(b"\r\n3,", b"\r\n13,", 1))
    result = CliRunner().invoke(
        cli,
        [
            "predict",
            str(ckpt),
            str(aedat),
            "--labels",
            str(bad_labels),
            "--out-dir",
            str(tmp_path / "o2"),
        ],  # fmt: skip
    )
    assert result.exit_code == 1 and f"{bad_labels}, line" in result.output, result.output
    assert not (tmp_path / "o2").exists()
