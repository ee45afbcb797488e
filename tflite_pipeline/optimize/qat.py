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

import copy
from collections.abc import Iterable

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve import (
    default_8bit_cluster_preserve_quantize_scheme as cluster_preserve,
)
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
    default_8bit_prune_preserve_quantize_scheme as prune_preserve,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_configs as default_configs,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_registry as default_registry,
)

from tflite_pipeline.config.recipe import Recipe
from tflite_pipeline.errors import ModelError
from tflite_pipeline.model.files import short_variable_name
from tflite_pipeline.model.rebuild import flat_model
from tflite_pipeline.optimize.stage import FineTuneStage, StageContext, StageOutput, StageRecord, macs_before

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
        config = self._registry.get_quantize_config(layer)
        if hasattr(config, "weight_quantizer"):
            # tfmot's cluster-preserving registry hands every layer the same weight quantizer, which turns its
            # `preserve_sparsity` off for good at the first layer without zeros (the dense stem): every pruned layer
            # after it then lost its zeros in PCQAT. One quantizer per layer keeps each layer's own setting.
            config.weight_quantizer = copy.copy(config.weight_quantizer)
        return config


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
    except Exception as error:
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
                bound = short_variable_name(variable.name)
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


def qat_scheme(recipe: Recipe) -> str:
    """tfmot's QAT scheme after the recipe's earlier stages: cluster-preserving after clustering (it keeps the
    zeros too: PCQAT after prune -> cluster), prune-preserving after pruning alone, else the default."""
    return "cluster_preserve" if recipe.cluster.enabled else "prune_preserve" if recipe.prune.enabled else "default"


def qat_label(recipe: Recipe) -> str:
    """The QAT stage's name: qat, pqat, cqat, or pcqat (pruned, then clustered with the zeros kept)."""
    if recipe.cluster.enabled:
        return "pcqat" if recipe.prune.enabled else "cqat"
    return "pqat" if recipe.prune.enabled else "qat"


class QuantizeAware(FineTuneStage):
    """`[qat]`: quantization-aware fine-tune; after pruning or clustering, the scheme that preserves them
    (PQAT, CQAT). Its model carries the int8 ranges the converter then takes as they are."""

    section = "qat"
    is_qat = True

    def label(self, recipe: Recipe) -> str:
        return qat_label(recipe)

    def settings(self, recipe: Recipe) -> list[object]:
        distill = recipe.distill.to_dict() if recipe.distill.enabled else None
        return [recipe.qat.to_dict(), recipe.convert.calibration_samples, distill]

    def check(self, model: keras.Model, recipe: Recipe) -> None:
        quantize_aware(model)

    def run(self, model: keras.Model, previous: StageRecord | None, context: StageContext) -> StageOutput:
        q, spec, recipe = context.recipe.qat, context.spec, context.recipe
        scheme, label = qat_scheme(recipe), self.label(recipe)
        context.log(f"[{label}] quantization-aware fine-tune ({scheme.replace('_', '-')} scheme)")
        calibration = context.batches(context.calibration_images()) if q.calibrate_ranges else None
        input_range = (0.0, 255.0) if spec.normalization == "raw" else None  # the input byte is the pixel
        qat = context.tuner.fit(quantize_aware(model, scheme, calibration=calibration, input_range=input_range),
                                epochs=q.epochs, learning_rate=q.learning_rate)
        record = context.record(label, qat, macs=macs_before(previous, model),
                                **(previous.inherited() if previous else {}))
        return self.output(recipe, qat, record)
