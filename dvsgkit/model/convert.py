"""Import checkpoints of the seed's SpikingJelly networks (PythonNet / CextNet) as a GestureNet."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dvsgkit.constants import NUM_CLASSES, SPIKINGJELLY_LABEL_ORDER
from dvsgkit.model.lif import VOTERS
from dvsgkit.model.net import CONV_BLOCKS, GestureNet

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# dvsgkit key -> source key, for each seed network (SPEC §5)
LAYOUTS: dict[str, dict[str, str]] = {
    "PythonNet": {
        **{f"convs.{i}.weight": f"conv.{4 * i}.weight" for i in range(CONV_BLOCKS)},
        **{f"bns.{i}.{k}": f"conv.{4 * i + 1}.{k}" for i in range(CONV_BLOCKS) for k in BN_KEYS},
        "fc1.weight": "fc.2.weight",
        "fc2.weight": "fc.5.weight",
    },
    "CextNet": {
        **{f"convs.{i}.weight": f"conv.{3 * i}.module.0.weight" for i in range(CONV_BLOCKS)},
        **{
            f"bns.{i}.{k}": f"conv.{3 * i}.module.1.{k}"
            for i in range(CONV_BLOCKS)
            for k in BN_KEYS
        },
        "fc1.weight": "fc.2.module.weight",
        "fc2.weight": "fc.5.module.weight",
    },
}
EXPECTED_KEYS = {
    "PythonNet": "conv.{0,4,8,12,16}.weight, conv.{1,5,9,13,17}.{weight,bias,running_mean,"
    "running_var,num_batches_tracked}, fc.2.weight, fc.5.weight",
    "CextNet": "conv.{0,3,6,9,12}.module.0.weight, conv.{0,3,6,9,12}.module.1.{weight,bias,"
    "running_mean,running_var,num_batches_tracked}, fc.2.module.weight, fc.5.module.weight",
}
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile


def _state_dict(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"expected a checkpoint dict or a state dict, got {type(checkpoint).__name__}; "
            "load the file first with torch.load(path, map_location='cpu', weights_only=True)"
        )
    state = checkpoint.get("net", checkpoint)
    if not isinstance(state, Mapping):
        raise ValueError(f"checkpoint['net'] must be a state dict, got {type(state).__name__}")
    state = dict(state)
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def detect_layout(state: Mapping[str, torch.Tensor]) -> str:
    """Which seed network saved `state`: "PythonNet" or "CextNet"; ValueError otherwise."""
    for name, mapping in LAYOUTS.items():
        required = [k for k in mapping.values() if not k.endswith("num_batches_tracked")]
        if all(k in state for k in required):
            return name
    if "convs.0.weight" in state and "fc2.weight" in state:
        raise ValueError(
            "this is already a dvsgkit GestureNet state dict; load it with "
            "GestureNet(channels).load_state_dict(...) (no label reordering needed)"
        )
    found = ", ".join(sorted(state)[:8]) + (", ..." if len(state) > 8 else "")
    raise ValueError(
        "not a SpikingJelly DVS128 Gesture checkpoint of a known layout; expected the keys of "
        f"PythonNet ({EXPECTED_KEYS['PythonNet']}) or of CextNet ({EXPECTED_KEYS['CextNet']}); "
        f"found: {found or 'no keys'}"
    )


def true_label_rows(weight: torch.Tensor) -> torch.Tensor:
    """Reorder the output rows `[11 * VOTERS, F]` of SpikingJelly's last Linear so that voting
    group k means true label k (its group j means SPIKINGJELLY_LABEL_ORDER[j], SPEC §3)."""
    source_group = [SPIKINGJELLY_LABEL_ORDER.index(k) for k in range(NUM_CLASSES)]
    groups = weight.reshape(NUM_CLASSES, VOTERS, -1)  # [11, 10, F]
    return groups[source_group].reshape(weight.shape)


def from_spikingjelly(
    checkpoint: Mapping, *, mode: str = "layer", backend: str = "torch"
) -> GestureNet:
    """A GestureNet computing the same firing rates as a network trained with the seed's
    classify_dvsg, with outputs in dvsgkit's (true) label order.

    `checkpoint`: the loaded dict (`{"net": state_dict, ...}`) or a bare state dict, of either
    PythonNet or CextNet (SPEC §5). Channels are read from the first conv weight. Load files
    with `torch.load(path, map_location="cpu", weights_only=True)`.
    """
    state = _state_dict(checkpoint)
    layout = detect_layout(state)
    mapping = LAYOUTS[layout]
    extra = sorted(set(state) - set(mapping.values()))
    if extra:
        raise ValueError(
            f"{layout} checkpoint has keys that the seed network does not: {', '.join(extra[:8])}"
            f"{', ...' if len(extra) > 8 else ''}; it is not the seed's DVS128 Gesture network"
        )
    conv0 = state[mapping["convs.0.weight"]]
    if conv0.dim() != 4 or tuple(conv0.shape[1:]) != (2, 3, 3):
        raise ValueError(
            f"{mapping['convs.0.weight']} has shape {tuple(conv0.shape)}; expected "
            "[C, 2, 3, 3] (a 3x3 conv over the 2 polarity channels)"
        )
    channels = int(conv0.shape[0])
    net = GestureNet(channels, mode=mode, backend=backend)
    target = net.state_dict()
    converted = {}
    for key, source in mapping.items():
        if source not in state:  # only num_batches_tracked may be absent (older torch)
            converted[key] = target[key]
            continue
        value = state[source]
        if tuple(value.shape) != tuple(target[key].shape):
            raise ValueError(
                f"{source} has shape {tuple(value.shape)}, but a {channels}-channel "
                f"GestureNet needs {tuple(target[key].shape)} for it; the checkpoint is not "
                "the seed's 128x128 DVS128 Gesture network"
            )
        converted[key] = value
    converted["fc2.weight"] = true_label_rows(converted["fc2.weight"])
    net.load_state_dict(converted)
    return net
