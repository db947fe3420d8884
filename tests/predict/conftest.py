"""What the predict tests share: a small trained network, its test recording, and events."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from dvsgkit.frames import FrameSpec
from dvsgkit.io.aedat_writer import write_aedat
from dvsgkit.io.recordings import iter_recording
from dvsgkit.samples import dataset_dir, list_recordings

T = 4  # the trained network's frames per window


@pytest.fixture(scope="package")
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


def _first_test_recording(root: Path) -> tuple[Path, Path]:
    rec = list_recordings(dataset_dir(root), "test")[0]
    return rec.aedat, rec.labels


@pytest.fixture
def recording_of() -> Callable[[Path], tuple[Path, Path]]:
    """recording_of(root): (.aedat, labels CSV) of the first test recording of `root`."""
    return _first_test_recording


@pytest.fixture
def recording(trained: tuple[Path, Path]) -> tuple[Path, Path]:
    """(.aedat, labels CSV) of the trained root's test recording (read it, never write it)."""
    return _first_test_recording(trained[0])


@pytest.fixture
def shortened() -> Callable[[Path, Path, int], Path]:
    """shortened(aedat, out, micros): the first `micros` of a recording, as another .aedat."""

    def cut(aedat: Path, out: Path, micros: int) -> Path:
        events = np.concatenate(list(iter_recording(aedat)))
        return write_aedat(out, events[events["t"] < events["t"][0] + micros])

    return cut


@pytest.fixture
def free_port() -> int:
    """A UDP port of 127.0.0.1 that nothing listens on (free when asked)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
