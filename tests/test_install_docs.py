"""The README's install commands: the torch they install is the one CI installs, and the CPU
build's command (PyPI's Linux wheel of that version is the CUDA build) is given beside them."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _torch_pins(text: str) -> set[str]:
    return set(re.findall(r"pip install (?:-q )?torch==([0-9][0-9.]*)\b", text))


def test_readme_installs_ci_torch_and_gives_the_cpu_index_command() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    (version,) = _torch_pins(ci)
    assert _torch_pins(readme) == {version}
    for text in (readme, (REPO / "docs" / "development.md").read_text()):
        assert f"pip install torch=={version} --index-url {CPU_INDEX}" in text
