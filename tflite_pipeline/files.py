"""Atomic file writes and hashes: a file is written to a temporary name, synced and renamed into place, with
the permissions `open()` would give (umask respected), so an interrupted write leaves the old file or none.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tflite_pipeline.errors import OutputError


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask can only be read by setting it
FILE_MODE = 0o666 & ~_UMASK   # what open() would give: temporary files are 0600 and folders 0700 otherwise
DIR_MODE = 0o777 & ~_UMASK


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` via a temporary file in the same folder, fsync and rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise OutputError(f"Cannot write into {str(path.parent)!r}: {error.strerror}.") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except OSError as error:
        Path(temp).unlink(missing_ok=True)
        raise OutputError(f"Cannot write {str(path)!r}: {error.strerror}.") from None
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))  # a file name's own bytes


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def temporary_dir(parent: Path, prefix: str) -> Path:
    """A new hidden folder `parent/<prefix><pid>-<random>` for staging; `remove_stale` clears those of dead
    processes (a run killed with SIGKILL cannot clean up after itself)."""
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    folder.chmod(DIR_MODE)  # published as is: the usual folder permissions, not mkdtemp's private 0700
    return folder


def remove_stale(parent: Path, prefix: str) -> list[Path]:
    """Delete the staging folders under `parent` made by `temporary_dir(parent, prefix)` in processes that are
    no longer alive. Returns what was removed."""
    removed = []
    for path in parent.glob(f"{glob.escape(prefix)}*") if parent.is_dir() else ():
        pid = path.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, innermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def check_writable(folder: Path) -> None:
    """Raise `OutputError` unless `folder` (or its nearest existing parent, where it would be created) is a folder
    this process can create files in. Probes with a temporary file: permission bits alone mislead root."""
    missing = missing_folders(folder)
    existing = missing[-1].parent if missing else folder
    if not existing.is_dir():
        raise OutputError(f"Cannot write into {str(folder)!r}: {str(existing)!r} is a file, not a folder; choose "
                          "another --output-dir.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise OutputError(f"Cannot write into {str(folder)!r} ({str(existing)!r}: {error.strerror}); choose a "
                          "writable --output-dir.") from None


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(path: str | Path) -> str:
    """One hash over a file, or over a folder's relative file names and contents (e.g. a SavedModel)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def listing_sha256(files: Any) -> str:
    """Hash of a data listing: each file's path and size (not its pixels: cheap on large datasets)."""
    digest = hashlib.sha256()
    for file in sorted(str(f) for f in files):
        digest.update(f"{file}\0{os.path.getsize(file)}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()
