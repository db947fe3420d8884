"""Spiking networks: reference LIF, fused CuPy LIF kernels, the gesture net, checkpoint import."""
