"""Facts about the DVS128 Gesture dataset, stated once as data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SENSOR_HEIGHT = 128
SENSOR_WIDTH = 128
SENSOR_SIZE = (SENSOR_HEIGHT, SENSOR_WIDTH)  # (H, W); pixel index is [y, x]

# Index i is dvsgkit label i, i.e. the CSV class id i + 1.
CLASS_NAMES = (
    "hand clapping",
    "right hand wave",
    "left hand wave",
    "right arm clockwise",
    "right arm counter-clockwise",
    "left arm clockwise",
    "left arm counter-clockwise",
    "arm roll",
    "air drums",
    "air guitar",
    "other gestures",
)
NUM_CLASSES = len(CLASS_NAMES)
# The names as identifiers: gesture_mapping.csv's actions, `dvsgkit predict`'s rate columns.
CLASS_KEYS = tuple(name.replace(" ", "_").replace("-", "_") for name in CLASS_NAMES)

# SpikingJelly sorts its label folders as strings, so its output j means true label
# SPIKINGJELLY_LABEL_ORDER[j] (its issue #628).
SPIKINGJELLY_LABEL_ORDER = (0, 1, 10, 2, 3, 4, 5, 6, 7, 8, 9)

# One event dtype for the whole package: time in int64 microseconds, pixel (x, y), polarity 0/1.
EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "u1")])

# The reference split (every labels file has 12 rows).
TRAIN_SAMPLES = 1176
TEST_SAMPLES = 288

DOWNLOAD_DIR = "download"  # ROOT/download/ holds the four files exactly as IBM names them
EXTRACT_DIR = "extract"  # ROOT/extract/ receives DvsGesture/ and gesture_mapping.csv
DATASET_DIR = "DvsGesture"  # what DvsGesture.tar.gz extracts to
MAPPING_NAME = "gesture_mapping.csv"  # the SpikingJelly layout keeps it beside DvsGesture/
TRAIN_TRIALS_FILE = "trials_to_train.txt"
TEST_TRIALS_FILE = "trials_to_test.txt"
SPLITS = ("train", "test")
TRIALS_FILES = {"train": TRAIN_TRIALS_FILE, "test": TEST_TRIALS_FILE}

IBM_BOX_URL = "https://ibm.ent.box.com/s/3hiq58ww1pbbjrinh367ykfdf60xsfm8/folder/50167556794"
ATTRIBUTION = "IBM Research (http://research.ibm.com/dvsgesture)"
LICENSE_NAME = "CC BY 4.0"


@dataclass(frozen=True)
class Resource:
    """One file of the dataset as IBM distributes it."""

    name: str
    md5: str
    approx_bytes: int | None = None


RESOURCES = (
    Resource("DvsGesture.tar.gz", "8a5c71fb11e24e5ca5b11866ca6c00a1", 3_000_000_000),
    Resource("gesture_mapping.csv", "109b2ae64a0e1f3ef535b18ad7367fd1"),
    Resource("LICENSE.txt", "065e10099753156f18f51941e6e44b66"),
    Resource("README.txt", "a0663d3b1d8307c329a43d949ee32d19"),
)
ARCHIVE_NAME = "DvsGesture.tar.gz"

# The neuron of SpikingJelly's classify_dvsg recipe (docs/reference.md §5).
TAU = 2.0
V_THRESHOLD = 1.0
V_RESET = 0.0
ALPHA = 2.0  # ATan surrogate sharpness

ROOT_ENV_VAR = "DVSGKIT_ROOT"
DEFAULT_ROOT = "data"
BUILD_WORKERS = 2  # default processes of the event and frame builds
