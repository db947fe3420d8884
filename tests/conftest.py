"""Shared pytest fixtures and the `gpu` marker's skip rule."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def _gpu_reason() -> str | None:
    """Why GPU tests cannot run here, or None when they can."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine (tests marked gpu need one)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any("gpu" in item.keywords for item in items):
        return
    reason = _gpu_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def frame_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset root with 24 train / 12 test synthetic samples framed at T=4, shared by the
    training tests: read it, never write into it."""
    from dvsgkit.frames import FrameSpec
    from dvsgkit.framestore.build import build_frame_store
    from dvsgkit.synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("dvsg")
    write_synthetic_dataset(root, seed=0, train_trials=2, test_trials=1, events_per_sample=2000)
    build_frame_store(root, FrameSpec(4, "number"), workers=1, progress=False)
    return root


class Writers:
    """Python processes that stop in the middle of a write, to be killed for real."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, code: str, *args: object) -> subprocess.Popen:
        """Run `code`, which prints "writing" once its temporary file or folder exists and then
        sleeps; return when that line came."""
        process = subprocess.Popen([sys.executable, "-c", code, *map(str, args)],
                                   stdout=subprocess.PIPE, text=True)  # fmt: skip
        self.started.append(process)
        line = process.stdout.readline().strip()
        assert line == "writing", f"the writer stopped before writing (exit {process.wait()})"
        return process

    def killed(self, code: str, *args: object) -> int:
        """`start`, then SIGKILL mid-write; return the dead writer's pid."""
        process = self.start(code, *args)
        process.kill()
        process.wait()
        return process.pid


@pytest.fixture
def killable() -> Iterator[Writers]:
    """Start writers to kill mid-write; any still running at the test's end are killed."""
    writers = Writers()
    yield writers
    for process in writers.started:
        if process.poll() is None:
            process.kill()
        process.wait()
