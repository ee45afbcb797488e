"""The one place that prepares the TensorFlow stack; imported first by `tflite_pipeline/__init__.py`.

tfmot works only with Keras 2 (the `tf_keras` package). Setting `TF_USE_LEGACY_KERAS=1` before
TensorFlow is imported makes `tf.keras` resolve to it too. The package itself always imports
`tf_keras` explicitly, so it also works when the user imported TensorFlow first.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ INFO chatter off the console

from tflite_pipeline.errors import DependencyError  # noqa: E402

_FIX = "Reinstall with `make setup` (or `pip install -e .`) so the pinned versions in pyproject.toml are used."


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries whose combination decides the output (written into every report)."""
    tensorflow = _version("tensorflow") or _version("tensorflow-cpu")
    return {
        "tensorflow": tensorflow,
        "tf_keras": _version("tf-keras") or _version("tf_keras"),
        "tensorflow_model_optimization": _version("tensorflow-model-optimization"),
        "ai_edge_litert": _version("ai-edge-litert"),
        "numpy": _version("numpy"),
        "pillow": _version("pillow"),
    }


def run_versions() -> dict[str, str | None]:
    """This package, Python and `library_versions()`: what a report, a manifest and a stage-cache key record
    (a release that changes how a stage trains must bump `__version__`, so older cache entries go unused)."""
    from tflite_pipeline import __version__

    return {"tflite_pipeline": __version__, "python": platform.python_version(), **library_versions()}


def check_versions(versions: dict[str, str | None] | None = None) -> None:
    """Raise `DependencyError` unless tensorflow, tf_keras, tfmot and LiteRT fit together."""
    v = library_versions() if versions is None else versions
    missing = [name for name in ("tensorflow", "tf_keras", "tensorflow_model_optimization", "ai_edge_litert")
               if not v.get(name)]
    if missing:
        raise DependencyError(f"Missing packages: {', '.join(missing)}. {_FIX}")
    if _major_minor(v["tensorflow"]) != _major_minor(v["tf_keras"]):
        raise DependencyError(
            f"Received tensorflow=={v['tensorflow']} with tf_keras=={v['tf_keras']}; their major.minor "
            f"versions must match (tf_keras is Keras 2 built for one TensorFlow release). {_FIX}")
    if _major_minor(v["tensorflow_model_optimization"]) < (0, 8):
        raise DependencyError(
            f"Received tensorflow-model-optimization=={v['tensorflow_model_optimization']}; "
            f"0.8 or newer is needed for TensorFlow 2.16+. {_FIX}")


check_versions()
