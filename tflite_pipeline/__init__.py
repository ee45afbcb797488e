"""tflite_pipeline: Keras image classifier -> tfmot -> full-integer TFLite, proven in LiteRT.

    import tflite_pipeline as tp
    result = tp.run(tp.load_recipe("default"), run_name="demo")
    print(result.report.parity.format_table())

Importing this package sets TF_USE_LEGACY_KERAS=1 (see `env`) and is cheap: the public names
below are loaded on first use, so `tflite-pipeline inspect` never imports TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import env  # noqa: F401  (must run before anything imports TensorFlow)
from .errors import (CompatibilityError, ConversionError, DataError, DependencyError, ModelError, OptionalStepError,
                     OutputError, ParityError, PipelineError, RecipeError, TFLiteFileError)

__version__ = "0.2.0"

_LAZY = {
    "Recipe": "recipe", "load_recipe": "recipe", "bundled_recipes": "recipe",
    "PreprocessSpec": "data", "ImageFolder": "data", "open_splits": "data", "read_labels": "data",
    "build_mobilenet_v2": "models", "load_model": "models", "flat_tf_keras": "rebuild", "Rebuild": "rebuild",
    "train_classifier": "train",
    "ChannelsConfig": "recipe", "prune_channels": "channels", "ChannelGraph": "channels", "model_macs": "channels",
    "convert_variant": "convert", "convert_float32": "convert", "convert_int8": "convert",
    "representative_dataset": "convert",
    "inspect_tflite": "inspect", "TFLiteInfo": "inspect",
    "LiteRTClassifier": "verify", "ParityReport": "verify", "measure_parity": "verify",
    "QuantizationDebug": "diagnose", "accuracy_budgeted_fallback": "diagnose", "top1_evaluator": "diagnose",
    "measure_latency": "bench", "bench_models": "bench", "cpu_description": "bench",
    "RunReport": "report",
    "export_android": "android", "check_compatibility": "android", "AndroidExport": "android",
    "run": "pipeline", "RunResult": "pipeline", "verify_files": "pipeline", "StageCache": "cache",
}

__all__ = [  # noqa: RUF022 - grouped by stage
    "PipelineError", "DependencyError", "RecipeError", "DataError", "ModelError", "ConversionError",
    "TFLiteFileError", "ParityError", "OutputError", "CompatibilityError", "OptionalStepError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
