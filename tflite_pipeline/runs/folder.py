"""The run folder: built under a hidden staging name and renamed into `models/<run-name>` only when complete.

An interrupted run therefore leaves either nothing or a finished folder, never a half-written `.tflite` or
report. An existing run folder is never replaced unless `overwrite=True`.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

from tflite_pipeline.errors import OutputError
from tflite_pipeline.files import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_writable,
    missing_folders,
    remove_stale,
    sha256_file,
    temporary_dir,
)

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_run_name(name: str) -> str:
    """Return `name` if it is a safe folder name (letters, digits, `.`, `_`, `-`), else raise `OutputError`."""
    if not _RUN_NAME.match(name) or ".." in name:
        raise OutputError(f"Received run name {name!r}; use letters, digits, '.', '_' and '-' only "
                          "(it must start with a letter or digit), e.g. 'fashion-int8'.")
    return name


class RunFolder:
    """Context manager that stages a run folder and publishes it atomically on success.

        with RunFolder(Path("models/demo")) as folder:
            folder.write_bytes("model_int8.tflite", data)
    """

    def __init__(self, final: str | Path, *, overwrite: bool = False) -> None:
        self.final = Path(final)
        check_run_name(self.final.name)
        self.overwrite = overwrite
        self.staging: Path | None = None
        self.created: list[Path] = []   # parent folders this run made (removed again if it fails)

    def check_available(self) -> None:
        """Raise `OutputError` now (before any long work) if the folder exists and may not be replaced, or its
        parent cannot be written."""
        if self.final.exists() and not self.overwrite:
            raise OutputError(f"Run folder {str(self.final)!r} exists already; choose another --run-name or pass "
                              "--overwrite to replace it.")
        check_writable(self.final.parent)

    def __enter__(self) -> RunFolder:
        self.check_available()
        self.created = missing_folders(self.final.parent)
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            remove_stale(self.final.parent, self._staging_prefix)
            self.staging = temporary_dir(self.final.parent, self._staging_prefix)
        except OSError as error:
            raise OutputError(f"Cannot create a run folder in {str(self.final.parent)!r}: {error.strerror}.") from None
        return self

    @property
    def _staging_prefix(self) -> str:
        return f".{self.final.name}.partial-"

    def path(self, name: str) -> Path:
        assert self.staging is not None, "use RunFolder as a context manager"
        target = (self.staging / name).resolve()
        if self.staging.resolve() not in target.parents:
            raise OutputError(f"Received output name {name!r}; it would leave the run folder.")
        return target

    def write_bytes(self, name: str, data: bytes) -> Path:
        return atomic_write_bytes(self.path(name), data)

    def write_text(self, name: str, text: str) -> Path:
        return atomic_write_text(self.path(name), text)

    def write_json(self, name: str, data: Any) -> Path:
        return atomic_write_json(self.path(name), data)

    def write_model(self, stem: str, model: Any) -> Path:
        """Save a Keras model as `<stem>.keras`, or `<stem>.h5` for a QAT model (`model.files.save_model_file`)."""
        from tflite_pipeline.model.files import save_model_file

        return save_model_file(model, self.path(stem).parent, stem)

    def output_hashes(self) -> dict[str, str]:
        """sha256 of every file written so far, by path relative to the folder."""
        assert self.staging is not None
        return {file.relative_to(self.staging).as_posix(): sha256_file(file)
                for file in sorted(p for p in self.staging.rglob("*") if p.is_file())}

    def _remove_created(self) -> None:
        for folder in self.created:  # innermost first; a folder something else wrote into stays
            try:
                folder.rmdir()
            except OSError:
                break

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        assert self.staging is not None
        if kind is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self._remove_created()
            return
        old = None
        try:
            if self.final.exists():
                self.check_available()
                old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
                os.replace(self.final, old)
            os.replace(self.staging, self.final)
        except OSError as failure:
            if old is not None and not self.final.exists():
                os.replace(old, self.final)  # put the previous run back: nothing is lost
                old = None
            shutil.rmtree(self.staging, ignore_errors=True)
            self._remove_created()
            raise OutputError(f"Cannot publish run folder {str(self.final)!r}: {failure.strerror}.") from None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
