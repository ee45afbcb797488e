"""Where did the accuracy go, and can a few float layers buy it back?

`QuantizationDebug` calibrates a model once with TFLite's quantization debugger, then
- `diagnose()` measures every quantized layer's error against its float counterpart on a few
  calibration images (RMSE in units of the layer's quantization step, mean and max error), and
- `quantize(float_layers)` re-quantizes the calibrated model with those layers kept in float
  (no second calibration, well under a second per call).

`accuracy_budgeted_fallback` uses both: keep the worst layer in float, re-verify, repeat until the
top-1 drop fits the budget or the cap on float layers is reached. The strict full-integer model is
never modified; the fallback is a separate `*_fallback.tflite` with int8 I/O and float islands
(QUANTIZE/DEQUANTIZE around them), which pure-int8 accelerators cannot run.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tflite_pipeline import env
from tflite_pipeline.data.folders import ImageFolder
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.errors import ConversionError
from tflite_pipeline.tflite.convert import RepresentativeDataset, int8_converter

Log = Callable[[str], None]
IDEAL_RMSE_OVER_SCALE = 1 / math.sqrt(12)  # rounding alone: uniform error over one quantization step


@dataclass(frozen=True)
class LayerError:
    """One quantized layer's output vs the float layer fed the same (dequantized) input."""

    index: int                 # position among the model's quantized layers, input to output
    op: str                    # TFLite op, e.g. CONV_2D
    tensor: str                # output tensor name: what `quantize(float_layers=...)` takes
    rmse_over_scale: float     # ~0.29 is pure rounding; well above it means clipping or outliers
    mean_error: float          # bias of the quantized output, float units
    max_abs_error: float
    scale: float               # quantization step of the output tensor

    @property
    def short_name(self) -> str:
        return layer_name(self.tensor)


def layer_name(tensor: str) -> str:
    """The Keras layer a converter tensor name comes from, e.g. `block_6_project_BN` (for tables and plots)."""
    first = tensor.split(";", maxsplit=1)[0]
    parts = first.split("/")
    return parts[1] if len(parts) > 2 else first


@dataclass(frozen=True)
class Diagnosis:
    """Per-layer quantization error of one int8 model, in model order.

    `output_error` is the mean squared error of the int8 model's outputs against the Keras model's on
    the diagnosis images.
    """

    variant: str
    samples: int
    layers: tuple[LayerError, ...]
    output_error: float = math.nan

    def worst(self, n: int = 5) -> tuple[LayerError, ...]:
        """The n layers with the largest RMSE/scale."""
        return tuple(sorted(self.layers, key=lambda e: -e.rmse_over_scale)[:n])

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "samples": self.samples, "worst": [e.short_name for e in self.worst()],
                "layers": [asdict(e) for e in self.layers]}

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(LayerError.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(e) for e in self.layers)
        return out.getvalue()

    def format_table(self, n: int = 8) -> str:
        lines = [f"Worst {min(n, len(self.layers))} of {len(self.layers)} quantized layers of `{self.variant}` "
                 f"({self.samples} calibration images; output MSE vs Keras {self.output_error:.3g}). Each layer is "
                 f"compared with its float version fed the same input; RMSE/scale {IDEAL_RMSE_OVER_SCALE:.2f} "
                 "is pure rounding, more means clipping or outliers.", "",
                 "| # | layer | op | RMSE / scale | mean error | max abs error | scale |",
                 "|---:|---|---|---:|---:|---:|---:|"]
        for e in self.worst(n):
            lines.append(f"| {e.index} | `{e.short_name}` | {e.op} | {e.rmse_over_scale:.3f} | {e.mean_error:+.4f} | "
                         f"{e.max_abs_error:.4f} | {e.scale:.4g} |")
        return "\n".join(lines)


class QuantizationDebug:
    """TFLite's quantization debugger over one Keras model, calibrated once.

    `representative` calibrates (as for the strict int8 model); `debug_samples` feeds the per-layer
    comparison. Raises `ConversionError` when the model cannot be calibrated.
    """

    def __init__(self, model: keras.Model, representative: RepresentativeDataset, *,
                 debug_samples: RepresentativeDataset, io_dtype: str = "int8", variant: str = "int8") -> None:
        self.io_dtype = io_dtype
        self.variant = variant
        self._samples = debug_samples
        self._images = np.concatenate([batch[0] for batch in debug_samples()])
        self._reference = np.asarray(model(self._images, training=False))
        try:
            with env.hidden_native_output():  # the converter's C++ lines
                self._debugger = tf.lite.experimental.QuantizationDebugger(
                    converter=int8_converter(model, representative, io_dtype=io_dtype), debug_dataset=debug_samples)
        except Exception as error:
            raise ConversionError(f"The quantization debugger could not calibrate the model: "
                                  f"{str(error).strip().splitlines()[0]}") from None
        self._producers = _producers(self._debugger.calibrated_model)

    def producers(self, tensor: str) -> tuple[str, ...]:
        """Output tensors of the ops that feed the op writing `tensor` (its inputs, weights excluded)."""
        return self._producers.get(tensor, ())

    def diagnose(self) -> Diagnosis:
        """Per-layer error of the fully quantized model, and its output error against the Keras model."""
        self._debugger.options = tf.lite.experimental.QuantizationDebugOptions()
        with env.hidden_native_output(once="litert-delegate"):
            self._debugger.run()
        dump = io.StringIO()
        self._debugger.layer_statistics_dump(dump)
        layers = []
        for i, row in enumerate(csv.DictReader(io.StringIO(dump.getvalue()))):
            scale = float(row["scale"])
            layers.append(LayerError(index=i, op=row["op_name"], tensor=row["tensor_name"], scale=scale,
                                     rmse_over_scale=math.sqrt(float(row["mean_squared_error"])) / scale,
                                     mean_error=float(row["mean_error"]), max_abs_error=float(row["max_abs_error"])))
        return Diagnosis(variant=self.variant, samples=len(self._images), layers=tuple(layers),
                         output_error=self.output_error(self.quantize()))

    def output_error(self, model: bytes) -> float:
        """Mean squared error of `model`'s outputs against the Keras model's on the diagnosis images."""
        from tflite_pipeline.tflite.interpreter import LiteRTClassifier

        return float(np.mean((LiteRTClassifier(model).predict(self._images) - self._reference) ** 2))

    def quantize(self, float_layers: Sequence[str] = ()) -> bytes:
        """The calibrated model fully quantized (`io_dtype` I/O) except `float_layers` (output tensor names)."""
        self._debugger.options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=list(float_layers) or None, fully_quantize=True)
        model = self._debugger.get_nondebug_quantized_model()
        if self.io_dtype == "uint8":
            from tensorflow.lite.python.util import modify_model_io_type

            model = modify_model_io_type(model, tf.uint8, tf.uint8)
        return model


def _producers(flatbuffer: bytes) -> dict[str, tuple[str, ...]]:
    from tflite_pipeline.tflite.flatbuffer import read_flatbuffer

    _, model = read_flatbuffer(flatbuffer)
    graph = model.subgraphs[0]
    names = [t.name.decode() for t in graph.tensors]
    written_by = {out: op for op in graph.operators for out in op.outputs}
    return {names[out]: tuple(names[i] for i in op.inputs if i in written_by)
            for op in graph.operators for out in op.outputs}


@dataclass(frozen=True)
class FallbackStep:
    """The model with `float_layers` kept in float, verified."""

    float_layers: tuple[str, ...]
    top1: float
    drop: float                # percentage points below the reference (the Keras source)


@dataclass(frozen=True)
class FallbackResult:
    """The accuracy-budgeted fallback: every step tried, whether the budget was met, and the model if so."""

    variant: str
    max_top1_drop: float
    reference_top1: float
    quantized_layers: int
    max_float_layers: int
    steps: tuple[FallbackStep, ...]      # steps[0] is the strict int8 model
    met: bool
    reason: str
    model: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def float_layers(self) -> tuple[str, ...]:
        return self.steps[-1].float_layers

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["model"]
        return out

    def format_table(self) -> str:
        status = "met" if self.met else "NOT met"
        lines = [f"Budget: top-1 drop <= {self.max_top1_drop:g} pts vs the Keras source "
                 f"({self.reference_top1:.2%}), at most {self.max_float_layers} of {self.quantized_layers} layers "
                 f"in float: **{status}**. {self.reason}", "",
                 "| float layers | added at this step | top-1 | drop (pts) |", "|---:|---|---:|---:|"]
        previous: tuple[str, ...] = ()
        for step in self.steps:
            added = ", ".join(f"`{layer_name(t)}`" for t in step.float_layers[len(previous):]) or "(strict int8)"
            lines.append(f"| {len(step.float_layers)} | {added} | {step.top1:.2%} | {step.drop:+.2f} |")
            previous = step.float_layers
        return "\n".join(lines)


def accuracy_budgeted_fallback(debug: QuantizationDebug, diagnosis: Diagnosis, evaluate: Callable[[bytes], float], *,
                               reference_top1: float, max_top1_drop: float, max_float_fraction: float = 0.1,
                               log: Log = print) -> FallbackResult:
    """Keep layers in float one at a time until `evaluate(model) -> top-1` is within `max_top1_drop` points
    of `reference_top1`, or `max_float_fraction` of the layers are float.

    Greedy on the model output error over the diagnosis images, re-measured at every step (not on
    `diagnosis.worst()`: a large local error can be harmless downstream): each step adds
    the layer, or the layer together with the layers feeding it, that removes the most error per added
    layer. (Keeping one layer float rarely helps when its input is still quantized coarsely: the pair is
    what fixes an activation outlier.) Returns the result either way; `result.model` is the first model
    that met the budget (None when the strict int8 model already did, or none did).
    """
    cap = math.floor(max_float_fraction * len(diagnosis.layers) + 1e-9)
    layers = {e.tensor for e in diagnosis.layers}
    float_layers: tuple[str, ...] = ()
    error = diagnosis.output_error
    steps: list[FallbackStep] = []
    while True:
        model = debug.quantize(float_layers)
        top1 = evaluate(model)
        steps.append(FallbackStep(float_layers, top1, (reference_top1 - top1) * 100.0))
        log(f"  fallback: {len(float_layers)} float layer(s) {' '.join(layer_name(t) for t in float_layers)} -> top-1 "
            f"{top1:.2%} (drop {steps[-1].drop:+.2f} pts)")
        if steps[-1].drop <= max_top1_drop + 1e-9:
            reason = ("the strict int8 model already fits the budget" if not float_layers else
                      f"{len(float_layers)} layer(s) kept in float")
            return FallbackResult(diagnosis.variant, max_top1_drop, reference_top1, len(diagnosis.layers), cap,
                                  tuple(steps), met=True, reason=reason, model=model if float_layers else None)
        units = {unit for t in layers - set(float_layers)
                 for unit in ((t,), tuple(p for p in (*debug.producers(t), t) if p in layers and p not in float_layers))
                 if len(float_layers) + len(unit) <= cap}
        if not units:
            break
        gains = {unit: (error - debug.output_error(debug.quantize(float_layers + unit))) / len(unit) for unit in units}
        best_unit = max(gains, key=gains.get)
        error -= gains[best_unit] * len(best_unit)
        float_layers += best_unit
    best = min(steps, key=lambda s: s.drop)
    reason = (f"with up to {cap} layers in float (the cap: {max_float_fraction:.0%} of {len(diagnosis.layers)}), "
              f"the best drop was {best.drop:+.2f} pts ({len(best.float_layers)} float layers). Try quantization-aware "
              "training (recipe `qat`), more or more representative calibration images, or a larger "
              "`diagnose.max_float_fraction`.")
    return FallbackResult(diagnosis.variant, max_top1_drop, reference_top1, len(diagnosis.layers), cap, tuple(steps),
                          met=False, reason=reason)


def top1_evaluator(folder: ImageFolder, spec: PreprocessSpec, *, batch_size: int = 64, num_threads: int = 2,
                   kernels: str = "xnnpack") -> Callable[[bytes], float]:
    """`evaluate(model bytes) -> top-1` over `folder` in LiteRT (streamed from disk), for the fallback loop."""
    from tflite_pipeline.tflite.interpreter import LiteRTClassifier

    def evaluate(model: bytes) -> float:
        classifier = LiteRTClassifier(model, num_threads=num_threads, batch_size=batch_size, kernels=kernels)
        correct = sum(int(np.sum(np.argmax(classifier.predict(images), axis=1) == labels))
                      for images, labels in folder.batches(spec, batch_size))
        return correct / len(folder)

    return evaluate


@dataclass(frozen=True)
class MeasuredOption:
    """One way to get an integer model closer to float, measured on the validation split."""

    name: str                  # "[ptq] all techniques", "int16x8", "float fallback", "QAT (qat_int8)", ...
    variant: str               # the run's variant it was measured as ("" when it was measured but not written)
    agreement: float           # top-1 agreement with the Keras source
    top1: float
    drop: float                # percentage points below the Keras source
    size_bytes: int
    convert_seconds: float | None  # extra conversion time it took here (None: made by the run itself)
    cost: str                  # what it costs at run time or to make


@dataclass(frozen=True)
class OptionRanking:
    """The options measured for a post-training int8 model that missed the gate, best agreement first."""

    variant: str
    options: tuple[MeasuredOption, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "options": [asdict(o) for o in self.options]}

    def format_table(self) -> str:
        lines = ["| rank | option | agreement | top-1 | drop (pts) | size | extra conversion | cost |",
                 "|---:|---|---:|---:|---:|---:|---:|---|"]
        for rank, o in enumerate(self.options, 1):
            seconds = "-" if o.convert_seconds is None else f"{o.convert_seconds:.0f} s"
            lines.append(f"| {rank} | {o.name} | {o.agreement:.2%} | {o.top1:.2%} | {o.drop:+.2f} | "
                         f"{o.size_bytes / 1024:.0f} KiB | {seconds} | {o.cost} |")
        return "\n".join(lines)
