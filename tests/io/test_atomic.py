"""atomic_path: the real name holds the old content or the whole new one, never a part."""

from __future__ import annotations

from pathlib import Path

import pytest

from dvsgkit.io.atomic import atomic_path, write_text_atomic


def test_success_renames_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_failure_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half of the ne")
        raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
