"""tflite_pipeline: Keras image classifier -> tfmot -> full-integer TFLite, proven in LiteRT.

    import tflite_pipeline as tp
    result = tp.run(tp.load_recipe("default"), run_name="demo")       # train, compress, convert, verify
    result = tp.convert("my_model.keras", "my_images/")               # your trained model, no training
    tp.verify(result.run_dir).check()                                  # the parity gate (raises ParityError)

The top level holds the verbs, the results they return and the errors. Everything else lives in sub-packages
that follow the data flow: `config` (recipes) -> `data` (image folders, preprocessing) -> `model` (build, load,
train) -> `optimize` (the stages) -> `tflite` (convert, read, verify, diagnose, bench) -> `runs` (orchestration,
cache, run folder, report) -> `export` (Android, microcontrollers). See docs/python-api.md.

Importing this package sets TF_USE_LEGACY_KERAS=1 (see `env`) and is cheap: the names below are loaded on
first use, so `tflite-pipeline inspect` never imports TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

from tflite_pipeline import env  # noqa: F401  (must run before anything imports TensorFlow)
from tflite_pipeline.errors import (
    BudgetError,
    CompatibilityError,
    ConversionError,
    DataError,
    DependencyError,
    Interrupted,
    ModelError,
    OptionalStepError,
    OutputError,
    ParityError,
    PipelineError,
    RecipeError,
    TFLiteFileError,
)

__version__ = "0.3.0"

_LAZY = {
    # verbs
    "run": "runs.pipeline", "convert": "runs.pipeline", "verify": "runs.verify", "load_recipe": "config.recipe",
    "inspect_tflite": "tflite.flatbuffer", "bench_models": "tflite.bench", "export_android": "export.android",
    "export_micro": "export.micro", "explore": "runs.explore",
    # what they return
    "Recipe": "config.recipe", "RunResult": "runs.pipeline", "RunReport": "runs.report",
    "ParityReport": "tflite.parity", "TFLiteInfo": "tflite.flatbuffer", "ModelBenchmark": "tflite.bench",
    "AndroidExport": "export.android", "MicroExport": "export.micro",
}
_SUBPACKAGES = ("config", "data", "model", "optimize", "tflite", "runs", "export")

__all__ = [  # noqa: PLE0604 - verbs, results, errors (in that order)
    *_LAZY,
    "PipelineError", "DependencyError", "RecipeError", "DataError", "ModelError", "ConversionError",
    "TFLiteFileError", "ParityError", "OutputError", "CompatibilityError", "BudgetError", "OptionalStepError",
    "Interrupted",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*__all__, *_SUBPACKAGES]
