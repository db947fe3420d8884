"""--device strings dvsgkit refuses, with the fix; the CPU threads torch is given."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dvsgkit import device
from dvsgkit.device import parse_device


@pytest.mark.parametrize("device", ["mps", "meta", "xpu:0"])
def test_devices_dvsgkit_cannot_train_on_are_refused(device: str) -> None:
    with pytest.raises(ValueError, match=f"--device {device}: dvsgkit runs on cpu, cuda or cuda:N"):
        parse_device(device)


@pytest.mark.parametrize(
    ("v2", "v1", "cpus"),
    [
        ("150000 100000\n", None, 1),  # docker --cpus 1.5
        ("max 100000\n", None, 64),  # no limit
        (None, ("200000", "100000"), 2),  # cgroup v1
        (None, ("-1", "100000"), 64),
        (None, None, 64),  # neither: unknown
    ],
)
def test_a_cgroup_cpu_quota_caps_the_cpus_available(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, v2: str | None, v1: tuple | None, cpus: int
) -> None:
    v1_dir = tmp_path / "cpu"
    v1_dir.mkdir()
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
    if v1 is not None:
        (v1_dir / "cpu.cfs_quota_us").write_text(v1[0])
        (v1_dir / "cpu.cfs_period_us").write_text(v1[1])
    monkeypatch.setattr(device, "CGROUP_V2_CPU_MAX", tmp_path / "cpu.max")
    monkeypatch.setattr(device, "CGROUP_V1_CPU", v1_dir)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert device.cpus_available() == cpus


@pytest.fixture
def one_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process limited to one CPU by its cgroup's quota (`docker --cpus 1`), which torch's
    default thread count does not see; torch's threads are put back afterwards."""
    threads = torch.get_num_threads()
    if threads < 2 or device.cpus_available() < 2:
        pytest.skip("needs 2 CPUs to see a limit to 1")
    (tmp_path / "cpu.max").write_text("100000 100000\n")  # a quota of one CPU
    monkeypatch.setattr(device, "CGROUP_V2_CPU_MAX", tmp_path / "cpu.max")
    monkeypatch.delenv(device.THREADS_ENV, raising=False)
    yield
    torch.set_num_threads(threads)


def test_training_and_evaluation_use_no_more_threads_than_the_cpus_available(
    one_cpu: None, frame_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dvsgkit.evaluate as ev
    import dvsgkit.objective as objective
    import dvsgkit.train as tr
    from dvsgkit.config import TrainConfig

    seen: list[int] = []
    score = objective.score_batch

    def counting(*args: object, **kwargs: object) -> object:
        seen.append(torch.get_num_threads())
        return score(*args, **kwargs)

    monkeypatch.setattr(objective, "score_batch", counting)
    config = TrainConfig(T=4, channels=4, batch_size=8, epochs=1, workers=0, device="cpu",
                         root=str(frame_root), out_dir=str(tmp_path), progress=False)  # fmt: skip
    run_dir = tr.train(config).run_dir
    assert seen and set(seen) == {1}, seen
    torch.set_num_threads(2)
    result = ev.evaluate(run_dir, root=frame_root, device="cpu", progress=False)
    assert result.samples == 12 and torch.get_num_threads() == 1


def test_omp_num_threads_decides_when_set(one_cpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(2)
    monkeypatch.setenv(device.THREADS_ENV, "2")  # torch read it at start: it is the user's choice
    assert device.set_cpu_threads() == 2 and torch.get_num_threads() == 2
    monkeypatch.delenv(device.THREADS_ENV)
    assert device.set_cpu_threads() == 1 and torch.get_num_threads() == 1


def test_spare_cpus_are_left_to_other_work_but_one_thread_stays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`predict --live` leaves a CPU to its receiving thread: 3 torch threads on 4 CPUs, and
    never fewer than one."""
    threads = torch.get_num_threads()
    monkeypatch.delenv(device.THREADS_ENV, raising=False)
    monkeypatch.setattr(device, "cpus_available", lambda: 4)
    try:
        torch.set_num_threads(4)
        assert device.set_cpu_threads(spare=1) == 3 == torch.get_num_threads()
        assert device.set_cpu_threads(spare=8) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)


def test_the_command_line_makes_waiting_openmp_threads_sleep() -> None:
    code = "import os, dvsgkit_cli.common; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "PASSIVE", out.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # the user's own choice is kept
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "ACTIVE", out.stderr
