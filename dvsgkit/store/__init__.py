"""On-disk stores: the HDF5 event cache (h5py) and the Zarr frame store (zarr)."""
