"""What the LIF's and the PLIF's kernels compute differently: the charge step, its gradient, the
reset, where the decay comes from, and the parameters baked into the source as literals."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NEURONS = ("lif", "plif")


def f32_literal(value: float) -> str:
    """A C float literal holding exactly float32(value), as torch rounds Python scalars."""
    f = float(np.float32(value))
    if not math.isfinite(f):
        raise ValueError(f"LIF parameter must be finite, got {value}")
    return f"{f!r}f"


def exact_inverse(value: float) -> float | None:
    """1 / value when value is a power of two whose inverse is a normal float32: then
    `x * (1 / value)` rounds exactly as `x / value`, bit for bit. Else None."""
    f = float(np.float32(value))
    mantissa, exponent = math.frexp(f)
    if mantissa != 0.5 or not -126 <= 1 - exponent <= 127:
        return None
    return 1.0 / f


def neuron_defines(neuron: str, params: dict[str, float]) -> list[str]:
    """The `#define` lines that bake the neuron's parameter set into kernel source (float32
    literals): the LIF's tau and v_reset, and the threshold and surrogate width of both (the
    PLIF's decay is read from the device)."""
    lif = neuron == "lif"
    consts = {"TAU": f32_literal(params["tau"])} if lif else {}
    consts["V_TH"] = f32_literal(params["v_threshold"])
    if lif:
        consts["V_RESET"] = f32_literal(params["v_reset"])
    consts["HALF_ALPHA"] = f32_literal(params["alpha"] / 2)
    consts["PI_HALF_ALPHA"] = f32_literal(math.pi / 2 * params["alpha"])
    inverse = exact_inverse(params["tau"]) if lif else None
    if inverse is not None:
        consts["INV_TAU"] = f32_literal(inverse)
    return [f"#define {k} {v}" for k, v in consts.items()]


@dataclass(frozen=True)
class NeuronCode:
    """What one neuron's kernels compute differently from another's, as CUDA C++.

    `charge` is the body of `charge(v, x, k)`: membrane v before the step, input x, decay k ->
    h; `grad_x` the body of `grad_x(gh, k)`: dL/dh -> dL/dx (the membrane gets gh - dL/dx, as
    dh/dv = 1 - dh/dx for both neurons); `reset` the membrane after a spike and at rest. The
    LIF's k is unused (its 1/tau is baked in); the PLIF's is sigmoid(w), read from the device."""

    charge: str
    grad_x: str
    reset: str


def _lif_code(tau: float) -> NeuronCode:
    # h = v + (x - (v - v_reset)) / tau, op for op as the reference (no FMA contraction); a
    # power-of-two tau multiplies by its exact inverse (same bits, no division slow path)
    scale = "__fmul_rn({}, INV_TAU)" if exact_inverse(tau) is not None else "__fdiv_rn({}, TAU)"
    return NeuronCode(
        charge="return __fadd_rn(v, " + scale.format("__fsub_rn(x, __fsub_rn(v, V_RESET))") + ");",
        grad_x="return " + scale.format("gh") + ";",  # dh/dx = 1 / tau
        reset="V_RESET",
    )


PLIF_CODE = NeuronCode(  # h = v + (x - v) * k, op for op as the reference
    charge="return __fadd_rn(v, __fmul_rn(__fsub_rn(x, v), k));",
    grad_x="return __fmul_rn(gh, k);",  # dh/dx = k
    reset="0.0f",
)


def neuron_code(neuron: str, params: dict[str, float]) -> NeuronCode:
    """The neuron's code for a parameter set (the LIF's depends on tau)."""
    if neuron not in NEURONS:
        raise ValueError(f"neuron must be one of {NEURONS}, got {neuron!r}")
    return _lif_code(params["tau"]) if neuron == "lif" else PLIF_CODE
