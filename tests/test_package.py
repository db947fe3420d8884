"""The package's import contract and the CLI shell."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

import dvsgkit
from dvsgkit import constants
from dvsgkit_cli.main import COMMANDS, cli


def test_import_dvsgkit_pulls_no_heavy_dependency() -> None:
    code = (
        "import sys, dvsgkit, dvsgkit.constants, dvsgkit_cli.main; "
        "heavy = {'torch', 'cupy', 'zarr', 'h5py'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_front_door_names_are_lazy_attributes() -> None:
    code = (
        "import sys, dvsgkit; heavy = {'torch', 'cupy', 'zarr', 'h5py'}; "
        "names = [n for n in dvsgkit.__all__ if n in dir(dvsgkit)]; "
        "spec = dvsgkit.FrameSpec(8); err = dvsgkit.DvsgkitError; "
        "print(len(names), spec.name, sorted(heavy & set(sys.modules))); "
        "cls = dvsgkit.DVSGesture; print(cls.__module__, 'torch' in sys.modules); "
        "print(dvsgkit.build_frames.__name__, dvsgkit.build_events.__name__, "
        "dvsgkit.open_frames.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        f"{len(dvsgkit.__all__)} frames_number_8_split_by_number []",  # FrameSpec: numpy only
        "dvsgkit.dataset True",  # imported when first used
        "build_frame_store build_event_cache open_frame_store",
    ]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        dvsgkit.nothing  # noqa: B018


def test_version_and_help_list_every_command() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and dvsgkit.__version__ in result.output
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


def test_dataset_facts() -> None:
    assert len(constants.CLASS_NAMES) == constants.NUM_CLASSES == 11
    assert sorted(constants.SPIKINGJELLY_LABEL_ORDER) == list(range(11))
    assert constants.SENSOR_SIZE == (128, 128)
    assert constants.EVENT_DTYPE.names == ("t", "x", "y", "p")
    # 98 train / 24 test recordings with 12 labelled rows each (docs/reference.md §1)
    assert (constants.TRAIN_SAMPLES, constants.TEST_SAMPLES) == (98 * 12, 24 * 12)


def test_every_subpackage_is_listed_for_installation() -> None:
    # pyproject.toml lists packages by name; one left out installs only as data, with a warning.
    import ast
    import re
    from pathlib import Path

    repo = Path(__file__).parent.parent
    text = (repo / "pyproject.toml").read_text()
    listed = set(ast.literal_eval(re.search(r"^packages = (\[.*\])$", text, re.M).group(1)))
    found = {
        ".".join(p.parent.relative_to(repo).parts) for p in (repo / "dvsgkit").rglob("__init__.py")
    }
    assert found <= listed, sorted(found - listed)
