"""TrainConfig, option checks, a short real training run."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dvsgkit.config import TrainConfig
from dvsgkit.frames import FrameSpec
from dvsgkit.run import BEST, CONFIG, LATEST, read_metrics
from dvsgkit.run.checkpoint import load_checkpoint
from dvsgkit.train import train

TINY = {"T": 4, "channels": 4, "batch_size": 4, "workers": 0, "device": "cpu", "progress": False}


def test_defaults_are_the_classify_dvsg_recipes() -> None:
    c = TrainConfig()
    recipe = (16, 16, 64, 4, 128, 1e-3, 0.9, "cosalr", 32, 32, 0.1, 2020, "number")
    got = (c.T, c.batch_size, c.epochs, c.workers, c.channels, c.lr, c.momentum)
    got += (c.lr_scheduler, c.T_max, c.step_size, c.gamma, c.seed, c.split_by)
    assert got == recipe and c.frame_spec == FrameSpec(16, "number")
    assert (c.mode, c.backend) == ("step", "torch")
    assert (replace(c, cupy=True).mode, replace(c, cupy=True).backend) == ("layer", "cupy")


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({}, "cosalr_32"),
        ({"amp": True, "cupy": True, "T_max": 64}, "cosalr_64_amp_cupy"),
        ({"lr_scheduler": "steplr", "gamma": 0.5}, "steplr_32_0.5"),
        ({"split_by": "time", "seed": 1}, "cosalr_32_split_time_seed_1"),
    ],
)
def test_run_name_follows_classify_dvsg(changes: dict, name: str) -> None:
    config = TrainConfig(out_dir="out", **changes)
    name = f"T_16_b_16_c_128_adam_lr_0.001_{name}"
    assert config.run_name() == name
    assert replace(config, opt="sgd").run_name() == name.replace("adam", "sgd")
    assert config.run_dir() == Path("out") / name


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"T": 0}, "T must be an integer >= 1, got 0"),
        ({"batch_size": -2}, "batch_size must be"),
        ({"opt": "rmsprop"}, r"opt must be one of \('sgd', 'adam'\), got 'rmsprop'"),
        ({"lr_scheduler": "CosALR"}, "lr_scheduler must be one of"),
        ({"split_by": "events"}, "split_by must be one of"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"workers": -1}, "workers must be"),
        ({"seed": -1}, r"seed must be an integer in 0..4294967295, got -1"),
        ({"seed": 2**70}, r"seed must be an integer in 0..4294967295, got 1180591620717411303424"),
        ({"seed": True}, "seed must be an integer"),
        ({"lr": float("nan")}, "lr must be a finite number >= 0, got nan"),
        ({"momentum": float("inf")}, "momentum must be a finite number >= 0, got inf"),
        ({"gamma": -0.5}, "gamma must be a finite number >= 0, got -0.5"),
        ({"fused": True}, "--fused runs the fused CuPy kernels .*; add --cupy"),
        ({"compile_steps": True, "cupy": True}, "--compile compiles the step-by-step network"),
        ({"fused": True, "cupy": True, "sync_bn": True}, "--fused computes each process's own"),
        ({"compile_steps": True, "sync_bn": True}, "--compile runs the time steps with plain"),
    ],
)
def test_bad_config_values_name_the_value(changes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**changes)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[1, 2]", "a config is a dict of options, got a list"),
        ('{"T": "4"}', "T must be an integer >= 1, got '4'"),
        ('{"lr": "fast"}', "lr must be a finite number >= 0, got 'fast'"),
        ('{"T": 4, "warmup": 1}', "unknown config keys"),
        ("\udcff", "is not valid JSON"),
    ],
)
def test_a_malformed_config_json_names_the_file(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ValueError, match=match) as err:
        TrainConfig.load_json(path)
    assert str(path) in str(err.value)


def test_config_round_trips_and_refuses_unknown_keys(tmp_path: Path) -> None:
    config = TrainConfig(T=8, amp=True, lr=0.01)
    config.save_json(tmp_path / "c.json")
    assert TrainConfig.load_json(tmp_path / "c.json") == config
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(ValueError, match=r"unknown config keys \['warmup'\]"):
        TrainConfig.from_dict({**config.to_dict(), "warmup": 3})
    assert config.recipe_differences(replace(config, epochs=9, device="cuda:0")) == {}
    assert config.recipe_differences(replace(config, channels=4)) == {"channels": (128, 4)}


def test_amp_on_cpu_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    config = TrainConfig(out_dir=str(tmp_path / "runs"), root=str(tmp_path), amp=True, **TINY)
    with pytest.raises(ValueError, match="--amp needs a CUDA device.*drop --amp on CPU"):
        train(config)
    assert not (tmp_path / "runs").exists()


def test_cupy_without_cupy_or_gpu_is_refused(tmp_path: Path) -> None:
    config = TrainConfig(out_dir=str(tmp_path / "runs"), root=str(tmp_path), cupy=True, **TINY)
    with pytest.raises(ValueError, match="--cupy"):
        train(config)
    assert not (tmp_path / "runs").exists()


CUDA_AMP = {"device": "cuda:0", "amp": True}


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({}, id="cpu"),
        pytest.param(CUDA_AMP, marks=pytest.mark.gpu, id="cuda-amp-step"),
        pytest.param({**CUDA_AMP, "cupy": True}, marks=pytest.mark.gpu, id="cuda-amp-cupy"),
        pytest.param(
            {**CUDA_AMP, "cupy": True, "channels_last": False},
            marks=pytest.mark.gpu,
            id="cuda-amp-cupy-nchw",
        ),
        pytest.param(
            {**CUDA_AMP, "cupy": True, "fused": True}, marks=pytest.mark.gpu, id="cuda-amp-fused"
        ),
        pytest.param(
            {**CUDA_AMP, "compile_steps": True},
            marks=[pytest.mark.gpu, pytest.mark.slow],
            id="cuda-amp-compile",
        ),
    ],
)
def test_short_training_run_writes_every_artefact(
    frame_root: Path, tmp_path: Path, changes: dict
) -> None:
    config = TrainConfig(
        root=str(frame_root), out_dir=str(tmp_path), epochs=2, **{**TINY, **changes}
    )
    result = train(config)
    run_dir = config.run_dir()
    assert result.run_dir == run_dir and result.epochs_run == 2
    assert TrainConfig.load_json(run_dir / CONFIG) == config
    records = read_metrics(run_dir)
    assert [r["epoch"] for r in records] == [0, 1]
    keys = {"train_loss", "train_acc", "test_loss", "test_acc", "max_test_acc", "total_time"}
    assert keys | {"train_samples_per_s"} <= set(records[0])
    # drop_last: the train split's 24 samples in batches of 4; the test split unabridged.
    assert records[0]["train_samples"] == 24 and records[0]["test_samples"] == 12
    assert records[1]["max_test_acc"] == max(r["test_acc"] for r in records)
    latest = load_checkpoint(run_dir / LATEST)
    recipe_keys = {"net", "optimizer", "lr_scheduler", "epoch", "max_test_acc"}  # classify_dvsg's
    assert recipe_keys | {"scaler", "rng", "config"} <= set(latest)
    assert latest["epoch"] == 1 and latest["config"] == config.to_dict()
    best = load_checkpoint(run_dir / BEST)
    assert best["max_test_acc"] == result.max_test_acc
    assert not list(run_dir.glob("*.partial")) and not list(run_dir.glob(".*.partial"))
    # TensorBoard scalars exactly when tensorboard is installed (it is in the [dev] extra).
    has_tensorboard = importlib.util.find_spec("tensorboard") is not None
    assert (run_dir / "tensorboard").is_dir() == has_tensorboard
    if config.amp:  # the GradScaler's state travels with the checkpoint
        assert latest["scaler"]["scale"] > 0


def test_sync_bn_on_cpu_is_refused(tmp_path: Path) -> None:
    config = TrainConfig(out_dir=str(tmp_path / "runs"), root=str(tmp_path), sync_bn=True, **TINY)
    with pytest.raises(ValueError, match="--sync-bn needs CUDA"):
        train(config)


def test_a_single_process_run_on_cuda_1_makes_it_the_current_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # rng_state() saves the current device's CUDA generator; the masks come from cuda:1's.
    from dvsgkit.distributed import Job

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    with Job(torch.device("cuda", 1)) as job:
        assert (job.world_size, job.rank, job.main) == (1, 0, True)
        assert job.device == torch.device("cuda", 1)
    assert current == [torch.device("cuda", 1)]
    with Job(torch.device("cpu")):
        pass
    assert current == [torch.device("cuda", 1)]


def test_compile_that_cannot_run_on_cuda_is_refused_not_run_eagerly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dvsgkit import device
    from dvsgkit.model import graphs

    monkeypatch.setattr(device, "parse_device", lambda text: torch.device("cuda", 0))
    monkeypatch.setattr(graphs, "compile_unavailable_reason", lambda device: "no Triton here")
    with pytest.raises(ValueError, match="--compile cannot run: no Triton here; or train without"):
        device.training_device(TrainConfig(compile_steps=True, device="cuda"))
    device.training_device(TrainConfig(device="cuda"))  # without --compile: nothing to refuse
