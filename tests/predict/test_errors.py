"""`dvsgkit predict` refuses bad input with one line naming the file (and the byte, row or
event), exit status 1, before any recording runs where it can, and writes nothing."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dvsgkit.io.aedat_writer import write_aedat
from dvsgkit.io.labels import read_labels, write_labels
from dvsgkit.io.recordings import iter_recording
from dvsgkit.model.inference import for_inference
from dvsgkit.predict.windows import load_checkpoint_net, predict_recording
from dvsgkit_cli.main import cli

Events = Callable[..., np.ndarray]


def test_predict_refuses_a_recording_out_of_time_order_and_labels_mode_cuts_it(
    trained: tuple[Path, Path], recording: tuple[Path, Path], tmp_path: Path
) -> None:
    """A recording joined from two (its clock goes back): sliding windows would never see the
    second part, so predict refuses in one line naming the file and the event; --windows
    labels cuts each gesture from the whole recording in any order, as `dvsgkit events` does."""
    _, ckpt = trained
    aedat, csv = recording
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


def test_inputs_are_checked_before_any_recording_runs(
    trained: tuple[Path, Path],
    recording: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A missing or bad --labels file (named as such, not as a dataset fault), a missing
    recording, or two recordings of one name: refused before the first recording runs."""
    import dvsgkit.predict.windows

    _, ckpt = trained
    aedat, csv = recording
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


def _bad_recordings(folder: Path, good: Path, events_at: Events) -> dict[str, tuple[Path, str]]:
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
    big = events_at(np.arange(0, 4_000_000, 100))
    big["x"][1234] = 200
    wide = folder / "davis.npz"
    np.savez(wide, t=big["t"], x=big["x"], y=big["y"], p=big["p"])
    cases["sensor"] = (wide, r"event 1234 \(x 200.*off the 128x128 DVS128 sensor")
    shuffled = events_at(np.arange(0, 4_000_000, 100))
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
    trained: tuple[Path, Path],
    recording: tuple[Path, Path],
    tmp_path: Path,
    events_at: Events,
    shortened: Callable,
) -> None:
    _, ckpt = trained
    aedat, _ = recording
    good = shortened(aedat, tmp_path / "good.aedat", 4_000_000)
    cases = _bad_recordings(tmp_path, aedat, events_at)
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
    trained: tuple[Path, Path], recording: tuple[Path, Path], tmp_path: Path
) -> None:
    _, ckpt = trained
    aedat, csv = recording
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
