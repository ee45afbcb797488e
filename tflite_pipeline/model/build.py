"""The flat MobileNetV2 baseline (tf_keras, which tfmot requires): width, resolution, BatchNorm momentum.

`weights="imagenet"` needs Keras' download once (or a local weights file); without it the model starts from a
seeded random initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import tf_keras as keras

from tflite_pipeline.errors import ModelError

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
    With a `seed`, Keras' session is cleared first, so the weights depend on the seed alone.
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
        # Keras' op seeds and layer-name counters depend on what this process built before: cleared, the same seed
        # gives the same weights in any process (explore builds one baseline per candidate; the cache keys on them)
        keras.backend.clear_session()
        keras.utils.set_random_seed(seed)
    try:
        backbone = keras.applications.MobileNetV2(input_shape=(height, width, 3), alpha=alpha, include_top=False,
                                                  weights=weights, pooling="avg")
    except Exception as error:
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
