"""Quantization-aware training (tfmot): default 8-bit, prune-preserving (PQAT) and
cluster-preserving (CQAT) schemes. QAT models save to .h5 and reload inside `quantize_scope`.

Every scheme here fake-quantizes depthwise kernels per channel, as the TFLite converter quantizes them.
tfmot's own depthwise quantizer is "per axis" over the kernel's last dimension, which for a depthwise
kernel (kh, kw, channels, multiplier) is the depth multiplier of size 1: one range for the whole layer.
The int8 `.tflite` would then hold finer weights than the QAT model trained with.

Activation ranges start from data (`calibrate_activation_ranges`), not from tfmot's [-6, 6]: tfmot moves
them 0.1% per training step, so after a short fine-tune every ReLU6 output is still quantized over about
[-4, 6], wasting 40% of its int8 levels in the QAT model and in the `.tflite` converted from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve import (
    default_8bit_cluster_preserve_quantize_scheme as cluster_preserve)
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
    default_8bit_prune_preserve_quantize_scheme as prune_preserve)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_configs as default_configs)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_registry as default_registry)

from .errors import ModelError
from .models import load_model, refuse_lambda_layers
from .rebuild import flat_model

_quant = tfmot.quantization.keras
SCHEMES = ("default", "prune_preserve", "cluster_preserve")


class DepthwiseWeightsQuantizer(_quant.quantizers.LastValueQuantizer):
    """Symmetric int8 fake quantization of a depthwise kernel with one range per output channel."""

    def __init__(self):
        super().__init__(num_bits=8, per_axis=True, symmetric=True, narrow_range=True)

    def build(self, tensor_shape, name, layer):
        channels = int(tensor_shape[-2]) * int(tensor_shape[-1])
        return self._add_range_weights(layer, name, per_axis=True, tensor_shape=(channels,))

    def __call__(self, inputs, training, weights, **kwargs):
        kh, kw, channels, multiplier = inputs.shape
        per_channel = tf.reshape(inputs, (kh, kw, 1, channels * multiplier))  # TFLite's layout: channels last
        return tf.reshape(super().__call__(per_channel, training, weights, **kwargs), tf.shape(inputs))

    def get_config(self):
        return {}


class DepthwiseQuantizeConfig(default_registry.Default8BitQuantizeConfig):
    """tfmot's depthwise config with `DepthwiseWeightsQuantizer` on the kernel."""

    def __init__(self, weight_attrs=("depthwise_kernel",), activation_attrs=("activation",), quantize_output=False):
        super().__init__(list(weight_attrs), list(activation_attrs), quantize_output)
        self.weight_quantizer = DepthwiseWeightsQuantizer()


class _PerChannelDepthwiseRegistry(_quant.QuantizeRegistry):
    def __init__(self, registry):
        self._registry = registry

    def supports(self, layer):
        return self._registry.supports(layer)

    def get_quantize_config(self, layer):
        if type(layer) is keras.layers.DepthwiseConv2D:
            return DepthwiseQuantizeConfig()
        return self._registry.get_quantize_config(layer)


class _PerChannelDepthwiseScheme(_quant.QuantizeScheme):
    def __init__(self, scheme):
        self._scheme = scheme

    def get_layout_transformer(self):
        return self._scheme.get_layout_transformer()

    def get_quantize_registry(self):
        return _PerChannelDepthwiseRegistry(self._scheme.get_quantize_registry())


class PreprocessingQuantizeConfig(default_configs.Default8BitOutputQuantizeConfig):
    """Input preprocessing inside the model (`Rescaling`, `Normalization`, which tfmot's registry does not know):
    no weights to fake-quantize, the output quantized like any activation, as the converter will."""


# layers that normalize the model's input: tfmot gets them with `PreprocessingQuantizeConfig`
PREPROCESSING_LAYERS = (keras.layers.Rescaling, keras.layers.Normalization)
CUSTOM_OBJECTS = {"DepthwiseQuantizeConfig": DepthwiseQuantizeConfig,
                  "DepthwiseWeightsQuantizer": DepthwiseWeightsQuantizer,
                  "PreprocessingQuantizeConfig": PreprocessingQuantizeConfig}


def _annotate(model: keras.Model) -> keras.Model:
    """tfmot's annotation of every layer, preprocessing layers with `PreprocessingQuantizeConfig`."""
    def annotate(layer: keras.layers.Layer) -> keras.layers.Layer:
        if type(layer) in PREPROCESSING_LAYERS:
            return _quant.quantize_annotate_layer(layer, quantize_config=PreprocessingQuantizeConfig())
        return layer

    return _quant.quantize_annotate_model(keras.models.clone_model(model, clone_function=annotate))


def _scheme(name: str) -> _quant.QuantizeScheme:
    if name == "prune_preserve":
        scheme = prune_preserve.Default8BitPrunePreserveQuantizeScheme()
    elif name == "cluster_preserve":
        scheme = cluster_preserve.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True)
    else:
        scheme = _quant.default_8bit.Default8BitQuantizeScheme()
    return _PerChannelDepthwiseScheme(scheme)


def quantize_aware(model: keras.Model, scheme: str = "default", *,
                   calibration: Iterable[np.ndarray] | None = None,
                   input_range: tuple[float, float] | None = None) -> keras.Model:
    """A QAT copy of `model` (fake-quant on weights and activations) under `scheme`, its activation
    ranges measured on the `calibration` batches when given. `input_range` fixes the input quantizer's range
    (raw pixels: (0, 255), so the int8 input's scale is exactly 1 and the input byte is the pixel).

    A nested or Keras 3 model is first rebuilt flat (`rebuild.flat_model`). Raises `ModelError` for layers tfmot
    cannot quantize, naming them.
    """
    if scheme not in SCHEMES:
        raise ModelError(f"Received QAT scheme {scheme!r}; expected one of {SCHEMES}.")
    model = flat_model(model)
    try:
        with _quant.quantize_scope(CUSTOM_OBJECTS):
            qat = _quant.quantize_apply(_annotate(model), _scheme(scheme))
    except Exception as error:  # noqa: BLE001 - tfmot raises RuntimeError, ValueError, NameError, ...
        raise ModelError(f"tfmot cannot quantize {model.name!r} for QAT: {error}".split("\n")[0] +
                         " Remove or replace that layer, or skip the [qat] stage (post-training int8 still "
                         "works).") from None
    if calibration is not None:
        calibrate_activation_ranges(qat, calibration)
    if input_range is not None:
        set_input_range(qat, *input_range)
    return qat


def set_input_range(qat_model: keras.Model, low: float, high: float) -> None:
    """Set the range of tfmot's input quantizer (`QuantizeLayer`), which the converter takes for the int8 input."""
    for layer in qat_model.layers:
        if type(layer).__name__ == "QuantizeLayer":
            for variable in layer.weights:
                bound = _base_name(variable.name)
                if bound.endswith("_min"):
                    variable.assign(np.float32(low))
                elif bound.endswith("_max"):
                    variable.assign(np.float32(high))


_EMA_DECAY = 0.999  # tfmot's MovingAverageQuantizer
# tfmot's variable names for activation ranges; weight ranges are named after the weight ("kernel_min")
_ACTIVATION_RANGES = frozenset(f"{kind}_{bound}" for kind in ("output", "pre_activation", "post_activation")
                               for bound in ("min", "max"))


def activation_range_variables(qat_model: keras.Model) -> list[tf.Variable]:
    """The min/max variables of tfmot's moving-average activation quantizers in `qat_model`."""
    return [v for v in qat_model.non_trainable_variables if v.name.split("/")[-1].split(":")[0] in _ACTIVATION_RANGES]


def calibrate_activation_ranges(qat_model: keras.Model, batches: Iterable[np.ndarray], passes: int = 2) -> int:
    """Set every moving-average activation range of `qat_model` to its mean over `batches` (what tfmot's EMA
    converges to) and leave every other variable as it was. Returns the number of variables set.

    A training-mode call moves each range by `(1 - decay) * (batch range - range)`, which gives the batch
    range back. The first pass measures under tfmot's initial [-6, 6] ranges upstream; each later pass
    measures again under the ranges the previous one found. The weight ranges are left as those calls set
    them (tfmot's first training step would set the same); BatchNorm statistics are restored.
    """
    ranges = activation_range_variables(qat_model)
    if not ranges:
        raise ModelError(f"{qat_model.name!r} has no tfmot activation-range variables to calibrate; is it a QAT "
                         "model (quantize_aware) from tensorflow-model-optimization 0.8?")
    batches = list(batches)
    if not batches:
        raise ModelError("Received no calibration batch for the QAT activation ranges.")
    step = np.float64(np.float32(1.0 - _EMA_DECAY))  # the factor tf's assign_moving_average uses
    saved = [v.numpy() for v in qat_model.variables]
    for _ in range(passes):
        start = [v.numpy().astype(np.float64) for v in ranges]
        totals = [np.zeros_like(value) for value in start]
        for batch in batches:
            qat_model(batch, training=True)
            for variable, old, total in zip(ranges, start, totals, strict=True):
                total += old + (variable.numpy() - old) / step
                variable.assign(old.astype(np.float32))
        for variable, total in zip(ranges, totals, strict=True):
            variable.assign((total / len(batches)).astype(np.float32))
    for variable, value in zip(qat_model.variables, saved, strict=True):
        if not variable.name.split(":")[0].endswith(("_min", "_max")):  # keep every quantizer range
            variable.assign(value)
    return len(ranges)


def save_model_file(model: keras.Model, folder: str | Path, stem: str = "model") -> Path:
    """Save `model` into `folder` as `<stem>.h5` when it is a QAT model, else `<stem>.keras`; returns the path."""
    path = Path(folder) / f"{stem}{'.h5' if is_qat_model(model) else '.keras'}"
    if path.suffix == ".h5":
        save_qat_model(model, path)
    else:
        model.save(path)
    return path


def load_model_file(path: str | Path) -> keras.Model:
    """Load a file written by `save_model_file` (our own files: no safe-mode scan; tf_keras or Keras 3)."""
    path = Path(path)
    return load_qat_model(path, safe_mode=False) if path.suffix == ".h5" else load_model(path, safe_mode=False)


def standalone_copy(model: keras.Model) -> keras.Model:
    """The same model and weights through its file format: plain variables, free of the tf.distribute strategy it
    was trained under (whose collective ops the TFLite converter cannot take)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tflite-pipeline-model-") as folder:
        return load_model_file(save_model_file(model, folder))


def is_qat_model(model: keras.Model) -> bool:
    """Whether `model` holds tfmot's quantize wrappers (it then saves as .h5 and loads in the quantize scope)."""
    return any(isinstance(layer, _quant.QuantizeWrapper) for layer in model.layers)


def save_qat_model(model: keras.Model, path: str | Path) -> Path:
    """Save a QAT model as .h5 (tfmot's quantize layers do not reload from the .keras format)."""
    path = Path(path)
    model.save(path, save_format="h5", include_optimizer=False)
    return path


def load_qat_model(path: str | Path, *, safe_mode: bool = True) -> keras.Model:
    """Reload a QAT model saved by `save_qat_model` (inside tfmot's quantize scope). In safe mode a file with
    Lambda layers raises `ModelError` instead of running their code.

    A cluster-preserving (CQAT) model comes back for inference and conversion: its quantize configs
    serialize as tfmot's default 8-bit ones, which do not create the clustering variables CQAT trains with
    (`_CQAT_TRAINING_ONLY`); the kernels already hold the clustered weights, so the outputs are the same."""
    if safe_mode:
        refuse_lambda_layers(Path(path))
    with _quant.quantize_scope(CUSTOM_OBJECTS):
        try:
            return keras.models.load_model(path, compile=False)
        except ValueError as error:
            if "Weight count mismatch" not in str(error):
                raise
            return _load_without_training_only_variables(Path(path))


# Variables tfmot's cluster-preserving weight quantizer adds for training. At inference it uses the kernel,
# into which every training step writes the clustered weights.
_CQAT_TRAINING_ONLY = frozenset({"cluster_centroids_tf", "pulling_indices_tf", "ori_weights_vars_tf"})


def _base_name(name: str) -> str:
    return name.split("/")[-1].split(":")[0]


def _load_without_training_only_variables(path: Path) -> keras.Model:
    """Build the model from the .h5 file's config and set each variable from the saved one of the same name,
    leaving out `_CQAT_TRAINING_ONLY`. Call inside the quantize scope."""
    import h5py

    with h5py.File(path, "r") as file:
        config = file.attrs["model_config"]
        model = keras.models.model_from_json(config.decode() if isinstance(config, bytes) else config)
        groups = file["model_weights"]
        for layer in model.layers:
            variables = layer.trainable_weights + layer.non_trainable_weights
            if not variables:
                continue
            group = groups[layer.name]
            saved = [(name.decode() if isinstance(name, bytes) else name) for name in group.attrs["weight_names"]]
            kept = [name for name in saved if _base_name(name) not in _CQAT_TRAINING_ONLY]
            if [_base_name(n) for n in kept] != [_base_name(v.name) for v in variables]:
                raise ModelError(f"Cannot reload layer {layer.name!r} from {str(path)!r}: the file holds weights "
                                 f"{[_base_name(n) for n in saved]}, the rebuilt layer has "
                                 f"{[_base_name(v.name) for v in variables]}. Re-save it with this tflite_pipeline.")
            keras.backend.batch_set_value([(v, group[name][()]) for v, name in zip(variables, kept, strict=True)])
    return model
