"""CUDA source of every CuPy kernel, generated from one template, and what each launch moves.

Two kernel families, each for the LIF and the PLIF and for float32, float16 and bfloat16 storage
(the math is float32 in registers, op for op as the reference loops in `lif.py` and `plif.py`):

- unfused (`unfused.py`, launched by `lif_cupy`, `plif_cupy`): one spiking layer over T on a
  `[T, M]` tensor. `{neuron}_forward_w{1,4}` writes the spikes and the charged membrane h;
  `{neuron}_backward_w{1,4}` runs over T in reverse from h alone. w is the neurons per thread:
  4 (one 16- or 8-byte vector load) where the layout allows it.
- fused (`fused.py`, launched by `fused_cupy`): `fused_forward` and `fused_backward` of a conv
  block's tail, BatchNorm-apply + neuron over T + 2x2 max-pool, one thread per pooling window.

The neurons differ only in their charge step (`neuron.py`: charge, reset value, dh/dx, and
where the decay comes from); the PLIF's learned decay adds the partial sums of its gradient.
Both families start from the same prelude (`prelude.py`: storage types, conversions, index
width, the neuron's device functions); `traffic.py` counts the bytes each kernel moves.

Memory stays busy: each thread issues the loads of several time steps (CHUNK steps in the
unfused kernels, all T in the fused ones) before it uses the first, so a warp keeps many
requests in flight instead of one; no slow-path division sits in the charge step where it can
be avoided (a LIF whose tau is a power of two multiplies by 1/tau, exact, so the bits do not
change); indices are 32-bit where the host checked that every index of the launch fits
(`index_bits`), else 64-bit. `bench/kernel_report.py` measures all this from the compiled SASS.
"""

from dvsgkit.model.kernels.fused import fused_source
from dvsgkit.model.kernels.neuron import NEURONS, neuron_code
from dvsgkit.model.kernels.prelude import (
    KERNEL_DTYPES,
    THREADS,
    VEC,
    block_threads,
    conversions,
    index_bits,
    threshold_bracket,
)
from dvsgkit.model.kernels.traffic import step_traffic
from dvsgkit.model.kernels.unfused import unfused_source

__all__ = [
    "KERNEL_DTYPES",
    "NEURONS",
    "THREADS",
    "VEC",
    "block_threads",
    "conversions",
    "fused_source",
    "index_bits",
    "neuron_code",
    "step_traffic",
    "threshold_bracket",
    "unfused_source",
]
