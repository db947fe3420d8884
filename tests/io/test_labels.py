"""Labels CSVs and trials lists: both line endings, any row order, and every bad file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dvsgkit.io.labels import WINDOW_DTYPE, labels_path_for, read_labels, read_trials, write_labels

REAL_LABELS = Path(__file__).resolve().parents[1] / "data" / "user01_natural_labels.csv"
REAL_ROWS = [
    (1, 53036986, 59508469), (2, 64889467, 73697045), (3, 74839238, 81768543),
    (5, 87200306, 97835393), (4, 98139978, 106541442), (6, 111008687, 120907694),
    (7, 122456000, 129994474), (8, 132355007, 141594080), (8, 142355542, 148751823),
    (9, 149970163, 156671029), (10, 161214419, 168625983), (11, 171367247, 177991967),
]  # fmt: skip


def write(path: Path, text: str, eol: str = "\r\n") -> Path:
    path.write_bytes(text.replace("\n", eol).encode())
    return path


def test_real_labels_file_with_lf_endings(tmp_path: Path) -> None:
    path = shutil.copy(REAL_LABELS, tmp_path / REAL_LABELS.name)
    assert b"\r" not in Path(path).read_bytes()
    windows = read_labels(path)
    assert windows.dtype == WINDOW_DTYPE
    got = [(int(w["label"]) + 1, int(w["start"]), int(w["end"])) for w in windows]
    assert got == REAL_ROWS
    assert windows["row"].tolist() == list(range(12))


@pytest.mark.parametrize("eol", ["\r\n", "\n"])
def test_crlf_lf_blank_lines_any_order_repeats_overlaps(tmp_path: Path, eol: str) -> None:
    text = "class,startTime_usec,endTime_usec\n5,300,400\n\n1,100,250\n5,200,350\n11,0,0\n\n"
    windows = read_labels(write(tmp_path / "a_labels.csv", text, eol))
    assert windows["label"].tolist() == [4, 0, 4, 10]
    assert windows["start"].tolist() == [300, 100, 200, 0]
    assert windows["end"].tolist() == [400, 250, 350, 0]
    assert windows["row"].tolist() == [0, 1, 2, 3]


def test_write_labels_round_trip_in_crlf(tmp_path: Path) -> None:
    windows = np.array([(7, 10, 20, 0), (0, 5, 30, 1)], dtype=WINDOW_DTYPE)
    path = write_labels(tmp_path / "x_labels.csv", windows)
    assert path.read_bytes().count(b"\r\n") == 3
    np.testing.assert_array_equal(read_labels(path), windows)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "class,startTime_usec,endTime_usec\n1,100,200\n1,abc,300\n",
            r"line 3 \(data row 1\): expected three integers",
        ),
        (
            "class,startTime_usec,endTime_usec\n1,100\n",
            r"line 2 \(data row 0\): expected three integers",
        ),
        (
            "class,startTime_usec,endTime_usec\n1,300,200\n",
            r"line 2 \(data row 0\): window start 300",
        ),
        ("class,startTime_usec,endTime_usec\n1,-5,200\n", r"window start -5"),
        (
            "class,startTime_usec,endTime_usec\n0,100,200\n",
            r"line 2 \(data row 0\): class 0 is outside 1..11",
        ),
        (
            "class,startTime_usec,endTime_usec\n\n12,100,200\n",
            r"line 3 \(data row 0\): class 12 is outside",
        ),
        ("1,100,200\n", r"line 1: expected the header"),
        ("", r"line 1: expected the header"),
        ("class,startTime_usec,endTime_usec\n\n", r"no labelled rows"),
        (
            "class,startTime_usec,endTime_usec\n1,5,9\n2,99999999999999999999,99999999999999999999\n",
            r"line 3 \(data row 1\): window end 99999999999999999999 does not fit int64",
        ),
    ],
    ids=[
        "non-numeric",
        "two-fields",
        "start-after-end",
        "negative",
        "class-0",
        "class-12",
        "no-header",
        "empty",
        "no-rows",
        "beyond-int64",
    ],
)
def test_bad_labels_name_file_and_row(tmp_path: Path, text: str, match: str) -> None:
    path = write(tmp_path / "bad_labels.csv", text)
    with pytest.raises(ValueError, match=match) as info:
        read_labels(path)
    assert str(path) in str(info.value)


def test_missing_labels_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="user09_lab_labels.csv not found"):
        read_labels(tmp_path / "user09_lab_labels.csv")


def test_non_ascii_labels_file(tmp_path: Path) -> None:
    path = tmp_path / "u_labels.csv"
    path.write_bytes(b"class,startTime_usec,endTime_usec\n1,1\xff0,200\n")
    with pytest.raises(ValueError, match="byte 37 is not ASCII"):
        read_labels(path)


def test_trials_skip_blank_lines_and_keep_order(tmp_path: Path) -> None:
    path = write(tmp_path / "trials_to_train.txt", "user02_lab.aedat\n\n  \nuser01_led.aedat\n\n")
    assert read_trials(path) == ["user02_lab.aedat", "user01_led.aedat"]


def test_trials_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="trials list .*trials_to_test.txt not found"):
        read_trials(tmp_path / "trials_to_test.txt")
    with pytest.raises(ValueError, match="names no recording"):
        read_trials(write(tmp_path / "trials_to_test.txt", "\n\n"))


def test_a_recording_listed_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "trials_to_train.txt", "user02_lab.aedat\n\nuser01_led.aedat\n"
                 "user02_lab.aedat\n")  # fmt: skip
    with pytest.raises(ValueError, match=r"trials_to_train.txt, line 4: 'user02_lab.aedat' is "
                       r"listed again \(first on line 1\)"):  # fmt: skip
        read_trials(path)


def test_a_recording_listed_twice_under_another_spelling_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "trials_to_train.txt", "user02_lab.aedat\nuser01_led.aedat\n"
                 "./user02_lab.aedat\n")  # fmt: skip
    with pytest.raises(ValueError, match=r"trials_to_train.txt, line 3: './user02_lab.aedat' is "
                       r"listed again \(first on line 1 as 'user02_lab.aedat'; both name "
                       r".*user02_lab.aedat\); a recording may be listed once"):  # fmt: skip
        read_trials(path)


def test_labels_path_for() -> None:
    assert labels_path_for("/d/user01_natural.aedat") == Path("/d/user01_natural_labels.csv")
