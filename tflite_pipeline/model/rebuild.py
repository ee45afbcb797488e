"""Users' models made flat tf_keras: nested sub-models inlined, Keras 3 layers rebuilt as their tf_keras twins,
and affine input preprocessing (`Rescaling`, `preprocess_input`'s op layers) as one `Rescaling` layer.

tfmot wraps layers of a flat tf_keras (Keras 2) functional model only. Users bring Keras 3 models (`import keras`,
`.keras` files since TensorFlow 2.16) and the transfer-learning guide's shape (a base model called inside the
classifier). `flat_tf_keras` walks the model's graph once, node by node, and calls an equivalent tf_keras layer on
the mapped tensors, copying the weights; then it *proves* the rebuild: the largest absolute output difference
between the two on images must stay within a tolerance, or it raises `ModelError`. Nothing here mutates the input.

Both Keras packages live in one process: `keras` is Keras 3 and `tf_keras` is Keras 2 whatever
`TF_USE_LEGACY_KERAS` says (that variable only decides what `tf.keras` means). Limits, all raised as `ModelError`
naming the layer: a Keras 3 layer or op with no tf_keras twin of the same class name (custom layers, `Lambda`,
non-affine ops), a layer whose weights do not fit its twin. Settings a Keras 3 layer has and its twin lacks are
dropped and listed (`Rebuild.dropped`); the output proof catches any that mattered. `training=False` given to a
nested model's call is not kept: once flat, its layers follow the stage's training mode (frozen layers,
`trainable=False`, stay frozen).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras

from tflite_pipeline.errors import ModelError
from tflite_pipeline.model.properties import is_keras_model

# tf_keras' base Layer takes these keyword arguments besides each class's own
_LAYER_KWARGS = frozenset({"name", "trainable", "dtype", "dynamic", "input_dim", "input_shape", "batch_input_shape",
                           "batch_size", "weights", "activity_regularizer", "autocast", "implementation"})
# elementwise ops with a constant that are affine in the tensor: (scale, offset) as a function of the constant
# for `op(tensor, c)` and for `op(c, tensor)`; None where not affine
_AFFINE = {
    "add": (lambda c: (1.0, c), lambda c: (1.0, c)),
    "subtract": (lambda c: (1.0, -c), lambda c: (-1.0, c)),
    "multiply": (lambda c: (c, 0.0), lambda c: (c, 0.0)),
    "truediv": (lambda c: (1.0 / c, 0.0), None),
}
_AFFINE_NAMES = {"add": "add", "__operators__.add": "add", "math.add": "add", "subtract": "subtract",
                 "math.subtract": "subtract", "multiply": "multiply", "math.multiply": "multiply",
                 "truediv": "truediv", "math.truediv": "truediv", "true_divide": "truediv", "divide": "truediv",
                 "math.divide": "truediv"}
DEFAULT_TOLERANCE = 1e-4   # max |difference| relative to max(1, max |output|): float reordering gives ~1e-6


def is_keras3(value: object) -> bool:
    """Whether `value` is a Keras 3 model, layer, operation or tensor (`import keras`), not tf_keras."""
    keras3 = sys.modules.get("keras")   # not imported: nothing can be from it
    return keras3 is not None and isinstance(value, (keras3.Operation, keras3.KerasTensor))


def _is_sequential(model: object) -> bool:
    return type(model).__name__ == "Sequential"


def nested_models(model: object) -> list[str]:
    """Names of the sub-models `model` calls (at any depth)."""
    found = []
    for layer in getattr(model, "layers", []):
        if is_keras_model(layer):
            found += [layer.name, *nested_models(layer)]
    return found


def _op_name(layer: object) -> str | None:
    """The affine op a layer or Keras 3 operation applies (`add`, `subtract`, `multiply`, `truediv`), or None."""
    if type(layer).__name__ == "TFOpLambda":
        return _AFFINE_NAMES.get(getattr(layer, "symbol", ""))
    if is_keras3(layer) and not _is_layer(layer):
        return _AFFINE_NAMES.get(type(layer).__name__.lower().replace("truedivide", "true_divide"))
    return None


def _is_layer(op: object) -> bool:
    if is_keras3(op):
        import keras

        return isinstance(op, keras.layers.Layer)
    return isinstance(op, tf_keras.layers.Layer)


def has_op_preprocessing(model: object) -> bool:
    """Whether the model holds affine op layers (`preprocess_input` as TFOpLambda, Keras 3 ops) that tfmot cannot
    wrap."""
    return any(_op_name(op) for op, *_ in _nodes(model))


def input_preprocessing(model: object) -> str | None:
    """What normalizes the model's input inside the model, e.g. "Rescaling layer 'rescaling'", or None: the first
    layer or op that takes the input (looking into a nested model called first) when it is a `Rescaling` or
    `Normalization` layer or an affine op (`preprocess_input` as op layers, Keras 3 ops)."""
    if _is_sequential(model):
        first = model.layers[0] if model.layers else None
    else:
        input_ids = {id(t) for t in model.inputs}
        first = next((op for op, args, kwargs, _ in _nodes(model)
                      if any(id(v) in input_ids for v in tf.nest.flatten((args, kwargs)) if _is_symbolic(v))), None)
    if first is None:
        return None
    if is_keras_model(first):
        return input_preprocessing(first)
    kind = type(first).__name__
    if kind in ("Rescaling", "Normalization"):
        return f"{kind} layer {first.name!r}"
    if _op_name(first):
        return f"op {getattr(first, 'symbol', None) or kind} {first.name!r}"
    return None


def needs_rebuild(model: object) -> bool:
    """Whether tfmot stages need `flat_tf_keras(model)` first: Keras 3, nested sub-models, or op-layer preprocessing."""
    return is_keras3(model) or bool(nested_models(model)) or has_op_preprocessing(model)


def _nodes(model: object) -> Iterator[tuple[object, tuple, dict, list]]:
    """`(layer or op, call args, call kwargs, outputs)` of every call in a functional model, inputs first."""
    if _is_sequential(model):
        return
    by_depth = getattr(model, "_nodes_by_depth", None) or {}
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if is_keras3(model):
                op, args, kwargs = node.operation, node.arguments.args, node.arguments.kwargs
            else:
                op, args, kwargs = node.layer, node.call_args, node.call_kwargs
            if type(op).__name__ == "InputLayer":
                continue
            yield op, tuple(args), dict(kwargs), tf.nest.flatten(node.outputs)


def _is_symbolic(value: object) -> bool:
    return type(value).__name__ == "KerasTensor"


def _scalar(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, np.ndarray) and value.size == 1:
        return float(value.reshape(()))
    return None


@dataclass(frozen=True)
class Rebuild:
    """What `flat_tf_keras` did and how close the rebuild's outputs are to the original's."""

    source: str                          # "Keras 3.15.1 Functional 'guide'" / "tf_keras Functional 'guide'"
    nested: tuple[str, ...]              # sub-models inlined
    preprocessing: str | None            # the Rescaling that replaced op layers, if any
    layers: int                          # layers of the flat model
    max_abs_diff: float                  # over `images` outputs, float32
    max_abs_output: float                # the largest |output| of the original on those images (the scale)
    tolerance: float
    images: int
    dropped: dict[str, list[str]] = field(default_factory=dict)   # layer -> Keras 3 settings with no tf_keras twin
    renamed: dict[str, str] = field(default_factory=dict)         # inner layers renamed to keep names unique

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "nested": list(self.nested), "preprocessing": self.preprocessing,
                "layers": self.layers, "max_abs_diff": self.max_abs_diff, "max_abs_output": self.max_abs_output,
                "tolerance": self.tolerance,
                "images": self.images, "dropped": dict(self.dropped), "renamed": dict(self.renamed)}

    def describe(self) -> str:
        parts = [f"{self.source} rebuilt as a flat tf_keras model ({self.layers} layers)"]
        if self.nested:
            parts.append(f"inlined {', '.join(self.nested)}")
        if self.preprocessing:
            parts.append(self.preprocessing)
        return "; ".join(parts) + (f"; max |output difference| {self.max_abs_diff:.2g} on {self.images} images "
                                   f"(outputs up to {self.max_abs_output:.3g})")


class _Rebuilder:
    """One walk over a model's graph, building the flat tf_keras twin tensor by tensor."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.renamed: dict[str, str] = {}
        self.dropped: dict[str, list[str]] = {}
        self.affine: dict[int, tuple[object, float, float, list[str]]] = {}  # id(new tensor) -> (source, s, o, ops)
        self.preprocessing: list[str] = []
        self.twins: dict[int, tf_keras.layers.Layer] = {}   # id(layer) -> its twin: a shared layer stays shared
        self.keep: list[object] = []   # new tensors stay referenced, so their ids are never reused

    def unique(self, name: str) -> str:
        new, k = name, 1
        while new in self.names:
            new, k = f"{name}_{k}", k + 1
        self.names.add(new)
        if new != name:
            self.renamed[name] = new
        return new

    def inline(self, model: object, inputs: Sequence[object]) -> list[object]:
        """Apply `model`'s graph to `inputs` (new tf_keras tensors); returns the new outputs."""
        if _is_sequential(model):
            x = inputs[0]
            for layer in model.layers:
                x = self.inline(layer, [x])[0] if is_keras_model(layer) else self.call(layer, (x,), {})
            return [x]
        tensors = {id(old): new for old, new in zip(model.inputs, inputs, strict=True)}

        def mapped(value: object) -> object:
            if _is_symbolic(value):
                return tensors[id(value)]
            return value

        for op, args, kwargs, outputs in _nodes(model):
            args, kwargs = tf.nest.map_structure(mapped, (args, kwargs))
            if is_keras_model(op):
                result = self.inline(op, tf.nest.flatten(args[0]))
            else:
                result = self.call(op, args, kwargs)
            for old, new in zip(outputs, tf.nest.flatten(result), strict=True):
                tensors[id(old)] = new
                self.keep.append(new)
        return [tensors[id(t)] for t in model.outputs]

    def call(self, layer: object, args: tuple, kwargs: dict) -> object:
        affine = self.affine_of(layer, args, kwargs)
        if affine is not None:
            return self.rescale(*affine)
        if is_keras3(layer) and not _is_layer(layer):
            raise ModelError(f"Operation {layer.name!r} ({type(layer).__name__}) of the Keras 3 model has no tf_keras "
                             "twin; express it as a Keras layer, or skip the tfmot stages (post-training conversion "
                             "takes the model as it is).")
        shared = id(layer) in self.twins
        twin = self.twins[id(layer)] if shared else self.twins.setdefault(id(layer), self.twin(layer))
        output = twin(*args, **kwargs)
        if shared:
            return output
        weights = layer.get_weights()
        try:
            twin.set_weights(weights)
        except ValueError as error:
            raise ModelError(f"Layer {layer.name!r} ({type(layer).__name__}): its weights "
                             f"{[w.shape for w in weights]} do not fit the tf_keras twin "
                             f"{[tuple(w.shape) for w in twin.weights]}: {error}") from None
        return output

    def affine_of(self, layer: object, args: tuple, kwargs: dict) -> tuple[object, float, float, str] | None:
        """`(tensor, scale, offset, what)` when the call is `tensor * scale + offset` with scalar constants."""
        kind = type(layer).__name__
        if kind == "Rescaling":
            scale, offset = _scalar(layer.scale), _scalar(layer.offset)
            if scale is None or offset is None or not args:
                return None
            return args[0], scale, offset, f"Rescaling {layer.name!r}"
        op = _op_name(layer)
        if op is None:
            return None
        values = [v for v in (*args, *kwargs.values()) if v is not None and not isinstance(v, str)]
        if len(values) != 2:
            return None
        first, second = values
        if _is_symbolic(first) and not _is_symbolic(second):
            tensor, constant, forms = first, _scalar(second), _AFFINE[op][0]
        elif _is_symbolic(second) and not _is_symbolic(first):
            tensor, constant, forms = second, _scalar(first), _AFFINE[op][1]
        else:
            return None
        if constant is None or forms is None or (op == "truediv" and constant == 0):
            return None
        scale, offset = forms(constant)
        return tensor, scale, offset, f"{getattr(layer, 'symbol', None) or type(layer).__name__} {layer.name!r}"

    def rescale(self, tensor: object, scale: float, offset: float, what: str) -> object:
        """One Rescaling layer for a chain of affine steps (`(x * a + b) * c + d` is `x * ac + (bc + d)`)."""
        steps = [what]
        if id(tensor) in self.affine:
            tensor, first_scale, first_offset, earlier = self.affine[id(tensor)]
            scale, offset, steps = first_scale * scale, first_offset * scale + offset, [*earlier, what]
        layer = tf_keras.layers.Rescaling(scale, offset, name=self.unique("rescaling"))
        output = layer(tensor)
        self.affine[id(output)] = (tensor, scale, offset, steps)
        self.keep.append(output)
        self.preprocessing = [f"Rescaling(scale={scale:.6g}, offset={offset:.6g}) from {', '.join(steps)}"]
        return output

    def twin(self, layer: object) -> tf_keras.layers.Layer:
        """A new tf_keras layer configured like `layer` (a tf_keras or a Keras 3 layer)."""
        name = type(layer).__name__
        if not is_keras3(layer):
            config = layer.get_config()
            config["name"] = self.unique(layer.name)
            return type(layer).from_config(config)
        cls = getattr(tf_keras.layers, name, None)
        if name == "Lambda" or not (isinstance(cls, type) and issubclass(cls, tf_keras.layers.Layer)):
            raise ModelError(f"Layer {layer.name!r} ({type(layer).__module__}.{name}) of the Keras 3 model has no "
                             "tf_keras twin, so the tfmot stages cannot take it. Replace it with a built-in layer, or "
                             "skip the tfmot stages (post-training conversion takes the model as it is).")
        config = _tf_keras_config(layer.get_config())
        allowed = _init_parameters(cls)
        dropped = sorted(k for k, v in config.items()
                         if k not in allowed and not k.endswith("_initializer") and v not in (None, False, {}, []))
        if dropped:
            self.dropped[layer.name] = dropped
        # initializers are not needed (the weights are copied) and Keras 3 adds settings tf_keras' lack
        config = {k: v for k, v in config.items() if k in allowed and not k.endswith("_initializer")}
        config["name"] = self.unique(layer.name)
        config["trainable"] = layer.trainable
        try:
            return cls.from_config(config)
        except (TypeError, ValueError) as error:
            raise ModelError(f"Layer {layer.name!r} ({name}) of the Keras 3 model cannot be rebuilt in tf_keras: "
                             f"{error}") from None


def _tf_keras_config(value: Any) -> Any:
    """A Keras 3 config in tf_keras' terms: dtype policies by name, objects as {class_name, config}."""
    if isinstance(value, dict):
        if value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and "config" in value:
            return value["config"].get("name", "float32")
        if "class_name" in value and "config" in value:
            return {"class_name": value["class_name"], "config": _tf_keras_config(value["config"])}
        return {k: _tf_keras_config(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tf_keras_config(v) for v in value]
    return value


def _init_parameters(cls: type) -> set[str]:
    names = set(_LAYER_KWARGS)
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names |= {p.name for p in inspect.signature(init).parameters.values()
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if klass is tf_keras.layers.Layer:
            break
    return names - {"self"}


def max_output_difference(first: object, second: object, images: np.ndarray, batch_size: int = 64
                          ) -> tuple[float, float]:
    """Largest absolute difference between two models' float32 outputs on `images`, and the largest |output| of
    `first` (the scale the difference is judged against)."""
    worst, largest = 0.0, 0.0
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        a = np.asarray(first(batch, training=False), dtype=np.float32)
        b = np.asarray(second(batch, training=False), dtype=np.float32)
        worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b))))
        largest = max(largest, float(np.max(np.abs(a))))
    return worst, largest


def _input_spec(model: object) -> tuple[tuple[int, ...], str, str]:
    """`(shape without batch, dtype, name)` of the model's one input; a `Sequential` built without an `Input`
    takes its first layer's."""
    inputs = getattr(model, "inputs", None)
    if inputs:
        if len(inputs) != 1:
            raise ModelError(f"Model {model.name!r} has {len(inputs)} inputs; the rebuild takes one image input.")
        history = getattr(inputs[0], "_keras_history", None)
        layer = getattr(history, "operation", None) or getattr(history, "layer", None)
        return (tuple(inputs[0].shape[1:]), str(getattr(inputs[0].dtype, "name", inputs[0].dtype)),
                getattr(layer, "name", None) or "input")
    if _is_sequential(model) and model.layers:
        first = model.layers[0]
        if is_keras_model(first):
            return _input_spec(first)
        shape = getattr(first, "_batch_input_shape", None) or getattr(first, "batch_shape", None)
        if shape:
            return tuple(shape[1:]), "float32", "input"
    raise ModelError(f"Model {getattr(model, 'name', model)!r} has no defined input; build it on an input "
                     "(`keras.Input(shape)` first) so it can be rebuilt.")


def probe_images(model: object, count: int = 8, seed: int = 0) -> np.ndarray:
    """Seeded random inputs for the proof when no images are given: half raw pixels [0, 255], half [-1, 1]."""
    shape = tuple(int(d) for d in _input_spec(model)[0])
    rng = np.random.default_rng(seed)
    half = count // 2
    return np.concatenate([rng.uniform(0, 255, (half, *shape)), rng.uniform(-1, 1, (count - half, *shape))]
                          ).astype(np.float32)


def flat_tf_keras(model: object, images: np.ndarray | None = None, *, tolerance: float = DEFAULT_TOLERANCE
                  ) -> tuple[tf_keras.Model, Rebuild | None]:
    """The flat tf_keras functional twin of `model`, proven on `images` (model inputs; default `probe_images`).

    Returns `(model, None)` unchanged when it is flat tf_keras already without op-layer preprocessing. Raises
    `ModelError` naming a layer with no tf_keras twin, or when the outputs differ by more than
    `tolerance * max(1, max |output|)`."""
    if not needs_rebuild(model):
        return model, None
    rebuilder = _Rebuilder()
    shape, dtype, name = _input_spec(model)
    if not getattr(model, "built", True):   # a Sequential never called: its layers have no weights to copy yet
        model(np.zeros((1, *shape), np.float32), training=False)
    inputs = tf_keras.Input(shape=shape, dtype=dtype, name=rebuilder.unique(name))
    outputs = rebuilder.inline(model, [inputs])
    flat = tf_keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0], name=model.name)
    images = probe_images(model) if images is None else np.asarray(images, dtype=np.float32)
    difference, largest = max_output_difference(model, flat, images)
    scale = max(1.0, largest)
    source = (f"Keras {_keras3_version()} " if is_keras3(model) else "tf_keras ") + \
        f"{type(model).__name__} {model.name!r}"
    if not difference <= tolerance * scale:
        raise ModelError(f"The flat tf_keras rebuild of {source} differs from it by up to {difference:.3g} on "
                         f"{len(images)} images (allowed {tolerance * scale:.3g}); settings it dropped: "
                         f"{rebuilder.dropped or 'none'}. Please report this model; post-training conversion "
                         "(no tfmot stages) takes it as it is.")
    return flat, Rebuild(source=source, nested=tuple(nested_models(model)),
                         preprocessing=rebuilder.preprocessing[0] if rebuilder.preprocessing else None,
                         layers=len(flat.layers), max_abs_diff=difference, max_abs_output=largest,
                         tolerance=tolerance, images=len(images),
                         dropped=rebuilder.dropped, renamed=rebuilder.renamed)


def flat_model(model: object) -> tf_keras.Model:
    """`flat_tf_keras(model)`'s model, proven on `probe_images` (for API calls that bring no images)."""
    return flat_tf_keras(model)[0]


def _keras3_version() -> str:
    import keras

    return keras.__version__
