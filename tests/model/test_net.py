"""GestureNet: shapes, arguments, and step-by-step == layer-by-layer in values and gradients."""

from __future__ import annotations

import re

import pytest
import torch

from dvsgkit.model import GestureNet


def active_net(channels: int, mode: str, seed: int = 0, neuron: str = "lif") -> GestureNet:
    """A small net whose layers all fire (default init is nearly silent at the output), so the
    comparisons below compare real spike trains, not zeros. PLIF layers get distinct taus."""
    torch.manual_seed(seed)
    net = GestureNet(channels, mode, neuron=neuron)
    with torch.no_grad():
        for bn in net.bns:
            bn.running_var.fill_(0.05)
            bn.running_mean.fill_(-0.1)
        net.fc1.weight.mul_(8)
        net.fc2.weight.mul_(8)
        for i, cell in enumerate(net.neurons() if neuron == "plif" else []):
            cell.w.fill_(-0.6 + 0.2 * i)
    return net


def frames(n: int = 2, t: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, t, 2, 128, 128, generator=g) < 0.3).float()  # [N, T, 2, H, W]


def test_output_is_class_firing_rates() -> None:
    net = active_net(4, "layer").eval()
    out = net(frames(t=4))
    assert out.shape == (2, 11)
    assert out.max() > 0, "the test net must fire"
    # rates averaged over T=4 of means over 10 voters: multiples of 1/40 in [0, 1]
    assert torch.all((out >= 0) & (out <= 1))
    assert torch.allclose(out * 40, (out * 40).round(), atol=1e-5)


def test_state_is_cleared_between_calls() -> None:
    for mode in ("step", "layer"):
        net = active_net(4, mode).eval()
        x = frames()
        assert torch.equal(net(x), net(x))


def test_state_dict_is_the_same_in_every_mode() -> None:
    step, layer = active_net(4, "step"), GestureNet(4, "layer")
    assert step.state_dict().keys() == layer.state_dict().keys()
    layer.load_state_dict(step.state_dict())
    assert layer.fc2.weight.shape == (110, 16) and layer.fc1.weight.shape == (16, 64)


def _grads(net: GestureNet, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    net.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = net(x)
    # MSE against a fixed target, as in training
    target = torch.zeros_like(out)
    target[:, 3] = 1
    torch.nn.functional.mse_loss(out, target).backward()
    grads = {k: p.grad.clone() for k, p in net.named_parameters()}
    return out.detach(), {"input": x.grad, **grads}


def _same_seed_grads(
    first: GestureNet, second: GestureNet, x: torch.Tensor, seed: int = 5
) -> tuple[tuple[torch.Tensor, dict[str, torch.Tensor]], ...]:
    """`_grads` of both nets, each from the same RNG state (the same dropout masks)."""
    torch.manual_seed(seed)
    a = _grads(first, x)
    torch.manual_seed(seed)
    return a, _grads(second, x)


def _assert_grads_close(
    got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], rtol: float, atol: float
) -> None:
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=rtol, atol=atol, msg=name)


def test_step_and_layer_modes_agree_in_eval() -> None:
    step, layer = active_net(4, "step").eval(), active_net(4, "layer").eval()
    x = frames(t=4)
    out_s, g_s = _grads(step, x)
    out_l, g_l = _grads(layer, x)
    torch.testing.assert_close(out_s, out_l, rtol=0, atol=1e-6)
    assert g_s["fc1.weight"].abs().sum() > 0 and g_s["convs.0.weight"].abs().sum() > 0
    _assert_grads_close(g_s, g_l, rtol=1e-4, atol=1e-6)


@pytest.fixture
def exact_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 convolutions without TF32 and with deterministic algorithms, so two nets with the
    same weights feed their LIF layers identical inputs."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("nhwc", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("neuron", ["lif", "plif"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_cupy_backend_equals_torch_backend_on_cuda(
    exact_cuda: None, train: bool, neuron: str, nhwc: bool, fused: bool
) -> None:
    torch_net = active_net(4, "layer", neuron=neuron).cuda().train(train)
    cupy_net = GestureNet(4, "layer", "cupy", neuron=neuron, fused=fused).cuda().train(train)
    cupy_net.load_state_dict(torch_net.state_dict())
    if nhwc:  # the CuPy net NHWC end to end against the plain NCHW torch net
        cupy_net.to(memory_format=torch.channels_last)
    x = frames(n=3, t=4).cuda()
    # same dropout masks in train mode
    (out_t, g_t), (out_c, g_c) = _same_seed_grads(torch_net, cupy_net, x, seed=3)
    assert out_t.abs().sum() > 0
    torch.testing.assert_close(out_c, out_t, rtol=0, atol=1e-6)
    _assert_grads_close(g_c, g_t, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
def test_cupy_backend_trains_under_amp() -> None:
    torch_net = active_net(8, "layer").cuda().train()
    cupy_net = GestureNet(8, "layer", "cupy").cuda().train()
    cupy_net.load_state_dict(torch_net.state_dict())
    x = frames(n=4, t=4).cuda()
    outs = []
    for net in (torch_net, cupy_net):
        torch.manual_seed(3)
        with torch.autocast("cuda", dtype=torch.float16):
            out = net(x)
        out.float().sum().backward()
        outs.append(out.detach().float())
        grads = torch.cat([p.grad.flatten() for p in net.parameters()])
        assert torch.isfinite(grads).all() and grads.abs().sum() > 0
    assert outs[1].abs().sum() > 0
    # The torch LIF rounds every op to fp16, the kernel keeps fp32 in registers: a few spikes
    # exactly at threshold may differ, the rates must not drift.
    diff = (outs[0] - outs[1]).abs()
    assert diff.mean() < 0.02 and diff.max() < 0.2, diff


def test_step_and_layer_modes_agree_in_train_mode_with_dropout() -> None:
    # With T = 1, BatchNorm batch statistics cover the same N inputs in both modes, so train
    # mode (batch statistics + dropout masks drawn from the same seed) must agree too.
    step, layer = active_net(4, "step").train(), active_net(4, "layer").train()
    x = frames(n=3, t=1)
    (out_s, g_s), (out_l, g_l) = _same_seed_grads(step, layer, x, seed=7)
    torch.testing.assert_close(out_s, out_l, rtol=0, atol=1e-6)
    _assert_grads_close(g_s, g_l, rtol=1e-4, atol=1e-6)
    torch.manual_seed(8)
    assert not torch.equal(_grads(layer, x)[1]["fc2.weight"], g_l["fc2.weight"]), "new masks"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channels": 0}, "channels must be a positive int"),
        ({"mode": "fast"}, r"mode must be one of \('step', 'layer'\)"),
        ({"backend": "triton"}, r"backend must be one of \('torch', 'cupy'\)"),
        ({"mode": "step", "backend": "cupy"}, "use mode='layer'"),
        ({"hidden": 0}, "hidden must be a positive int, got 0"),
        ({"neuron": "alif"}, r"neuron must be one of \('lif', 'plif'\), got 'alif'"),
        ({"neuron": "plif", "init_tau": 0.9}, "init_tau must be a finite number > 1"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GestureNet(**kwargs)


def test_wrong_input_shape_names_the_expected_one() -> None:
    with pytest.raises(ValueError, match=r"\[N, T, 2, 128, 128\], got shape \(2, 3, 2, 64, 64\)"):
        GestureNet(4)(torch.zeros(2, 3, 2, 64, 64))


def _nhwc(net: GestureNet, monkeypatch: pytest.MonkeyPatch | None = None) -> GestureNet:
    """net in channels_last; with monkeypatch, padding the input as on CUDA, here on the CPU."""
    if monkeypatch is not None:
        monkeypatch.setattr(net, "_pads_input", lambda x: net.channels_last)
    return net.to(memory_format=torch.channels_last)


def test_the_input_is_padded_on_cuda_with_channels_last_only() -> None:
    x = torch.zeros(1, 1, 2, 128, 128)
    assert not GestureNet(4)._pads_input(x)
    assert not _nhwc(GestureNet(4))._pads_input(x)  # CPU: conv1 on 8 channels costs more


@pytest.mark.gpu
def test_channels_last_on_cuda_pads_the_input_and_computes_the_same(exact_cuda: None) -> None:
    plain = active_net(4, "layer").cuda().train()
    nhwc = _nhwc(active_net(4, "layer").cuda()).train()
    x = frames(n=3, t=4).cuda()
    assert nhwc._pads_input(x) and nhwc._input(x).shape[2] == 8
    (out_p, g_p), (out_n, g_n) = _same_seed_grads(plain, nhwc, x)
    assert out_p.abs().sum() > 0
    torch.testing.assert_close(out_n, out_p, rtol=0, atol=1e-6)
    _assert_grads_close(g_n, g_p, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["layer", "step"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_channels_last_computes_the_same_function_with_the_same_state_dict(
    mode: str, train: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = active_net(4, mode).train(train)
    nhwc = _nhwc(active_net(4, mode), monkeypatch).train(train)
    assert not plain.channels_last and nhwc.channels_last
    assert list(nhwc.state_dict()) == list(plain.state_dict())
    assert nhwc.convs[0].weight.shape == (4, 2, 3, 3)  # the padding never reaches the weights
    x = frames(n=3, t=4)
    (out_p, g_p), (out_n, g_n) = _same_seed_grads(plain, nhwc, x)
    assert out_p.abs().sum() > 0
    assert torch.equal(out_n, out_p)
    _assert_grads_close(g_n, g_p, rtol=1e-4, atol=1e-6)
    for name, value in plain.state_dict().items():  # running statistics updated alike
        torch.testing.assert_close(nhwc.state_dict()[name], value, rtol=1e-5, atol=1e-6)


def test_channels_last_input_is_nhwc_with_eight_channels(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _nhwc(GestureNet(4), monkeypatch)
    x = frames(n=3, t=2)
    steps = net._input(x)  # [T, N, 8, H, W]
    assert steps.shape == (2, 3, 8, 128, 128)
    assert all(s.is_contiguous(memory_format=torch.channels_last) for s in steps)
    assert steps.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(steps[:, :, :2], x.transpose(0, 1)) and not steps[:, :, 2:].any()


@pytest.mark.parametrize("mode", ["layer", "step"])
def test_channels_last_keeps_every_convolution_and_batchnorm_nhwc(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = _nhwc(active_net(4, mode), monkeypatch)
    seen: list[tuple[str, bool]] = []

    def record(name: str):
        def hook(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
            for what, t in (("in", args[0]), ("out", out)):
                seen.append((f"{name} {what}", t.is_contiguous(memory_format=torch.channels_last)))

        return hook

    for i, (conv, bn) in enumerate(zip(net.convs, net.bns, strict=True)):
        if i:  # conv1 runs through F.conv2d with its padded weight
            conv.register_forward_hook(record(f"conv{i + 1}"))
        bn.register_forward_hook(record(f"bn{i + 1}"))
    net(frames(n=2, t=2))
    assert len(seen) == (4 + 5) * 2 * (2 if mode == "step" else 1)
    assert all(nhwc for _, nhwc in seen), [name for name, nhwc in seen if not nhwc]


def _fused_net_on_cpu(monkeypatch: pytest.MonkeyPatch, seed: int = 0) -> GestureNet:
    """A fused CuPy GestureNet made to run on the CPU: CuPy checks pass, its LIF layers run the
    torch loop, and forward's CUDA check sees a torch backend. Weights as active_net(4)'s."""
    from dvsgkit.model import cupy_runtime, lif, lif_cupy

    monkeypatch.setattr(cupy_runtime, "require_cupy", lambda: None)
    monkeypatch.setattr(lif_cupy, "lif_multistep_cupy", lif.lif_multistep)
    net = GestureNet(4, "layer", "cupy", fused=True)
    net.load_state_dict(active_net(4, "layer", seed).state_dict())
    monkeypatch.setattr(net, "backend", "torch")
    return net


def test_fused_option_hands_each_conv_block_to_bn_lif_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    import torch.nn.functional as F

    calls = []

    def chain(y: torch.Tensor, bn, neuron, t: int) -> torch.Tensor:  # the unfused torch chain
        calls.append((tuple(y.shape), bn, neuron, t))
        return F.max_pool2d(neuron(bn(y).unflatten(0, (t, -1))).flatten(0, 1), 2, 2)

    fake = types.ModuleType("dvsgkit.model.fused_block")
    fake.bn_lif_pool = chain
    monkeypatch.setitem(sys.modules, "dvsgkit.model.fused_block", fake)
    fused = _fused_net_on_cpu(monkeypatch).train()
    assert fused.fused and "fused=True" in repr(fused)
    plain = active_net(4, "layer").train()
    x = frames(n=3, t=4)
    (out_p, g_p), (out_f, g_f) = _same_seed_grads(plain, fused, x)
    assert [c[0] for c in calls] == [(12, 4, 128 >> i, 128 >> i) for i in range(5)]
    assert [c[1] for c in calls] == list(fused.bns) and all(c[2] is fused.lif for c in calls)
    assert all(c[3] == 4 for c in calls)
    assert out_p.abs().sum() > 0 and torch.equal(out_f, out_p)
    _assert_grads_close(g_f, g_p, rtol=1e-4, atol=1e-6)


def test_fused_needs_the_cupy_backend() -> None:
    with pytest.raises(ValueError, match="fused=True .* use it with mode='layer', backend='cupy'"):
        GestureNet(4, "layer", "torch", fused=True)
    with pytest.raises(ValueError, match="use mode='layer'"):
        GestureNet(4, "step", "cupy", fused=True)


def test_compiled_steps_run_on_cuda_with_triton_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from dvsgkit.model import graphs

    assert "CUDA only" in graphs.compile_unavailable_reason(torch.device("cpu"))
    cuda = torch.device("cuda", 0)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "triton" else real_find_spec(name)
    )
    assert "Triton" in graphs.compile_unavailable_reason(cuda)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert graphs.compile_unavailable_reason(cuda) is None


def test_compile_steps_on_the_cpu_runs_the_eager_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    from dvsgkit.model import graphs

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("compiled on the CPU")

    monkeypatch.setattr(graphs, "compiled", refuse)
    eager, asked = active_net(4, "step").train(), active_net(4, "step").train()
    asked.compile_steps = True
    x = frames(n=2, t=3)
    assert not asked._compiles_steps(x)
    torch.manual_seed(5)
    out_e = eager(x)
    torch.manual_seed(5)
    assert torch.equal(asked(x), out_e)


def test_compile_steps_leaves_sync_batchnorm_to_the_eager_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dvsgkit.model import graphs

    monkeypatch.setattr(graphs, "compile_unavailable_reason", lambda device: None)
    net = GestureNet(4, "step", compile_steps=True)
    assert net._compiles_steps(torch.zeros(1))
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(
        GestureNet(4, "step", compile_steps=True)
    )
    assert not synced._compiles_steps(torch.zeros(1))
    with pytest.raises(ValueError, match="compile_steps compiles the step-by-step network"):
        GestureNet(4, "layer", compile_steps=True)


@pytest.mark.slow
def test_compiled_steps_compute_the_eager_function(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.compile also runs on the CPU (no CUDA graphs there): forced on here, the compiled
    # steps, with BatchNorm's running statistics updated outside them, must match the eager
    # net in output, gradients and running statistics.
    from dvsgkit.model import graphs

    monkeypatch.setattr(graphs, "compile_unavailable_reason", lambda device: None)
    eager = active_net(4, "step").train()
    compiled = active_net(4, "step").train()
    compiled.compile_steps = True
    x = frames(n=3, t=4)
    (out_e, g_e), (out_c, g_c) = _same_seed_grads(eager, compiled, x)
    assert out_e.abs().sum() > 0 and torch.equal(out_c, out_e)
    _assert_grads_close(g_c, g_e, rtol=1e-4, atol=1e-6)
    for name, value in eager.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[name], value, rtol=1e-5, atol=1e-7)
    assert compiled.bns[0].num_batches_tracked.item() == 4  # one batch per time step


@pytest.mark.gpu
@pytest.mark.slow  # compiles the step twice (train, eval)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_compiled_steps_on_cuda_compute_the_eager_function(exact_cuda: None, train: bool) -> None:
    eager = active_net(8, "step").cuda().train(train)
    compiled = GestureNet(8, "step", compile_steps=True).cuda().train(train)
    compiled.load_state_dict(eager.state_dict())
    x = frames(n=4, t=4).cuda()
    assert compiled._compiles_steps(x)
    for _ in range(3):  # warm-up, CUDA graph recording, replay
        (out_e, g_e), (out_c, g_c) = _same_seed_grads(eager, compiled, x)
        assert out_e.abs().sum() > 0
        torch.testing.assert_close(out_c, out_e, rtol=0, atol=1e-6)
        _assert_grads_close(g_c, g_e, rtol=1e-3, atol=1e-5)
    for name, value in eager.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[name], value, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_fused_net_runs_the_real_fused_kernels_as_the_unfused_net(
    monkeypatch: pytest.MonkeyPatch, cpp_harness, train: bool
) -> None:
    # The fused kernels' CUDA source, built for the CPU by the g++ harness, inside the whole
    # network: same rates, gradients and BatchNorm running statistics as the module chain.
    import importlib.util
    from pathlib import Path

    from dvsgkit.model import fused_block

    path = Path(__file__).with_name("test_fused_block.py")
    spec = importlib.util.spec_from_file_location("fused_block_tests", path)
    tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tests)
    launch = tests.CppLaunch(cpp_harness)
    monkeypatch.setattr(
        fused_block,
        "bn_lif_pool",
        lambda y, bn, neuron, t: fused_block.fused_bn_lif_pool(y, bn, neuron, t, launch),
    )
    fused = _fused_net_on_cpu(monkeypatch).train(train)
    plain = active_net(4, "layer").train(train)
    x = frames(n=2, t=3)
    (out_p, g_p), (out_f, g_f) = _same_seed_grads(plain, fused, x)
    assert out_p.abs().sum() > 0 and torch.equal(out_f, out_p)
    _assert_grads_close(g_f, g_p, rtol=1e-4, atol=1e-6)
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(fused.state_dict()[name], value, rtol=1e-5, atol=1e-7)


def test_one_table_says_which_combinations_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import itertools

    from dvsgkit.model import cupy_runtime, net

    monkeypatch.setattr(cupy_runtime, "require_cupy", lambda: None)  # CuPy's checks pass
    options = itertools.product(net.MODES, net.BACKENDS, (False, True), (False, True))
    for (mode, backend, fused, compile_steps), neuron in itertools.product(options, net.NEURONS):
        kwargs = dict(neuron=neuron, fused=fused, compile_steps=compile_steps)
        if (mode, backend, fused, compile_steps) in net.EXECUTIONS:
            built = GestureNet(4, mode, backend, **kwargs)
            assert (built.mode, built.backend, built.fused, built.compile_steps) == (
                mode, backend, fused, compile_steps)  # fmt: skip
            continue
        with pytest.raises(ValueError, match="use (it with )?mode='(layer|step)'") as refused:
            GestureNet(4, mode, backend, **kwargs)
        fix = re.findall(r"(mode|backend)='(\w+)'", str(refused.value))
        asked = {"mode": mode, "backend": backend}
        assert any(asked[option] != value for option, value in fix), (mode, backend, kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_cupy_net_at_the_recipe_size_under_amp_matches_the_torch_net(fused: bool) -> None:
    # T = 16, B = 2, C = 128, 128 x 128 frames, train mode, float16 autocast, the CuPy net NHWC
    # as `dvsgkit train --cupy --amp` runs it. The torch LIF rounds every op to float16 and the
    # kernels keep float32 in registers, so spikes near the threshold may differ: the rates
    # must agree closely and every gradient must point the same way.
    torch_net = active_net(128, "layer").cuda().train()
    cupy_net = GestureNet(128, "layer", "cupy", fused=fused).cuda().train()
    cupy_net.load_state_dict(torch_net.state_dict())
    cupy_net.to(memory_format=torch.channels_last)
    x = frames(n=2, t=16).cuda()
    outs, grads = [], []
    for net in (torch_net, cupy_net):
        torch.manual_seed(3)
        with torch.autocast("cuda", dtype=torch.float16):
            out = net(x)
        target = torch.zeros_like(out, dtype=torch.float32)
        target[:, 3] = 1
        torch.nn.functional.mse_loss(out.float(), target).backward()
        outs.append(out.detach().float())
        grads.append({k: p.grad.float() for k, p in net.named_parameters()})
    assert outs[0].sum() > 0 and outs[1].sum() > 0
    diff = (outs[0] - outs[1]).abs()
    assert diff.mean() < 0.02 and diff.max() < 0.2, diff
    for name, theirs in grads[0].items():
        ours = grads[1][name]
        assert torch.isfinite(ours).all(), name
        similarity = torch.nn.functional.cosine_similarity(ours.flatten(), theirs.flatten(), 0)
        assert similarity > 0.9, (name, float(similarity))
