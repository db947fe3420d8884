"""`predict`, `show` and `demo` that cannot write their outputs: a folder under a file, a
read-only file system or current folder, a full disk (small tmpfs mounts; those tests need root
and are skipped without). Each is one line naming the path and the cause, and leaves nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from dvsgkit.samples import dataset_dir, list_recordings
from dvsgkit_cli.main import cli

FIX = "give another --out-dir, or free some space"


@pytest.fixture(scope="module")
def checkpoint(frame_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-channel network trained one epoch on the shared T=4 frames (what it predicts does
    not matter here)."""
    from dvsgkit.config import TrainConfig
    from dvsgkit.run import BEST
    from dvsgkit.train import train

    out = tmp_path_factory.mktemp("runs")
    config = TrainConfig(T=4, channels=4, batch_size=8, epochs=1, workers=0, device="cpu",
                         root=str(frame_root), out_dir=str(out), progress=False)  # fmt: skip
    return train(config).run_dir / BEST


def _read_only(mnt: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)


def _error(args: list[str]) -> str:
    """Run `dvsgkit ARGS`: it must fail with exit 1 and one line, no traceback; the line."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 or "[1/4]" in result.output, result.output  # the demo says its steps
    assert lines[-1].startswith("Error: "), result.output
    return lines[-1]


def _recording(frame_root: Path) -> Path:
    return list_recordings(dataset_dir(frame_root), "test")[0].aedat


def _predict(checkpoint: Path, recording: Path, *args: object) -> list[object]:
    return ["predict", checkpoint, recording, "--window", "3s", "--hop", "3s", "--device", "cpu",
            *args]  # fmt: skip


def _show(root: Path, *args: object) -> list[object]:
    return ["show", "--root", root, "--index", "0", "-T", "4", *args]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name != "filler" and p.is_file())


def test_an_output_folder_under_a_file(checkpoint: Path, frame_root: Path, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    out = afile / "out"
    cause = "part of the path is a file, not a folder"
    expected = f"Error: cannot create the folder {out}: {cause}; {FIX}"
    recording = _recording(frame_root)
    assert _error(_predict(checkpoint, recording, "--out-dir", out)) == expected
    assert _error(_show(frame_root, "--out-dir", out)) == expected
    assert _error(["show", recording, "--out-dir", out]) == expected
    root = afile / "data"
    line = _error(["demo", "--root", root, "--no-progress"])
    assert line == f"Error: cannot write {root / 'extract'}: {cause}; give another --root, or " + (
        "free some space"
    )


@pytest.mark.slow
def test_a_demo_run_directory_under_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    runs = afile / "runs"
    line = _error(["demo", "--root", tmp_path / "data", "--out-dir", runs, "--no-progress"])
    assert str(runs) in line and "Not a directory" in line, line


def test_a_read_only_output_folder(
    checkpoint: Path, frame_root: Path, small_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dvsgkit.predict.windows

    ran: list[object] = []
    monkeypatch.setattr(dvsgkit.predict.windows, "predict_recording", lambda *a, **k: ran.append(a))
    recording = _recording(frame_root)
    _read_only(small_fs)
    cause = "read-only file system"
    line = _error(_predict(checkpoint, recording, "--out-dir", small_fs))
    assert (
        line == f"Error: cannot create {small_fs / recording.stem}_predictions.csv: {cause}; {FIX}"
    )
    assert ran == []  # refused before any recording ran
    line = _error(_predict(checkpoint, recording, "--out-dir", small_fs / "new"))
    assert line == f"Error: cannot create the folder {small_fs / 'new'}: {cause}; {FIX}"
    assert _error(_show(frame_root, "--out-dir", small_fs)) == (
        f"Error: cannot write {small_fs / 'test_0_T4.gif'}: {cause}; {FIX}"
    )
    assert _error(["show", recording, "--out-dir", small_fs]) == (
        f"Error: cannot write {small_fs / recording.stem}_0s_3s.gif: {cause}; {FIX}"
    )
    # The current folder read-only: the default output folders are in it.
    monkeypatch.chdir(small_fs)
    assert _error(_predict(checkpoint, recording)) == (
        f"Error: cannot create the folder predictions: {cause}; {FIX}"
    )
    assert _error(_show(frame_root)) == f"Error: cannot write test_0_T4.gif: {cause}; {FIX}"
    assert _error(["demo", "--no-progress"]) == (
        f"Error: cannot write data/demo/extract: {cause}; give another --root, or free some space"
    )


def test_a_full_disk(checkpoint: Path, frame_root: Path, small_fs: Path, fill_disk) -> None:
    recording = _recording(frame_root)
    fill_disk(small_fs)
    cause = "no space left on device"
    out = small_fs / "out"
    line = _error(_predict(checkpoint, recording, "--out-dir", out))
    assert line == f"Error: cannot write {out / recording.stem}_predictions.csv: {cause}; {FIX}"
    assert _error(_show(frame_root, "--out-dir", out)) == (
        f"Error: cannot write {out / 'test_0_T4.gif'}: {cause}; {FIX}"
    )
    assert _error(["show", recording, "--out-dir", out]) == (
        f"Error: cannot write {out / recording.stem}_0s_3s.gif: {cause}; {FIX}"
    )
    root = small_fs / "data"
    assert _error(["demo", "--root", root, "--no-progress"]) == (
        f"Error: cannot write {root / 'extract'}: {cause}; give another --root, or free some space"
    )
    assert _leftovers(small_fs) == []  # no output, whole or partial
