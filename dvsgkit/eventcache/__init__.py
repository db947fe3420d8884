"""The event cache ROOT/events.h5: every labelled sample's events, cut once from the recordings
(layout.py; reader: read.py; writer: write.py; build: build.py; seals: seal.py)."""
