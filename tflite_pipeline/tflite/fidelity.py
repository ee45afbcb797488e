"""Post-training int8 that keeps the float model's decisions: the `[ptq]` techniques.

TensorFlow's converter quantizes in two steps. It *calibrates*: runs the representative images through a float copy
of the converted graph (BatchNorm already folded into the convolutions) and records each activation's min and max.
Then its quantizer turns that calibrated model into integers: per-channel symmetric int8 weights with scale
max|w| / 127, int32 biases at scale s_input * s_weight, asymmetric int8 activations from the recorded ranges.
`fidelity_int8` stops between the two, writes what the techniques chose into the calibrated model, and lets the same
quantizer finish (`TFLITE_BUILTINS_INT8`, int8 or uint8 I/O, exactly as `convert_int8`):

- **activation ranges** (`ranges`): `percentile` keeps the given share of each tensor's values inside its range,
  `mse` picks the range with the least expected squared error (rounding inside, clipping outside) on a histogram of
  the tensor's values; the converter's `minmax` takes the extremes, so one outlier image coarsens every step.
  The model's input (its range is the preprocessing's) and output tensors keep the converter's ranges.
- **AdaRound** (`adaround`, Nagel et al. 2020): each weight of a convolution, depthwise convolution or dense layer
  is rounded up or down, whichever way makes the layer's outputs on calibration inputs closest to the float
  layer's (a soft rounding variable per weight, fitted with Adam and annealed to 0/1), instead of to the nearest
  integer; a layer keeps nearest rounding when the fit is not better on its own inputs.
- **bias correction** (`bias_correction`, empirical, Nagel et al. 2019): the rounded weights shift each output
  channel's mean by `layer(E[x], W_int - W)`; that shift, measured on the calibration inputs' mean, is taken off
  the channel's bias.

Weights are written back as float values exactly on the quantizer's grid (integer x channel scale, the channel's
largest magnitude kept at +-127 so its scale is unchanged), so the quantizer's own rounding reproduces the chosen
integers. `fidelity_int8` reads them back from the `.tflite` and raises `ConversionError` if a single one differs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.python.convert import mlir_quantize
from tensorflow.lite.tools import flatbuffer_utils

from tflite_pipeline import env, progress
from tflite_pipeline.config.sections import PTQConfig
from tflite_pipeline.errors import ConversionError
from tflite_pipeline.progress import Log
from tflite_pipeline.tflite.flatbuffer import op_name

HISTOGRAM_BINS = 2048
ADAROUND_ROWS = 2048          # output positions per layer the rounding is fitted on
ADAROUND_IMAGES = 16          # calibration images whose layer inputs are kept for the fit
ADAROUND_LEARNING_RATE = 0.05  # Adam, on the soft rounding variables
ADAROUND_REGULARIZATION = 0.1   # weight of the term that drives each rounding to 0 or 1
_WEIGHT_LEVELS = 127          # symmetric per-channel int8 weights: [-127, 127]
_LAYER_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
_IO_TYPES = {"int8": tf.int8, "uint8": tf.uint8}


@dataclass
class Layer:
    """A convolution, depthwise convolution or dense op of the calibrated model (tensor indices)."""

    kind: str
    options: object
    input: int
    weights: int
    bias: int          # -1: no bias tensor
    output: int
    name: str          # the output tensor's name: how the quantized model's op is found again


@dataclass
class FidelityResult:
    """What `fidelity_int8` did: the techniques, per-layer notes and the time each part took."""

    techniques: tuple[str, ...]
    ranges_changed: int = 0
    adarounded: int = 0          # layers whose fitted rounding replaced nearest rounding
    bias_corrected: int = 0
    weights_checked: int = 0     # weight integers read back from the .tflite equal to the chosen ones
    chosen: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # weight integers by layer name
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"techniques": list(self.techniques), "ranges_changed": self.ranges_changed,
                "adarounded_layers": self.adarounded, "bias_corrected_layers": self.bias_corrected,
                "weights_checked": self.weights_checked,
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()}}


class CalibratedModel:
    """The converter's calibrated float model, opened for editing: its layers, recorded ranges, weights, biases."""

    def __init__(self, flatbuffer: bytes) -> None:
        self.model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
        self.graph = self.model.subgraphs[0]
        self.layers = [layer for op in self.graph.operators if (layer := self._layer(op)) is not None]
        consumers: dict[int, list[str]] = {}
        for op in self.graph.operators:
            for index in op.inputs:
                consumers.setdefault(int(index), []).append(self.op_name(op))
        fixed = set(self.graph.inputs) | set(self.graph.outputs)
        fixed |= {i for i, ops in consumers.items() if "SOFTMAX" in ops}   # logits: their top must not be clipped
        self.range_tensors = [i for i, t in enumerate(self.graph.tensors) if i not in fixed
                              and t.quantization is not None and t.quantization.min is not None
                              and len(t.quantization.min) == 1]

    def op_name(self, op) -> str:
        return op_name(self.model.operatorCodes[op.opcodeIndex])

    def _layer(self, op) -> Layer | None:
        kind = self.op_name(op)
        if kind not in _LAYER_OPS or len(op.inputs) < 2 or self.constant(op.inputs[1]) is None:
            return None
        bias = int(op.inputs[2]) if len(op.inputs) > 2 else -1
        if bias >= 0 and self.constant(bias) is None:
            bias = -1
        return Layer(kind, op.builtinOptions, int(op.inputs[0]), int(op.inputs[1]), bias, int(op.outputs[0]),
                     self.graph.tensors[op.outputs[0]].name.decode())

    def constant(self, tensor: int) -> np.ndarray | None:
        """A float32 constant tensor's values (a copy), else None."""
        t = self.graph.tensors[tensor]
        data = self.model.buffers[t.buffer].data
        if t.type != schema.TensorType.FLOAT32 or data is None or len(data) == 0:
            return None
        return np.frombuffer(bytes(data), np.float32).reshape(t.shape).copy()

    def set_constant(self, tensor: int, values: np.ndarray) -> None:
        t = self.graph.tensors[tensor]
        self.model.buffers[t.buffer].data = np.frombuffer(np.asarray(values, np.float32).tobytes(), np.uint8)

    def recorded_range(self, tensor: int) -> tuple[float, float]:
        q = self.graph.tensors[tensor].quantization
        return float(q.min[0]), float(q.max[0])

    def set_range(self, tensor: int, low: float, high: float) -> None:
        q = self.graph.tensors[tensor].quantization
        q.min, q.max = np.array([min(low, 0.0)], np.float32), np.array([max(high, 0.0)], np.float32)

    def to_bytes(self) -> bytes:
        return bytes(flatbuffer_utils.convert_object_to_bytearray(self.model))


def calibrated_model(converter: tf.lite.TFLiteConverter, what: str = "int8") -> bytes:
    """The converter's calibration output (float model with recorded ranges), errors as `ConversionError`."""
    from tflite_pipeline.tflite.convert import run_converter

    converter._experimental_calibrate_only = True
    return run_converter(converter, f"{what} calibration")


def quantize_calibrated(flatbuffer: bytes, io_dtype: str = "int8") -> bytes:
    """The converter's own quantizer on a calibrated model, as `convert_int8` runs it (same tensors, same integers)."""
    try:
        with env.hidden_native_output():
            return mlir_quantize(flatbuffer, False, input_data_type=_IO_TYPES[io_dtype],
                                 output_data_type=_IO_TYPES[io_dtype])
    except Exception as error:
        raise ConversionError(f"Quantizing the calibrated model failed: {str(error).strip().splitlines()[0]}") from None


# --- statistics of one float pass -------------------------------------------------------------------------------

class Statistics:
    """One pass of the calibrated float model over the images: a histogram per range tensor, and each layer's
    mean input and a few whole inputs (for the rounding fit)."""

    def __init__(self, calibrated: CalibratedModel, flatbuffer: bytes, images: Iterable[np.ndarray], *,
                 histograms: bool, keep_inputs: int, log: Log | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        with env.hidden_native_output(once="litert-delegate"):  # "INFO: Created TensorFlow Lite XNNPACK delegate"
            interpreter = Interpreter(model_content=flatbuffer, experimental_preserve_all_tensors=True, num_threads=2)
            interpreter.allocate_tensors()
        entry = interpreter.get_input_details()[0]["index"]
        self.edges = {i: np.linspace(*calibrated.recorded_range(i), HISTOGRAM_BINS + 1)
                      for i in (calibrated.range_tensors if histograms else ())}
        self.counts = {i: np.zeros(HISTOGRAM_BINS, np.int64) for i in self.edges}
        inputs = {layer.input for layer in calibrated.layers}
        self.input_sums: dict[int, np.ndarray] = {}
        self.kept: dict[int, list[np.ndarray]] = {i: [] for i in inputs}
        images = list(images)
        meter = progress.bar("convert", len(images), "images", what="activation statistics", log=log,
                             inherit_step=True)
        for image in images:
            interpreter.set_tensor(entry, image[np.newaxis].astype(np.float32))
            interpreter.invoke()
            for i, edges in self.edges.items():
                values = interpreter.get_tensor(i).ravel()
                self.counts[i] += np.histogram(np.clip(values, edges[0], edges[-1]), edges)[0]
            for i in inputs:
                value = interpreter.get_tensor(i)
                self.input_sums[i] = self.input_sums.get(i, 0) + value.astype(np.float64)
                if len(self.kept[i]) < keep_inputs:
                    self.kept[i].append(value.copy())
            meter.advance()
        meter.finish()
        self.images = len(images)

    def mean_input(self, tensor: int) -> np.ndarray:
        return (self.input_sums[tensor] / self.images).astype(np.float32)


# --- activation ranges ------------------------------------------------------------------------------------------

def percentile_range(counts: np.ndarray, edges: np.ndarray, percentile: float) -> tuple[float, float]:
    """The range holding `percentile` % of the histogram's values, the tails split evenly."""
    cumulative = np.cumsum(counts) / max(1, counts.sum())
    tail = (100.0 - percentile) / 200.0
    low = edges[np.searchsorted(cumulative, tail)]
    high = edges[min(len(edges) - 1, np.searchsorted(cumulative, 1.0 - tail) + 1)]
    return float(low), float(high)


def mse_range(counts: np.ndarray, edges: np.ndarray, levels: int = 255) -> tuple[float, float]:
    """The range, the recorded one shrunk toward 0 by a common factor, with the least expected squared error of
    8-bit quantization over the histogram: step^2 / 12 inside, the distance to the range outside."""
    centers = (edges[:-1] + edges[1:]) / 2
    low, high = min(edges[0], 0.0), max(edges[-1], 0.0)
    best, best_error = (low, high), np.inf
    for factor in np.linspace(0.05, 1.0, 96):
        a, b = low * factor, high * factor
        step = (b - a) / levels
        clipped = np.clip(centers, a, b)
        error = float(np.sum(counts * ((centers - clipped) ** 2 + (centers == clipped) * step ** 2 / 12)))
        if error < best_error:
            best, best_error = (float(a), float(b)), error
    return best


def choose_ranges(calibrated: CalibratedModel, stats: Statistics, config: PTQConfig) -> int:
    """Write the chosen range of every range tensor into the calibrated model; the number that changed."""
    changed = 0
    for i in calibrated.range_tensors:
        counts, edges = stats.counts[i], stats.edges[i]
        if counts.sum() == 0 or edges[-1] <= edges[0]:
            continue
        if config.ranges == "percentile":
            low, high = percentile_range(counts, edges, config.percentile)
        else:
            low, high = mse_range(counts, edges)
        if (low, high) != calibrated.recorded_range(i):
            calibrated.set_range(i, low, high)
            changed += 1
    return changed


# --- weights: the quantizer's grid, AdaRound, bias correction ---------------------------------------------------

def channel_scales(weights: np.ndarray, kind: str) -> np.ndarray:
    """The quantizer's per-channel scales, max|w| / 127 over each output channel, shaped to broadcast."""
    axis = weights.ndim - 1 if kind == "DEPTHWISE_CONV_2D" else 0
    reduce = tuple(a for a in range(weights.ndim) if a != axis)
    scale = np.max(np.abs(weights), axis=reduce, keepdims=True) / np.float32(_WEIGHT_LEVELS)
    return np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)


def nearest_integers(weights: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return np.clip(np.round(weights / scales), -_WEIGHT_LEVELS, _WEIGHT_LEVELS).astype(np.int32)


def _window(layer: Layer) -> tuple[str, list[int], list[int]]:
    """A convolution's TensorFlow padding, NHWC strides and (height, width) dilations from its TFLite options."""
    o = layer.options
    padding = "SAME" if o.padding == schema.Padding.SAME else "VALID"
    return padding, [1, o.strideH, o.strideW, 1], [o.dilationHFactor, o.dilationWFactor]


def _patches(layer: Layer, inputs: np.ndarray, kernel_shape: tuple[int, ...]) -> np.ndarray:
    """The layer's input as rows, one per output value: [rows, k] (conv, dense) or [rows, k, channels]."""
    if layer.kind == "FULLY_CONNECTED":
        return inputs.reshape(-1, kernel_shape[-1])
    _, kh, kw, _ = kernel_shape
    padding, strides, rates = _window(layer)
    patches = tf.image.extract_patches(inputs, sizes=[1, kh, kw, 1], strides=strides, rates=[1, *rates, 1],
                                       padding=padding).numpy()
    patches = patches.reshape(-1, patches.shape[-1])
    if layer.kind == "DEPTHWISE_CONV_2D":
        return patches.reshape(len(patches), kh * kw, inputs.shape[-1])
    return patches


def _as_matrix(layer: Layer, values: np.ndarray) -> np.ndarray:
    """Kernel as [channels, k]: OHWI and [O, I] flatten per output; depthwise [1, h, w, C] transposes."""
    if layer.kind == "DEPTHWISE_CONV_2D":
        return values.reshape(-1, values.shape[-1]).T
    return values.reshape(values.shape[0], -1)


def _from_matrix(layer: Layer, matrix: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return (matrix.T if layer.kind == "DEPTHWISE_CONV_2D" else matrix).reshape(shape)


def adaround(layer: Layer, weights: np.ndarray, scales: np.ndarray, inputs: list[np.ndarray], *,
             iterations: int, seed: int = 0) -> np.ndarray | None:
    """Integers for `weights` fitted to the layer's outputs on `inputs` (AdaRound), or None when nearest rounding
    reconstructs those outputs at least as well (or the layer has a depth multiplier)."""
    if layer.kind == "DEPTHWISE_CONV_2D" and getattr(layer.options, "depthMultiplier", 1) not in (0, 1):
        return None
    rng = np.random.default_rng(seed)
    per_image = -(-ADAROUND_ROWS // len(inputs))
    rows = np.concatenate([p[rng.permutation(len(p))[:per_image]]   # one image's patches at a time: bounded memory
                           for p in (_patches(layer, x, weights.shape) for x in inputs)])
    w = _as_matrix(layer, weights)                                 # [C, k]
    s = _as_matrix(layer, np.broadcast_to(scales, weights.shape))  # [C, k]
    floor = np.floor(w / s)
    nearest = np.clip(np.round(w / s), -_WEIGHT_LEVELS, _WEIGHT_LEVELS)
    pinned = np.abs(nearest) == _WEIGHT_LEVELS                     # the channel's largest |w| keeps the scale
    rest = np.clip(w / s - floor, 0.01, 0.99)
    zeta, gamma = 1.1, -0.1
    v = tf.Variable(-np.log((zeta - gamma) / (rest - gamma) - 1).astype(np.float32))
    x = tf.constant(rows, tf.float32)
    depthwise = layer.kind == "DEPTHWISE_CONV_2D"

    def output_error(candidate: tf.Tensor) -> tf.Tensor:
        delta = candidate - w
        out = tf.einsum("rkc,ck->rc", x, delta) if depthwise else tf.matmul(x, delta, transpose_b=True)
        return tf.reduce_mean(tf.square(out))

    def chosen(h: tf.Tensor) -> tf.Tensor:
        return s * tf.where(pinned, nearest, tf.clip_by_value(floor + h, -_WEIGHT_LEVELS, _WEIGHT_LEVELS))

    nearest_error = float(output_error(tf.constant(s * nearest, tf.float32)))
    if nearest_error == 0.0:
        return None
    optimizer = tf.keras.optimizers.Adam(learning_rate=ADAROUND_LEARNING_RATE)
    warmup = iterations // 5

    @tf.function  # traced once per layer (~0.4 s); eager steps were 6x slower on the demo model
    def step(beta: tf.Tensor, weight: tf.Tensor) -> None:
        with tf.GradientTape() as tape:
            h = tf.clip_by_value(tf.sigmoid(v) * (zeta - gamma) + gamma, 0.0, 1.0)
            regularizer = tf.reduce_mean(1.0 - tf.pow(tf.abs(2.0 * h - 1.0), beta))
            loss = output_error(chosen(h)) / nearest_error + weight * regularizer
        optimizer.apply_gradients([(tape.gradient(loss, v), v)])

    for i in range(iterations):
        annealed = max(0.0, (i - warmup) / max(1, iterations - warmup))
        step(tf.constant(20.0 - 18.0 * annealed), tf.constant(0.0 if i < warmup else ADAROUND_REGULARIZATION))
    h = (tf.sigmoid(v) * (zeta - gamma) + gamma).numpy() >= 0.5
    fitted = np.where(pinned, nearest, np.clip(floor + h, -_WEIGHT_LEVELS, _WEIGHT_LEVELS))
    if float(output_error(tf.constant(s * fitted, tf.float32))) >= nearest_error:
        return None
    return _from_matrix(layer, fitted, weights.shape).astype(np.int32)


def output_shift(layer: Layer, delta: np.ndarray, mean_input: np.ndarray) -> np.ndarray:
    """Per output channel, the mean over positions of `layer(mean_input, delta)`: the bias the rounding adds."""
    x = tf.constant(mean_input, tf.float32)
    if layer.kind == "FULLY_CONNECTED":
        out = tf.matmul(tf.reshape(x, [-1, delta.shape[-1]]), delta, transpose_b=True)
    else:
        padding, strides, rates = _window(layer)
        if layer.kind == "CONV_2D":
            out = tf.nn.conv2d(x, np.transpose(delta, (1, 2, 3, 0)), strides, padding, dilations=rates)
        else:
            kernel = np.transpose(delta, (1, 2, 3, 0)).reshape(delta.shape[1], delta.shape[2], -1, 1)
            out = tf.nn.depthwise_conv2d(x, kernel, strides, padding, dilations=rates)
    return tf.reduce_mean(tf.reshape(out, [-1, out.shape[-1]]), axis=0).numpy()


def place_weights(calibrated: CalibratedModel, stats: Statistics | None, config: PTQConfig, result: FidelityResult,
                  log: Log | None = None) -> dict[str, np.ndarray]:
    """Choose every layer's weight integers (AdaRound or nearest), write them on the quantizer's grid, correct
    the biases; the chosen integers by layer name, for the read-back check."""
    chosen = {}
    meter = progress.bar("convert", len(calibrated.layers), "layers", what="weights", log=log, inherit_step=True)
    for layer in calibrated.layers:
        weights = calibrated.constant(layer.weights)
        scales = channel_scales(weights, layer.kind)
        integers = nearest_integers(weights, scales)
        if config.adaround and stats is not None and stats.kept.get(layer.input):
            fitted = adaround(layer, weights, scales, stats.kept[layer.input], iterations=config.adaround_iterations)
            if fitted is not None:
                integers = fitted
                result.adarounded += 1
        on_grid = (integers * scales).astype(np.float32)
        if config.bias_correction and stats is not None and layer.bias >= 0:
            bias = calibrated.constant(layer.bias)
            shift = output_shift(layer, on_grid - weights, stats.mean_input(layer.input))
            calibrated.set_constant(layer.bias, bias - shift.astype(np.float32))
            result.bias_corrected += 1
        calibrated.set_constant(layer.weights, on_grid)
        chosen[layer.name] = integers
        meter.advance()
    meter.finish()
    return chosen


def quantized_weights(flatbuffer: bytes) -> dict[str, np.ndarray]:
    """Each conv/depthwise/dense op's int8 weights in a quantized `.tflite`, by the op's output tensor name. A layer
    whose output is the graph's, requantized for uint8 I/O, is found under the name too: the converter gives it to
    the QUANTIZE op it appends (a logits model's last Dense)."""
    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    graph = model.subgraphs[0]
    found, by_tensor = {}, {}
    for op in graph.operators:
        if op_name(model.operatorCodes[op.opcodeIndex]) in _LAYER_OPS and len(op.inputs) > 1:
            t = graph.tensors[op.inputs[1]]
            data = model.buffers[t.buffer].data
            if t.type == schema.TensorType.INT8 and data is not None:
                weights = np.frombuffer(bytes(data), np.int8).reshape(t.shape)
                found[graph.tensors[op.outputs[0]].name.decode()] = by_tensor[int(op.outputs[0])] = weights
    for op in graph.operators:
        if op_name(model.operatorCodes[op.opcodeIndex]) == "QUANTIZE" and int(op.inputs[0]) in by_tensor:
            found.setdefault(graph.tensors[op.outputs[0]].name.decode(), by_tensor[int(op.inputs[0])])
    return found


def check_weights(flatbuffer: bytes, chosen: dict[str, np.ndarray]) -> int:
    """Raise `ConversionError` unless every chosen weight integer is the one in `flatbuffer`; the count checked."""
    written = quantized_weights(flatbuffer)
    checked = 0
    for name, integers in chosen.items():
        if name not in written:
            raise ConversionError(f"The quantized model has no int8 weights for layer {name!r}: the quantizer did "
                                  "not keep the chosen integers. Convert without [ptq] techniques.")
        differ = int(np.sum(written[name].astype(np.int32) != integers))
        if differ:
            raise ConversionError(f"The quantizer changed {differ} of the {integers.size} chosen weight integers of "
                                  f"layer {name!r}; the .tflite would not be the model the techniques fitted.")
        checked += integers.size
    return checked


# --- the whole conversion ---------------------------------------------------------------------------------------

def fidelity_int8(converter: tf.lite.TFLiteConverter, images: Callable[[], Iterable[np.ndarray]], config: PTQConfig,
                  *, io_dtype: str = "int8", log: Log | None = None) -> tuple[bytes, FidelityResult]:
    """Calibrate with `converter` (set up by `int8_converter`), apply `config`'s techniques to the calibrated model,
    quantize it with the converter's quantizer, and check the weight integers. `images` gives the statistics'
    images (float, preprocessed, one at a time)."""
    result = FidelityResult(config.techniques())
    started = time.monotonic()
    flatbuffer = calibrated_model(converter)
    result.seconds["calibrate"] = time.monotonic() - started
    calibrated = CalibratedModel(flatbuffer)
    stats = None
    if config.active:
        started = time.monotonic()
        stats = Statistics(calibrated, flatbuffer, images(), histograms=config.ranges != "minmax",
                           keep_inputs=ADAROUND_IMAGES if config.adaround else 0, log=log)
        result.seconds["statistics"] = time.monotonic() - started
    if config.ranges != "minmax":
        result.ranges_changed = choose_ranges(calibrated, stats, config)
    started = time.monotonic()
    chosen = place_weights(calibrated, stats, config, result, log)
    result.seconds["weights"] = time.monotonic() - started
    started = time.monotonic()
    quantized = quantize_calibrated(calibrated.to_bytes(), io_dtype)
    result.chosen = chosen
    result.weights_checked = check_weights(quantized, chosen)
    result.seconds["quantize"] = time.monotonic() - started
    return quantized, result
