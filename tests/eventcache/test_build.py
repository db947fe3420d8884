"""events.h5: layout, equality with the cutting rule, atomicity, up-to-date checks, bad input."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from dvsgkit import __version__, fs
from dvsgkit.constants import CLASS_NAMES, EVENT_DTYPE, SPLITS
from dvsgkit.errors import Stopped
from dvsgkit.eventcache import write as event_writer
from dvsgkit.eventcache.build import build_event_cache
from dvsgkit.eventcache.layout import LAYOUT, LAYOUT_VERSION, event_cache_path
from dvsgkit.eventcache.read import EventCache
from dvsgkit.io.aedat import AedatError
from dvsgkit.samples import cut_recording, dataset_dir, list_recordings
from dvsgkit.synth import write_synthetic_dataset


@pytest.fixture
def root(small_root: Path, copy_root, tmp_path: Path) -> Path:
    """The shared small root's recordings (2 train + 1 test), without an event cache."""
    return copy_root(small_root, tmp_path, with_=("recordings",))


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if "events.h5" in p.name)


@pytest.mark.parametrize("workers", [1, 2])
def test_cache_holds_exactly_the_cut_samples(root: Path, workers: int) -> None:
    path = build_event_cache(root, workers=workers, progress=False)
    assert path == event_cache_path(root) == root / "events.h5"
    with EventCache(path) as cache:
        for split in SPLITS:
            recs = list_recordings(dataset_dir(root), split)
            want, labels, trials, rows = [], [], [], []
            for rec in recs:
                windows, samples = cut_recording(rec)
                want += samples
                labels += windows["label"].tolist()
                trials += [rec.trial] * len(windows)
                rows += windows["row"].tolist()
            assert cache.num_samples(split) == len(want) == 12 * len(recs)
            assert cache.labels(split).tolist() == labels
            assert cache.trials(split) == trials
            assert cache.rows(split).tolist() == rows
            offsets = cache.offsets(split)
            assert offsets.dtype == np.int64 and offsets[0] == 0
            assert np.diff(offsets).tolist() == [len(s) for s in want]
            for i, sample in enumerate(want):
                got = cache.sample(split, i)
                assert got.dtype == EVENT_DTYPE
                np.testing.assert_array_equal(got, sample)
        np.testing.assert_array_equal(cache.sample("test", -1), want[-1])
        with pytest.raises(IndexError, match="sample 12 out of range"):
            cache.sample("test", 12)
        with pytest.raises(ValueError, match="split must be one of"):
            cache.labels("val")


def test_layout_readable_with_plain_h5py(root: Path) -> None:
    path = build_event_cache(root, progress=False)
    aedat_bytes = sum(p.stat().st_size for p in dataset_dir(root).glob("*.aedat"))
    assert path.stat().st_size < aedat_bytes
    with h5py.File(path, "r") as f:
        assert f.attrs["layout"] == "dvsgkit.events" and f.attrs["layout_version"] == 3
        assert f.attrs["dvsgkit_version"] == __version__
        assert f.attrs["sensor_size"].tolist() == [128, 128]
        assert list(f.attrs["class_names"]) == list(CLASS_NAMES)
        sources = json.loads(f.attrs["sources"])
        names = [s["name"] for s in sources]
        assert names[:2] == ["trials_to_train.txt", "trials_to_test.txt"]
        assert "user01_fluorescent.aedat" in names and "user24_fluorescent_labels.csv" in names
        for s in sources:
            assert s["bytes"] == (dataset_dir(root) / s["name"]).stat().st_size
            want = hashlib.sha256((dataset_dir(root) / s["name"]).read_bytes()).hexdigest()
            assert s["sha256"] == want
        for split in SPLITS:
            g = f[split]
            types = {k: g[k].dtype for k in ("t", "x", "y", "p", "offsets", "labels", "row")}
            assert types == {"t": np.int64, "x": np.uint8, "y": np.uint8, "p": np.uint8,
                             "offsets": np.int64, "labels": np.uint8, "row": np.int32}  # fmt: skip
            assert g["t"].compression is None and g["t"].scaleoffset == 0  # built-in filter
            assert all(g[k].compression is None and g[k].scaleoffset is None for k in "xyp")
            # HDF5's built-in Fletcher-32 on every dataset, last in the pipeline, and a seal.
            assert {k: g[k].fletcher32 for k in g} == {k: True for k in g}
            assert list(g["t"]._filters) == ["scaleoffset", "fletcher32"]
            assert all(len(g[k].attrs["fletcher32_seal"]) == 64 for k in g)
            assert g["trial"].dtype.kind == "S"  # fixed-length ASCII: variable-length can't be
            assert len(g["offsets"]) == len(g["labels"]) + 1 == len(g["trial"]) + 1
            assert g["offsets"][-1] == len(g["t"]) == len(g["p"])
            a, b = g["offsets"][3:5]
            assert np.all(g["t"][a:b] >= 0) and g["trial"][3].decode().startswith("user")


def test_up_to_date_cache_is_a_no_op_and_changes_rebuild(root: Path) -> None:
    path = build_event_cache(root, progress=False)
    stamp = path.stat().st_mtime_ns
    with EventCache(path) as cache:
        checksum = cache.checksum()
    assert build_event_cache(root, progress=False) == path
    assert path.stat().st_mtime_ns == stamp
    # A regenerated dataset (other seed, same sizes or not) is noticed and rebuilt.
    write_synthetic_dataset(root, seed=2, train_trials=2, test_trials=1, events_per_sample=800)
    build_event_cache(root, progress=False)
    assert path.stat().st_mtime_ns != stamp
    with EventCache(path) as cache:
        assert cache.checksum() != checksum
        assert len(cache.checksum()) == 64


def test_checksum_is_stable_across_rebuilds(root: Path) -> None:
    path = build_event_cache(root, progress=False)
    with EventCache(path) as cache:
        first = cache.checksum()
    path.unlink()
    build_event_cache(root, workers=1, progress=False)
    with EventCache(path) as cache:
        assert cache.checksum() == first
        assert (
            cache.attrs["layout"] == "dvsgkit.events" and type(cache.attrs["layout_version"]) is int
        )
        assert isinstance(cache.attrs["sources"], str)


def corrupt_aedat(folder: Path) -> str:
    path = folder / "user01_fluorescent_led.aedat"
    path.write_bytes(path.read_bytes()[:-5])
    return r"user01_fluorescent_led.aedat: packet at byte \d+ declares"


def corrupt_labels(folder: Path) -> str:
    path = folder / "user24_fluorescent_labels.csv"
    path.write_bytes(path.read_bytes().replace(b"\r\n", b"\r\n13,1,2\r\n", 1))
    return r"user24_fluorescent_labels.csv, line 2 \(data row 0\): class 13"


def missing_recording(folder: Path) -> str:
    (folder / "user01_fluorescent.aedat").unlink()
    return r"trials_to_train.txt names 'user01_fluorescent.aedat'"


def missing_labels(folder: Path) -> str:
    (folder / "user24_fluorescent_labels.csv").unlink()
    return r"user24_fluorescent_labels.csv does not exist"


def bad_header(folder: Path) -> str:
    path = folder / "user24_fluorescent.aedat"
    path.write_bytes(path.read_bytes().replace(b"#!END-HEADER", b"#!END-HEADEX"))
    return r"user24_fluorescent.aedat: no #!END-HEADER line"


@pytest.mark.parametrize(
    "corrupt", [corrupt_aedat, corrupt_labels, missing_recording, missing_labels, bad_header]
)
@pytest.mark.parametrize("workers", [1, 2])
def test_bad_input_raises_named_error_and_leaves_no_cache(
    root: Path, corrupt: object, workers: int
) -> None:
    build_event_cache(root, progress=False)  # a cache of the good files exists
    match = corrupt(dataset_dir(root))  # type: ignore[operator]
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        build_event_cache(root, workers=workers, progress=False)
    assert leftovers(root) == []  # the stale cache went too


def on_write(n: int, act: object) -> object:
    """A `dvsgkit.fs.free_bytes` that calls `act()` at its n-th call: the estimate before a build
    is the first, the check before each recording's write the next (so n = 3: the first
    recording is in the partial file)."""
    calls = []

    def free_bytes(folder: Path) -> int:
        calls.append(folder)
        if len(calls) == n:
            act()  # type: ignore[operator]
        return 1 << 40

    return free_bytes


def test_interrupt_leaves_nothing_and_next_run_starts_clean(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(fs, "free_bytes", on_write(3, interrupt))
    with pytest.raises(KeyboardInterrupt):
        build_event_cache(root, workers=1, progress=False)
    assert leftovers(root) == []
    monkeypatch.undo()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (root / f".events.h5.{dead}-0a1b2c3d4e5f.partial").write_bytes(b"left by a killed run")
    (root / f".events.h5.{dead}-0a1b2c3d4e60.partial").mkdir()  # a spool folder
    # Named by a live process that holds no build lock (a build on another machine sharing the
    # folder, killed, whose pid is in use here): a leftover all the same.
    (root / ".events.h5.1-0a1b2c3d4e61.partial").write_bytes(b"")
    build_event_cache(root, progress=False)
    assert leftovers(root) == ["events.h5"]


def test_spool_files_where_there_are_no_memfds(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without memfd_create (not Linux) the workers hand over through files in a spool folder,
    which goes when the build ends; the samples are the same."""
    seen: list[list[str]] = []

    def spools() -> None:
        seen.append(sorted(p.name for p in root.glob(".events.h5.*.partial/*")))

    monkeypatch.delattr(os, "memfd_create")
    monkeypatch.setattr(fs, "free_bytes", on_write(3, spools))
    path = build_event_cache(root, workers=2, progress=False)
    assert seen and seen[0] and set(seen[0]) <= {f"{k}.bin" for k in range(4)}  # workers + 2
    assert leftovers(root) == ["events.h5"]
    rec = list_recordings(dataset_dir(root), "test")[0]
    with EventCache(path) as cache:
        for k, sample in enumerate(cut_recording(rec)[1]):
            np.testing.assert_array_equal(cache.sample("test", k), sample)


def test_spawned_workers_hand_over_through_files(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the workers are spawned, not forked (a process that has initialised CUDA), they
    cannot inherit memory files: the hand-over goes through spool files, with the same samples."""
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    path = build_event_cache(root, workers=2, progress=False)
    assert leftovers(root) == ["events.h5"]
    rec = list_recordings(dataset_dir(root), "test")[0]
    with EventCache(path) as cache:
        for k, sample in enumerate(cut_recording(rec)[1]):
            np.testing.assert_array_equal(cache.sample("test", k), sample)


def test_two_builds_at_once_both_succeed(root: Path) -> None:
    """Two processes building one root (e.g. two frame builds) do not trip over each other."""
    code = "import sys; from dvsgkit.eventcache.build import build_event_cache as b; b(sys.argv[1])"
    cmd = [sys.executable, "-c", code, str(root)]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert leftovers(root) == ["events.h5"]
    with EventCache(root / "events.h5") as cache:
        assert cache.num_samples("train") == 24


# Builds ROOT's events.h5 in this process, held at its free-space check until argv[2] exists.
HELD_BUILD = """
import sys, time
from pathlib import Path
from dvsgkit import fs
from dvsgkit.eventcache.build import build_event_cache
def held(folder):
    while not Path(sys.argv[2]).exists():
        time.sleep(0.01)
    return 1 << 40
fs.free_bytes = held
build_event_cache(Path(sys.argv[1]), workers=1, progress=False)
"""


def test_a_second_build_of_a_root_waits_for_the_first_and_finds_the_cache_up_to_date(
    root: Path,
) -> None:
    lock, go = root / ".events.h5.lock", root / "go"
    first = subprocess.Popen([sys.executable, "-c", HELD_BUILD, str(root), str(go)])
    procs = [first]
    try:
        deadline = time.monotonic() + 60
        while not lock.exists() or not lock.read_text().startswith(f"{first.pid} "):
            assert first.poll() is None and time.monotonic() < deadline, "the build never locked"
            time.sleep(0.02)
        code = "import sys; from dvsgkit.eventcache.build import build_event_cache; " \
               "build_event_cache(sys.argv[1])"  # fmt: skip
        second = subprocess.Popen([sys.executable, "-c", code, str(root)], stderr=subprocess.PIPE,
                                  text=True)  # fmt: skip
        procs.append(second)
        told = f"waiting for process {first.pid}, which is building {root / 'events.h5'}"
        lines = iter(second.stderr.readline, "")
        assert any(line.startswith(told) for line in lines), "the second build did not wait"
        go.touch()
        assert first.wait(timeout=120) == 0
        built = (root / "events.h5").stat().st_ino
        assert second.wait(timeout=120) == 0, second.stderr.read()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert (root / "events.h5").stat().st_ino == built  # used as it was, not rebuilt
    assert leftovers(root) == ["events.h5"] and not lock.exists()  # let go: removed


def test_events_outside_the_sensor_are_rejected(root: Path) -> None:
    from dvsgkit.io.aedat import read_events
    from dvsgkit.io.aedat_writer import write_aedat

    path = dataset_dir(root) / "user01_fluorescent.aedat"
    ev = read_events(path)
    ev["x"][len(ev) // 2] = 300
    write_aedat(path, ev)
    with pytest.raises(AedatError, match="x up to 300 .* do not fit the 128x128 sensor"):
        build_event_cache(root, workers=1, progress=False)
    assert leftovers(root) == []


def test_missing_dataset_and_bad_caches(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run 'dvsgkit download'.*'dvsgkit synth'"):
        build_event_cache(tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="run 'dvsgkit events' first"):
        EventCache(tmp_path / "events.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["layout"] = "something.else"
    with pytest.raises(ValueError, match="not a dvsgkit event cache"):
        EventCache(tmp_path / "other.h5")
    with pytest.raises(ValueError, match="workers must be >= 1"):
        build_event_cache(tmp_path, workers=0)
    # Our layout attrs but datasets missing (a damaged file): an error naming what and the fix.
    with h5py.File(tmp_path / "damaged.h5", "w") as f:
        f.attrs["layout"], f.attrs["layout_version"] = LAYOUT, LAYOUT_VERSION
        f.create_group("train")
    with pytest.raises(ValueError, match=r"damaged\.h5 lacks 'train/t' .*run 'dvsgkit events'"):
        EventCache(tmp_path / "damaged.h5")


def test_chunk_boundaries_do_not_matter(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recordings straddle HDF5 chunks; a tiny chunk size exercises every append branch."""
    monkeypatch.setattr(event_writer, "CHUNK_EVENTS", 1000)
    path = build_event_cache(root, workers=1, progress=False)
    rec = list_recordings(dataset_dir(root), "train")[1]
    _, samples = cut_recording(rec)
    with EventCache(path) as cache, h5py.File(path, "r") as f:
        assert f["train/t"].chunks == (1000,)
        for k, sample in enumerate(samples):
            np.testing.assert_array_equal(cache.sample("train", 12 + k), sample)
    assert os.path.exists(path)


def worker_killer() -> object:
    """Something that kills the worker processes started after it was made: a build's pool."""
    others = {child.pid for child in multiprocessing.active_children()}  # DataLoader workers...

    def kill() -> None:
        for worker in multiprocessing.active_children():
            if worker.pid not in others:
                os.kill(worker.pid, signal.SIGKILL)  # what the out-of-memory killer does

    return kill


def test_a_killed_worker_fails_the_build_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # More recordings than jobs in flight (workers + 1): some are handed out only after the
    # workers are gone. Run in a thread so that a hang fails the test instead of blocking it.
    write_synthetic_dataset(tmp_path, seed=1, train_trials=4, test_trials=2, events_per_sample=200)
    monkeypatch.setattr(fs, "free_bytes", on_write(2, worker_killer()))
    outcome: list[BaseException | None] = []

    def build() -> None:
        try:
            build_event_cache(tmp_path, workers=2, progress=False)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=build, daemon=True)
    thread.start()
    thread.join(60)
    assert outcome, "the build hung after a worker was killed"
    assert isinstance(outcome[0], Stopped)
    assert "died (signal SIGKILL" in str(outcome[0])
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_build_cleanly(
    root: Path, monkeypatch: pytest.MonkeyPatch, sig: signal.Signals
) -> None:
    # Noted by the build's handler, acted on at its next step.
    monkeypatch.setattr(fs, "free_bytes", on_write(3, lambda: os.kill(os.getpid(), sig)))
    before = signal.getsignal(sig)
    with pytest.raises(KeyboardInterrupt, match=f"interrupted by {sig.name}"):
        build_event_cache(root, workers=1, progress=False)
    assert leftovers(root) == []
    assert signal.getsignal(sig) is before  # the caller's handler is back


@pytest.mark.parametrize("split", ["train", "test"])
def test_trials_lists_are_checked_before_any_work(root: Path, split: str) -> None:
    """A repeated recording would duplicate samples; one in both lists would leak test data into
    training. Both are refused before a recording is read, and never look like a stale cache."""
    build_event_cache(root, progress=False)
    folder = dataset_dir(root)
    trials = folder / f"trials_to_{split}.txt"
    trials.write_text(trials.read_text() + "user01_fluorescent.aedat\n")
    for recording in folder.glob("*.aedat"):  # reading any would fail with another error
        recording.write_bytes(b"not AEDAT")
    match = "listed again" if split == "train" else "also listed in .*trials_to_train.txt"
    with pytest.raises(ValueError, match=rf"trials_to_{split}.txt, line \d+: "
                       rf"'user01_fluorescent.aedat' is {match}"):  # fmt: skip
        build_event_cache(root, workers=1, progress=False)
    assert leftovers(root) == []


def test_a_worker_forked_during_a_build_dies_on_sigterm_before_its_initializer() -> None:
    # multiprocessing.Pool forks replacement workers during a build; one stopped by the pool
    # (SIGTERM) before its initializer ran still had the build's handler, which only noted it.
    import multiprocessing
    import signal as sig

    from dvsgkit.pool import BuildSignals

    ready = multiprocessing.get_context("fork").Event()

    def child() -> None:
        ready.set()
        time.sleep(30)

    with BuildSignals():
        proc = multiprocessing.get_context("fork").Process(target=child)
        proc.start()
        assert ready.wait(10)
        proc.terminate()
        proc.join(10)
    assert proc.exitcode == -sig.SIGTERM
