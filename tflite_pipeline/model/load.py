"""Loading users' model files safely: tf_keras or Keras 3 (`.keras`, `.h5`, SavedModel folders).

Lambda layers store Python code that runs while a file loads: in safe mode (the default) such files are
refused with a `ModelError` before Keras reads them. Conversion and verification take either Keras as it is;
`rebuild.flat_tf_keras` makes the flat tf_keras twin the tfmot stages need.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import tf_keras as keras

from tflite_pipeline.errors import ModelError
from tflite_pipeline.model.properties import image_input_shape, is_keras_model


def saved_keras_version(path: Path) -> str | None:
    """The Keras version a `.keras` archive or an `.h5` file records (None when it records none)."""
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("metadata.json")).get("keras_version")
        import h5py

        with h5py.File(path, "r") as archive:
            version = archive.attrs.get("keras_version")
        return version.decode() if isinstance(version, bytes) else version
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, AttributeError):
        return None


def _is_keras3_file(path: Path) -> bool:
    version = saved_keras_version(path) if path.is_file() else None
    return bool(version) and not version.startswith("2.")


UNSAFE_HINT = ("Its Python code would run while loading. If you trust the file, pass --unsafe-load (CLI), "
               "`model.safe_mode = false` (recipe) or safe_mode=False (API).")


def lambda_layers(path: Path) -> list[str]:
    """Names of Lambda layers in an `.h5` file or SavedModel folder, read from the stored config (no code runs).

    Keras' safe mode only guards the `.keras` format: `.h5` and SavedModel files deserialize a Lambda's
    marshalled Python code without asking, so they are checked here first."""
    if path.is_dir():
        metadata = path / "keras_metadata.pb"
        text = metadata.read_bytes().decode("utf-8", "replace") if metadata.is_file() else ""
        found = re.findall(r'"class_name": "Lambda", "config": \{"name": "([^"]+)"', text)
        return found or (["<unnamed>"] if '"class_name": "Lambda"' in text else [])
    try:
        import h5py

        with h5py.File(path, "r") as archive:
            config = archive.attrs.get("model_config")
    except (OSError, ImportError):
        return []
    if config is None:
        return []
    names: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda":
                names.append(str(node.get("config", {}).get("name", "<unnamed>")))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(config if isinstance(config, str) else config.decode("utf-8")))
    return names


def refuse_lambda_layers(path: Path) -> None:
    """Raise `ModelError` when an `.h5` file or SavedModel folder holds Lambda layers (safe mode, before loading)."""
    lambdas = lambda_layers(path)
    if lambdas:
        raise ModelError(f"{str(path)!r} contains Lambda layers {lambdas}. {UNSAFE_HINT}")


def load_model(path: str | Path, *, safe_mode: bool = True) -> keras.Model:
    """Load a Keras model from `.keras`, `.h5` or a SavedModel folder, and check it is an image classifier.

    tf_keras files load as tf_keras models, files saved by Keras 3 (`keras_version` 3.x in the file) as Keras 3
    models, both in safe mode: `safe_mode=False` allows deserializing Lambda layers, which runs code from the file
    (only for files you trust). Raises `ModelError` when the file is missing or unreadable, has Lambda layers (in
    safe mode), or is not an image classifier.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"Model {str(path)!r} does not exist; expected a .keras or .h5 file or a SavedModel folder.")
    if path.is_dir() and not (path / "saved_model.pb").is_file():
        raise ModelError(f"Folder {str(path)!r} is not a SavedModel (no saved_model.pb).")
    if path.is_file() and path.suffix not in (".keras", ".h5", ".hdf5"):
        raise ModelError(f"Received {str(path)!r}; expected a .keras or .h5 file or a SavedModel folder.")
    if safe_mode and path.suffix != ".keras":  # Keras' own safe mode guards .keras files
        refuse_lambda_layers(path)
    kwargs = {"safe_mode": safe_mode} if path.suffix == ".keras" else {}
    try:
        if _is_keras3_file(path):
            import keras as keras3_api

            model = keras3_api.saving.load_model(path, compile=False, **kwargs)
        else:
            model = keras.models.load_model(path, compile=False, **kwargs)
    except Exception as error:
        if safe_mode and ("Lambda" in str(error) or "safe_mode" in str(error)):
            raise ModelError(f"{str(path)!r} contains a Lambda layer. {UNSAFE_HINT}") from None
        words = " ".join(str(error).split())[:500]
        raise ModelError(f"Cannot load Keras model {str(path)!r} ({type(error).__name__}: {words}): the file is "
                         "damaged or was written by an incompatible Keras; save the model again from where it was "
                         "trained.") from None
    if not is_keras_model(model):
        raise ModelError(f"{str(path)!r} is a plain TensorFlow SavedModel, not a Keras model; save it with "
                         "Keras (`model.save(...)`) so it can be fine-tuned and verified.")
    image_input_shape(model)
    return model
