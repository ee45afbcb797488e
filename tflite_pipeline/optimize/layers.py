"""Choosing which layers a tfmot stage wraps: by type and by name pattern, with clear errors."""

from __future__ import annotations

import re
from collections.abc import Sequence

import tf_keras as keras

from tflite_pipeline.errors import RecipeError
from tflite_pipeline.model.rebuild import flat_model


def select_layers(model: keras.Model, section: str, *, patterns: Sequence[str], layer_types: Sequence[str],
                  exclude: Sequence[str]) -> list[str]:
    """Names of the layers of `layer_types` matching any of `patterns` (all when empty) and none of `exclude`.

    A nested or Keras 3 model is looked at as its flat tf_keras rebuild (`rebuild.flat_model`), whose layers keep
    their names. Raises `RecipeError` when a pattern matches no layer, or when nothing is selected.
    """
    model = flat_model(model)
    types = tuple(getattr(keras.layers, name) for name in layer_types)
    candidates = [layer for layer in model.layers if type(layer) in types]
    for pattern in [*patterns, *exclude]:
        if not any(re.search(pattern, layer.name) for layer in model.layers):
            field = "layers" if pattern in patterns else "exclude"
            raise RecipeError(f"Received `{section}.{field}` pattern {pattern!r}, which matches no layer of "
                              f"{model.name!r}; layer names look like {[layer.name for layer in candidates[:4]]}.")
    chosen = [layer.name for layer in candidates
              if (not patterns or any(re.search(p, layer.name) for p in patterns))
              and not any(re.search(p, layer.name) for p in exclude)]
    if not chosen:
        raise RecipeError(f"`{section}` selects no layer of {model.name!r} (types {list(layer_types)}, patterns "
                          f"{list(patterns)}, exclude {list(exclude)}).")
    return chosen
