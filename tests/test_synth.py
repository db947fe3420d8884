"""The synthetic dataset: real layout, determinism, realistic structure, learnable classes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from dvsgkit.constants import NUM_CLASSES
from dvsgkit.io.aedat import read_events, read_header
from dvsgkit.io.labels import read_labels, read_trials
from dvsgkit.samples import cut_recording, list_recordings
from dvsgkit.synth import trial_names, write_synthetic_dataset

if TYPE_CHECKING:
    from conftest import Writers  # the `killable` fixture


def tree(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_real_layout(tmp_path: Path) -> None:
    folder = write_synthetic_dataset(tmp_path, train_trials=6, test_trials=2, events_per_sample=300)
    assert folder == tmp_path / "extract" / "DvsGesture"
    train = read_trials(folder / "trials_to_train.txt")
    assert train[:2] == ["user01_fluorescent.aedat", "user01_fluorescent_led.aedat"]
    assert train[5] == "user02_fluorescent.aedat"
    assert read_trials(folder / "trials_to_test.txt") == [
        "user24_fluorescent.aedat",
        "user24_fluorescent_led.aedat",
    ]
    assert (folder / "trials_to_train.txt").read_text().endswith(".aedat\n\n")  # blank line
    mapping = (tmp_path / "extract" / "gesture_mapping.csv").read_text().splitlines()
    assert mapping[0] == "action,label" and mapping[1] == "hand_clapping,1"
    assert len(mapping) == 1 + NUM_CLASSES
    for name in train:
        labels = folder / name.replace(".aedat", "_labels.csv")
        assert labels.read_bytes().count(b"\r\n") == 13  # header + 12 rows, CRLF
        windows = read_labels(labels)
        assert sorted(windows["label"].tolist()) == sorted([*range(NUM_CLASSES), 7])
        header = read_header(folder / name)
        assert header.field("Source 1") == "DVS128" and header.field("Start-Time")
        ev = read_events(folder / name)
        assert np.all(np.diff(ev["t"]) >= 0)  # timestamps increase
        assert ev["x"].max() < 128 and ev["y"].max() < 128
        inside = np.zeros(len(ev), bool)
        for w in windows:
            inside |= (ev["t"] >= w["start"]) & (ev["t"] < w["end"])
        assert 0 < (~inside).sum() < 0.2 * len(ev)  # events outside the windows too
        assert np.all(windows["start"][1:] >= windows["end"][:-1])


def test_deterministic_per_seed(tmp_path: Path) -> None:
    a = tree(write_synthetic_dataset(tmp_path / "a", seed=3, train_trials=1, test_trials=1))
    b = tree(write_synthetic_dataset(tmp_path / "b", seed=3, train_trials=1, test_trials=1))
    c = tree(write_synthetic_dataset(tmp_path / "c", seed=4, train_trials=1, test_trials=1))
    assert a == b
    assert a["user01_fluorescent.aedat"] != c["user01_fluorescent.aedat"]


def test_events_per_sample_sets_the_density(tmp_path: Path) -> None:
    folder = write_synthetic_dataset(
        tmp_path, train_trials=1, test_trials=1, events_per_sample=5000
    )
    _, samples = cut_recording(list_recordings(folder, "train")[0])
    sizes = np.array([len(s) for s in samples])
    assert sizes.min() >= 0.75 * 5000 and sizes.max() <= 1.25 * 5000
    assert abs(sizes.mean() - 5000) < 500


def features(sample: np.ndarray, bins: int = 4, grid: int = 4) -> np.ndarray:
    """A 4x4 ON/OFF histogram per quarter of the sample: what a tiny network could see."""
    t = sample["t"] - sample["t"][0]
    tb = np.minimum(t * bins // (t[-1] + 1), bins - 1)
    h = np.zeros((bins, 2, grid, grid))
    np.add.at(h, (tb, sample["p"], sample["y"] * grid // 128, sample["x"] * grid // 128), 1)
    return (h / h.sum()).ravel()


def test_classes_are_learnable_at_low_resolution(tmp_path: Path) -> None:
    folder = write_synthetic_dataset(tmp_path, train_trials=2, test_trials=2, events_per_sample=800)
    data = {}
    for split in ("train", "test"):
        xs, ys = [], []
        for rec in list_recordings(folder, split):
            windows, samples = cut_recording(rec)
            xs += [features(s) for s in samples]
            ys += windows["label"].tolist()
        data[split] = np.array(xs), np.array(ys)
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    centroids = np.stack([xtr[ytr == c].mean(0) for c in range(NUM_CLASSES)])
    predicted = np.argmin(((xte[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (predicted == yte).mean() >= 0.8  # nearest centroid; chance is 1/11


def test_replaces_its_own_folder_but_not_a_real_one(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path, train_trials=3, test_trials=1, events_per_sample=100)
    folder = write_synthetic_dataset(tmp_path, train_trials=1, test_trials=1, events_per_sample=100)
    assert len(list(folder.glob("*.aedat"))) == 2  # the old recordings are gone
    assert sorted(p.name for p in (tmp_path / "extract").iterdir()) == [
        "DvsGesture",
        "gesture_mapping.csv",
    ]
    (folder / "SYNTHETIC.txt").unlink()  # now it looks like someone's real data
    with pytest.raises(FileExistsError, match="not written by 'dvsgkit synth'"):
        write_synthetic_dataset(tmp_path)


# Writes a synthetic set into argv[1] and stops in the middle of its first recording.
WRITER = """
import sys, time
from dvsgkit.io.aedat_writer import AedatWriter
from dvsgkit.synth import write_synthetic_dataset
real = AedatWriter.write
def then_stop(self, events):
    real(self, events)
    self._file.flush()
    print("writing", flush=True)
    time.sleep(600)
AedatWriter.write = then_stop
write_synthetic_dataset(sys.argv[1], train_trials=1, test_trials=1, events_per_sample=100)
"""


def test_a_killed_write_leaves_the_old_set_and_only_what_the_next_run_removes(
    tmp_path: Path, killable: Writers
) -> None:
    extract = tmp_path / "extract"
    folder = write_synthetic_dataset(tmp_path, seed=3, train_trials=2, test_trials=1,
                                     events_per_sample=100)  # fmt: skip
    before = tree(folder)
    dead = killable.killed(WRITER, tmp_path)
    names = sorted(p.name for p in extract.iterdir())
    assert len(names) == 3 and names[0].startswith(f".DvsGesture.{dead}-")
    assert names[1:] == ["DvsGesture", "gesture_mapping.csv"] and tree(folder) == before
    half = [p.name for p in (extract / names[0]).iterdir()]
    assert len(half) == 1 and half[0].startswith(f".user01_fluorescent.aedat.{dead}-")
    write_synthetic_dataset(tmp_path, seed=3, train_trials=2, test_trials=1, events_per_sample=100)
    names = sorted(p.name for p in extract.iterdir())
    assert names == ["DvsGesture", "gesture_mapping.csv"] and tree(folder) == before


@pytest.mark.parametrize("arg", ["train_trials", "test_trials", "events_per_sample"])
def test_rejects_non_positive_sizes(tmp_path: Path, arg: str) -> None:
    with pytest.raises(ValueError, match=f"{arg} must be >= 1, got 0"):
        write_synthetic_dataset(tmp_path, **{arg: 0})
    assert not (tmp_path / "extract").exists()


def test_trial_names_keep_test_users_after_train_users() -> None:
    train, test = trial_names(120, 2)
    assert train[-1] == "user24_natural" and test[0] == "user25_fluorescent"


def test_small_demo_set_is_fast(tmp_path: Path) -> None:
    import time

    from dvsgkit.eventcache.build import build_event_cache

    start = time.perf_counter()
    write_synthetic_dataset(tmp_path, train_trials=2, test_trials=1, events_per_sample=2000)
    build_event_cache(tmp_path, progress=False)
    assert time.perf_counter() - start < 20  # ~0.2 s here: catches a pathological slowdown only
