"""Checkpoint files: atomic saves, weights-only loads that refuse damaged or unsafe files, and
RNG states that survive the round trip."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from dvsgkit.run import LATEST
from dvsgkit.run.checkpoint import (
    load_checkpoint,
    load_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def test_save_checkpoint_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_latest.pth"
    save_checkpoint({"net": {"w": torch.ones(3)}, "epoch": 0}, path)
    with pytest.raises(Exception):  # noqa: B017 - whatever torch raises for an unpicklable value
        save_checkpoint({"net": {}, "epoch": 1, "bad": lambda: 0}, path)
    assert load_checkpoint(path)["epoch"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pth"]


class _NotWeights:
    pass


def test_load_checkpoint_refuses_missing_truncated_and_unsafe_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth not found"):
        load_checkpoint(tmp_path / "nope.pth")
    good = tmp_path / "good.pth"
    save_checkpoint({"net": {"w": torch.arange(1000.0)}, "epoch": 3}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError, match="cut.pth is not a readable checkpoint"):
        load_checkpoint(cut)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"net": {}, "x": _NotWeights()}, unsafe)  # loading it would need a full unpickle
    with pytest.raises(ValueError, match="unsafe.pth is not a readable checkpoint"):
        load_checkpoint(unsafe)
    no_net = tmp_path / "no_net.pth"
    torch.save({"model": {}}, no_net)
    with pytest.raises(ValueError, match="holds no 'net'"):
        load_checkpoint(no_net)
    save_checkpoint({"net": {}, "epoch": 7}, tmp_path / LATEST)
    assert load_checkpoint(tmp_path)["epoch"] == 7  # a run directory means its latest checkpoint


def test_a_refused_file_is_named_with_what_it_holds_and_no_unsafe_advice(tmp_path: Path) -> None:
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"net": {"w": torch.ones(2)}, "x": _NotWeights()}, unsafe)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint " * 20)  # pickle's opcodes to the unpickler
    messages = {}
    for path in (unsafe, garbage):
        with pytest.raises(ValueError) as err:
            load_checkpoint(path)
        messages[path.name] = message = str(err.value)
        assert message.startswith(f"{path} is not a readable checkpoint"), message
        assert "\n" not in message  # one line
        for unsafe_advice in ("weights_only=False", "add_safe_globals", "safe_globals", "trust"):
            assert unsafe_advice not in message, message
    assert f"a pickled Python object ({__name__}._NotWeights)" in messages["unsafe.pth"]
    assert "never unpickles objects" in messages["unsafe.pth"]
    assert "(Unsupported operand 110): not a torch file" in messages["garbage.pth"]


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.rand(5), np.random.rand(7), random.random()
    save_checkpoint({"net": {}, "rng": [rng_state()]}, tmp_path / "c.pth")
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    torch.rand(10), np.random.rand(10), random.random()
    set_rng_state(load_checkpoint(tmp_path / "c.pth")["rng"][0])
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def _adam_run(layout: torch.memory_format, fused: bool, state: dict | None = None):
    """A conv weight in `layout` and its Adam (fused or not), optionally loaded from `state`."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=layout)
    optimizer = torch.optim.Adam(conv.parameters(), lr=0.01, fused=fused)
    if state is not None:
        load_state(optimizer, state, "optimizer", Path("run/checkpoint_latest.pth"))
    return conv, optimizer


def _adam_step(conv: torch.nn.Conv2d, optimizer: torch.optim.Optimizer, seed: int) -> None:
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    optimizer.zero_grad()
    conv(x.to(memory_format=torch.channels_last)).square().sum().backward()
    optimizer.step()


@pytest.mark.parametrize("fused", [False, True], ids=["plain-target", "fused-contiguous-target"])
def test_a_resumed_optimizer_runs_as_this_machine_says_on_its_parameters_layout(fused) -> None:
    # A GPU run's checkpoint: channels_last weights, fused Adam. Resumed on a CPU (plain Adam) or
    # with contiguous weights (fused Adam), torch alone would keep the saved fused=True and the
    # channels_last moments, which fused Adam pairs with the weights by memory order, not by
    # index. Both must follow this run.
    gpu_conv, gpu_adam = _adam_run(torch.channels_last, fused=True)
    _adam_step(gpu_conv, gpu_adam, seed=1)
    saved = copy.deepcopy(gpu_adam.state_dict())  # as from a file: no tensor shared
    assert saved["state"][0]["exp_avg"].is_contiguous(memory_format=torch.channels_last)

    conv, adam = _adam_run(torch.contiguous_format, fused=fused, state=saved)
    with torch.no_grad():
        conv.weight.copy_(gpu_conv.weight), conv.bias.copy_(gpu_conv.bias)
    group = adam.param_groups[0]
    assert group["fused"] is fused and group["lr"] == 0.01
    moments = adam.state[conv.weight]
    assert moments["exp_avg"].stride() == conv.weight.stride()
    assert torch.equal(moments["exp_avg"], saved["state"][0]["exp_avg"])  # same values, by index
    assert moments["step"].device.type == "cpu" and moments["step"].dtype == torch.float32

    _adam_step(conv, adam, seed=2)  # equals the run that kept going as it was
    _adam_step(gpu_conv, gpu_adam, seed=2)
    torch.testing.assert_close(conv.weight, gpu_conv.weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(conv.bias, gpu_conv.bias, rtol=1e-6, atol=1e-7)
