"""Keras models: the flat MobileNetV2 builder, loading users' files, and the classifier contract.

The builder makes Keras 2 (`tf_keras`) models, which tfmot requires. Users' files may be tf_keras or Keras 3
(`.keras` or `.h5` saved by `import keras`): both load here, in safe mode, and conversion and verification take
either as it is; `rebuild.flat_tf_keras` makes the flat tf_keras twin the tfmot stages need.
"""

from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import tf_keras as keras

from .errors import ModelError

MOBILENET_V2 = "mobilenet_v2"
_IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
_IMAGENET_SIZES = (96, 128, 160, 192, 224)


def build_mobilenet_v2(num_classes: int, input_size: int | Sequence[int] = 64, *, alpha: float = 0.35,
                       weights: str | None = None, dropout: float = 0.2, bn_momentum: float = 0.9,
                       seed: int | None = None) -> keras.Model:
    """A flat functional MobileNetV2 classifier (no nested sub-model, so tfmot can wrap every layer).

    `weights`: None/"none" for random init, "imagenet" (downloaded once by Keras, then cached in
    ~/.keras/models), or the path of a weights file for the headless backbone.
    `bn_momentum` replaces Keras' 0.999, with which a model trained for a few epochs from scratch
    keeps its initial moving statistics and scores at chance in inference mode.
    Raises `ModelError` for an invalid combination or when ImageNet weights cannot be fetched.
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if num_classes < 2:
        raise ModelError(f"Received num_classes={num_classes}; a classifier needs at least 2 classes.")
    weights = None if weights in (None, "", "none") else weights
    if weights == "imagenet" and (alpha not in _IMAGENET_ALPHAS or height != width or height not in _IMAGENET_SIZES):
        raise ModelError(f"Received alpha={alpha}, input {height}x{width} with weights='imagenet'; ImageNet "
                         f"weights exist for alpha in {_IMAGENET_ALPHAS} and square inputs of {_IMAGENET_SIZES}.")
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise ModelError(f"Received weights={weights!r}; expected 'none', 'imagenet' or an existing weights file.")
    if seed is not None:
        keras.utils.set_random_seed(seed)
    try:
        backbone = keras.applications.MobileNetV2(input_shape=(height, width, 3), alpha=alpha, include_top=False,
                                                  weights=weights, pooling="avg")
    except Exception as error:  # noqa: BLE001 - Keras raises bare Exceptions for download failures
        if weights == "imagenet":
            raise ModelError(f"Could not fetch the MobileNetV2 ImageNet weights ({error}). This machine may have "
                             "no internet access: download them where you can (they are cached in "
                             "~/.keras/models) and copy the file here, or pass weights='<path to .h5>'.") from None
        raise ModelError(f"Could not build MobileNetV2 (alpha={alpha}, input {height}x{width}, weights={weights!r}): "
                         f"{error}") from None
    backbone = with_bn_momentum(backbone, bn_momentum)
    x = keras.layers.Dropout(dropout, name="dropout")(backbone.output) if dropout else backbone.output
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(backbone.input, outputs, name=f"mobilenetv2_{alpha:g}_{height}")


def with_bn_momentum(model: keras.Model, momentum: float) -> keras.Model:
    """A copy of `model` whose BatchNormalization layers use `momentum`; weights are copied over."""
    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            config["momentum"] = momentum
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone


def copy_model(model: keras.Model) -> keras.Model:
    """An independent copy (same architecture and weights), so stages never mutate their input."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


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
    except Exception as error:  # noqa: BLE001 - Keras raises many types for unreadable files
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


def is_keras_model(model: object) -> bool:
    """Whether `model` is a tf_keras or a Keras 3 `Model`."""
    if isinstance(model, keras.Model):
        return True
    keras3_api = sys.modules.get("keras")   # Keras 3, when anything imported it
    return keras3_api is not None and isinstance(model, keras3_api.Model)


def ensure_model(model: object) -> keras.Model:
    """Return `model` if it is a tf_keras or Keras 3 model; raise `ModelError` for anything else."""
    if is_keras_model(model):
        return model
    raise ModelError(f"Received {type(model).__name__}; expected a Keras model (tf_keras or Keras 3).")


def _model_class(model: object) -> type:
    """`keras.Model` of the Keras that made `model` (tf_keras or Keras 3)."""
    if isinstance(model, keras.Model):
        return keras.Model
    import keras as keras3_api

    return keras3_api.Model


def image_input_shape(model: object) -> tuple[int, int, int]:
    """`(height, width, channels)` of a single-image-input, single-output classifier, or `ModelError`."""
    model = ensure_model(model)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(f"Model {model.name!r} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                         "expected one image input and one class-score output.")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[3] not in (1, 3) or shape[1] is None or shape[2] is None:
        raise ModelError(f"Model {model.name!r} takes input of shape {shape}; expected an image batch "
                         "(None, height, width, 1 or 3) with a fixed height and width.")
    out_shape = tuple(model.outputs[0].shape)
    if len(out_shape) != 2 or not out_shape[1] or out_shape[1] < 2:
        raise ModelError(f"Model {model.name!r} outputs shape {out_shape}; expected (None, num_classes).")
    return int(shape[1]), int(shape[2]), int(shape[3])


def outputs_probabilities(model: keras.Model) -> bool:
    """Whether the model ends in a softmax (probabilities) rather than logits. Looks through tfmot wrappers."""
    last = model.layers[-1]
    if is_keras_model(last):  # a nested head (Sequential inside the classifier)
        return outputs_probabilities(last)
    last = getattr(last, "layer", last)  # PruneLowMagnitude / QuantizeWrapper / ClusterWeights keep `.layer`
    if type(last).__name__ == "Softmax":  # tf_keras or Keras 3
        return True
    activation = getattr(last, "activation", None)
    activation = getattr(activation, "activation", activation)  # tfmot's QuantizeAwareActivation wraps the function
    return getattr(activation, "__name__", "") == "softmax"


def count_parameters(model: keras.Model) -> int:
    """The network's own weights. The variables tfmot's wrappers add (quantizer ranges, pruning masks,
    cluster centroids and indices) and its input QuantizeLayer are training bookkeeping: a QAT or CQAT
    model has the parameters of the model it wraps."""
    total = 0
    for layer in model.layers:
        if type(layer).__name__ == "QuantizeLayer":
            continue
        inner = getattr(layer, "layer", None)  # QuantizeWrapper, PruneLowMagnitude, ClusterWeights
        if not isinstance(inner, keras.layers.Layer):
            total += layer.count_params()
            continue
        # the wrapper holds the inner layer's variables (named after it) next to its own (named after itself)
        total += sum(int(np.prod(w.shape)) for w in layer.weights if w.name.startswith(f"{inner.name}/"))
    return int(total)


def num_classes(model: keras.Model) -> int:
    return int(model.outputs[0].shape[-1])


def check_labels(model: keras.Model, class_names: Sequence[str], source: str) -> None:
    """Raise `ModelError` unless the model outputs one score per class name."""
    if num_classes(model) != len(class_names):
        raise ModelError(f"Model {model.name!r} outputs {num_classes(model)} classes but {source} lists "
                         f"{len(class_names)}; use the labels.txt the model was trained with.")


def check_finite_weights(model: keras.Model) -> None:
    """Raise `ModelError` naming the layers whose weights hold NaN or Inf (a broken file, or training that
    diverged): int8 calibration of such a model gives garbage scales, silently."""
    bad = [f"{layer.name} ({weight.name.rsplit('/', 1)[-1]})" for layer in model.layers for weight in layer.weights
           if not np.all(np.isfinite(weight.numpy()))]
    if bad:
        raise ModelError(f"Model {model.name!r} has NaN or Inf weights in {bad[:5]}" + (" ..." if len(bad) > 5 else "")
                         + "; retrain it (a lower learning rate if training diverged) or load an intact file.")


def first_non_finite_layer(model: keras.Model, images: np.ndarray) -> str | None:
    """The first layer (in graph order) whose output on `images` holds NaN or Inf, or None."""
    try:
        probe = _model_class(model)(model.inputs, [layer.output for layer in model.layers[1:]])
    except (AttributeError, ValueError):  # a shared layer has no single output to probe
        return None
    outputs = probe(images, training=False)
    for layer, output in zip(model.layers[1:], outputs if isinstance(outputs, list) else [outputs], strict=True):
        if not np.all(np.isfinite(np.asarray(output))):
            return layer.name
    return None
