"""`dvsgkit plot` on malformed run records: one line naming the file and line, never a traceback;
a line torn by a crash mid-append is skipped; config.json is not needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from dvsgkit.run import read_metrics
from dvsgkit_cli.main import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _line(epoch: object, **changes: object) -> bytes:
    record = {"epoch": epoch, "train_loss": 0.1, "test_loss": 0.2, "train_acc": 0.5,
              "test_acc": 0.4, **changes}  # fmt: skip
    return (json.dumps(record) + "\n").encode()


GOOD = _line(0) + _line(1)
MALFORMED = [
    ("garbage", b"#!%& not json\n", "metrics.jsonl:3 is not JSON"),
    ("not-utf8", b'{"epoch": 2, "x": "\xff\xfe"}\n', "metrics.jsonl:3 is not JSON"),
    ("a-list", b"[1, 2, 3]\n", "metrics.jsonl:3 is a JSON list, not a record"),
    ("a-number", b"42\n", "metrics.jsonl:3 is a JSON int, not a record"),
    ("missing-key", b'{"epoch": 2, "train_loss": 0.1}\n', "metrics.jsonl:3 has no 'train_acc'"),
    ("string-value", _line(2, test_acc="high"), "metrics.jsonl:3: 'test_acc' is 'high', not a"),
    ("bool-epoch", _line(True), "metrics.jsonl:3: 'epoch' is True, not a number"),
    ("float-epoch", _line(2.5), "metrics.jsonl:3: 'epoch' is 2.5, not an integer >= 0"),
    ("negative-epoch", _line(-1), "metrics.jsonl:3: 'epoch' is -1, not an integer >= 0"),
]


@pytest.mark.parametrize(("name", "bad", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_plot_of_a_malformed_line_names_the_file_and_line(
    tmp_path: Path, name: str, bad: bytes, message: str
) -> None:
    (tmp_path / "metrics.jsonl").write_bytes(GOOD + bad + _line(3))
    result = CliRunner().invoke(cli, ["plot", str(tmp_path)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert str(tmp_path / "metrics.jsonl") in errors[0]
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob(".*partial"))


def test_training_needs_only_the_epoch_of_each_record(tmp_path: Path) -> None:
    # A resume reads metrics.jsonl for the epochs; keys it does not use may be anything.
    (tmp_path / "metrics.jsonl").write_bytes(b'{"epoch": 0}\n{"epoch": 1, "lr": "x"}\n')
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [0, 1]
    (tmp_path / "metrics.jsonl").write_bytes(b'{"epoch": 0}\n{"lr": 0.1}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2 has no 'epoch'; fix or delete"):
        read_metrics(tmp_path)


@pytest.mark.parametrize("config", [None, b"\x00\xffgarbage", b"[1, 2]"])
def test_a_torn_last_line_is_skipped_and_config_json_is_not_needed(
    tmp_path: Path, config: bytes | None
) -> None:
    (tmp_path / "metrics.jsonl").write_bytes(GOOD + b'{"epoch": 2, "train_lo')
    if config is not None:
        (tmp_path / "config.json").write_bytes(config)
    result = CliRunner().invoke(cli, ["plot", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_MAGIC
