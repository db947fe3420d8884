"""dvsgkit: the IBM DVS128 Gesture pipeline, from verified download to spiking CNN training.

Importing the package is cheap: it never imports torch, cupy, zarr or h5py.
"""

__version__ = "0.1.0"
