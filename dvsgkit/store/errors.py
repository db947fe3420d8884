"""Errors of the stores that the command line turns into one line (no zarr or h5py import)."""

from __future__ import annotations


class StoreDamagedError(ValueError):
    """A store on disk does not match its own record: a file is missing, unreadable, or a sample
    does not match its checksum. The message names the store, the split, the sample or file, and
    the fix."""


class StoreWriteError(OSError):
    """A store could not be written (no space left, read-only file system, no permission). The
    message names the path and the cause; nothing partial is left behind."""


class LockTimeout(TimeoutError):
    """Another process held a store's build lock for longer than the caller would wait."""
