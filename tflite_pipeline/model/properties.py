"""What a Keras classifier is, whichever Keras made it: input shape, classes, softmax or logits, parameter
count, and the checks every step relies on (labels match the outputs, weights are finite).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import tf_keras as keras

from tflite_pipeline.errors import ModelError


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
