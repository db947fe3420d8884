"""`dvsgkit synth` and `dvsgkit events` as a user runs them: output, errors, interruption."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def test_synth_then_events_then_up_to_date(tmp_path: Path, run_cli) -> None:
    args = ["--train-trials", "2", "--test-trials", "1", "--events-per-sample", "500"]
    code, out = run_cli("synth", "--root", str(tmp_path), *args, "--seed", "5")
    assert code == 0, out
    assert "2 train + 1 test recordings, 36 samples" in out
    code, out = run_cli("events", "--root", str(tmp_path), "--no-progress")
    assert code == 0, out
    assert "wrote" in out and "24 train + 12 test samples" in out
    assert (tmp_path / "events.h5").is_file()
    code, out = run_cli("events", "--root", str(tmp_path))
    assert code == 0 and "is up to date (24 train, 12 test samples)" in out


def test_root_from_the_environment(tmp_path: Path, run_cli) -> None:
    env = {"DVSGKIT_ROOT": str(tmp_path)}
    assert run_cli("synth", "--train-trials", "1", "--test-trials", "1", env=env)[0] == 0
    code, out = run_cli("events", "--no-progress", "--workers", "1", env=env)
    assert code == 0, out
    assert (tmp_path / "events.h5").is_file()


def truncate_mid_packet(folder: Path) -> str:
    path = folder / "user01_fluorescent.aedat"
    path.write_bytes(path.read_bytes()[:-3])
    return "user01_fluorescent.aedat: packet at byte"


def truncate_mid_header(folder: Path) -> str:
    path = folder / "user01_fluorescent.aedat"
    path.write_bytes(path.read_bytes()[:40])
    return "user01_fluorescent.aedat: no #!END-HEADER line: the header ends at byte"


def wrong_version(folder: Path) -> str:
    path = folder / "user24_fluorescent.aedat"
    path.write_bytes(b"#!AER-DAT2.0" + path.read_bytes()[12:])
    return "user24_fluorescent.aedat: not an AEDAT 3.x file: byte 0"


def bad_event_size(folder: Path) -> str:
    path = folder / "user24_fluorescent.aedat"
    data = bytearray(path.read_bytes())
    start = data.index(b"#!END-HEADER\r\n") + 14
    data[start + 4] = 12  # eventSize of the first packet
    path.write_bytes(bytes(data))
    return f"user24_fluorescent.aedat: polarity packet at byte {start} has eventSize 12"


def non_numeric_labels(folder: Path) -> str:
    path = folder / "user01_fluorescent_labels.csv"
    lines = path.read_text().splitlines()
    lines[3] = "4,12x,13"
    path.write_text("\r\n".join(lines))
    return "user01_fluorescent_labels.csv, line 4 (data row 2): expected three integers"


def start_after_end(folder: Path) -> str:
    path = folder / "user01_fluorescent_labels.csv"
    lines = path.read_text().splitlines()
    lines[1] = "2,900,100"
    path.write_text("\n".join(lines))
    return "user01_fluorescent_labels.csv, line 2 (data row 0): window start 900"


def missing_labels(folder: Path) -> str:
    (folder / "user01_fluorescent_labels.csv").unlink()
    return "user01_fluorescent_labels.csv does not exist"


def missing_recording(folder: Path) -> str:
    (folder / "trials_to_test.txt").write_text("user24_fluorescent.aedat\nuser99_lab.aedat\n")
    return "trials_to_test.txt names 'user99_lab.aedat'"


def listed_twice(folder: Path) -> str:
    path = folder / "trials_to_train.txt"
    path.write_text("user01_fluorescent.aedat\n\nuser01_fluorescent.aedat\n")  # blank line 2
    return "trials_to_train.txt, line 3: 'user01_fluorescent.aedat' is listed again (first on line"


def listed_in_both_splits(folder: Path) -> str:
    names = "user24_fluorescent.aedat\nuser01_fluorescent.aedat\n"
    (folder / "trials_to_test.txt").write_text(names)
    return (
        "trials_to_test.txt, line 2: 'user01_fluorescent.aedat' is also listed in "
        f"{folder / 'trials_to_train.txt'}, line 1"
    )


def time_beyond_int64(folder: Path) -> str:
    path = folder / "user24_fluorescent_labels.csv"
    lines = path.read_text().splitlines()
    lines[4] = "3,99999999999999999999,99999999999999999999"
    path.write_text("\r\n".join(lines))
    return "user24_fluorescent_labels.csv, line 5 (data row 3): window end 99999999999999999999"


@pytest.mark.parametrize(
    "corrupt",
    [truncate_mid_packet, truncate_mid_header, wrong_version, bad_event_size,
     non_numeric_labels, start_after_end, missing_labels, missing_recording, listed_twice,
     listed_in_both_splits, time_beyond_int64],
)  # fmt: skip
def test_bad_input_is_one_line_error_and_no_cache(
    tiny_root: Path, copy_root, tmp_path: Path, corrupt: object, run_cli
) -> None:
    copy_root(tiny_root, tmp_path, with_=("recordings",))
    expected = corrupt(tmp_path / "extract" / "DvsGesture")  # type: ignore[operator]
    code, out = run_cli("events", "--root", str(tmp_path), "--no-progress")
    assert code == 1
    assert "Traceback" not in out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), out
    assert expected in lines[0]
    assert not any("events.h5" in p.name for p in tmp_path.iterdir())


def test_killed_worker_is_one_line_error_and_no_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    import multiprocessing

    from dvsgkit import fs

    assert run_cli("synth", "--root", str(tmp_path), "--train-trials", "4", "--test-trials", "2",
                   "--events-per-sample", "300")[0] == 0  # fmt: skip
    calls, others = [], {child.pid for child in multiprocessing.active_children()}

    def kill_the_workers(folder: Path) -> int:  # before the first recording is written
        calls.append(folder)
        for worker in multiprocessing.active_children() if len(calls) == 2 else []:
            if worker.pid not in others:  # the build's pool
                os.kill(worker.pid, signal.SIGKILL)  # what the out-of-memory killer does
        return 1 << 40

    monkeypatch.setattr(fs, "free_bytes", kill_the_workers)
    code, out = run_cli("events", "--root", str(tmp_path), "--no-progress", "--workers", "2")
    assert code == 1
    assert "Error: a worker process (pid" in out and "--workers 1" in out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("events")]


def test_missing_dataset_says_what_to_run(tmp_path: Path, run_cli) -> None:
    code, out = run_cli("events", "--root", str(tmp_path))
    assert code == 1 and "run 'dvsgkit download'" in out and "'dvsgkit synth'" in out


def test_synth_validates_its_options(tmp_path: Path, run_cli) -> None:
    code, out = run_cli("synth", "--root", str(tmp_path), "--train-trials", "0")
    assert code == 2 and "--train-trials" in out
    (tmp_path / "extract" / "DvsGesture").mkdir(parents=True)
    code, out = run_cli("synth", "--root", str(tmp_path))
    assert code == 1 and "not written by 'dvsgkit synth'" in out and "Traceback" not in out


# The real command, held at its free-space check after writing its first recording until a line
# comes on stdin (sent after the signal), so that the signal always lands mid-build.
HELD_EVENTS = (
    "import sys; from dvsgkit import fs; calls = []\n"
    "def held(folder):\n"
    "    calls.append(folder)\n"
    "    if len(calls) == 3:\n"
    "        print('writing', flush=True)\n"
    "        sys.stdin.readline()\n"
    "    return 1 << 40\n"
    "fs.free_bytes = held; from dvsgkit_cli.main import cli; cli(sys.argv[1:])"
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_process_leaves_no_cache_and_next_run_works(
    tmp_path: Path, sig: signal.Signals, run_cli
) -> None:
    args = ["--root", str(tmp_path)]
    assert run_cli("synth", *args, "--train-trials", "2", "--test-trials", "1",
                   "--events-per-sample", "4000")[0] == 0  # fmt: skip
    cmd = [sys.executable, "-c", HELD_EVENTS, "events", *args, "--no-progress"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "writing"  # one recording is in the partial file
    assert list(tmp_path.glob(f".events.h5.{proc.pid}-*.partial"))
    proc.send_signal(sig)
    _, err = proc.communicate("go\n", timeout=30)
    assert proc.returncode != 0
    assert "Traceback" not in err
    assert not any("events.h5" in p.name for p in tmp_path.iterdir())
    code, out = run_cli("events", *args, "--no-progress")
    assert code == 0 and "wrote" in out
