"""The exception hierarchy. Every error the pipeline raises on purpose is a `PipelineError`.

Each family has its own process exit code, so CI scripts can tell "your data is broken" from
"the int8 model lost accuracy" without parsing messages. Messages say what was received and how
to fix it.
"""

from __future__ import annotations

from typing import Any

INTERNAL_ERROR_EXIT = 70   # sysexits' EX_SOFTWARE: an error that is not a PipelineError, i.e. a bug of ours


class PipelineError(Exception):
    """Base class: a failure the user can act on. `exit_code` is what the CLI returns."""

    exit_code = 1


class DependencyError(PipelineError):
    """Installed packages do not fit together (TensorFlow / tf_keras / tfmot / LiteRT)."""

    exit_code = 3


class RecipeError(PipelineError):
    """A recipe (TOML config) has an unknown key, a wrong type or an out-of-range value."""

    exit_code = 4


class DataError(PipelineError):
    """An image folder, a labels file or an image in it cannot be used."""

    exit_code = 5


class ModelError(PipelineError):
    """A Keras model cannot be built, loaded or used as an image classifier."""

    exit_code = 6


class ConversionError(PipelineError):
    """The TFLite converter failed, or would leave ops in float in a full-integer model."""

    exit_code = 7


class TFLiteFileError(PipelineError):
    """A file is not a readable TFLite flatbuffer."""

    exit_code = 8


class ParityError(PipelineError):
    """A converted model missed the accuracy/agreement thresholds. Carries the full report."""

    exit_code = 9

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report


class OutputError(PipelineError):
    """The run folder exists already or cannot be written."""

    exit_code = 10


class CompatibilityError(PipelineError):
    """A model cannot run in the Android app's contract or in a target TFLite/LiteRT runtime."""

    exit_code = 11


class BudgetError(CompatibilityError):
    """A model does not fit a budget: a microcontroller's flash or RAM (`export-micro`), or no `explore` candidate
    is within the size, latency and accuracy asked for. Carries the measured numbers (`report`)."""

    exit_code = 13

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report


class OptionalStepError(PipelineError):
    """An optional step after verification (diagnosis, fallback, latency, MACs, plots) failed on an unexpected
    error. The verified run folder was still published; its report names the step and the error. An optional
    step that fails with one of the errors above exits with that error's code instead."""

    exit_code = 12


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM stopped a command. A KeyboardInterrupt, so every `finally` and staging-folder
    cleanup runs as for Ctrl-C; not a `PipelineError` (nothing is wrong with the input). The CLI exits with the
    shell's convention, 128 + the signal number: 130 for SIGINT, 143 for SIGTERM."""

    def __init__(self, signal_number: int, name: str) -> None:
        super().__init__(name)
        self.signal_number = signal_number
        self.name = name

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number
