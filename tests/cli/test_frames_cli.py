"""`dvsgkit frames` and `dvsgkit info` through click's CliRunner, good input and bad."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zarr


def test_frames_builds_events_then_store_and_reruns_as_noop(
    tiny_root: Path, copy_root, tmp_path: Path, run_cli
) -> None:
    recordings = copy_root(tiny_root, tmp_path, with_=("recordings",))
    root = str(recordings)
    handler = signal.getsignal(signal.SIGTERM)
    code, out = run_cli("frames", "--root", root, "-T", "6", "--split-by", "time", "--no-progress")
    path = recordings / "frames_number_6_split_by_time.zarr"
    assert code == 0, out
    assert signal.getsignal(signal.SIGTERM) is handler  # the command's own is gone again
    assert f"wrote {path}: 12 train + 12 test samples, T=6, split_by=time, uint8" in out
    assert (recordings / "events.h5").is_file()
    code, out = run_cli("frames", "--root", root, "-T", "6", "--split-by", "time", "--no-progress")
    assert code == 0 and f"{path} is up to date" in out
    code, out = run_cli(
        "frames", "--root", root, "-T", "3", "--zarr-format", "3", "--workers", "1", "--no-progress"
    )
    assert (
        code == 0
        and zarr.open_group(
            recordings / "frames_number_3_split_by_number.zarr"
        ).metadata.zarr_format
        == 3
    )

    code, out = run_cli("info", str(path))
    assert code == 0, out
    assert "frame store" in out and "complete        yes" in out and "T               6" in out
    assert "12 samples, uint8 [12, 6, 2, 128, 128]" in out
    code, out = run_cli("info", "--json", str(path))
    summary = json.loads(out)
    assert summary["complete"] and summary["splits"]["train"]["samples"] == 12
    assert sum(summary["splits"]["test"]["classes"].values()) == 12
    code, out = run_cli("info", str(recordings / "events.h5"))
    assert code == 0 and "event cache" in out and "checksum" in out
    assert summary["provenance"]["events"]["checksum"] in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-T", "0"], "0 is not in the range x>=1"),
        (["-T", "-2"], "-2 is not in the range"),
        (["--split-by", "space"], "'space' is not one of 'number', 'time'"),
        (["--zarr-format", "4"], "'4' is not one of '2', '3'"),
    ],
)
def test_bad_options(tmp_path: Path, args: list[str], message: str, run_cli) -> None:
    code, out = run_cli("frames", "--root", str(tmp_path), *args)
    assert code == 2 and message in out
    assert list(tmp_path.iterdir()) == []


def test_missing_event_cache_without_recordings(tmp_path: Path, run_cli) -> None:
    code, out = run_cli("frames", "--root", str(tmp_path), "--no-progress")
    assert code == 1 and "Traceback" not in out
    assert f"{tmp_path / 'extract' / 'DvsGesture'} not found" in out


def test_corrupted_event_cache_is_named_and_left_alone(tmp_path: Path, run_cli) -> None:
    (tmp_path / "events.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 500)
    code, out = run_cli("frames", "--root", str(tmp_path), "--no-progress")
    assert code == 1 and f"{tmp_path / 'events.h5'} is not a readable HDF5 event cache" in out
    assert (tmp_path / "events.h5").read_bytes()[8:] == b"\0" * 500
    code, out = run_cli("info", str(tmp_path / "events.h5"))
    assert code == 1 and "complete        NO" in out


def test_store_of_another_configuration_is_not_overwritten(
    tiny_root: Path, copy_root, tmp_path: Path, run_cli
) -> None:
    copy_root(tiny_root, tmp_path, with_=("events",))
    assert (
        run_cli("frames", "--root", str(tmp_path), "-T", "2", "--workers", "1", "--no-progress")[0]
        == 0
    )
    two, four = (tmp_path / f"frames_number_{t}_split_by_number.zarr" for t in (2, 4))
    two.rename(four)
    code, out = run_cli("frames", "--root", str(tmp_path), "-T", "4", "--no-progress")
    assert code == 1 and f"{four} holds a frame store of another configuration (T=2" in out
    assert zarr.open_group(four, mode="r").attrs["T"] == 2


def test_info_reports_a_store_missing_a_split(
    tiny_root: Path, copy_root, tmp_path: Path, run_cli
) -> None:
    copy_root(tiny_root, tmp_path, with_=("events",))
    assert (
        run_cli("frames", "--root", str(tmp_path), "-T", "2", "--workers", "1", "--no-progress")[0]
        == 0
    )
    path = tmp_path / "frames_number_2_split_by_number.zarr"
    del zarr.open_group(path, mode="r+")["test"]
    code, out = run_cli("info", str(path))
    assert code == 1 and "NO: damaged: split 'test' missing" in out


def test_info_of_a_dataset_root_lists_what_it_holds(
    tiny_root: Path, copy_root, tmp_path: Path, run_cli
) -> None:
    copy_root(tiny_root, tmp_path, with_=("recordings",))
    code, out = run_cli(
        "frames", "--root", str(tmp_path), "-T", "2", "--workers", "1", "--no-progress"
    )
    assert code == 0, out
    (tmp_path / "download").mkdir()
    (tmp_path / "download" / "README.txt").write_text("readme")
    (tmp_path / "download" / "DvsGesture.tar.gz.partial").write_bytes(b"0" * 1000)
    code, out = run_cli("info", str(tmp_path))
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == f"{tmp_path}: a dataset root; what it holds, and the command for each:"
    store = tmp_path / "frames_number_2_split_by_number.zarr"
    expected = {
        "download/": ["1 of 4 IBM files (README.txt)", f"dvsgkit download --root {tmp_path}",
                      "DvsGesture.tar.gz: 1,000 bytes of an interrupted download"],
        "extract/DvsGesture/": ["2 recordings", "both trials lists", "synthetic"],
        "events.h5": ["event cache", f"dvsgkit info {tmp_path / 'events.h5'}"],
        store.name: ["frame store", "T=2", f"dvsgkit info {store}"],
    }  # fmt: skip
    for name, parts in expected.items():
        (line,) = [line for line in lines if line.strip().startswith(name)]
        assert all(part in line for part in parts), (line, parts)
    summary = json.loads(run_cli("info", "--json", str(tmp_path))[1])
    assert summary["kind"] == "root" and store.name in summary["holds"]


@pytest.mark.parametrize("kind", ["missing", "text file", "plain folder"])
def test_info_rejects_what_is_not_a_store(tmp_path: Path, kind: str, run_cli) -> None:
    path = tmp_path / "thing"
    if kind == "text file":
        path.write_text("hello")
    elif kind == "plain folder":
        path.mkdir()
    code, out = run_cli("info", str(path))
    assert code == 1 and str(path) in out and "Traceback" not in out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_killed_build_leaves_no_store(
    tiny_root: Path, copy_root, tmp_path: Path, sig: int, run_cli
) -> None:
    copy_root(tiny_root, tmp_path, with_=("events",))
    # The real command, held at its free-space check after its first block until a line comes
    # on stdin (sent after the signal), so that the signal always lands mid-build.
    code = (
        "import sys; from dvsgkit import fs\n"
        "def held(folder):\n"
        "    print('written', flush=True)\n"
        "    sys.stdin.readline()\n"
        "    return 1 << 40\n"
        "fs.free_bytes = held; from dvsgkit_cli.main import cli; cli(sys.argv[1:])"
    )
    args = ["frames", "--root", str(tmp_path), "-T", "2", "--workers", "1", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "written"  # the first block is in the store
    proc.send_signal(sig)
    proc.communicate("go\n", timeout=60)
    assert proc.returncode != 0
    store = tmp_path / "frames_number_2_split_by_number.zarr"
    assert not store.exists()
    leftovers = list(tmp_path.glob("*.partial"))
    assert not leftovers if sig != signal.SIGKILL else len(leftovers) == 1
    # The next run starts clean and completes.
    code_, out = run_cli(
        "frames", "--root", str(tmp_path), "-T", "2", "--workers", "1", "--no-progress"
    )
    assert code_ == 0 and "wrote" in out and not list(tmp_path.glob("*.partial"))


def test_ctrl_c_reaches_the_workers_too_and_prints_no_traceback(
    tiny_root: Path, copy_root, tmp_path: Path
) -> None:
    # A terminal's Ctrl-C goes to the whole process group: the workers as well as the command.
    copy_root(tiny_root, tmp_path, with_=("events",))
    # The parent pauses at its free-space check after the first block, so that the signal finds
    # the workers idle once the train split's other block is done, waiting for work (as between
    # splits, or when the writer falls behind). The build notes the signal and stops at its next
    # check, after the pause.
    code = (
        "import sys, time; from dvsgkit import fs; "
        "fs.free_bytes = lambda folder: time.sleep(5) or 1 << 40; "
        "from dvsgkit_cli.main import cli; cli(sys.argv[1:])"
    )
    args = ["frames", "--root", str(tmp_path), "-T", "2", "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a terminal would make
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # even if ignored here
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".frames_number_2_split_by_number.zarr.*.partial")):
        assert proc.poll() is None and time.monotonic() < deadline, "the build never started"
        time.sleep(0.02)
    time.sleep(1.5)  # the train split is written
    os.killpg(proc.pid, signal.SIGINT)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode != 0
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert not (tmp_path / "frames_number_2_split_by_number.zarr").exists()
    assert not list(tmp_path.glob("*.partial"))
