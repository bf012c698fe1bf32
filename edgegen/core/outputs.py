"""Writing outputs safely: every command that writes (convert, n-gram stores, images) goes through
here, so none of them can delete what edgegen did not write.

An output is built in a temporary sibling and renamed into place at the end: a failed or
interrupted command leaves nothing behind. `--force` replaces only an output edgegen wrote (a folder
whose `edgegen.json` we wrote, or a file our writer recognises) or an empty folder; anything else is
refused with one line, and nothing is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

from edgegen.core.errors import ConfigError

MARKER = "edgegen.json"


def is_edgegen_folder(path: Path) -> bool:
    """A folder whose `edgegen.json` edgegen wrote (a JSON object with a format version)."""
    marker = path / MARKER
    if not marker.is_file():
        return False
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "format_version" in data


def _related(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check_output(out: str | Path, *, force: bool, sources: Sequence[str | Path] = (),
                 ours: Callable[[Path], bool] | None = None) -> Path:
    """The resolved `out` if it may be written; otherwise a one-line `ConfigError`.

    `sources` are inputs the command reads (never overwritten, never inside OUT, OUT never inside
    them). A folder output passes `ours=None`; a file output passes `ours(path)`, which tells
    whether an existing file is one edgegen wrote."""
    out = Path(out).expanduser().resolve()
    _check_writable_place(out)
    for src in sources:
        src = Path(src).expanduser().resolve()
        if _related(out, src):
            raise ConfigError(f"the output {out} overlaps the input {src}; choose an -o outside it")
    if not out.exists() and not out.is_symlink():
        return out
    if not force:
        raise ConfigError(f"{out} already exists; choose another -o or pass --force to replace it")
    if out.is_symlink():
        raise ConfigError(f"{out} is a symbolic link; --force does not replace links, choose another -o")
    folder_output = ours is None
    if out.is_dir() and folder_output and (is_edgegen_folder(out) or not any(out.iterdir())):
        return out
    if out.is_file() and not folder_output and ours(out):
        return out
    what = "folder" if out.is_dir() else "file"
    raise ConfigError(f"{out} is a {what} edgegen did not write; --force replaces only edgegen outputs "
                      f"(or an empty folder), choose another -o")


def _check_writable_place(out: Path) -> None:
    """One line now, before any work, where `out` cannot be written: its nearest existing
    ancestor is a file, or a folder this user may not write into (the folders between are made)."""
    missing = _missing_folders(out)
    place = missing[-1].parent if missing else out.parent
    if not place.is_dir():
        raise ConfigError(f"cannot write {out}: {place} is a file, not a folder; choose another -o")
    if not os.access(place, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {out}: the folder {place} is not writable; choose another -o")


def _missing_folders(out: Path) -> list[Path]:
    """The folders above `out` that do not exist yet, innermost first."""
    missing, folder = [], out.parent
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing


@contextlib.contextmanager
def _parent_of(out: Path) -> Iterator[None]:
    """`out`'s parent folder, made with any missing ancestors; those it made are removed again if
    the output is not written (a failed command leaves nothing behind, no empty folders either)."""
    made = _missing_folders(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for folder in made:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@contextlib.contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it replaces `out` (checked beforehand with
    `check_output`), on failure or interruption it is removed."""
    with _parent_of(out):
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            yield tmp
            _usual_modes(tmp)
            _swap(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(out: Path) -> Iterator[Path]:
    """Yield a temporary file path beside `out`; renamed onto `out` on success, removed otherwise."""
    with _parent_of(out):
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            tmp.chmod(0o666 & ~_umask())
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_modes(folder: Path) -> None:
    """Temporary files and folders are private; the finished output gets the modes a plain write
    would have given it (the umask's)."""
    mask = _umask()
    folder.chmod(0o777 & ~mask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _swap(new: Path, out: Path) -> None:
    """Put folder `new` at `out`; an existing `out` is moved aside first and removed after, or put
    back if the second rename fails. No `.old` copy survives either way."""
    if not out.exists():
        os.replace(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    old.rmdir()  # only its unique name is wanted
    os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
