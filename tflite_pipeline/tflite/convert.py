"""TFLite conversion: float32, strict full-integer int8 with a representative dataset, and on request
float16 (half-size weights, float compute), dynamic-range (int8 weights, float activations) and int16x8 (int16
activations, int8 weights, int16 I/O: integer-only, for accuracy over speed).

The int8 variant allows only `TFLITE_BUILTINS_INT8` kernels, quantizes weights per channel, and
uses int8 (or uint8) input and output tensors. Any op left in float is an error naming the op,
never a silently mixed model (the accuracy-budgeted fallback in `diagnose.py` is a separate variant).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tflite_pipeline import env, progress
from tflite_pipeline.config.sections import ALL_VARIANTS, CALIBRATED_VARIANTS, MIN_CALIBRATION_SAMPLES, PTQConfig
from tflite_pipeline.data.folders import ImageFolder
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.errors import ConversionError, DataError, ModelError
from tflite_pipeline.model.properties import check_finite_weights, first_non_finite_layer, image_input_shape
from tflite_pipeline.model.rebuild import is_keras3
from tflite_pipeline.progress import Log
from tflite_pipeline.tflite.flatbuffer import inspect_tflite

RepresentativeDataset = Callable[[], Iterable[list[np.ndarray]]]
_IO_TYPES = {"int8": tf.int8, "uint8": tf.uint8}


def representative_dataset(folder: ImageFolder, spec: PreprocessSpec, num_samples: int = 300, *, seed: int = 0
                           ) -> RepresentativeDataset:
    """A converter-ready generator factory over up to `num_samples` images of `folder`, one per step,
    with the exact preprocessing of `spec`. Raises `DataError` when the folder has too few images."""
    subset = folder.subset(num_samples, seed=seed)
    if len(subset) < MIN_CALIBRATION_SAMPLES:
        raise DataError(f"Calibration folder {str(folder.root)!r} has {len(subset)} images; full-integer "
                        f"calibration needs at least {MIN_CALIBRATION_SAMPLES} (200+ recommended).")

    def generate() -> Iterator[list[np.ndarray]]:
        samples = []
        for path in subset.files:
            x = spec.load(path)
            if not np.all(np.isfinite(x)):
                raise DataError(f"Calibration image {path!r} gives non-finite input after preprocessing.")
            samples.append(x)
        if spec.normalization == "raw":
            anchor_pixel_range(samples)
        for x in samples:
            yield [x[np.newaxis]]

    generate.num_samples = len(subset)  # type: ignore[attr-defined]
    return generate


def anchor_pixel_range(samples: list[np.ndarray]) -> None:
    """Make raw-pixel calibration span exactly [0, 255], so the int8 input gets scale 1 and zero point -128
    (uint8: scale 1, zero point 0): the input byte is the pixel, no rounding anywhere.

    The converter takes the input's range from the calibration data's min and max (0 is always in it). When no
    image reaches 255, one pixel of the first image is set to 255 (a white speck: the other activation ranges
    barely notice)."""
    if samples and max(float(x.max()) for x in samples) < 255.0:
        samples[0] = samples[0].copy()
        samples[0][(0,) * (samples[0].ndim - 1)] = 255.0


def _converter(model: keras.Model) -> tf.lite.TFLiteConverter:
    """A converter over the inference-mode call with a dynamic batch dimension (Android uses batch 1).

    The converter saves its `trackable_obj` as a SavedModel first. Given the Keras model, that save traces
    every layer's call again (~75% of a conversion); a plain module holding only the variables gives the
    same flatbuffer, byte for byte, 4-5x faster."""
    height, width, channels = image_input_shape(model)
    spec = tf.TensorSpec([None, height, width, channels], tf.float32, name="input")
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    holder = tf.Module()
    # Keras 3 variables wrap TensorFlow's: the converter must see the tf.Variables the function reads (else int8
    # calibration fails on READ_VARIABLE); tf_keras' are those already, in the model's order
    holder.model_variables = list(function.variables) if is_keras3(model) else list(model.variables)
    return tf.lite.TFLiteConverter.from_concrete_functions([function], holder)


def run_converter(converter: tf.lite.TFLiteConverter, what: str) -> bytes:
    """`converter.convert()`, its C++ chatter (`fully_quantize: 0, inference_type: 6, ...`) hidden unless verbose
    (`env.hidden_native_output`: written out after a crash or an error other than ours)."""
    try:
        with env.hidden_native_output():
            return converter.convert()
    except DataError:
        raise
    except Exception as error:  # the converter raises ConverterError, RuntimeError, ValueError
        text = str(error)
        ops = sorted(set(re.findall(r"'tfl?\.(\w+)'", text)) | set(re.findall(r"op: (\w+)", text)))
        named = f" (ops involved: {', '.join(ops)})" if ops else ""
        errors = [line.split("error:", 1)[1].strip() for line in text.splitlines() if "error:" in line]
        detail = errors[0] if errors else " ".join(text.strip().splitlines()[:2])
        raise ConversionError(f"{what} conversion failed{named}: {detail}") from None


def convert_float32(model: keras.Model) -> bytes:
    """The float32 `.tflite` of `model`: the reference that must agree with Keras on every image."""
    return run_converter(_converter(model), "float32")


def counted_calibration(representative: RepresentativeDataset, log: Log | None = None) -> RepresentativeDataset:
    """`representative` with a progress bar counting the samples as the converter pulls them
    (`[convert] calibration 120/300 images  eta 0:03`, then `[convert] calibrated on 300 images in 4.1 s`)."""
    total = getattr(representative, "num_samples", None)

    def generate() -> Iterator[list[np.ndarray]]:
        meter = progress.bar("convert", total, "images", what="calibration", log=log, inherit_step=True)
        try:
            for inputs in representative():
                yield inputs
                meter.advance()
        except BaseException:  # an error, a stop, or the converter closing the generator early
            meter.close()
            raise
        meter.finish(f"[{meter.step}] calibrated on {meter.done} images in {progress.duration(meter.elapsed)}")

    generate.num_samples = total  # type: ignore[attr-defined]
    return generate


def int8_converter(model: keras.Model, representative: RepresentativeDataset, *,
                   io_dtype: str = "int8", log: Log | None = None) -> tf.lite.TFLiteConverter:
    """The converter set up for strict full-integer output (shared by `convert_int8` and the diagnosis).
    Calibration shows progress (`counted_calibration`, to `log` when given)."""
    if io_dtype not in _IO_TYPES:
        raise ConversionError(f"Received io_dtype={io_dtype!r}; expected one of {sorted(_IO_TYPES)}.")
    converter = _converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = counted_calibration(representative, log)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = _IO_TYPES[io_dtype]
    converter.inference_output_type = _IO_TYPES[io_dtype]
    return converter


def check_finite_activations(model: keras.Model, representative: RepresentativeDataset, batch_size: int = 32) -> None:
    """Run the model on the calibration images; raise `ModelError` naming the first layer whose activations
    hold NaN or Inf (the converter would calibrate on them without complaint)."""
    samples = [inputs[0] for inputs in representative()]
    for start in range(0, len(samples), batch_size):
        images = np.concatenate(samples[start:start + batch_size])
        if not np.all(np.isfinite(model(images, training=False))):
            layer = first_non_finite_layer(model, images)
            raise ModelError(f"Model {model.name!r} produces NaN or Inf activations on the calibration images"
                             + (f", first in layer {layer!r}" if layer else "") + "; int8 calibration needs finite "
                             "ranges. Check that layer's weights and the preprocessing (normalization) the model "
                             "expects.")


def convert_int8(model: keras.Model, representative: RepresentativeDataset, *, io_dtype: str = "int8",
                 ptq: PTQConfig | None = None, log: Log | None = None) -> bytes:
    """Strict full-integer `.tflite`: int8 kernels only, per-channel weights, `io_dtype` input/output.

    With an active `ptq` (activation ranges, AdaRound, bias correction), the converter's calibrated model is
    edited before its quantizer runs (`fidelity.fidelity_int8`); the weight integers are read back and checked.
    Raises `ConversionError` naming the ops that cannot run in int8, `ModelError` when the calibration
    images give NaN/Inf activations.
    """
    check_finite_activations(model, representative)
    converter = int8_converter(model, representative, io_dtype=io_dtype, log=log)
    if ptq is not None and ptq.active:
        from tflite_pipeline.tflite.fidelity import fidelity_int8

        def images() -> Iterator[np.ndarray]:
            for count, inputs in enumerate(representative()):
                if count >= ptq.samples:
                    return
                yield inputs[0][0]

        flatbuffer, _ = fidelity_int8(converter, images, ptq, io_dtype=io_dtype, log=log)
    else:
        flatbuffer = run_converter(converter, "full-integer int8")
    check_integer_only(flatbuffer, "Full-integer")
    return flatbuffer


def pixel_input_model(model: keras.Model, spec: PreprocessSpec) -> keras.Model:
    """`model` behind one `Rescaling` layer doing `spec`'s normalization: a model that takes pixels (0-255 floats).
    Returns `model` itself when it takes raw pixels already."""
    if spec.normalization == "raw":
        return model
    mean, std = (np.broadcast_to(np.asarray(v, np.float64), (spec.channels,)) for v in spec.pixel_mean_std())
    scale, offset = 1.0 / std, -mean / std
    uniform = len(set(scale)) == 1 and len(set(offset)) == 1
    inputs = keras.Input(spec.input_shape, name="pixels")
    normalized = keras.layers.Rescaling(float(scale[0]) if uniform else scale.tolist(),
                                        float(offset[0]) if uniform else offset.tolist(),
                                        name="normalize_pixels")(inputs)
    return keras.Model(inputs, model(normalized, training=False), name=model.name)


def convert_pixels(model: keras.Model, representative: RepresentativeDataset, *, ptq: PTQConfig | None = None,
                   log: Log | None = None) -> bytes:
    """Full-integer int8 with uint8 I/O of a model that takes pixels (`pixel_input_model`), calibrated on raw
    pixels (`representative_dataset` of `spec.folded()`): the input byte is the pixel, scale 1, zero point 0.
    Raises `ConversionError` when the input quantization comes out otherwise (calibration that was not on raw
    pixels)."""
    data = convert_int8(model, representative, io_dtype="uint8", ptq=ptq, log=log)
    tensor = inspect_tflite(data).inputs[0]
    if (tensor.scale, tensor.zero_point) != (1.0, 0):
        raise ConversionError(f"The pixels variant's input has scale {tensor.scale} and zero point "
                              f"{tensor.zero_point}; expected 1 and 0 (uint8 pixels as they are). Calibrate it on raw "
                              "pixels spanning 0-255 (representative_dataset with spec.folded()).")
    return data


def check_integer_only(flatbuffer: bytes, what: str) -> None:
    """Raise `ConversionError` naming the ops a `what` conversion left in float."""
    leftovers = inspect_tflite(flatbuffer).float_ops
    if leftovers:
        computing = [op for op in leftovers if not op.startswith(("QUANTIZE ", "DEQUANTIZE "))] or list(leftovers)
        raise ConversionError(f"{what} conversion would leave ops in float: {', '.join(computing)}. These ops "
                              "have no integer kernel in TFLite; replace the layers that produce them with "
                              "integer-capable ones (or remove them from the exported model).")


def convert_int16x8(model: keras.Model, representative: RepresentativeDataset, *, log: Log | None = None) -> bytes:
    """16-bit activations, 8-bit per-channel weights, int16 input and output: integer-only, closer to float than
    int8, larger activations in memory, and run by LiteRT's built-in kernels (XNNPACK has none for int16)."""
    check_finite_activations(model, representative)
    converter = int8_converter(model, representative, log=log)  # then 16-bit activations and I/O instead
    converter.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int16
    flatbuffer = run_converter(converter, "int16x8")
    check_integer_only(flatbuffer, "int16x8")
    check_prepares(flatbuffer, "int16x8")
    return flatbuffer


def check_prepares(flatbuffer: bytes, what: str) -> None:
    """Raise `ConversionError` when LiteRT's built-in kernels refuse to prepare the model (the int16 kernels check
    that every requantization multiplier fits: a layer whose output range is tiny next to its input's fails)."""
    from ai_edge_litert.interpreter import Interpreter

    from tflite_pipeline.tflite.interpreter import OP_RESOLVERS

    try:
        with env.hidden_native_output():
            Interpreter(model_content=flatbuffer, experimental_op_resolver_type=OP_RESOLVERS["builtin"]
                        ).allocate_tensors()
    except (RuntimeError, ValueError) as error:
        detail = " ".join(str(error).split())
        raise ConversionError(f"The {what} model converted, but LiteRT cannot prepare it: {detail}. Its int16 "
                              "requantization does not fit for some layer (often a layer whose activations are "
                              "nearly constant on the calibration images); use the int8 variant, or calibrate on "
                              "more varied images.") from None


def convert_float16(model: keras.Model) -> bytes:
    """Float16 weights (half the size), dequantized to float32 at load: float compute, float I/O."""
    converter = _converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    return run_converter(converter, "float16")


def convert_dynamic_range(model: keras.Model, *, per_channel_dense: bool = False) -> bytes:
    """Dynamic-range quantization: int8 weights, activations quantized on the fly, float I/O; no calibration.

    Dense weights get one scale per tensor unless `per_channel_dense`: the per-channel hybrid
    FULLY_CONNECTED is op version 12, which runtimes before TFLite 2.17 cannot load (measured with
    `tflite-pipeline check-runtime`: TF 2.21's default output fails in TFLite 2.14)."""
    converter = _converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if not per_channel_dense:
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    return run_converter(converter, "dynamic-range")


def convert_variant(model: keras.Model, variant: str, *, representative: RepresentativeDataset | None = None,
                    io_dtype: str = "int8", ptq: PTQConfig | None = None, log: Log | None = None,
                    label: str | None = None, summary: bool = True) -> bytes:
    """Dispatch on the variant name: `float32`, `int8`, `pixels`, `float16`, `dynamic` or `int16x8`; `ptq` applies
    to int8 and pixels (whose model and calibration take pixels: `pixel_input_model`). NaN/Inf weights are a
    `ModelError`.

    Logs one line when done, `[convert] int8: 612.3 KiB in 18.2 s` (`label` names the variant there; to `log`,
    default stderr; not with `summary=False`); int8 calibration shows progress."""
    started = time.monotonic()
    data = _convert_variant(model, variant, representative=representative, io_dtype=io_dtype, ptq=ptq, log=log)
    if summary:
        log_conversion(label or variant, data, time.monotonic() - started, log)
    return data


def log_conversion(label: str, data: bytes, seconds: float, log: Log | None = None) -> None:
    """`[convert] int8: 612.3 KiB in 18.2 s` (the step the last `[step]` line named, else `convert`)."""
    (log or progress.log)(f"[{progress.step_for('convert', log)}] {label}: {progress.size(len(data))} in "
                          f"{progress.duration(seconds)}")


def _convert_variant(model: keras.Model, variant: str, *, representative: RepresentativeDataset | None,
                     io_dtype: str, ptq: PTQConfig | None, log: Log | None) -> bytes:
    check_finite_weights(model)
    if variant == "float32":
        return convert_float32(model)
    if variant == "float16":
        return convert_float16(model)
    if variant == "dynamic":
        return convert_dynamic_range(model)
    if variant in CALIBRATED_VARIANTS:
        if representative is None:
            raise ConversionError(f"The {variant} variant needs a representative dataset (calibration images).")
        if variant == "int16x8":
            return convert_int16x8(model, representative, log=log)
        if variant == "pixels":
            return convert_pixels(model, representative, ptq=ptq, log=log)
        return convert_int8(model, representative, io_dtype=io_dtype, ptq=ptq, log=log)
    raise ConversionError(f"Received variant={variant!r}; expected one of {list(ALL_VARIANTS)}.")


class IsolatedConverter:
    """`convert_variant` in a spawned child process, replaced after `per_child` conversions.

    TensorFlow's converter keeps memory after every call (about 10 MiB per int8 conversion of the bundled model,
    see benchmarks/conversion_memory.py); a child process returns it to the OS when it exits, so a loop of
    conversions keeps this process's peak memory flat. The model travels as a file (`.keras`, or `.h5` for a QAT
    model) and the calibration images as one array, so the flatbuffer is the same, byte for byte. Costs one
    TensorFlow import (a few seconds) per child.

        with IsolatedConverter() as converter:
            data = converter.convert(model, "int8", representative=representative)
    """

    def __init__(self, per_child: int = 8) -> None:
        self.per_child = per_child
        self._pool = None

    def __enter__(self) -> IsolatedConverter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc_info: object) -> None:
        self.close(stop=kind is not None)

    def close(self, *, stop: bool = False) -> None:
        """Shut the child down: after its conversion, or at once with `stop` (Ctrl-C, SIGTERM, an error)."""
        if self._pool is not None:
            if stop:
                for process in list((self._pool._processes or {}).values()):  # no public handle
                    process.terminate()
            self._pool.shutdown(wait=True, cancel_futures=stop)
            self._pool = None

    def convert(self, model: keras.Model, variant: str, *, representative: RepresentativeDataset | None = None,
                io_dtype: str = "int8", ptq: PTQConfig | None = None, log: Log | None = None,
                label: str | None = None) -> bytes:
        """`convert_variant` in the child (its calibration progress on the child's stderr when `log` is the
        default), and the same one-line summary here."""
        from tflite_pipeline.model.files import save_model_file

        started = time.monotonic()
        check_finite_weights(model)
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=self.per_child)
        with tempfile.TemporaryDirectory(prefix="tflite-pipeline-convert-") as folder:
            model_path = save_model_file(model, folder)
            samples_path = None
            if representative is not None and variant in CALIBRATED_VARIANTS:
                samples_path = str(Path(folder) / "samples.npy")
                np.save(samples_path, np.concatenate([inputs[0] for inputs in representative()]))
            show_progress = log is None or log is progress.log
            future = self._pool.submit(_convert_files, str(model_path), variant, samples_path, io_dtype, ptq,
                                       show_progress)
            try:
                data = future.result()
            except concurrent.futures.process.BrokenProcessPool:
                self._pool = None
                raise ConversionError(f"{variant} conversion failed: the converter process died (out of memory, or "
                                      "killed); nothing was written.") from None
        log_conversion(label or variant, data, time.monotonic() - started, log)
        return data


def _convert_files(model_path: str, variant: str, samples_path: str | None, io_dtype: str,
                   ptq: PTQConfig | None = None, show_progress: bool = True) -> bytes:
    """In the child: load what `IsolatedConverter.convert` saved and convert it (the parent logs the summary)."""
    from tflite_pipeline.model.files import load_model_file

    model = load_model_file(model_path)
    representative = None
    if samples_path is not None:
        samples = np.load(samples_path)

        def representative() -> Iterator[list[np.ndarray]]:
            for sample in samples:
                yield [sample[np.newaxis]]

        representative.num_samples = len(samples)  # type: ignore[attr-defined]

    return convert_variant(model, variant, representative=representative, io_dtype=io_dtype, ptq=ptq, summary=False,
                           log=None if show_progress else _silent)


def _silent(line: str) -> None:
    """A `log` that drops its lines (a child converting for a caller with its own `log`)."""
