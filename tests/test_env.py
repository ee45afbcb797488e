import logging
import os
import subprocess
import sys

import pytest

from tflite_pipeline import env
from tflite_pipeline.errors import DependencyError


@pytest.mark.parametrize("first_import", ["tensorflow", "tflite_pipeline"])
def test_package_works_whichever_is_imported_first(first_import):
    code = (f"import {first_import}\n"
            "import os, tflite_pipeline, tf_keras\n"
            "from tensorflow_model_optimization.python.core.keras.compat import keras\n"
            "assert os.environ['TF_USE_LEGACY_KERAS'] == '1'\n"
            "assert keras is tf_keras or keras.__name__.startswith('tf_keras'), keras\n"
            "from tflite_pipeline.model.build import build_mobilenet_v2\n"
            "build_mobilenet_v2(3, 32)\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


def test_inspect_does_not_import_tensorflow():
    code = "import sys, tflite_pipeline.tflite.flatbuffer, tflite_pipeline.cli\nassert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_installed_versions_fit_together():
    env.check_versions()
    assert env.library_versions()["tensorflow"].startswith("2.21")


def test_mismatched_tf_keras_is_a_dependency_error():
    versions = {**env.library_versions(), "tf_keras": "2.15.0"}
    with pytest.raises(DependencyError, match=r"tf_keras==2.15.0.*must match"):
        env.check_versions(versions)


def test_old_tfmot_is_a_dependency_error():
    versions = {**env.library_versions(), "tensorflow_model_optimization": "0.7.5"}
    with pytest.raises(DependencyError, match=r"0\.8 or newer"):
        env.check_versions(versions)


def test_interpreter_is_litert_not_deprecated_tf_lite():
    import importlib

    verify = importlib.import_module("tflite_pipeline.tflite.interpreter")
    assert verify.Interpreter.__module__.startswith("ai_edge_litert")


@pytest.mark.fast
def test_tfmots_root_logger_warnings_are_hidden_unless_verbose():
    root = logging.getLogger()

    def passes(path: str) -> bool:
        return bool(root.filter(logging.LogRecord("root", logging.WARNING, path, 1, "a warning", None, None)))

    tfmot = os.path.join(os.sep, "venv", "tensorflow_model_optimization", "python", "registry.py")
    user = os.path.join(os.sep, "home", "user", "train.py")
    with env.verbosity(False):
        assert not passes(tfmot) and passes(user)
    with env.verbosity(True):
        assert passes(tfmot) and passes(user)
