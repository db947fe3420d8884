"""Spiking networks: reference LIF, fused CuPy LIF kernels, the gesture net, checkpoint import."""

from dvsgkit.model.convert import from_spikingjelly
from dvsgkit.model.net import GestureNet

__all__ = ["GestureNet", "from_spikingjelly"]
