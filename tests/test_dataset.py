"""DVSGesture, the front door: the README's snippet as a user runs it, first use and later use."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from dvsgkit import DVSGesture
from dvsgkit.constants import CLASS_NAMES
from dvsgkit.data import TONIC_EVENT_DTYPE
from dvsgkit.errors import NotFound

README = Path(__file__).parent.parent / "README.md"


def readme_snippet() -> str:
    """The Python block of the README's "Python" section, as it stands there."""
    section = README.read_text().split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


def test_the_readme_snippet_runs_as_shown_on_a_fresh_root(
    tiny_root: Path, copy_root, tmp_path: Path
) -> None:
    code = readme_snippet()
    assert len(code.splitlines()) <= 10
    root = tmp_path / "data"  # the snippet's root, relative to where it runs
    copy_root(tiny_root, root, with_=("recordings",))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = done.stdout.splitlines()
    label = int(zarr.open_group(root / "frames_number_16_split_by_number.zarr")["train/labels"][0])
    assert first == f"torch.Size([16, 2, 128, 128]) torch.float32 {label} {CLASS_NAMES[label]}"
    assert second == "torch.Size([12, 16, 2, 128, 128]) torch.Size([12])"  # 12 train samples
    assert (root / "events.h5").is_file()
    assert "100%" in done.stderr  # the builds showed their progress


@pytest.fixture(scope="module")
def root(tiny_root: Path, copy_root, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared tiny root's recordings alone: the first use builds the rest."""
    return copy_root(tiny_root, tmp_path_factory.mktemp("front"), with_=("recordings",))


def test_first_use_builds_later_use_opens(root: Path) -> None:
    first = DVSGesture(root, split="test", T=4, split_by="time", progress=False)
    store = root / "frames_number_4_split_by_time.zarr"
    built = zarr.open_group(store, mode="r").attrs["build_id"]
    again = DVSGesture(root, "test", 4, "time", progress=False)
    assert zarr.open_group(store, mode="r").attrs["build_id"] == built  # not rebuilt
    assert len(first) == len(again) == 12 and first.classes == CLASS_NAMES
    frames, label = again[11]
    assert frames.shape == (4, 2, 128, 128) and frames.dtype == torch.float32
    assert label == int(again.labels[11]) and isinstance(label, int)
    assert repr(again).endswith("split='test', FrameSpec(T=4, split_by='time'), 12 samples)")


def test_transforms_and_events(root: Path) -> None:
    flipped = DVSGesture(root, "train", T=2, transform=lambda x: x.flip(-1),
                         target_transform=lambda y: -y, progress=False)  # fmt: skip
    plain = DVSGesture(root, "train", T=2, progress=False)
    assert torch.equal(flipped[3][0], plain[3][0].flip(-1)) and flipped[3][1] == -plain[3][1]
    events = DVSGesture(root, "train", events=True, progress=False)
    sample, label = events[3]
    assert sample.dtype == TONIC_EVENT_DTYPE and label == plain[3][1]
    assert int(plain[3][0].sum()) == len(sample)  # the frames count these very events
    assert np.all(np.diff(sample["t"]) >= 0)


def test_bad_input_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"extract.DvsGesture not found; run 'dvsgkit download'"):
        DVSGesture(tmp_path, progress=False)
    with pytest.raises(ValueError, match="T .*>= 1, got 0"):
        DVSGesture(tmp_path, T=0)
