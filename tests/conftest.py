"""Shared pytest fixtures, and the `gpu` marker's skip rule.

Synthetic datasets: one family, built once per test run (plain session fixtures: with or
without pytest-xdist, each process builds its own in a second or so).

    tiny_root    seed 0, 1 train + 1 test recording, 400 events a sample: 12 train / 12 test
                 samples. For tests of the readers, stores, loaders and commands.
    small_root   seed 0, 2 train + 1 test recordings, 2000 events a sample: 24 train / 12 test
                 samples, enough for a network to learn. For training and accuracy tests.
                 (`frame_root` is its former name.)

Each holds what a user's root holds after `dvsgkit synth`, `dvsgkit events` and
`dvsgkit frames -T 4`: ROOT/extract/DvsGesture/ (the recordings), ROOT/events.h5 and
ROOT/frames_number_4_split_by_number.zarr (SHARED_SPEC). They are shared by every test that
asks for them, so they are read-only: their files and folders lose their write permission, and
after each test that used one, the tree is compared with what was built (names, sizes,
modification times, modes), which catches a test that wrote into it even where permissions do
not stop it (as root). A test that writes into a root (damage, another T, a rebuild, a lock) or
next to its recordings takes a private copy first:

    def test_x(tiny_root, copy_root, tmp_path):
        root = copy_root(tiny_root, tmp_path / "root", with_=("recordings", "events"))

`copy_root` copies (never hard-links: a link would share the very file a test writes into)
the parts asked for: "recordings", "events", "frames". Sizes and modification times are kept,
so a copied event cache and frame store are up to date with the copied recordings.

Also here: `run_cli` (a `dvsgkit` command through click's CliRunner) and `error_line` (the
one line of its refusal); `tmpfs` and `small_fs` (real small file systems to make read-only or,
with `fill_disk`, full); `killable` (writers killed mid-write).
"""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import numpy as np
    from click.testing import Result

SIZES = {
    "tiny": {"seed": 0, "train_trials": 1, "test_trials": 1, "events_per_sample": 400},
    "small": {"seed": 0, "train_trials": 2, "test_trials": 1, "events_per_sample": 2000},
}
SHARED_T, SHARED_SPLIT_BY = 4, "number"  # the frame store of each shared root
PARTS = {"recordings": "extract", "events": "events.h5", "frames": "frames_*.zarr"}
_built: dict[str, tuple[Path, dict[str, tuple[int, ...]]]] = {}  # fixture -> (root, snapshot)


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


def _snapshot(root: Path) -> dict[str, tuple[int, ...]]:
    """Every file and folder under `root` (itself included): size, mtime, mode."""
    found = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        found[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return found


def _chmod_tree(root: Path, writable: bool) -> None:
    write = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            mode = path.stat().st_mode
            path.chmod(mode | stat.S_IWUSR if writable else mode & ~write)


def _shared_root(name: str, factory: pytest.TempPathFactory) -> Iterator[Path]:
    from dvsgkit.frames import FrameSpec
    from dvsgkit.framestore.build import build_frame_store
    from dvsgkit.synth import write_synthetic_dataset

    root = factory.mktemp(f"{name}_root")
    write_synthetic_dataset(root, **SIZES[name])
    build_frame_store(root, FrameSpec(SHARED_T, SHARED_SPLIT_BY), workers=1, progress=False)
    _chmod_tree(root, writable=False)
    _built[f"{name}_root"] = (root, _snapshot(root))
    yield root
    _chmod_tree(root, writable=True)  # for pytest's clean-up of old temporary folders


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A read-only synthetic root: 12 train / 12 test samples, events.h5, frames at T=4 (see
    the module docstring)."""
    yield from _shared_root("tiny", tmp_path_factory)


@pytest.fixture(scope="session")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A read-only synthetic root: 24 train / 12 test samples, events.h5, frames at T=4 (see
    the module docstring)."""
    yield from _shared_root("small", tmp_path_factory)


@pytest.fixture(scope="session")
def frame_root(small_root: Path) -> Path:
    """`small_root`, by its former name."""
    return small_root


@pytest.fixture(autouse=True)
def _shared_roots_unchanged(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test that changed a shared root (see the module docstring)."""
    yield
    used = {"tiny_root", "small_root", "frame_root"} & set(request.fixturenames)
    for name in sorted("small_root" if u == "frame_root" else u for u in used):
        if name in _built:
            root, before = _built[name]
            now = _snapshot(root)
            changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
            assert not changed, f"the test changed the shared {name} {root}: {changed[:5]}"


def _copy_root(root: Path, dest: Path, with_: Sequence[str] = tuple(PARTS)) -> Path:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for part in with_:
        if part not in PARTS:
            raise ValueError(f"copy_root: unknown part {part!r}; choose from {sorted(PARTS)}")
        for source in sorted(Path(root).glob(PARTS[part])):
            if source.is_dir():
                shutil.copytree(source, dest / source.name, symlinks=True)
            else:
                shutil.copy2(source, dest / source.name)
    _chmod_tree(dest, writable=True)
    return dest


@pytest.fixture(scope="session")
def copy_root() -> Callable[..., Path]:
    """`copy_root(shared_root, dest, with_=("recordings", "events", "frames"))`: a writable
    copy of the parts asked for at `dest` (created if missing); returns `dest`."""
    return _copy_root


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


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., tuple[int, str]]:
    """`run_cli(*args, env=None)`: `dvsgkit ARGS` through click's CliRunner in this process;
    returns (exit status, output), which never holds a traceback."""
    from click.testing import CliRunner

    from dvsgkit_cli.main import cli

    def run(*args: object, env: dict[str, str] | None = None) -> tuple[int, str]:
        result = CliRunner().invoke(cli, [str(a) for a in args], env=env)
        assert "Traceback" not in result.output, result.output
        return result.exit_code, result.output

    return run


def _error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.fixture(scope="session")
def error_line() -> Callable[[Result], str]:
    """`error_line(result)`: the one `Error:` line of a CliRunner result that failed with exit
    status 1, as the CLI's own refusal (SystemExit, not an exception's traceback)."""
    return _error_line


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`tmpfs(size="4m")`: a real tmpfs of that size, mounted at a new folder in tmp_path and
    unmounted after the test (lazily: a failed build's last writes may still hold it busy).
    Mounting needs root: where it is not allowed, the test is skipped with the reason."""
    mounted: list[Path] = []

    def mount(size: str = "4m") -> Path:
        point = tmp_path / f"fs{len(mounted) or ''}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=True)


@pytest.fixture
def small_fs(tmpfs: Callable[[str], Path]) -> Path:
    """A real 4 MiB tmpfs (see `tmpfs`): fill it for a full disk, or remount it read-only."""
    return tmpfs("4m")


def _fill_disk(folder: Path, leave: int = 0) -> Path:
    filler = folder / "filler"
    if leave:
        st = os.statvfs(folder)
        filler.write_bytes(b"\1" * max(st.f_bavail * st.f_frsize - leave, 0))
        return filler
    with open(filler, "wb", buffering=0) as f, pytest.raises(OSError) as err:
        while True:
            f.write(b"\0" * 65536)
    assert err.value.errno == errno.ENOSPC, err.value
    return filler


@pytest.fixture(scope="session")
def fill_disk() -> Callable[..., Path]:
    """`fill_disk(folder, leave=0)`: write FOLDER/filler until about `leave` bytes are free on
    its file system (0: until a write fails with ENOSPC); returns the filler."""
    return _fill_disk


@pytest.fixture(scope="session")
def sj_datasets() -> Any:
    """SpikingJelly 0.0.0.0.14's `spikingjelly.datasets` module, for its frame and padding
    functions (integrate_events_by_fixed_duration, pad_sequence_collate, padded_sequence_mask).
    It imports torchvision for its dataset classes only; where torchvision is not installed,
    empty stand-ins are registered while it imports (none of them is used here)."""
    import types

    pytest.importorskip("spikingjelly")
    names = ("torchvision", "torchvision.datasets", "torchvision.datasets.utils",
             "torchvision.transforms")  # fmt: skip
    stubs = {}
    if importlib.util.find_spec("torchvision") is None:
        stubs = {name: types.ModuleType(name) for name in names}
        stubs["torchvision.datasets"].DatasetFolder = object
        stubs["torchvision.datasets"].utils = stubs["torchvision.datasets.utils"]
        stubs["torchvision"].datasets = stubs["torchvision.datasets"]
        stubs["torchvision"].transforms = stubs["torchvision.transforms"]
        sys.modules.update(stubs)
    try:
        return importlib.import_module("spikingjelly.datasets")
    finally:
        for name in stubs:
            sys.modules.pop(name, None)


def _faery_replay(
    events: object, dimensions: tuple[int, int], address: tuple[str, int], every: int = 500
) -> int:
    """Send faery.EVENTS_DTYPE `events` to `address` with faery's own UDP sender (its format,
    100 events a datagram), `every` events at a time with 5 ms between: far faster than a
    camera, yet paced, so that a busy machine loses nothing even with a small receive buffer.
    Returns the datagrams sent."""
    import time

    import faery

    sent = 0
    for i in range(0, len(events), every):  # type: ignore[arg-type]
        part = events[i : i + every]  # type: ignore[index]
        faery.events_stream_from_array(part, dimensions).to_udp(address)
        sent += -(-len(part) // 100)
        time.sleep(0.005)
    return sent


@pytest.fixture(scope="session")
def faery_replay() -> Callable[..., int]:
    """`faery_replay(events, (width, height), (host, port), every=500)`: faery's UDP sender,
    paced (see `_faery_replay`); returns the datagrams sent."""
    return _faery_replay


@pytest.fixture
def events_at() -> Callable[..., np.ndarray]:
    """events_at(t, seed=0): EVENT_DTYPE events at times `t`, random pixels and polarities."""

    import numpy as np

    from dvsgkit.constants import EVENT_DTYPE

    def make(t: np.ndarray, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        ev = np.zeros(len(t), EVENT_DTYPE)
        ev["t"], ev["p"] = t, rng.integers(0, 2, len(t))
        ev["x"], ev["y"] = rng.integers(0, 128, (2, len(t)))
        return ev

    return make


@pytest.fixture
def faery_opens(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files faery opens as event streams during the test, in order (a list that grows)."""
    import faery

    opened: list[Path] = []
    open_stream = faery.events_stream_from_file

    def counting(*args: object, **kwargs: object) -> object:
        opened.append(Path(str(args[0])))
        return open_stream(*args, **kwargs)

    monkeypatch.setattr(faery, "events_stream_from_file", counting)
    return opened
