"""Pictures of the data: a sample's T frames, or a stretch of a recording, as GIF and PNG."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dvsgkit.constants import CLASS_NAMES, SENSOR_SIZE
from dvsgkit.errors import OUT_DIR_FIX, InputError, storage_errors
from dvsgkit.frames import FrameSpec, integrate
from dvsgkit.fs import atomic_file, make_folder
from dvsgkit.io.labels import labels_path_for, read_labels
from dvsgkit.io.recordings import RecordingError, iter_recording, recording_sensor
from dvsgkit.io.roi import Roi, check_roi, default_roi, to_dvs128

# Polarity 0 (OFF) in orange, polarity 1 (ON) in blue, on black; both at once mix to white-ish.
OFF_COLOR = np.array([255, 120, 0], np.float32)
ON_COLOR = np.array([0, 140, 255], np.float32)
ROI_COLOR = (255, 230, 0)  # the region outlined on the whole sensor
SCALE = 2  # pixels per sensor pixel
CAPTION_HEIGHT = 14  # pixels of caption band above each frame
GRID_GAP = 2  # grey pixels between two frames of the PNG grid
GRID_COLUMNS = 8  # frames per row of the PNG grid at most
KEY_HEIGHT = 16  # pixels of the colour key beneath the PNG grid
MAX_FRAMES = 600  # 20 s at 30 fps; the counts of 600 frames take 79 MB
DEFAULT_FPS = 30.0  # frames per second of recording time
MIN_FPS, MAX_FPS = 0.01, 1e6  # 100 s a frame (a GIF frame lasts at most 655 s); 1 µs a frame


@dataclass(frozen=True)
class Shown:
    """The files `show_sample` / `show_recording` wrote, and the frames they hold."""

    gif: Path
    png: Path | None
    frames: int
    size: tuple[int, int]  # (width, height) of one GIF frame in pixels
    captions: tuple[str, ...]


def render(frames: np.ndarray, captions: Sequence[str], scale: int = SCALE) -> list:
    """Count frames [N, 2, H, W] -> N RGB Pillow images (H*scale + caption band, W*scale), the
    two polarities in two colours. Brightness is the count over the 99th percentile of nonzero
    counts across all N frames (so one hot pixel does not darken the rest)."""
    from PIL import Image, ImageDraw

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[1] != 2:
        raise InputError(f"frames must be [N, 2, H, W], got shape {frames.shape}")
    if len(captions) != len(frames):
        raise InputError(f"{len(frames)} frames but {len(captions)} captions")
    nonzero = frames[frames > 0]
    top = max(1.0, float(np.percentile(nonzero, 99))) if nonzero.size else 1.0
    level = np.minimum(frames / top, 1.0).astype(np.float32)  # [N, 2, H, W] in 0..1
    rgb = level[:, 0, :, :, None] * OFF_COLOR + level[:, 1, :, :, None] * ON_COLOR
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)  # [N, H, W, 3]
    rgb = rgb.repeat(scale, axis=1).repeat(scale, axis=2)
    images = []
    for k, caption in enumerate(captions):
        image = Image.new("RGB", (rgb.shape[2], rgb.shape[1] + CAPTION_HEIGHT), (32, 32, 32))
        image.paste(Image.fromarray(rgb[k]), (0, CAPTION_HEIGHT))
        ImageDraw.Draw(image).text((3, 1), caption, fill=(255, 255, 255))
        images.append(image)
    return images


def save_image(image: Any, path: Path, **options: Any) -> Path:
    """`image.save(path, **options)` under a temporary name, then renamed; a failed write is a
    StorageError naming `path`."""
    with storage_errors(path, "write", OUT_DIR_FIX), atomic_file(path) as tmp:
        image.save(tmp, **options)
    return Path(path)


def save_gif(images: list, path: Path, frame_ms: int) -> Path:
    """An animated GIF of `images` that loops, `frame_ms` per frame."""
    return save_image(images[0], path, format="GIF", save_all=True, append_images=images[1:],
                      duration=frame_ms, loop=0, disposal=1)  # fmt: skip


def grid(images: list) -> Any:
    """The frames in rows of at most GRID_COLUMNS, GRID_GAP grey pixels apart, above a key
    band that names the two polarity colours: one Pillow image."""
    from PIL import Image, ImageDraw

    w, h = images[0].size
    columns = min(len(images), GRID_COLUMNS)
    rows = math.ceil(len(images) / GRID_COLUMNS)
    width, height = columns * (w + GRID_GAP) - GRID_GAP, rows * (h + GRID_GAP) - GRID_GAP
    out = Image.new("RGB", (width, height + KEY_HEIGHT), (96, 96, 96))
    for k, image in enumerate(images):
        out.paste(
            image, ((k % GRID_COLUMNS) * (w + GRID_GAP), (k // GRID_COLUMNS) * (h + GRID_GAP))
        )
    key = ImageDraw.Draw(out)
    key.rectangle((0, height, width, height + KEY_HEIGHT), fill=(32, 32, 32))
    x = 3
    for color, text in ((OFF_COLOR, "OFF (polarity 0)"), (ON_COLOR, "ON (polarity 1)")):
        key.rectangle((x, height + 3, x + 9, height + 12), fill=tuple(int(c) for c in color))
        key.text((x + 13, height + 2), text, fill=(255, 255, 255))
        x += 13 + round(key.textlength(text)) + 12
    return out


def show_sample(
    root: str | os.PathLike[str],
    split: str,
    index: int,
    frames: FrameSpec | None = None,
    out_dir: str | os.PathLike[str] = ".",
    frame_ms: int = 250,
) -> Shown:
    """Sample `index` of `split` in ROOT/events.h5, integrated into `frames` (FrameSpec's
    defaults if None; at most MAX_FRAMES frames) exactly as the frame store does, as
    `<split>_<index>_T<T>.gif` (other specs: `<split>_<index>_<spec.name>.gif`; one frame
    each `frame_ms`) and `.png` (the T frames in rows of
    GRID_COLUMNS, with a colour key), each frame captioned with its number and the true label."""
    from dvsgkit.eventcache.layout import event_cache_path
    from dvsgkit.eventcache.read import EventCache

    frames = frames or FrameSpec()
    if (frames.T or 0) > MAX_FRAMES:
        raise InputError(f"-T {frames.T} is out of range: show draws 1..{MAX_FRAMES} frames")
    with EventCache(event_cache_path(root)) as cache:
        n = cache.num_samples(split)
        if not 0 <= index < n:
            raise InputError(f"--index {index} is out of range: {split} has samples 0..{n - 1}")
        events = cache.sample(split, index)
        label = int(cache.labels(split)[index])
    counts = integrate(events, frames)  # [T, 2, H, W]
    T = len(counts)
    if T > MAX_FRAMES:
        raise InputError(f"{frames.describe()} gives sample {index} {T} frames: show draws "
                         f"1..{MAX_FRAMES}; give a longer duration or bin")  # fmt: skip
    captions = [f"frame {k + 1}/{T} | {label} {CLASS_NAMES[label]}" for k in range(T)]
    images = render(counts, captions)  # [T, 2, H, W] counts drawn
    out = make_folder(Path(out_dir), OUT_DIR_FIX)
    plain = frames == FrameSpec(frames.T, frames.split_by)  # T frames, nothing else
    stem = f"{split}_{index}_T{T}" if plain else f"{split}_{index}_{frames.name}"
    gif = save_gif(images, out / f"{stem}.gif", frame_ms)
    png = save_image(grid(images), out / f"{stem}.png", format="PNG", optimize=True)
    return Shown(gif, png, T, images[0].size, tuple(captions))


def show_recording(
    recording: str | os.PathLike[str],
    start_us: int,
    duration_us: int,
    fps: float = DEFAULT_FPS,
    out_dir: str | os.PathLike[str] = ".",
    roi: Roi | None = None,
) -> Shown:
    """Events of a recording from `start_us` after its first event, for `duration_us`, as an
    animated GIF at `fps` frames per second of recording time (played at that rate) of the
    128 x 128 sensor the network sees (`roi`, default the largest centred square of the
    recording's sensor, mapped onto it as `predict` maps it), each frame captioned with its
    time and the labelled gesture it lies in when a labels CSV sits beside the recording
    (`<stem>_labels.csv`); and as one PNG of the whole sensor with `roi` outlined. Reads the
    recording a chunk at a time, to its end: a timestamp that goes back anywhere (whose event
    could belong in the stretch) raises RecordingError naming the file and the event. Written
    as `<stem>_<start>s_<duration>s.gif` and `.png`. `fps` lies in MIN_FPS..MAX_FPS, and the
    stretch holds at most MAX_FRAMES frames."""
    recording = Path(recording)
    if not MIN_FPS <= fps <= MAX_FPS:  # nan fails too
        raise InputError(
            f"--fps {fps:g} is out of range: give {MIN_FPS:g} to {MAX_FPS:.0f} frames per second "
            "of recording time"
        )
    if start_us < 0 or duration_us <= 0:
        raise InputError(f"need --start >= 0 and --duration > 0, got {start_us}, {duration_us} µs")
    count = math.ceil(duration_us * fps / 1e6)
    if count > MAX_FRAMES:
        raise InputError(
            f"{duration_us / 1e6:g} s at {fps:g} fps is {count} frames, more than {MAX_FRAMES}; "
            "show a shorter --duration or a lower --fps"
        )
    sensor = recording_sensor(recording)
    roi = check_roi(roi or default_roi(sensor), sensor, recording)
    labels = labels_path_for(recording)
    gestures = read_labels(labels) if labels.is_file() else None
    frames, whole, a, first = _stretch(recording, sensor, start_us, duration_us, fps, count, roi)
    captions = []
    for k in range(count):
        mid = a + (k + 0.5) * 1e6 / fps
        name = "-"
        if gestures is not None:
            hit = gestures[(gestures["start"] <= mid) & (mid < gestures["end"])]
            if len(hit):
                name = f"{int(hit[0]['label'])} {CLASS_NAMES[int(hit[0]['label'])]}"
        captions.append(f"{(mid - first) / 1e6:.2f} s | {name}")
    images = render(frames, captions)
    out = make_folder(Path(out_dir), OUT_DIR_FIX)
    stem = f"{recording.stem}_{start_us / 1e6:g}s_{duration_us / 1e6:g}s"
    gif = save_gif(images, out / f"{stem}.gif", max(10, round(1000 / fps)))
    picture = sensor_picture(whole, roi)
    png = save_image(picture, out / f"{stem}.png", format="PNG", optimize=True)
    return Shown(gif, png, count, images[0].size, tuple(captions))


def _stretch(
    recording: Path,
    sensor: tuple[int, int],
    start_us: int,
    duration_us: int,
    fps: float,
    count: int,
    roi: Roi,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The events from `start_us` after the first event, for `duration_us`: as `count` frames
    of the 128 x 128 sensor ([F, 2, 128, 128] int32, `roi` mapped onto it), and summed on the
    whole (width, height) `sensor` ([2, height, width] int64); with the stretch's start and the
    first event's time (µs)."""
    width, height = sensor
    frames = np.zeros((count, 2, *SENSOR_SIZE), np.int32)  # [F, 2, H, W]
    whole = np.zeros((2, height, width), np.int64)
    first = a = b = 0
    for n, chunk in enumerate(iter_recording(recording, time_order=True)):
        if n == 0:
            first = int(chunk["t"][0])
            a, b = first + start_us, first + start_us + duration_us
        t = chunk["t"]
        inside = chunk[(t >= a) & (t < b)]
        if len(inside):
            pixel = (inside["p"].astype(np.int64) * height + inside["y"]) * width + inside["x"]
            whole += np.bincount(pixel, minlength=whole.size).reshape(whole.shape)
            mapped, _ = to_dvs128(inside, roi)
            k = ((mapped["t"] - a) * fps // 1e6).astype(np.int64).clip(0, count - 1)
            index = ((k * 2 + mapped["p"]) * SENSOR_SIZE[0] + mapped["y"]) * SENSOR_SIZE[1]
            counts = np.bincount(index + mapped["x"], minlength=frames.size)  # [F*2*H*W]
            frames += counts.reshape(frames.shape).astype(np.int32)
    if not whole.any():  # (iter_recording has raised already if there is no event at all)
        raise RecordingError(
            f"{recording}: no events between {start_us / 1e6:g} s and "
            f"{(start_us + duration_us) / 1e6:g} s from its first event; is --start past its end?"
        )
    return frames, whole, a, first


def sensor_picture(counts: np.ndarray, roi: Roi) -> Any:
    """Counts [2, H, W] of a whole sensor as one Pillow image (each pixel drawn 2 x 2 up to
    a 128 x 128 sensor, 1 x 1 above), captioned with its size and the region `roi`, which is
    outlined: what `predict` maps onto the 128 x 128 sensor."""
    from PIL import ImageDraw

    height, width = counts.shape[1:]
    scale = max(1, 256 // max(width, height))
    caption = f"{width}x{height}, region {roi}"
    image = render(counts[None], [caption], scale)[0]
    top = CAPTION_HEIGHT + roi.y * scale
    box = (roi.x * scale, top, (roi.x + roi.w) * scale - 1, top + roi.h * scale - 1)
    ImageDraw.Draw(image).rectangle(box, outline=ROI_COLOR, width=2)
    return image
