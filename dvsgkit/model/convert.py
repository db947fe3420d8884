"""Import SpikingJelly DVS128 Gesture checkpoints as a GestureNet: classify_dvsg's PythonNet /
CextNet (`clock_driven.examples.classify_dvsg`) and `parametric_lif_net.DVSGestureNet` (the
network of `activation_based.examples.classify_dvsg`), with LIF or PLIF neurons."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dvsgkit.constants import NUM_CLASSES, SPIKINGJELLY_LABEL_ORDER
from dvsgkit.model.lif import VOTERS
from dvsgkit.model.net import CONV_BLOCKS, GestureNet

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# dvsgkit key -> source key, for each classify_dvsg network (docs/reference.md §5)
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
    # nn.Sequential conv_fc: 5 x [Conv2d, BatchNorm2d, neuron, MaxPool2d] (0..19), Flatten (20),
    # Dropout (21), Linear(C*4*4, 512) (22), neuron (23), Dropout (24), Linear(512, 110) (25),
    # neuron (26), VotingLayer (27). Its Linear layers have a bias.
    "DVSGestureNet": {
        **{f"convs.{i}.weight": f"conv_fc.{4 * i}.weight" for i in range(CONV_BLOCKS)},
        **{f"bns.{i}.{k}": f"conv_fc.{4 * i + 1}.{k}" for i in range(CONV_BLOCKS) for k in BN_KEYS},
        **{f"fc1.{k}": f"conv_fc.22.{k}" for k in ("weight", "bias")},
        **{f"fc2.{k}": f"conv_fc.25.{k}" for k in ("weight", "bias")},
    },
}
# DVSGestureNet's neuron modules: with ParametricLIFNode each holds its `w`.
DVSG_NEURONS = (2, 6, 10, 14, 18, 23, 26)
DVSG_PLIF_KEYS = {f"plif.{i}.w": f"conv_fc.{j}.w" for i, j in enumerate(DVSG_NEURONS)}
EXPECTED_KEYS = {
    "PythonNet": "conv.{0,4,8,12,16}.weight, conv.{1,5,9,13,17}.{weight,bias,running_mean,"
    "running_var,num_batches_tracked}, fc.2.weight, fc.5.weight",
    "CextNet": "conv.{0,3,6,9,12}.module.0.weight, conv.{0,3,6,9,12}.module.1.{weight,bias,"
    "running_mean,running_var,num_batches_tracked}, fc.2.module.weight, fc.5.module.weight",
    "DVSGestureNet": "conv_fc.{0,4,8,12,16}.weight, conv_fc.{1,5,9,13,17}.{weight,bias,"
    "running_mean,running_var,num_batches_tracked}, conv_fc.{22,25}.{weight,bias}, and with "
    "PLIF neurons conv_fc.{2,6,10,14,18,23,26}.w",
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
    """Which network saved `state`: "PythonNet", "CextNet" or "DVSGestureNet"; else ValueError
    naming every layout's keys."""
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
    expected = "; or of ".join(f"{name} ({keys})" for name, keys in EXPECTED_KEYS.items())
    raise ValueError(
        "not a SpikingJelly DVS128 Gesture checkpoint of a known layout; expected the keys of "
        f"{expected}; found: {found or 'no keys'}"
    )


def _neuron_keys(layout: str, state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """The PLIF `w` keys to import ({} for LIF neurons); all seven or none must be present."""
    if layout != "DVSGestureNet":
        return {}
    present = [k for k in DVSG_PLIF_KEYS.values() if k in state]
    if present and len(present) != len(DVSG_PLIF_KEYS):
        missing = [k for k in DVSG_PLIF_KEYS.values() if k not in state]
        raise ValueError(
            f"DVSGestureNet checkpoint has PLIF parameters {', '.join(present)} but lacks "
            f"{', '.join(missing)}; a PLIF DVSGestureNet has one w per spiking layer "
            f"(conv_fc.{{{','.join(map(str, DVSG_NEURONS))}}}.w)"
        )
    return dict(DVSG_PLIF_KEYS) if present else {}


def true_label_rows(weight: torch.Tensor) -> torch.Tensor:
    """Reorder the output rows `[11 * VOTERS, F]` (or a bias `[11 * VOTERS]`) of SpikingJelly's
    last Linear so that voting group k means true label k (its group j means
    SPIKINGJELLY_LABEL_ORDER[j]: its dataset sorts the label folders as strings)."""
    source_group = [SPIKINGJELLY_LABEL_ORDER.index(k) for k in range(NUM_CLASSES)]
    groups = weight.reshape(NUM_CLASSES, VOTERS, -1)  # [11, 10, F]
    return groups[source_group].reshape(weight.shape)


def from_spikingjelly(
    checkpoint: Mapping, *, mode: str = "layer", backend: str = "torch"
) -> GestureNet:
    """A GestureNet computing the same firing rates as a network trained with SpikingJelly's
    classify_dvsg, with outputs in dvsgkit's (true) label order.

    `checkpoint`: the loaded dict (`{"net": state_dict, ...}`) or a bare state dict of
    classify_dvsg's PythonNet or CextNet, or of DVSGestureNet with LIF or PLIF neurons (PLIF when
    its `w` keys are present). Channels, and DVSGestureNet's hidden width, are read from the
    weights. Load files with `torch.load(path, map_location="cpu", weights_only=True)`.
    """
    state = _state_dict(checkpoint)
    layout = detect_layout(state)
    plif_keys = _neuron_keys(layout, state)
    mapping = {**LAYOUTS[layout], **plif_keys}
    extra = sorted(set(state) - set(mapping.values()))
    if extra:
        raise ValueError(
            f"{layout} checkpoint has keys that {layout} does not: {', '.join(extra[:8])}"
            f"{', ...' if len(extra) > 8 else ''}; it is not SpikingJelly's DVS128 Gesture "
            f"network (expected {EXPECTED_KEYS[layout]})"
        )
    conv0 = state[mapping["convs.0.weight"]]
    if conv0.dim() != 4 or tuple(conv0.shape[1:]) != (2, 3, 3):
        raise ValueError(
            f"{mapping['convs.0.weight']} has shape {tuple(conv0.shape)}; expected "
            "[C, 2, 3, 3] (a 3x3 conv over the 2 polarity channels)"
        )
    channels = int(conv0.shape[0])
    shape = {}
    if layout == "DVSGestureNet":
        fc1 = state[mapping["fc1.weight"]]
        if fc1.dim() != 2:
            raise ValueError(
                f"conv_fc.22.weight has shape {tuple(fc1.shape)}; expected [hidden, C*4*4]"
            )
        shape = {"hidden": int(fc1.shape[0]), "bias": True}
    neuron = "plif" if plif_keys else "lif"
    net = GestureNet(channels, mode=mode, backend=backend, neuron=neuron, **shape)
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
                f"{layout} for 128x128 DVS128 Gesture frames"
            )
        converted[key] = value
    for key in ("fc2.weight", "fc2.bias"):
        if key in converted:
            converted[key] = true_label_rows(converted[key])
    net.load_state_dict(converted)
    return net
