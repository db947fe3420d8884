"""A damaged frame store through the commands a user runs: `frames` rebuilds it, `info --verify`
names each damaged sample, `train` and `evaluate` never score or train on it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import zarr

T = 4


@pytest.fixture(scope="module")
def trained(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset root, checkpoint) of a one-epoch run on the shared tiny root (12/12, T=4)."""
    from dvsgkit.config import TrainConfig
    from dvsgkit.train import train

    out = tmp_path_factory.mktemp("runs")
    config = TrainConfig(T=T, channels=4, batch_size=4, epochs=1, workers=0, device="cpu",
                         root=str(tiny_root), out_dir=str(out), progress=False)  # fmt: skip
    return tiny_root, train(config).run_dir / "checkpoint_latest.pth"


def chunk(store: Path, split: str, i: int) -> Path:
    frames = zarr.open_group(store, mode="r")[split]["frames"]
    return store / split / "frames" / frames.metadata.encode_chunk_key((i, 0, 0, 0, 0))


def store_of(root: Path) -> Path:
    return root / f"frames_number_{T}_split_by_number.zarr"


def evaluate(run_cli, root: Path, ckpt: Path, tmp_path: Path) -> tuple[int, str]:
    return run_cli("evaluate", str(ckpt), "--root", str(root), "--device", "cpu", "--no-progress",
                   "--out-dir", str(tmp_path))  # fmt: skip


def test_a_chunk_with_other_counts_stops_evaluate_and_train_with_one_line(
    trained: tuple[Path, Path], copy_root, tmp_path: Path, run_cli
) -> None:
    shared, ckpt = trained
    root = copy_root(shared, tmp_path / "root", with_=("events", "frames"))
    store = store_of(root)
    bad = chunk(store, "test", 2)
    original = bad.read_bytes()
    try:
        shutil.copyfile(chunk(store, "test", 1), bad)  # decodes fine: only the checksum knows
        code, out = evaluate(run_cli, root, ckpt, tmp_path)
        key = bad.relative_to(store).as_posix()
        assert code == 1 and "Traceback" not in out and len(out.strip().splitlines()) == 1, out
        assert out.startswith(f"Error: {store} is damaged: test sample 2 (chunk {key}) does not")
        assert f"rebuild it with 'dvsgkit frames --root {root} -T 4 --split-by number'" in out
        assert not list(tmp_path.glob("*_eval.json"))  # nothing scored
        code, out = run_cli("train", "--root", str(root), "-T", "4", "--epochs", "1", "--channels",
                            "4", "-b", "4", "--device", "cpu", "--no-progress", "--out-dir",
                            str(tmp_path / "runs"))  # fmt: skip
        assert code == 1 and "Traceback" not in out and f"{store} is damaged: test sample 2" in out
        code, out = run_cli("info", "--verify", str(store))
        assert code == 1 and f"damage          test sample 2 (chunk {key}) does not match" in out
        assert "verified        24 samples against checksums: 1 problem(s)" in out
        assert "fix             rebuild it with 'dvsgkit frames" in out
        summary = json.loads(run_cli("info", "--verify", "--json", str(store))[1])
        assert summary["verified"] == 24 and len(summary["damage"]) == 1
    finally:
        bad.write_bytes(original)
    code, out = run_cli("info", "--verify", str(store))
    assert code == 0 and "verified        24 samples against checksums: all match" in out


@pytest.mark.parametrize("damage", ["delete chunk", "shape 5", "delete .zarray"])
def test_frames_and_evaluate_rebuild_a_damaged_store_and_score_every_sample(
    trained: tuple[Path, Path], copy_root, tmp_path: Path, damage: str, run_cli
) -> None:
    root, ckpt = trained
    work = copy_root(root, tmp_path / "root", with_=("events",))
    code, out = run_cli("frames", "--root", str(work), "-T", "4", "--no-progress")
    assert code == 0, out
    store = store_of(work)

    def spoil() -> None:
        if damage == "delete chunk":
            chunk(store, "test", 3).unlink()
        elif damage == "shape 5":
            meta = store / "test" / "frames" / ".zarray"
            doc = json.loads(meta.read_text())
            doc["shape"][0] = 5
            meta.write_text(json.dumps(doc))
        else:
            (store / "test" / "frames" / ".zarray").unlink()

    spoil()
    code, out = run_cli("info", str(store))
    assert code == 1 and "complete        NO: damaged: test" in out, out
    code, out = run_cli("frames", "--root", str(work), "-T", "4", "--no-progress")
    assert code == 0 and f"{store} is damaged: test" in out and f"wrote {store}" in out, out
    code, out = run_cli("info", "--verify", str(store))
    assert code == 0, out
    spoil()
    code, out = evaluate(run_cli, work, ckpt, tmp_path)
    assert code == 0, out
    assert out.startswith(f"{store} is damaged: test") and "; rebuilding it\n" in out, out
    if damage == "delete chunk":  # train says it too
        spoil()
        code, out = run_cli("train", "--root", str(work), "-T", "4", "--epochs", "1", "--channels",
                            "4", "-b", "4", "--device", "cpu", "--no-progress", "--out-dir",
                            str(tmp_path / "runs"))  # fmt: skip
        assert code == 0 and f"{store} is damaged: test sample 3: chunk file" in out, out
        assert "; rebuilding it\n" in out
    scored = json.loads(next(tmp_path.glob("*_test_eval.json")).read_text())
    assert scored["samples"] == 12


def test_frames_finds_damaged_chunk_bytes_and_rebuilds_the_store(
    trained: tuple[Path, Path], copy_root, tmp_path: Path, run_cli
) -> None:
    root, _ = trained
    copy_root(root, tmp_path, with_=("events",))
    code, out = run_cli("frames", "--root", str(tmp_path), "-T", "4", "--no-progress")
    assert code == 0, out
    store = store_of(tmp_path)
    shutil.copyfile(chunk(store, "test", 1), chunk(store, "test", 2))  # decodes: other counts
    flipped = chunk(store, "train", 5)
    data = bytearray(flipped.read_bytes())
    for k in range(16, len(data), 7):
        data[k] ^= 0xFF
    flipped.write_bytes(bytes(data))
    # What train and evaluate say for such a store, and the command they name, which works.
    code, out = evaluate(run_cli, tmp_path, trained[1], tmp_path / "eval")
    assert code == 1 and f"rebuild it with 'dvsgkit frames --root {tmp_path} -T 4" in out, out
    code, out = run_cli("frames", "--root", str(tmp_path), "-T", "4", "--no-progress")
    key = chunk(store, "train", 5).relative_to(store).as_posix()
    assert code == 0 and f"{store} is damaged: train sample 5 (chunk {key}) cannot be" in out, out
    assert "(and 1 more); rebuilding it" in out and f"wrote {store}" in out, out
    code, out = run_cli("info", "--verify", str(store))
    assert code == 0 and "24 samples against checksums: all match" in out, out
    code, out = run_cli("frames", "--root", str(tmp_path), "-T", "4", "--no-progress")
    assert code == 0 and f"{store} is up to date" in out


def test_frames_with_another_zarr_format_rebuilds_the_store_saying_so(
    trained: tuple[Path, Path], copy_root, tmp_path: Path, run_cli
) -> None:
    root, _ = trained
    copy_root(root, tmp_path, with_=("events",))
    assert run_cli("frames", "--root", str(tmp_path), "-T", "4", "--no-progress")[0] == 0
    store = store_of(tmp_path)
    code, out = run_cli("frames", "--root", str(tmp_path), "-T", "4", "--zarr-format", "3",
                        "--no-progress")  # fmt: skip
    assert code == 0 and out.startswith(f"{store} is in Zarr format 2, not the format 3 asked "
                                        "for; rebuilding it\n") and "wrote" in out, out  # fmt: skip
    assert zarr.open_group(store, mode="r").metadata.zarr_format == 3
    code, out = run_cli("frames", "--root", str(tmp_path), "-T", "4", "--no-progress")
    assert code == 0 and f"{store} is up to date" in out, out
    code, out = run_cli("info", str(store))
    assert "zarr format     3" in out
