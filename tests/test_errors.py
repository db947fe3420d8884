"""One error type: every exception class of dvsgkit derives from DvsgkitError, the one errno
table turns the OS errors a user can fix into one line, and the CLI prints a DvsgkitError as one
line "Error: ..." with exit status 1, while any other error (a bug) keeps its traceback."""

from __future__ import annotations

import ast
import builtins
import errno
import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from click.testing import CliRunner

import dvsgkit
import dvsgkit_cli
from dvsgkit.errors import (
    DamagedError,
    DvsgkitError,
    InputError,
    InTheWay,
    LockTimeout,
    NotFound,
    Stopped,
    StorageError,
    cause_of,
    storage_errors,
)
from dvsgkit_cli.main import cli


def _modules() -> list[str]:
    """Every module of dvsgkit and of its command line (those of dvsgkit.model too: they import
    CuPy only when a kernel runs)."""
    names = []
    for package in (dvsgkit, dvsgkit_cli):
        names.append(package.__name__)
        names += [m.name for m in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")]
    return names


def _exception_classes(owner: object, module: str) -> list[type[BaseException]]:
    """The exception classes defined in `module`, at its top level or inside its classes."""
    found = []
    for value in vars(owner).values():
        if inspect.isclass(value) and value.__module__ == module and value is not owner:
            if issubclass(value, BaseException):
                found.append(value)
            found += _exception_classes(value, module)
    return found


def test_every_exception_class_of_dvsgkit_derives_from_dvsgkit_error() -> None:
    classes = {}
    for name in _modules():
        for cls in _exception_classes(importlib.import_module(name), name):
            classes[f"{cls.__module__}.{cls.__qualname__}"] = cls
    assert {
        "dvsgkit.io.aedat_format.AedatError",
        "dvsgkit.errors.Stopped",
    } <= classes.keys()  # it looked
    assert len(classes) >= 15, sorted(classes)
    strays = sorted(name for name, cls in classes.items() if not issubclass(cls, DvsgkitError))
    assert strays == [], f"exception classes outside DvsgkitError: {strays}"


def test_no_exception_class_hides_inside_a_function() -> None:
    """A class defined in a function is out of the import walk's reach: none may be an
    exception class."""
    exceptions = {n for n, v in vars(builtins).items() if isinstance(v, type)
                  and issubclass(v, BaseException)}  # fmt: skip
    hidden = []
    for package in (dvsgkit, dvsgkit_cli):
        for path in Path(package.__path__[0]).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ClassDef):
                        bases = [ast.unparse(b).rsplit(".", 1)[-1] for b in inner.bases]
                        if any(
                            b in exceptions or b.endswith(("Error", "Exception")) for b in bases
                        ):
                            hidden.append(f"{path}: {inner.name}")
    assert hidden == []


@pytest.mark.parametrize(
    ("kind", "builtin"),
    [(InputError, ValueError), (NotFound, FileNotFoundError), (InTheWay, FileExistsError),
     (DamagedError, ValueError), (StorageError, OSError), (LockTimeout, TimeoutError),
     (Stopped, RuntimeError)],
)  # fmt: skip
def test_each_kind_is_caught_as_the_builtin_a_caller_expects(
    kind: type[DvsgkitError], builtin: type[BaseException]
) -> None:
    assert issubclass(kind, DvsgkitError) and issubclass(kind, builtin)


@pytest.mark.parametrize(
    ("code", "cause", "fix", "said"),
    [(errno.ENOSPC, "no space left on device", None, "free some space"),
     (errno.EDQUOT, "disk quota exceeded", "{remedy}, or use another --root",
      "free some space, or use another --root"),
     (errno.EROFS, "read-only file system", None, "make it writable"),
     (errno.EACCES, "permission denied", "choose another --out-dir", "choose another --out-dir")],
)  # fmt: skip
def test_storage_errors_turn_an_os_error_into_one_line(
    tmp_path: Path, code: int, cause: str, fix: str | None, said: str
) -> None:
    target = tmp_path / "events.h5"
    with pytest.raises(StorageError) as err, storage_errors(target, "write", fix):
        raise OSError(code, os.strerror(code), str(tmp_path / ".events.h5.1-ab.partial"))
    assert str(err.value) == f"cannot write {target}: {cause}; {said}"
    assert err.value.errno == code and isinstance(err.value.__cause__, OSError)
    with pytest.raises(StorageError) as err, storage_errors(None, "read"):  # the file it names
        raise PermissionError(errno.EACCES, "Permission denied", str(target))
    assert str(err.value) == f"cannot read {target}: permission denied; make it writable"


def test_a_storage_error_is_its_line_alone() -> None:
    line = "cannot write x: no space left on device; free some space"
    assert str(StorageError(errno.ENOSPC, line)) == line  # without OSError's "[Errno 28] "
    assert str(StorageError(line)) == line  # made without an errno, it still says its line


def test_storage_errors_read_the_errno_inside_an_hdf5_message(tmp_path: Path) -> None:
    hdf5 = OSError(
        "Unable to synchronously write data (file write failed: time = Mon, filename = 'x.h5', "
        "errno = 28, error message = 'No space left on device')"
    )
    assert cause_of(hdf5) == errno.ENOSPC
    with pytest.raises(StorageError, match="no space left on device"), storage_errors(tmp_path):
        raise hdf5


def test_storage_errors_leave_other_errors_as_they_are(tmp_path: Path) -> None:
    io_error = OSError(errno.EIO, "Input/output error")
    with pytest.raises(OSError) as err, storage_errors(tmp_path):
        raise io_error  # not one a user can fix by freeing space or a permission: a bug report
    assert err.value is io_error
    line = StorageError(errno.ENOSPC, "cannot write x: no space left on device; free some space")
    with pytest.raises(StorageError) as err, storage_errors(tmp_path / "other"):
        raise line
    assert err.value is line  # already one line: never wrapped again


def test_the_cli_turns_a_dvsgkit_error_into_one_line(tmp_path: Path) -> None:
    """The real command, in its own process: stderr holds exactly one line, no traceback."""
    path = tmp_path / "notes.txt"
    path.write_text("not a store\n")
    run = subprocess.run([sys.executable, "-m", "dvsgkit_cli.main", "info", str(path)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == [
        f"Error: {path} is neither an HDF5 event cache nor a Zarr frame store"
    ]


def test_the_cli_turns_every_kind_into_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "missing.h5"
    result = CliRunner().invoke(cli, ["info", str(missing)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"Error: {missing} not found; give an events.h5 or a frames_*.zarr path"
    ]
    import dvsgkit.info

    def stopped(path: Path, verify: bool = False) -> dict:
        raise Stopped("a worker process (pid 7) died (signal SIGKILL); rerun")

    monkeypatch.setattr(dvsgkit.info, "summarize", stopped)
    result = CliRunner().invoke(cli, ["info", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output == "Error: a worker process (pid 7) died (signal SIGKILL); rerun\n"

    def unreadable(path: Path, verify: bool = False) -> dict:  # an OSError naming its file
        raise PermissionError(errno.EACCES, "Permission denied", str(path / "events.h5"))

    monkeypatch.setattr(dvsgkit.info, "summarize", unreadable)
    result = CliRunner().invoke(cli, ["info", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"Error: [Errno 13] Permission denied: '{tmp_path / 'events.h5'}'"
    ]


@pytest.mark.parametrize(
    "error",
    [RuntimeError("an invariant broke"), KeyError("split"),
     OSError(errno.EIO, "Input/output error")],  # an OSError naming no file: not the user's
)  # fmt: skip
def test_an_unexpected_error_keeps_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    import dvsgkit.info

    def broken(path: Path, verify: bool = False) -> dict:
        raise error

    monkeypatch.setattr(dvsgkit.info, "summarize", broken)
    result = CliRunner().invoke(cli, ["info", str(tmp_path)])
    assert result.exception is error  # raised through the CLI, not turned into a line
    assert "Error:" not in result.output
    frames = [frame.name for frame in traceback.extract_tb(result.exc_info[2])]
    assert frames[-1] == "broken" and "invoke" in frames  # the whole way down
