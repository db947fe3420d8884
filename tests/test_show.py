"""`dvsgkit show`: valid GIF/PNG files of the right frame count and size, pixels where the events
are, captions naming the label; bad requests refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dvsgkit.constants import CLASS_NAMES, EVENT_DTYPE
from dvsgkit.frames import integrate
from dvsgkit.io.aedat_writer import write_aedat
from dvsgkit.io.labels import WINDOW_DTYPE, write_labels
from dvsgkit.show import CAPTION_HEIGHT, SCALE, STRIP_GAP, show_recording, show_sample
from dvsgkit.store.event_cache import EventCache
from dvsgkit.store.event_layout import event_cache_path
from dvsgkit_cli.main import cli

T = 4


def test_sample_gif_and_strip(frame_root: Path, tmp_path: Path) -> None:
    shown = show_sample(frame_root, "test", 5, T=T, out_dir=tmp_path)
    with EventCache(event_cache_path(frame_root)) as cache:
        frames = integrate(cache.sample("test", 5), T, "number")  # [T, 2, H, W]
        label = int(cache.labels("test")[5])
    width, height = 128 * SCALE, 128 * SCALE + CAPTION_HEIGHT
    gif = Image.open(shown.gif)
    assert gif.format == "GIF" and gif.n_frames == T and gif.size == (width, height)
    assert gif.info["duration"] == 250 and gif.info["loop"] == 0
    strip = Image.open(shown.png)
    assert strip.format == "PNG" and strip.size == (T * (width + STRIP_GAP) - STRIP_GAP, height)
    pixels = np.asarray(strip.convert("RGB"))[CAPTION_HEIGHT:]
    for k in range(T):
        left = k * (width + STRIP_GAP)
        shown_k = pixels[::SCALE, left : left + width : SCALE].astype(int)  # [H, W, 3]
        lit = shown_k.sum(-1) > 0
        assert np.array_equal(lit, frames[k].sum(0) > 0), k  # a pixel lights iff it has events
        on_only = (frames[k, 1] > 0) & (frames[k, 0] == 0)
        off_only = (frames[k, 0] > 0) & (frames[k, 1] == 0)
        assert (shown_k[on_only][:, 2] > shown_k[on_only][:, 0]).all()  # ON is blue
        assert (shown_k[off_only][:, 0] > shown_k[off_only][:, 2]).all()  # OFF is orange
    assert shown.captions[0] == f"frame 1/{T} | {label} {CLASS_NAMES[label]}"
    for k in range(T):  # the GIF holds the same pictures
        gif.seek(k)
        frame = np.asarray(gif.convert("RGB"))[CAPTION_HEIGHT::SCALE, ::SCALE]
        assert np.array_equal(frame.sum(-1) > 0, frames[k].sum(0) > 0)


def test_show_cli_sample_and_errors(frame_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["show", "--root", str(frame_root), "--split", "train", "--index", "3", "-T", "6",
            "--out-dir", str(tmp_path)]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "train_3_T6.gif").n_frames == 6
    strip_width = 6 * (256 + STRIP_GAP) - STRIP_GAP
    assert Image.open(tmp_path / "train_3_T6.png").size == (strip_width, 256 + CAPTION_HEIGHT)
    result = runner.invoke(cli, ["show", "--root", str(frame_root), "--index", "12"])
    assert result.exit_code == 1 and "--index 12 is out of range: test has samples 0..11" in (
        result.output
    )
    result = runner.invoke(cli, ["show", "--root", str(tmp_path), "--index", "0"])
    assert result.exit_code == 1 and "events.h5 not found" in result.output
    result = runner.invoke(cli, ["show"])
    assert result.exit_code == 2 and "either RECORDING or --index" in result.output


def _recording(folder: Path, labels: bool) -> Path:
    """4 s of events from t = 1 s: one event a millisecond, at pixel (t_ms mod 128, 10)."""
    t = np.arange(1_000_000, 5_000_000, 1000)
    ev = np.zeros(len(t), EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["p"] = t, (t // 1000) % 128, 10, (t // 1000) % 2
    path = write_aedat(folder / "user40_lab.aedat", ev)
    if labels:
        windows = np.array([(4, 2_000_000, 3_000_000, 0)], dtype=WINDOW_DTYPE)
        write_labels(folder / "user40_lab_labels.csv", windows)
    return path


def test_recording_gif_frames_times_and_labels(tmp_path: Path) -> None:
    path = _recording(tmp_path, labels=True)
    shown = show_recording(path, 500_000, 2_000_000, fps=10, out_dir=tmp_path / "out")
    gif = Image.open(shown.gif)
    assert shown.gif.name == "user40_lab_0.5s_2s.gif"
    assert gif.n_frames == shown.frames == 20 and gif.size == (256, 256 + CAPTION_HEIGHT)
    assert gif.info["duration"] == 100
    # Frame k covers 1.5 s + k/10 s .. : 100 events at x = t_ms mod 128, y = 10.
    gif.seek(3)
    row = np.asarray(gif.convert("RGB"))[CAPTION_HEIGHT + 10 * SCALE, ::SCALE].sum(-1) > 0
    expected = np.zeros(128, bool)
    expected[np.arange(1800, 1900) % 128] = True
    assert np.array_equal(row, expected)
    name = f"4 {CLASS_NAMES[4]}"
    assert shown.captions[0] == "0.55 s | -"  # 1.55 s on the clock, before the gesture
    assert shown.captions[5] == f"1.05 s | {name}"
    assert [name in c for c in shown.captions] == [5 <= k < 15 for k in range(20)]


def test_recording_errors(tmp_path: Path) -> None:
    path = _recording(tmp_path, labels=False)
    with pytest.raises(ValueError, match=r"no events between 10 s and 11 s"):
        show_recording(path, 10_000_000, 1_000_000, out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"more than 600"):
        show_recording(path, 0, 60_000_000, fps=30, out_dir=tmp_path)
    result = CliRunner().invoke(cli, ["show", str(tmp_path / "nope.aedat")])
    assert result.exit_code == 1 and "nope.aedat not found" in result.output
    assert not list(tmp_path.glob("*.gif")) and not list(tmp_path.glob(".*partial"))
