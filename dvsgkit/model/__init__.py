"""Spiking networks: reference LIF and PLIF, their fused CuPy kernels, the gesture net, and
checkpoint import from SpikingJelly."""

from dvsgkit.model.convert import from_spikingjelly
from dvsgkit.model.net import GestureNet

__all__ = ["GestureNet", "from_spikingjelly"]
