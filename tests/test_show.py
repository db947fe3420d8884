"""`dvsgkit show`: valid GIF/PNG files of the right frame count and size, pixels where the events
are, captions naming the label; bad requests refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dvsgkit.constants import CLASS_NAMES, EVENT_DTYPE
from dvsgkit.eventcache.layout import event_cache_path
from dvsgkit.eventcache.read import EventCache
from dvsgkit.frames import FrameSpec, integrate
from dvsgkit.io.aedat_writer import write_aedat
from dvsgkit.io.cameras import write_camera
from dvsgkit.io.labels import WINDOW_DTYPE, write_labels
from dvsgkit.show import (
    CAPTION_HEIGHT,
    GRID_COLUMNS,
    GRID_GAP,
    KEY_HEIGHT,
    OFF_COLOR,
    ON_COLOR,
    ROI_COLOR,
    SCALE,
    show_recording,
    show_sample,
)
from dvsgkit_cli.main import cli

T = 4


WIDTH, HEIGHT = 128 * SCALE, 128 * SCALE + CAPTION_HEIGHT  # one frame, captioned


@pytest.mark.parametrize("frames", [T, 2 * GRID_COLUMNS + 1])
def test_sample_gif_and_grid(frame_root: Path, tmp_path: Path, frames: int) -> None:
    """The GIF holds the T frames; the PNG lays them out in rows of at most 8, above a key
    that shows the two polarity colours."""
    shown = show_sample(frame_root, "test", 5, FrameSpec(frames), out_dir=tmp_path)
    with EventCache(event_cache_path(frame_root)) as cache:
        counts = integrate(cache.sample("test", 5), FrameSpec(frames, "number"))  # [T, 2, H, W]
        label = int(cache.labels("test")[5])
    gif = Image.open(shown.gif)
    assert gif.format == "GIF" and gif.n_frames == frames and gif.size == (WIDTH, HEIGHT)
    assert gif.info["duration"] == 250 and gif.info["loop"] == 0
    png = Image.open(shown.png)
    columns, rows = min(frames, GRID_COLUMNS), -(-frames // GRID_COLUMNS)
    grid_height = rows * (HEIGHT + GRID_GAP) - GRID_GAP
    assert png.format == "PNG"
    assert png.size == (columns * (WIDTH + GRID_GAP) - GRID_GAP, grid_height + KEY_HEIGHT)
    pixels = np.asarray(png.convert("RGB"))
    for k in range(frames):
        left = (k % GRID_COLUMNS) * (WIDTH + GRID_GAP)
        top = (k // GRID_COLUMNS) * (HEIGHT + GRID_GAP) + CAPTION_HEIGHT
        shown_k = pixels[top : top + 128 * SCALE : SCALE, left : left + WIDTH : SCALE].astype(int)
        lit = shown_k.sum(-1) > 0
        assert np.array_equal(lit, counts[k].sum(0) > 0), k  # a pixel lights iff it has events
        on_only = (counts[k, 1] > 0) & (counts[k, 0] == 0)
        off_only = (counts[k, 0] > 0) & (counts[k, 1] == 0)
        assert (shown_k[on_only][:, 2] > shown_k[on_only][:, 0]).all()  # ON is blue
        assert (shown_k[off_only][:, 0] > shown_k[off_only][:, 2]).all()  # OFF is orange
    key = {tuple(c) for c in pixels[grid_height:].reshape(-1, 3).tolist()}
    assert tuple(OFF_COLOR.astype(int)) in key and tuple(ON_COLOR.astype(int)) in key
    assert shown.captions[0] == f"frame 1/{frames} | {label} {CLASS_NAMES[label]}"
    for k in range(frames):  # the GIF holds the same pictures
        gif.seek(k)
        frame = np.asarray(gif.convert("RGB"))[CAPTION_HEIGHT::SCALE, ::SCALE]
        assert np.array_equal(frame.sum(-1) > 0, counts[k].sum(0) > 0)


def test_show_cli_sample_and_errors(frame_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["show", "--root", str(frame_root), "--split", "train", "--index", "3", "-T", "6",
            "--out-dir", str(tmp_path)]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "train_3_T6.gif").n_frames == 6
    grid_width = 6 * (WIDTH + GRID_GAP) - GRID_GAP
    assert Image.open(tmp_path / "train_3_T6.png").size == (grid_width, HEIGHT + KEY_HEIGHT)
    result = runner.invoke(cli, ["show", "--root", str(frame_root), "--index", "12"])
    assert result.exit_code == 1 and "--index 12 is out of range: test has samples 0..11" in (
        result.output
    )
    result = runner.invoke(cli, ["show", "--root", str(tmp_path), "--index", "0"])
    assert result.exit_code == 1 and "events.h5 not found" in result.output
    result = runner.invoke(cli, ["show"])
    assert result.exit_code == 2 and "give RECORDING, or --index" in result.output
    assert "not both" not in result.output  # neither was given
    result = runner.invoke(cli, ["show", "x.aedat", "--index", "0"])
    assert result.exit_code == 2 and "either RECORDING or --index" in result.output
    assert "not both" in result.output


def test_show_refuses_more_frames_than_it_draws(frame_root: Path, tmp_path: Path) -> None:
    """-T 100000 would need 26 GB of counts: one line naming the option and the range."""
    args = ["show", "--root", str(frame_root), "--index", "0", "--out-dir", str(tmp_path)]
    result = CliRunner().invoke(cli, [*args, "-T", "100000"])
    assert result.exit_code == 1, result.output
    assert result.output == "Error: -T 100000 is out of range: show draws 1..600 frames\n"
    assert not any(tmp_path.iterdir())


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


@pytest.mark.parametrize("fps", ["0.0001", "inf", "nan", "-1", "2e6"])
def test_fps_out_of_range_is_one_line(tmp_path: Path, fps: str) -> None:
    path = _recording(tmp_path, labels=False)
    args = ["show", str(path), "--fps", fps, "--out-dir", str(tmp_path / "out")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: --fps {float(fps):g} is out of range: give 0.01 to 1000000 frames per second of "
        "recording time\n"
    )
    assert not (tmp_path / "out").exists()


def test_the_slowest_and_fastest_fps_are_drawn(tmp_path: Path) -> None:
    path = _recording(tmp_path, labels=False)
    slow = show_recording(path, 0, 3_000_000, fps=0.01, out_dir=tmp_path)
    assert slow.frames == 1 and Image.open(slow.gif).info["duration"] == 100_000
    fast = show_recording(path, 0, 500, fps=1e6, out_dir=tmp_path)
    assert fast.frames == 500  # one frame a microsecond: an event in the first only


def test_a_recording_out_of_time_order_is_refused(tmp_path: Path) -> None:
    """Two recordings joined: the second's events (its clock starts again) fall in the
    stretch asked for but come after it in the file. show refuses, naming the event."""
    path = _recording(tmp_path, labels=False)
    ev = np.concatenate([_events_of(path), _events_of(path)])
    joined = write_aedat(tmp_path / "joined.aedat", ev)
    result = CliRunner().invoke(cli, ["show", str(joined), "--duration", "1s", "--out-dir",
                                      str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: {joined}: event 4000 (t 1000000 µs) is earlier than the event before it "
        "(t 4999000 µs): its timestamps go back (a clock reset, joined files or shuffled "
        "events); give the events in time order (sort them by t, or cut the file where its "
        "clock resets)\n"
    )
    assert not (tmp_path / "out").exists()


def _events_of(path: Path) -> np.ndarray:
    from dvsgkit.io.recordings import iter_recording

    return np.concatenate(list(iter_recording(path)))


def test_a_camera_recording_shows_its_whole_sensor_with_the_region(
    tmp_path: Path, run_cli: Callable[..., tuple[int, str]]
) -> None:
    """An AEDAT 4 recording of a 346 x 260 sensor, events at x = 10 (left of the default region,
    the largest centred square 43,0,260,260) and x = 200, y = 100: the GIF is the 128 x 128
    sensor the network sees (only x = 200 on it, at (200 - 43) * 128 // 260 = 77, y = 100 *
    128 // 260 = 49); the PNG is the whole sensor, both events on it and the region outlined.
    --roi moves the region."""
    ev = np.zeros(2000, EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["p"] = np.arange(2000) * 500, 10, 100, 1
    ev["x"][1::2] = 200
    path = write_camera(tmp_path / "rec.aedat4", ev, (346, 260))
    out = tmp_path / "out"
    code, output = run_cli("show", path, "--duration", "1s", "--fps", "1", "--out-dir", out)
    assert code == 0, output
    assert output.splitlines()[-1] == f"png: {out / 'rec_0s_1s.png'}"
    frame = np.asarray(Image.open(out / "rec_0s_1s.gif").convert("RGB"))[CAPTION_HEIGHT:, :, :]
    lit = np.argwhere(frame[::SCALE, ::SCALE].sum(-1) > 0)  # [k, (y, x)] on the 128 x 128
    assert lit.tolist() == [[49, 77]]
    whole = np.asarray(Image.open(out / "rec_0s_1s.png").convert("RGB"))
    assert whole.shape == (CAPTION_HEIGHT + 260, 346, 3)  # 1 x 1 above 128 x 128
    sensor = whole[CAPTION_HEIGHT:]
    assert sensor[100, 10].any() and sensor[100, 200].any()
    outline = [tuple(sensor[130, x]) for x in (43, 44, 301, 302)]
    assert outline == [ROI_COLOR] * 4 and tuple(sensor[130, 45]) != ROI_COLOR
    assert tuple(sensor[0, 150]) == ROI_COLOR and tuple(sensor[259, 150]) == ROI_COLOR
    code, _ = run_cli("show", path, "--duration", "1s", "--fps", "1", "--roi", "0,50,100,100",
                      "--out-dir", out)  # fmt: skip
    frame = np.asarray(Image.open(out / "rec_0s_1s.gif").convert("RGB"))[CAPTION_HEIGHT:, :, :]
    assert code == 0 and np.argwhere(frame[::SCALE, ::SCALE].sum(-1) > 0).tolist() == [[64, 12]]
    sensor = np.asarray(Image.open(out / "rec_0s_1s.png").convert("RGB"))[CAPTION_HEIGHT:]
    assert tuple(sensor[100, 0]) == ROI_COLOR and tuple(sensor[100, 99]) == ROI_COLOR


def test_a_camera_recording_is_opened_once_for_its_size_and_once_for_its_events(
    tmp_path: Path, faery_opens: list[Path]
) -> None:
    """show asks a camera file for its sensor size once, then reads its events once."""

    ev = np.zeros(2000, EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["p"] = np.arange(2000) * 500, 200, 100, 1
    path = write_camera(tmp_path / "rec.aedat4", ev, (346, 260))
    opened = faery_opens
    shown = show_recording(path, 0, 1_000_000, 1, tmp_path / "out")
    assert shown.frames == 1 and opened == [path, path]
