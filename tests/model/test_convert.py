"""from_spikingjelly: both seed key layouts, channels inferred, labels back in true order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dvsgkit.constants import SPIKINGJELLY_LABEL_ORDER
from dvsgkit.model import GestureNet, from_spikingjelly
from dvsgkit.model.convert import LAYOUTS


def trained_like_net(channels: int = 4) -> GestureNet:
    """A net with non-default BN statistics and firing outputs (as a trained one would have)."""
    torch.manual_seed(0)
    net = GestureNet(channels)
    with torch.no_grad():
        for i, bn in enumerate(net.bns):
            bn.running_var.uniform_(0.03, 0.08)
            bn.running_mean.uniform_(-0.2, 0.0)
            bn.weight.uniform_(0.8, 1.2)
            bn.bias.uniform_(-0.1, 0.1)
            bn.num_batches_tracked.fill_(100 + i)
        net.fc1.weight.mul_(8)
        net.fc2.weight.mul_(8)
    return net.eval()


def seed_state_dict(net: GestureNet, layout: str) -> dict[str, torch.Tensor]:
    """What the seed would have saved for `net`'s function: its keys, and output groups in
    SpikingJelly's order (its group j is true label SPIKINGJELLY_LABEL_ORDER[j])."""
    ours = net.state_dict()
    state = {src: ours[key].clone() for key, src in LAYOUTS[layout].items()}
    fc2 = LAYOUTS[layout]["fc2.weight"]
    groups = ours["fc2.weight"].reshape(11, 10, -1)
    state[fc2] = groups[list(SPIKINGJELLY_LABEL_ORDER)].reshape(110, -1).clone()
    return state


def frames(n: int = 2, t: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return (torch.rand(n, t, 2, 128, 128, generator=g) < 0.3).float()


@pytest.mark.parametrize("layout", ["PythonNet", "CextNet"])
def test_round_trip_gives_identical_rates_in_true_label_order(layout: str) -> None:
    net = trained_like_net(4)
    x = frames()
    expected = net(x)
    assert expected.max() > 0
    imported = from_spikingjelly({"net": seed_state_dict(net, layout), "epoch": 3}).eval()
    assert imported.channels == 4
    assert torch.equal(imported(x), expected)
    assert torch.equal(imported.bns[2].num_batches_tracked, torch.tensor(102))


def test_spikingjelly_group_j_becomes_true_label_order_j(tmp_path: Path) -> None:
    net = trained_like_net(4)
    x = frames()
    sj_rates = GestureNet(4).eval()
    sj_state = seed_state_dict(net, "PythonNet")
    # Evaluate the seed's own function: our module with its raw (permuted) rows.
    ours = {key: sj_state[src] for key, src in LAYOUTS["PythonNet"].items()}
    sj_rates.load_state_dict(ours)
    sj_out = sj_rates(x)
    path = tmp_path / "checkpoint_max.pth"
    torch.save({"net": sj_state, "epoch": 7, "max_test_acc": 0.5}, path)
    imported = from_spikingjelly(torch.load(path, map_location="cpu", weights_only=True))
    out = imported.eval()(x)
    for j, label in enumerate(SPIKINGJELLY_LABEL_ORDER):
        assert torch.equal(out[:, label], sj_out[:, j])
    assert not torch.equal(out, sj_out), "the test needs distinguishable classes"


def test_bare_state_dict_wrapper_prefix_mode_and_channels() -> None:
    net = trained_like_net(6)
    state = {f"module.{k}": v for k, v in seed_state_dict(net, "CextNet").items()}
    for key in [k for k in state if k.endswith("num_batches_tracked")]:
        del state[key]  # older checkpoints lack it
    imported = from_spikingjelly(state, mode="step")
    assert imported.channels == 6 and imported.mode == "step"
    assert torch.equal(imported.eval()(frames(n=2, t=2)), net(frames(n=2, t=2)))


def test_unknown_layout_lists_the_expected_keys() -> None:
    with pytest.raises(ValueError, match=r"PythonNet \(conv\.\{0,4,8,12,16\}\.weight.*CextNet"):
        from_spikingjelly({"features.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="already a dvsgkit GestureNet state dict"):
        from_spikingjelly(GestureNet(4).state_dict())
    with pytest.raises(ValueError, match="weights_only=True"):
        from_spikingjelly("checkpoint_max.pth")


def test_wrong_shapes_and_extra_keys_are_rejected() -> None:
    state = seed_state_dict(trained_like_net(4), "PythonNet")
    bad = dict(state, **{"fc.5.weight": torch.zeros(100, 16)})
    with pytest.raises(ValueError, match=r"fc\.5\.weight has shape \(100, 16\).*needs \(110, 16\)"):
        from_spikingjelly(bad)
    bad = dict(state, **{"conv.0.weight": torch.zeros(4, 3, 3, 3)})
    with pytest.raises(ValueError, match=r"expected \[C, 2, 3, 3\]"):
        from_spikingjelly(bad)
    with pytest.raises(ValueError, match=r"keys that PythonNet does not: fc\.8\.weight"):
        from_spikingjelly(dict(state, **{"fc.8.weight": torch.zeros(1)}))
