"""The Zarr frame store: every sample of the event cache integrated once into frames (names:
`layout.py`; its one check: `check.py`; reader: `read.py`; build: `build.py`)."""
