"""`dvsgkit train` under torchrun: 2 CPU processes with gloo split the data and agree on weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dvsgkit.fs.lock import build_lock
from dvsgkit.run import BEST, LATEST, RUN_LOCK, read_metrics
from dvsgkit.run.checkpoint import load_checkpoint

# Runs in each torchrun process: records what the train loader served and the final weights,
# then runs the real CLI command.
WORKER = textwrap.dedent(
    """
    import hashlib, json, os, sys
    import torch
    import dvsgkit.train as tr
    from dvsgkit_cli.main import cli

    rank, out = int(os.environ["RANK"]), sys.argv[1]
    seen, nets = [], []

    class Recording:
        def __init__(self, loader):
            self.loader = loader
        def __getattr__(self, name):
            return getattr(self.loader, name)
        def __len__(self):
            return len(self.loader)
        def __iter__(self):
            epoch = []
            seen.append(epoch)
            for frames, labels in self.loader:
                epoch += [hashlib.sha1(f.numpy().tobytes()).hexdigest() for f in frames]
                yield frames, labels

    make_loader = tr.make_loader
    tr.make_loader = lambda store, split, *a, **k: (
        Recording(make_loader(store, split, *a, **k)) if split == "train"
        else make_loader(store, split, *a, **k)
    )
    GestureNet = tr.GestureNet
    tr.GestureNet = lambda *a, **k: nets.append(GestureNet(*a, **k)) or nets[-1]
    try:
        cli(sys.argv[2:], standalone_mode=False)
    finally:
        json.dump(seen, open(f"{out}/seen{rank}.json", "w"))
        torch.save(nets[0].state_dict(), f"{out}/net{rank}.pt")
    """
)


@pytest.mark.slow
def test_torchrun_two_cpu_processes(small_root: Path, tmp_path: Path) -> None:
    root = small_root
    (tmp_path / "worker.py").write_text(WORKER)
    out_dir = tmp_path / "runs"
    args = ["train", "-T", "4", "--channels", "4", "-b", "4", "--epochs", "2", "-j", "0"]
    args += ["--device", "cpu", "--root", str(root), "--out-dir", str(out_dir), "--no-progress"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(tmp_path / "worker.py"), str(tmp_path), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # Each epoch: the 24 training samples split into two disjoint shares of 12 (3 batches of 4).
    seen = [json.loads((tmp_path / f"seen{r}.json").read_text()) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 2
    for epoch in range(2):
        a, b = seen[0][epoch], seen[1][epoch]
        assert len(a) == len(b) == 12 and not set(a) & set(b)
    assert seen[0][0] != seen[0][1]  # reshuffled between epochs

    # The ranks end with identical weights and BatchNorm statistics.
    nets = [torch.load(tmp_path / f"net{r}.pt", weights_only=True) for r in (0, 1)]
    for key, value in nets[0].items():
        assert torch.equal(value, nets[1][key]), key

    # Rank 0 alone wrote the run: one metrics line per epoch, counting both ranks' samples.
    run_dirs = list(out_dir.iterdir())
    assert len(run_dirs) == 1
    records = read_metrics(run_dirs[0])
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(r["train_samples"] == 24 and r["test_samples"] == 12 for r in records)
    assert proc.stdout.count("epoch=1,") == 1 and proc.stdout.count("done: max test") == 1
    latest = load_checkpoint(run_dirs[0] / LATEST)
    assert latest["world_size"] == 2 and len(latest["rng"]) == 2 and (run_dirs[0] / BEST).exists()
    for key, value in latest["net"].items():
        assert torch.equal(value, nets[0][key]), key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TRAIN_TINY = ["train", "-T", "4", "--channels", "4", "-b", "4", "--epochs", "1", "-j", "0"]


def _by_hand(code: str, args: list[str]) -> tuple[list[int], list[str]]:
    """Run `code` (which ends in the CLI) as ranks 0 and 1 of a 2-process gloo job started as
    srun or mpirun would start it: no torchrun agent to stop the others. (Return codes,
    outputs.)"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, *args],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [p.returncode for p in procs], outs


CLI = "from dvsgkit_cli.main import main; main()"


@pytest.mark.slow
def test_a_refusal_on_rank_0_stops_every_rank_under_any_launcher(
    frame_root: Path, tmp_path: Path
) -> None:
    """Rank 0 alone refuses the run directory, which another process is training in. Rank 1
    must stop too, with one line: not a traceback when rank 0's connection closes (gloo), nor a
    wait in its first all-reduce until the timeout (NCCL)."""
    run_dir = tmp_path / "T_4_b_4_c_4_adam_lr_0.001_cosalr_32"
    run_dir.mkdir()
    args = [*TRAIN_TINY, "--device", "cpu", "--root", str(frame_root), "--out-dir", str(tmp_path)]
    with build_lock(run_dir / RUN_LOCK, timeout=0):  # this test process trains there
        codes, outs = _by_hand(CLI, args)
    assert codes == [1, 1], outs
    assert f"Error: process {os.getpid()} is training the run in {run_dir}" in outs[0], outs[0]
    assert "Error: another process of this job failed" in outs[1], outs[1]
    assert "Traceback" not in outs[0] + outs[1]
    assert sorted(p.name for p in run_dir.iterdir()) == []  # nothing written (lock released)


# Rank 1 dies at once (killed for its memory, say); rank 0 fails on its own in the same block,
# or goes on to vote.
PEER_DIES = (
    "import os, sys; import dvsgkit.train as tr; real = tr.prepare_run; mode = sys.argv.pop(1)\n"
    "def prepare(*a):\n"
    "    if os.environ['RANK'] == '1':\n"
    "        os._exit(3)\n"
    "    if mode == 'fail':\n"
    "        from dvsgkit.errors import InputError\n"
    "        raise InputError('the error of rank 0')\n"
    "    return real(*a)\n"
    "tr.prepare_run = prepare\n" + CLI
)


@pytest.mark.slow
@pytest.mark.parametrize("rank_0", ["fail", "go on"])
def test_a_rank_whose_peer_has_died_stops_with_one_line(
    frame_root: Path, tmp_path: Path, rank_0: str
) -> None:
    args = [*TRAIN_TINY, "--device", "cpu", "--root", str(frame_root), "--out-dir", str(tmp_path)]
    codes, outs = _by_hand(PEER_DIES, [rank_0, *args])
    assert codes == [1, 3], outs
    lines = outs[0].strip().splitlines()
    assert len(lines) == 1, outs[0]
    if rank_0 == "fail":  # its own error, not the vote's
        assert lines[0] == "Error: the error of rank 0"
    else:
        assert lines[0].startswith("Error: another process of this job has gone ("), lines[0]


@pytest.mark.slow
def test_a_diverging_run_stops_every_rank_before_writing(frame_root: Path, tmp_path: Path) -> None:
    args = [*TRAIN_TINY, "--device", "cpu", "--root", str(frame_root), "--out-dir", str(tmp_path)]
    args += ["--epochs", "2", "--opt", "sgd", "--lr", "1e30", "--no-progress"]
    codes, outs = _by_hand(CLI, args)
    assert codes == [1, 1], outs
    for out in outs:  # each rank its own line: diverged too, or stopped with the other
        lines = [line for line in out.strip().splitlines() if not line.startswith("run directory")]
        assert len(lines) == 1, out
        assert lines[0].startswith(("Error: training diverged in epoch 0, at step ",
                                    "Error: another process of this job failed")), out  # fmt: skip
    assert "Error: training diverged in epoch 0" in outs[0]
    (run_dir,) = tmp_path.iterdir()
    assert not list(run_dir.glob("*.pth")) and not (run_dir / RUN_LOCK).exists()
