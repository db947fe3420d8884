"""Bytes <-> arrays: AEDAT 3.1, labels CSVs and trial lists, downloads."""
