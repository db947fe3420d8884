"""notebooks/load_zarr_frames.ipynb runs against a fresh store, with dvsgkit unimportable."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from dvsgkit.frames import FrameSpec
from dvsgkit.framestore.build import build_frame_store

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "load_zarr_frames.ipynb"


def test_notebook_uses_only_zarr_numpy_matplotlib() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    imported = set(re.findall(r"^\s*(?:import|from)\s+(\w+)", code, flags=re.M))
    assert imported == {"os", "matplotlib", "numpy", "zarr"}
    # The committed copy is executed (it shows pictures) and small.
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert NOTEBOOK.stat().st_size < 1_000_000


def test_notebook_executes_against_a_store(
    tiny_root: Path, copy_root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_root(tiny_root, tmp_path, with_=("recordings", "events"))
    store = build_frame_store(tmp_path, FrameSpec(4, "time"), workers=1, progress=False)
    monkeypatch.setenv("DVSGKIT_FRAMES_STORE", str(store))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []  # only what this run prints counts
    # Prove it needs no dvsgkit: any import of it inside the kernel fails.
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys\nsys.modules['dvsgkit'] = None"))
    NotebookClient(nb, timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "'T': 4, 'split_by': 'time'" in text
    assert "train frames (12, 4, 2, 128, 128) uint8" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2
