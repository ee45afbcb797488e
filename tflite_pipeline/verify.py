"""LiteRT evaluation and the parity gate.

Every `.tflite` runs in the LiteRT interpreter (`ai_edge_litert.interpreter`) on the same float
batches the Keras model sees, so preprocessing cannot differ. Integer inputs are quantized and
outputs dequantized with each tensor's own scale and zero point.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from .data import ImageFolder, PreprocessSpec
from .errors import ModelError, ParityError, TFLiteFileError
from .inspect import read_flatbuffer
from .recipe import VerifyConfig

_INTEGER_RANGES = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255), np.dtype(np.int16): (-32768, 32767)}


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    """Float input -> integer tensor values: `clip(floor(x / scale + 0.5) + zero_point)`.

    Ties round up, as tfmot's fake quantization does (so a QAT model and its `.tflite` see the same input
    integers) and as Kotlin/Java's `Math.round` does in the Android app."""
    low, high = _INTEGER_RANGES[np.dtype(dtype)]
    return np.clip(np.floor(x / np.float32(scale) + np.float32(0.5)) + zero_point, low, high).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer tensor values -> float: `(q - zero_point) * scale`."""
    return (q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)


_OP_RESOLVERS = {"xnnpack": OpResolverType.AUTO, "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                 "reference": OpResolverType.BUILTIN_REF}


class LiteRTClassifier:
    """A `.tflite` classifier in the LiteRT interpreter that takes and returns float arrays.

    Batches through a dynamic batch dimension when the model has one, else one image per invoke.
    """

    def __init__(self, model: str | Path | bytes, *, num_threads: int = 2, batch_size: int = 64,
                 kernels: str = "xnnpack") -> None:
        content, _ = read_flatbuffer(model)
        try:
            self._interpreter = Interpreter(model_content=content, num_threads=num_threads,
                                            experimental_op_resolver_type=_OP_RESOLVERS[kernels])
        except (ValueError, RuntimeError) as error:
            raise TFLiteFileError(f"LiteRT cannot load the model: {error}") from None
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        signature = self._input.get("shape_signature", self._input["shape"])
        self.max_batch = batch_size if len(signature) and signature[0] == -1 else int(self._input["shape"][0])
        self._allocated_batch = 0
        self.input_shape = tuple(int(d) for d in self._input["shape"][1:])
        self.num_classes = int(self._output["shape"][-1])

    def _ensure_batch(self, n: int) -> None:
        if n != self._allocated_batch:
            if n != int(self._input["shape"][0]) or self._allocated_batch:
                self._interpreter.resize_tensor_input(self._input["index"], [n, *self.input_shape])
            self._interpreter.allocate_tensors()
            self._allocated_batch = n

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Float scores `[N, num_classes]` for preprocessed float images `[N, H, W, C]`."""
        if tuple(images.shape[1:]) != self.input_shape:
            raise ModelError(f"Received images of shape {tuple(images.shape[1:])}; this .tflite expects "
                             f"{self.input_shape}.")
        in_dtype = np.dtype(self._input["dtype"])
        in_scale, in_zero = self._input["quantization"]
        out_scale, out_zero = self._output["quantization"]
        scores = []
        for start in range(0, len(images), self.max_batch):
            chunk = images[start:start + self.max_batch]
            self._ensure_batch(len(chunk))
            tensor = quantize(chunk, in_scale, in_zero, in_dtype) if in_dtype in _INTEGER_RANGES else \
                chunk.astype(in_dtype)
            self._interpreter.set_tensor(self._input["index"], tensor)
            self._interpreter.invoke()
            out = self._interpreter.get_tensor(self._output["index"])
            scores.append(dequantize(out, out_scale, out_zero) if out.dtype in _INTEGER_RANGES else
                          out.astype(np.float32))
        return np.concatenate(scores)


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best classes, best first; ties go to the lower class index (like argmax)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@dataclass(frozen=True)
class ParityRow:
    """One `.tflite` measured against the float Keras model on the same images."""

    variant: str
    top1: float                 # fraction
    top5: float
    top1_drop: float            # percentage points lost vs the float Keras baseline (negative = gained)
    agreement: float            # fraction of images with the same top-1 as the float Keras baseline
    source_agreement: float     # ... as the Keras model this .tflite was converted from (gated)
    source: str = "float Keras"
    failures: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class ParityReport:
    """Keras vs LiteRT on one image folder; `check()` raises `ParityError` carrying this report."""

    num_images: int
    keras_top1: float
    keras_top5: float
    rows: tuple[ParityRow, ...]
    max_top1_drop: float
    min_agreement: float
    data: str = ""
    class_names: tuple[str, ...] = field(default=(), repr=False)
    kernels: str = "xnnpack"

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    def row(self, variant: str) -> ParityRow:
        return next(row for row in self.rows if row.variant == variant)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        out["class_names"] = list(self.class_names)
        return out

    def format_table(self) -> str:
        """A Markdown table: the Keras reference first, then one row per `.tflite`."""
        lines = ["| model | top-1 | Δ top-1 vs float Keras (pts) | agreement with float Keras | agreement with "
                 "its Keras source | top-5 | images | gate |",
                 "|---|---:|---:|---:|---:|---:|---:|---|",
                 f"| float Keras | {self.keras_top1:.2%} | | | | {self.keras_top5:.2%} | {self.num_images} "
                 "| reference |"]
        for row in self.rows:
            gate = "pass" if row.passed else "FAIL: " + "; ".join(row.failures)
            delta = round(-row.top1_drop, 2) + 0.0  # no "-0.00"
            lines.append(f"| {row.variant} .tflite | {row.top1:.2%} | {delta:+.2f} | {row.agreement:.2%} | "
                         f"{row.source_agreement:.2%} ({row.source}) | {row.top5:.2%} | {self.num_images} | {gate} |")
        lines.append(f"\nGate: top-1 drop vs float Keras <= {self.max_top1_drop:g} pts and agreement with the Keras "
                     f"source >= {self.min_agreement:.0%}; LiteRT {self.kernels} kernels.")
        return "\n".join(lines)

    def check(self) -> "ParityReport":
        """Return self when every row passed, else raise `ParityError` with the report attached."""
        if not self.passed:
            failed = [f"{row.variant}: {'; '.join(row.failures)}" for row in self.rows if not row.passed]
            raise ParityError("Parity gate failed for " + " | ".join(failed) + "\n" + self.format_table(), self)
        return self


def measure_parity(keras_model, tflite_models: Mapping[str, str | Path | bytes], folder: ImageFolder,
                   spec: PreprocessSpec, config: VerifyConfig = VerifyConfig(), *,
                   sources: Mapping[str, tuple[str, Any]] | None = None,
                   log: Callable[[str], None] = print) -> ParityReport:
    """Run the float Keras model, each `.tflite` and each `.tflite`'s Keras source over `folder` in one pass.

    `sources` maps a `.tflite` name to `(label, keras model)` it was converted from (default: the
    float model itself, as for post-training quantization). The gate: top-1 drop vs the float model
    <= `max_top1_drop` and agreement with the source >= `min_agreement`. Returns the report whether or
    not it passes; call `.check()` to gate. Raises `ModelError` for a class-count mismatch.
    """
    from .models import check_labels

    check_labels(keras_model, folder.class_names, f"the data folder {str(folder.root)!r}")
    sources = dict(sources or {})
    runners = {name: LiteRTClassifier(model, num_threads=config.num_threads, batch_size=config.batch_size,
                                      kernels=config.kernels)
               for name, model in tflite_models.items()}
    for name, runner in runners.items():
        if runner.num_classes != len(folder.class_names):
            raise ModelError(f"The {name} .tflite outputs {runner.num_classes} classes but the data has "
                             f"{len(folder.class_names)}.")
    kerases = {id(keras_model): keras_model, **{id(m): m for _, m in sources.values()}}
    labels: list[np.ndarray] = []
    keras_top: dict[int, list[np.ndarray]] = {key: [] for key in kerases}
    tflite_top: dict[str, list[np.ndarray]] = {name: [] for name in runners}
    done = 0
    for images, batch_labels in folder.batches(spec, config.batch_size):
        labels.append(batch_labels)
        for key, model in kerases.items():
            keras_top[key].append(_topk(np.asarray(model(images, training=False)), 5))
        for name, runner in runners.items():
            tflite_top[name].append(_topk(runner.predict(images), 5))
        done += len(images)
        if done % (config.batch_size * 10) < config.batch_size or done == len(folder):
            log(f"  verified {done}/{len(folder)} images")
    y = np.concatenate(labels)
    tops = {key: np.concatenate(parts) for key, parts in keras_top.items()}
    reference = tops[id(keras_model)]
    keras_top1 = float(np.mean(reference[:, 0] == y))
    rows = []
    for name, parts in tflite_top.items():
        top = np.concatenate(parts)
        source_label, source_model = sources.get(name, ("float Keras", keras_model))
        top1 = float(np.mean(top[:, 0] == y))
        drop = (keras_top1 - top1) * 100.0
        agreement = float(np.mean(top[:, 0] == reference[:, 0]))
        source_agreement = float(np.mean(top[:, 0] == tops[id(source_model)][:, 0]))
        failures = []
        if drop > config.max_top1_drop + 1e-9:
            failures.append(f"top-1 drop {drop:.2f} pts > {config.max_top1_drop:g}")
        if source_agreement < config.min_agreement - 1e-12:
            failures.append(f"agreement {source_agreement:.2%} < {config.min_agreement:.2%}")
        rows.append(ParityRow(variant=name, top1=top1, top5=_in_topk(top, y), top1_drop=drop, agreement=agreement,
                              source_agreement=source_agreement, source=source_label, failures=tuple(failures)))
    return ParityReport(num_images=len(y), keras_top1=keras_top1, keras_top5=_in_topk(reference, y), rows=tuple(rows),
                        max_top1_drop=config.max_top1_drop, min_agreement=config.min_agreement,
                        data=str(folder.root), class_names=folder.class_names, kernels=config.kernels)


def keras_accuracy(model, folder: ImageFolder, spec: PreprocessSpec, batch_size: int = 64) -> float:
    """Top-1 of a Keras model (inference mode) on `folder`."""
    correct = 0
    for images, labels in folder.batches(spec, batch_size):
        correct += int(np.sum(np.argmax(np.asarray(model(images, training=False)), axis=1) == labels))
    return correct / len(folder)


def _in_topk(top: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.any(top == labels[:, None], axis=1)))
