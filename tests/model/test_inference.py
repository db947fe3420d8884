"""InferenceNet computes exactly what GestureNet computes in eval mode, step by step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dvsgkit.model import GestureNet
from dvsgkit.model.inference import InferenceNet, _Neuron, for_inference, pool_spikes
from dvsgkit.model.lif import MultiStepLIF, fire_and_reset, lif_step
from dvsgkit.model.plif import MultiStepPLIF, plif_step


def trained_like(net: GestureNet, seed: int) -> GestureNet:
    """Weights and BatchNorm statistics far from their initial values, so that many neurons fire
    and many stay silent (an untrained net's spikes are too sparse to test anything)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in net.bns:
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.3)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.2)
            bn.weight.copy_(torch.rand(bn.num_features, generator=g) * 2 + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.5)
        for conv in net.convs:
            conv.weight.mul_(6.0)
        for fc in (net.fc1, net.fc2):
            fc.weight.mul_(8.0)
        if net.neuron == "plif":
            for i, cell in enumerate(net.plif):
                cell.w.fill_(0.7 * i - 2.0)  # tau from ~8.4 down to ~1.1
    return net.eval()


def frames(n: int, t: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 4, (n, t, 2, 128, 128), generator=g).float()
    return counts * (torch.rand(counts.shape, generator=g) < 0.05)


@pytest.mark.parametrize("neuron", ["lif", "plif"])
@pytest.mark.parametrize(("n", "t"), [(1, 1), (3, 4)])
def test_the_rates_are_those_of_gesturenet_in_step_mode(neuron: str, n: int, t: int) -> None:
    torch.manual_seed(n + t)  # the initial weights too: some draws leave the output silent
    net = trained_like(GestureNet(4, mode="step", neuron=neuron, hidden=24), seed=n + t)
    x = frames(n, t, seed=t)
    with torch.no_grad():
        want = net(x)
    got = InferenceNet(net)(x)
    assert torch.equal(got, want), (got - want).abs().max()
    assert 0.0 < float(want.mean()) < 1.0  # neither silent nor saturated: the test can fail
    assert net.mode == "step" and net.training is False  # the original is untouched


def test_for_inference_gives_the_fast_net_on_the_cpu_and_the_same_predictions() -> None:
    net = trained_like(GestureNet(4, neuron="lif"), seed=3)
    fast = for_inference(net, "cpu")
    assert isinstance(fast, InferenceNet) and net.mode == "layer"
    x = frames(4, 3, seed=9)
    with torch.no_grad():
        layer = net(x)  # layer mode: the same function, rounded differently
    rates = fast(x)
    assert torch.allclose(rates, layer, atol=1e-6)
    assert torch.equal(rates.argmax(1), layer.argmax(1))


@pytest.mark.parametrize("tau", [2.0, 3.0])
def test_the_lif_step_matches_the_reference_bit_for_bit_at_the_threshold(tau: float) -> None:
    """Inputs that put the membrane exactly on the threshold (x = tau from rest; x = v + tau
    (1 - v) later), next to it, and far from it."""
    cell = _Neuron(MultiStepLIF(tau=tau), plif=False)
    x0 = torch.tensor([tau, tau * (1 - 2**-20), tau * (1 + 2**-20), -5.0, 0.0, 7.5])
    spike_ref, v_ref = lif_step(x0, 0.0, tau=tau)
    spike, v = cell.fire(cell.charge(x0.clone(), None))
    assert spike_ref.tolist()[:3] == [1.0, 0.0, 1.0]
    assert torch.equal(spike, spike_ref) and torch.equal(v, v_ref)
    x1 = v_ref + tau * (1 - v_ref) + torch.tensor([0.0, 1e-3, -1e-3, 0.0, 2.0, -9.0])
    spike_ref, v_ref2 = lif_step(x1, v_ref, tau=tau)
    spike, v2 = cell.fire(cell.charge(x1.clone(), v.clone()))
    assert torch.equal(spike, spike_ref) and torch.equal(v2, v_ref2)


def test_the_plif_step_matches_the_reference_bit_for_bit() -> None:
    layer = MultiStepPLIF(init_tau=3.0)
    with torch.no_grad():
        layer.w.fill_(0.3)
    cell = _Neuron(layer, plif=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1000, generator=g) * 2 + 1
    v_ref: torch.Tensor | float = 0.0
    v = None
    for step in range(3):
        spike_ref, v_ref = plif_step(x[step], v_ref, layer.w.sigmoid())
        spike, v = cell.fire(cell.charge(x[step].clone(), v))
        assert torch.equal(spike, spike_ref) and torch.equal(v, v_ref), step
        assert 0 < int(spike.sum()) < 1000


def test_fire_equals_fire_and_reset_including_exact_ties() -> None:
    h = torch.tensor([1.0, 1.0 - 2**-24, 1.0 + 2**-23, -1.0, 0.0, 3.0])
    spike_ref, v_ref = fire_and_reset(h.clone())
    spike, v = _Neuron(MultiStepLIF(), plif=False).fire(h.clone())
    assert spike.tolist() == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert torch.equal(spike, spike_ref) and torch.equal(v, v_ref)


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (1, 5, 7, 9), (3, 1, 2, 2)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_pool_spikes_is_max_pool(shape: tuple[int, ...], channels_last: bool) -> None:
    s = (torch.rand(shape, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    if channels_last:
        s = s.contiguous(memory_format=torch.channels_last)
    assert torch.equal(pool_spikes(s), F.max_pool2d(s, 2, 2))


def test_what_the_fast_path_does_not_take_is_refused() -> None:
    with pytest.raises(TypeError, match="takes a GestureNet"):
        InferenceNet(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="resets to 0; this LIF resets to -0.5"):
        _Neuron(MultiStepLIF(v_reset=-0.5), plif=False)
    fast = InferenceNet(GestureNet(4))
    with pytest.raises(RuntimeError, match="only evaluates"):
        fast.train()
    assert not any(p.requires_grad for p in fast.parameters())


@pytest.mark.parametrize("size", [128, 32])
def test_padded_batches_rate_each_samples_own_frames_only(size: int) -> None:
    """A batch padded to its longest sample with SpikingJelly's pad_sequence_collate, run with
    padded_sequence_mask: each sample's rates are those of the sample run alone (its own T),
    in both modes and in InferenceNet; without the mask the short samples' rates differ. The
    network takes frames of its `size` (a --size 32 store's)."""
    from dvsgkit.data import pad_sequence_collate, padded_sequence_mask

    torch.manual_seed(7)
    nets = {mode: GestureNet(4, mode=mode, hidden=24, size=size) for mode in ("step", "layer")}
    nets["layer"].load_state_dict(nets["step"].state_dict())
    for net in nets.values():
        trained_like(net, seed=3)
    nets["layer"].load_state_dict(nets["step"].state_dict())
    g = torch.Generator().manual_seed(2)
    samples = [(torch.randint(0, 4, (t, 2, size, size), generator=g).float()
                * (torch.rand(t, 2, size, size, generator=g) < 0.1), t % 11)
               for t in (3, 1, 5, 2)]  # fmt: skip
    x, _, lengths = pad_sequence_collate(samples)  # [N, 5, 2, size, size]
    mask = padded_sequence_mask(lengths)  # [5, N]
    with torch.no_grad():
        alone = torch.cat([nets["step"](s[None]) for s, _ in samples])  # [N, 11]
        for net in (*nets.values(), InferenceNet(nets["step"])):
            torch.testing.assert_close(net(x, mask), alone, rtol=0, atol=1e-6)
        unmasked = nets["step"](x)
    assert 0.0 < float(alone.mean()) < 1.0  # neither silent nor saturated: the test can fail
    assert not torch.allclose(unmasked[lengths < 5], alone[lengths < 5])
    assert nets["step"].fc1.in_features == 4 * (size // 32) ** 2
    with pytest.raises(ValueError, match=f"frames \\[N, T, 2, {size}, {size}\\]"):
        nets["step"](torch.zeros(1, 2, 2, size * 2, size * 2))
