"""What each kernel moves through GPU memory per training step of GestureNet, counted from its
loads and stores (the bytes column of bench/kernel_report.py)."""

from __future__ import annotations

from dvsgkit.model.kernels.prelude import KERNEL_DTYPES, THREADS, VEC

RECIPE = {"batch": 16, "channels": 128, "side": 128, "blocks": 5, "sms": 132}


def _recipe_layers(steps: int, batch: int, channels: int) -> dict[str, list[int]]:
    """Elements per spiking layer of GestureNet ([T, N, ...] sizes): the conv blocks' outputs
    and the two fully connected layers (hidden C*2*2, then 110)."""
    side = RECIPE["side"]
    convs = [steps * batch * channels * (side >> i) ** 2 for i in range(RECIPE["blocks"])]
    return {"conv": convs, "fc": [steps * batch * channels * 4, steps * batch * 110]}


def step_traffic(
    kernel: str,
    neuron: str,
    dtype_name: str,
    steps: int,
    batch: int = RECIPE["batch"],
    channels: int = RECIPE["channels"],
) -> int:
    """Bytes `kernel` reads and writes in GPU memory per training step of GestureNet (batch,
    channels, T = steps, 128 x 128 input), counted from its loads and stores. Unfused kernels:
    in the `--cupy` net, where they run every spiking layer (all with 4 neurons per thread);
    fused kernels: in the `--cupy --fused` net (train-mode BatchNorm). Buffers read once by
    every thread (BatchNorm's [4, C], the decay) count once."""
    s = KERNEL_DTYPES[dtype_name][1]
    layers = _recipe_layers(steps, batch, channels)
    if kernel.startswith(("lif_", "plif_")):
        if not kernel.endswith(f"_w{VEC}"):
            return 0  # every layer of the recipe splits into vectors of VEC
        total = 0
        for numel in layers["conv"] + layers["fc"]:
            total += 3 * numel * s  # forward: x, spikes, h; backward: dL/ds, h, dL/dx
            if neuron == "plif" and "backward" in kernel:
                groups = numel // steps // VEC
                blocks = min(-(-groups // THREADS), RECIPE["sms"] * 8)
                total += blocks * THREADS * 4  # the partial sums of dL/dk
        return total
    total = 0
    parts = 3 if neuron == "plif" else 2
    for numel in layers["conv"]:
        windows = numel // steps // 4
        if kernel == "fused_forward":  # y, the pooled spikes
            total += numel * s + numel // 4 * s + 16 * channels
        else:  # the pass: y, dL/d(pooled), kept, partials; the finish: y, kept, dL/dy
            total += (numel + numel // 4 + numel) * s + parts * windows * 4 + 16 * channels
            total += 3 * numel * s + 8 * channels
    return total
