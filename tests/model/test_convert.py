"""from_spikingjelly: classify_dvsg's and DVSGestureNet's key layouts, shapes inferred, labels
back in true order; against SpikingJelly's own DVSGestureNet when the package is importable."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from dvsgkit.constants import SPIKINGJELLY_LABEL_ORDER
from dvsgkit.model import GestureNet, from_spikingjelly
from dvsgkit.model.convert import DVSG_PLIF_KEYS, LAYOUTS


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
    """What classify_dvsg would have saved for `net`'s function: its keys, and output groups in
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
    # Evaluate classify_dvsg's own function: our module with its raw (permuted) rows.
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


# ---------------------------------------------------------------- DVSGestureNet (activation_based)


def trained_like_dvsg(neuron: str, channels: int = 4, hidden: int = 24) -> GestureNet:
    """DVSGestureNet's shape in dvsgkit terms (Linear bias, own hidden width) with non-default
    weights, biases and (PLIF) time constants."""
    torch.manual_seed(1)
    net = GestureNet(channels, neuron=neuron, hidden=hidden, bias=True)
    with torch.no_grad():
        for bn in net.bns:
            bn.running_var.uniform_(0.03, 0.08)
            bn.running_mean.uniform_(-0.2, 0.0)
        net.fc1.weight.mul_(8)
        net.fc2.weight.mul_(8)
        net.fc2.bias.uniform_(-0.5, 0.5)
        if neuron == "plif":
            for i, cell in enumerate(net.plif):
                cell.w.fill_(-0.6 + 0.2 * i)
    return net.eval()


def dvsg_state_dict(net: GestureNet) -> dict[str, torch.Tensor]:
    """What SpikingJelly's DVSGestureNet would save for `net`'s function (keys of its conv_fc
    Sequential, output groups in its label order)."""
    ours = net.state_dict()
    mapping = dict(LAYOUTS["DVSGestureNet"])
    if net.neuron == "plif":
        mapping |= DVSG_PLIF_KEYS
    state = {src: ours[key].clone() for key, src in mapping.items()}
    order = list(SPIKINGJELLY_LABEL_ORDER)
    state["conv_fc.25.weight"] = ours["fc2.weight"].reshape(11, 10, -1)[order].reshape(110, -1)
    state["conv_fc.25.bias"] = ours["fc2.bias"].reshape(11, 10)[order].reshape(110)
    return state


@pytest.mark.parametrize("neuron", ["lif", "plif"])
def test_dvsgesturenet_round_trip(neuron: str, tmp_path: Path) -> None:
    net = trained_like_dvsg(neuron)
    x = frames()
    expected = net(x)
    assert expected.max() > 0
    path = tmp_path / "checkpoint_max.pth"
    torch.save({"net": dvsg_state_dict(net), "epoch": 9, "max_test_acc": 0.9}, path)
    imported = from_spikingjelly(torch.load(path, map_location="cpu", weights_only=True))
    assert (imported.neuron, imported.hidden, imported.bias) == (neuron, 24, True)
    assert torch.equal(imported.eval()(x), expected)
    assert torch.equal(from_spikingjelly(dvsg_state_dict(net), mode="step").eval()(x), expected)
    if neuron == "plif":
        assert imported.learned_taus() == net.learned_taus() != {}


def test_dvsgesturenet_partial_plif_keys_and_foreign_keys_are_named() -> None:
    state = dvsg_state_dict(trained_like_dvsg("plif"))
    del state["conv_fc.23.w"]
    with pytest.raises(ValueError, match=r"lacks conv_fc\.23\.w; a PLIF DVSGestureNet"):
        from_spikingjelly(state)
    state = dvsg_state_dict(trained_like_dvsg("lif"))
    with pytest.raises(ValueError, match=r"keys that DVSGestureNet does not: conv_fc\.30\.w"):
        from_spikingjelly(dict(state, **{"conv_fc.30.w": torch.zeros(())}))
    with pytest.raises(ValueError, match=r"or of DVSGestureNet \(conv_fc\.\{0,4,8,12,16\}"):
        from_spikingjelly({"conv_fc.0.weight": torch.zeros(4, 2, 3, 3)})
    bad = dict(state, **{"conv_fc.25.weight": torch.zeros(100, 24)})
    with pytest.raises(ValueError, match=r"conv_fc\.25\.weight has shape \(100, 24\)"):
        from_spikingjelly(bad)


def spikingjelly_dvsgesturenet(neuron: str, channels: int = 4) -> torch.nn.Module:
    """SpikingJelly's own DVSGestureNet, multi-step, with random non-default weights."""
    from spikingjelly.activation_based import functional, surrogate
    from spikingjelly.activation_based import neuron as sj_neuron
    from spikingjelly.activation_based.model import parametric_lif_net

    node = sj_neuron.ParametricLIFNode if neuron == "plif" else sj_neuron.LIFNode
    torch.manual_seed(2)
    net = parametric_lif_net.DVSGestureNet(
        channels=channels, spiking_neuron=node, surrogate_function=surrogate.ATan(),
        detach_reset=True,
    )  # fmt: skip
    functional.set_step_mode(net, "m")
    with torch.no_grad():
        for i, m in enumerate(net.modules()):
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.03, 0.08)
                m.running_mean.uniform_(-0.2, 0.0)
                m.weight.uniform_(0.8, 1.2)
            elif isinstance(m, torch.nn.Linear):
                m.weight.mul_(8)
                m.bias.uniform_(-0.3, 0.3)
            elif hasattr(m, "w") and isinstance(m.w, torch.nn.Parameter):
                m.w.fill_(-0.5 + 0.1 * (i % 7))
    return net.eval()


@pytest.mark.skipif(
    importlib.util.find_spec("spikingjelly") is None, reason="spikingjelly is not installed"
)
@pytest.mark.parametrize("neuron", ["lif", "plif"])
def test_real_spikingjelly_dvsgesturenet_imports_with_the_same_rates(
    neuron: str, tmp_path: Path
) -> None:
    from spikingjelly.activation_based import functional

    sj_net = spikingjelly_dvsgesturenet(neuron)
    x = frames()
    with torch.no_grad():
        sj_rates = sj_net(x.transpose(0, 1)).mean(0)  # its example: [T, N, ...] in, mean over T
    functional.reset_net(sj_net)
    assert sj_rates.max() > 0
    path = tmp_path / "checkpoint_max.pth"
    torch.save({"net": sj_net.state_dict(), "epoch": 0}, path)
    ours = from_spikingjelly(torch.load(path, map_location="cpu", weights_only=True)).eval()
    assert ours.neuron == neuron and ours.hidden == 512
    out = ours(x)
    for j, label in enumerate(SPIKINGJELLY_LABEL_ORDER):
        torch.testing.assert_close(out[:, label], sj_rates[:, j], rtol=0, atol=1e-6)
