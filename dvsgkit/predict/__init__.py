"""Gestures found in a recording over time: windows of events classified by a trained network
(`windows.py`), written as CSV, JSON and a timeline picture (`outputs.py`)."""
