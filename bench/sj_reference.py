"""dvsgkit's LIF, PLIF and networks against the real SpikingJelly 0.0.0.0.14.

Needs SpikingJelly, so it runs in .venv-bench or inside bench/gpu_run.sh (which installs it
from wheels/), not in CI. classify_dvsg's dataset import (torchvision) is stood in for
by bench/sj_classify_dvsg.py:

    .venv-bench/bin/python bench/sj_reference.py    # CPU: LIF, PLIF, PythonNet, DVSGestureNet
    python3 bench/sj_reference.py                   # CUDA + CuPy: also CextNet and cupy

Checks (each prints the largest difference; exit 1 if any fails):
1. MultiStepLIFNode(backend='torch') == lif_multistep: spikes, input gradients.
2. classify_dvsg's PythonNet, imported with from_spikingjelly: rates equal with SpikingJelly's
   output
   group j at true label SPIKINGJELLY_LABEL_ORDER[j]; input gradients equal; in eval mode (both
   dvsgkit modes) and in train mode (batch statistics + dropout masks from the same seed).
3. With CUDA and CuPy: classify_dvsg's CextNet vs GestureNet(mode="layer", backend="cupy").
4. activation_based ParametricLIFNode(backend='torch') == plif_multistep: spikes, the gradients
   of x and w, at non-default w.
5. parametric_lif_net.DVSGestureNet (LIF and PLIF) imported with from_spikingjelly: rates in
   true label order and input gradients, eval and train mode (layer mode; with CUDA and CuPy
   also SpikingJelly's and dvsgkit's cupy back ends).
"""

from __future__ import annotations

import sys

import torch
from sj_classify_dvsg import (
    classify_dvsg_module,
    stub_missing_imports,
)  # bench/, beside this script

from dvsgkit.constants import SPIKINGJELLY_LABEL_ORDER
from dvsgkit.model import from_spikingjelly
from dvsgkit.model.lif import lif_multistep
from dvsgkit.model.plif import plif_multistep

stub_missing_imports()  # before SpikingJelly's modules import, or its CuPy kernels go missing
from spikingjelly.activation_based import functional as ab_functional  # noqa: E402
from spikingjelly.activation_based import neuron as ab_neuron  # noqa: E402
from spikingjelly.activation_based import surrogate as ab_surrogate  # noqa: E402
from spikingjelly.activation_based.model import parametric_lif_net  # noqa: E402
from spikingjelly.clock_driven import functional, neuron, surrogate  # noqa: E402

try:  # without torchvision too (sj_classify_dvsg); a SpikingJelly that does not import skips them
    classify_dvsg = classify_dvsg_module()
except Exception as exc:
    classify_dvsg, CLASSIFY_MISSING = None, f"{type(exc).__name__}: {exc}"

FAILURES: list[str] = []


def report(name: str, diff: float, tol: float) -> None:
    ok = diff <= tol
    print(f"{'ok ' if ok else 'BAD'} {name}: max |diff| {diff:.3g} (tolerance {tol:g})")
    if not ok:
        FAILURES.append(name)


def check_lif() -> None:
    for dtype in (torch.float64, torch.float32):
        x = (torch.rand(16, 4, 300, dtype=dtype) * 3 - 0.5).requires_grad_(True)
        grad = torch.randn_like(x)
        node = neuron.MultiStepLIFNode(
            tau=2.0, surrogate_function=surrogate.ATan(), detach_reset=True, backend="torch"
        )
        sj = node(x)
        (sj_grad,) = torch.autograd.grad(sj, x, grad)
        ours = lif_multistep(x)
        (our_grad,) = torch.autograd.grad(ours, x, grad)
        report(f"LIF spikes {dtype}", float((sj - ours).detach().abs().max()), 0.0)
        report(f"LIF input grad {dtype}", float((sj_grad - our_grad).abs().max()), 1e-6)


def seeded_like_trained(net: torch.nn.Module) -> None:
    """Non-default BN statistics and louder fc layers, so every layer fires."""
    torch.manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.03, 0.08)
                m.running_mean.uniform_(-0.2, 0.0)
                m.weight.uniform_(0.8, 1.2)
            elif isinstance(m, torch.nn.Linear):
                m.weight.mul_(8)


def compare(
    name: str, seed_net: torch.nn.Module, ours: torch.nn.Module, x: torch.Tensor, grads_too=True
) -> None:
    outs, grads = [], []
    for net in (seed_net, ours):
        torch.manual_seed(7)  # same dropout masks in train mode
        xi = x.clone().requires_grad_(grads_too)
        out = net(xi)
        if grads_too:
            out.sum().backward()  # the sum is invariant to the label permutation
        if net is seed_net:
            functional.reset_net(net)
        outs.append(out.detach())
        grads.append(xi.grad)
    sj_out, out = outs
    assert sj_out.abs().sum() > 0, "the check needs a firing network"
    reordered = torch.empty_like(sj_out)
    reordered[:, list(SPIKINGJELLY_LABEL_ORDER)] = sj_out  # group j -> true label ORDER[j]
    report(f"{name} rates (true label order)", float((reordered - out).abs().max()), 1e-6)
    if grads_too:
        report(f"{name} input grad", float((grads[0] - grads[1]).abs().max()), 1e-5)


def check_net(seed_cls: type, mode: str, backend: str, device: str, channels: int = 8) -> None:
    torch.manual_seed(0)
    seed_net = seed_cls(channels)
    seeded_like_trained(seed_net)
    seed_net = seed_net.to(device)
    x = (torch.rand(2, 4, 2, 128, 128, device=device) < 0.3).float()  # [N, T, 2, H, W]
    ours = from_spikingjelly(seed_net.state_dict(), mode=mode, backend=backend).to(device)
    label = f"{seed_cls.__name__} vs {mode}/{backend} on {device}"
    compare(f"{label}, eval", seed_net.eval(), ours.eval(), x)
    # Train mode: PythonNet and step mode normalise each step over N, CextNet and layer mode
    # over T*N; across those pairs only T = 1 makes the batch statistics the same.
    same_kind = (seed_cls.__name__ == "PythonNet") == (mode == "step")
    xt = x if same_kind else x[:, :1].contiguous()
    compare(f"{label}, train T={xt.shape[1]}", seed_net.train(), ours.train(), xt)


def check_plif() -> None:
    for dtype in (torch.float64, torch.float32):
        x = (torch.rand(40, 4, 300, dtype=dtype) * 3 - 0.8).requires_grad_(True)
        grad = torch.randn_like(x)
        node = ab_neuron.ParametricLIFNode(
            init_tau=2.0, surrogate_function=ab_surrogate.ATan(), detach_reset=True, step_mode="m"
        ).to(dtype)
        w = torch.tensor(0.7, dtype=dtype, requires_grad=True)
        with torch.no_grad():
            node.w.fill_(0.7)
        sj = node(x)
        sj_gx, sj_gw = torch.autograd.grad(sj, (x, node.w), grad)
        ours = plif_multistep(x, w.sigmoid())
        gx, gw = torch.autograd.grad(ours, (x, w), grad)
        report(f"PLIF spikes {dtype}", float((sj - ours).detach().abs().max()), 0.0)
        report(f"PLIF input grad {dtype}", float((sj_gx - gx).abs().max()), 1e-6)
        report(f"PLIF w grad {dtype} (|dw| {float(gw.abs()):.3g})", float((sj_gw - gw).abs()), 1e-4)


class SJRates(torch.nn.Module):
    """DVSGestureNet as its example uses it: [N, T, ...] in, firing rates [N, 11] out."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.transpose(0, 1)).mean(0)


def check_dvsgesturenet(neuron_name: str, backend: str, device: str, channels: int = 8) -> None:
    node = ab_neuron.ParametricLIFNode if neuron_name == "plif" else ab_neuron.LIFNode
    torch.manual_seed(0)
    sj_net = parametric_lif_net.DVSGestureNet(
        channels=channels, spiking_neuron=node, surrogate_function=ab_surrogate.ATan(),
        detach_reset=True,
    )  # fmt: skip
    ab_functional.set_step_mode(sj_net, "m")
    if backend == "cupy":
        ab_functional.set_backend(sj_net, "cupy", instance=node)
    seeded_like_trained(sj_net)
    with torch.no_grad():
        for i, m in enumerate(n for n in sj_net.modules() if isinstance(n, node)):
            if neuron_name == "plif":
                m.w.fill_(-0.6 + 0.2 * i)
    sj_net = sj_net.to(device)
    ours = from_spikingjelly(sj_net.state_dict(), mode="layer", backend=backend).to(device)
    x = (torch.rand(2, 4, 2, 128, 128, device=device) < 0.3).float()  # [N, T, 2, H, W]
    label = f"DVSGestureNet {neuron_name} vs layer/{backend} on {device}"
    # In eval mode SpikingJelly's activation_based neurons fire through a plain Heaviside (no
    # surrogate, no graph): rates only there, gradients in train mode.
    compare(f"{label}, eval", SJRates(sj_net).eval(), ours.eval(), x, grads_too=False)
    compare(f"{label}, train", SJRates(sj_net).train(), ours.train(), x)


def main() -> int:
    check_lif()
    check_plif()
    for neuron_name in ("lif", "plif"):
        check_dvsgesturenet(neuron_name, "torch", "cpu")
        if torch.cuda.is_available():
            check_dvsgesturenet(neuron_name, "cupy", "cuda")
    if classify_dvsg is None:
        print(
            "skipped classify_dvsg's PythonNet/CextNet: its example does not import "
            f"({CLASSIFY_MISSING})"
        )
    else:
        check_net(classify_dvsg.PythonNet, "step", "torch", "cpu")
        check_net(classify_dvsg.PythonNet, "layer", "torch", "cpu")
    if (
        classify_dvsg is not None
        and torch.cuda.is_available()
        and hasattr(classify_dvsg, "CextNet")
    ):
        check_net(classify_dvsg.CextNet, "layer", "cupy", "cuda")
        check_net(classify_dvsg.CextNet, "layer", "torch", "cuda")
    else:
        print(
            "skipped CextNet: needs CUDA and CuPy (classify_dvsg defines it only when CuPy imports)"
        )
    print("FAILED: " + ", ".join(FAILURES) if FAILURES else "all checks passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
