"""LiteRT evaluation and the parity gate.

Every `.tflite` runs in the LiteRT interpreter (`ai_edge_litert.interpreter`) on the same float
batches the Keras model sees, so preprocessing cannot differ. Integer inputs are quantized and
outputs dequantized with each tensor's own scale and zero point.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tflite_pipeline import env, progress
from tflite_pipeline.config.sections import VerifyConfig
from tflite_pipeline.data.folders import ImageFolder
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.errors import DataError, ModelError, ParityError
from tflite_pipeline.tflite.interpreter import LiteRTClassifier, probabilities, top_k_indices


class _Tally:
    """Streaming counts for one model: top-5 per image, a confusion matrix, and output similarity to a
    reference model's outputs on the same batch (cosine of the raw outputs, KL(reference || this))."""

    def __init__(self, num_classes: int) -> None:
        self.top: list[np.ndarray] = []
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.cosine_sum = self.kl_sum = 0.0

    def add(self, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
        top = top_k_indices(scores, min(5, scores.shape[1]))
        self.top.append(top)
        np.add.at(self.confusion, (labels, top[:, 0]), 1)
        return top

    def compare(self, scores: np.ndarray, reference: np.ndarray, are_probabilities: bool) -> None:
        a, b = scores.astype(np.float64), reference.astype(np.float64)
        norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        self.cosine_sum += float(np.sum(np.sum(a * b, axis=1) / norms))
        p, q = probabilities(reference, are_probabilities), probabilities(scores, are_probabilities)
        self.kl_sum += float(np.sum(p * (np.log(p) - np.log(q))))

    def tops(self) -> np.ndarray:
        return np.concatenate(self.top)


def per_class_top1(confusion: np.ndarray) -> tuple[float, ...]:
    """Recall per class from a confusion matrix (rows: true class); NaN for a class with no images."""
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return tuple(float(x) for x in np.diag(confusion) / totals)


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
    source_cosine: float = 1.0  # mean cosine similarity of the outputs (logits or probabilities) to the source's
    source_kl: float = 0.0      # mean KL(source || .tflite) of the class probabilities, nats
    per_class_top1: tuple[float, ...] = ()
    confusion: tuple[tuple[int, ...], ...] = field(default=(), repr=False)  # rows: true class, cols: predicted

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
    keras_per_class_top1: tuple[float, ...] = ()
    keras_confusion: tuple[tuple[int, ...], ...] = field(default=(), repr=False)
    keras_failures: tuple[str, ...] = ()  # the float model itself misses its expected top-1, or labels look permuted

    @property
    def passed(self) -> bool:
        return not self.keras_failures and all(row.passed for row in self.rows)

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
                 "its Keras source | cosine / KL vs source | top-5 | images | gate |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---|",
                 f"| float Keras | {self.keras_top1:.2%} | | | | | {self.keras_top5:.2%} | {self.num_images} | "
                 + ("FAIL: " + "; ".join(self.keras_failures) if self.keras_failures else "reference") + " |"]
        for row in self.rows:
            gate = "pass" if row.passed else "FAIL: " + "; ".join(row.failures)
            delta = round(-row.top1_drop, 2) + 0.0  # no "-0.00"
            lines.append(f"| {row.variant} .tflite | {row.top1:.2%} | {delta:+.2f} | {row.agreement:.2%} | "
                         f"{row.source_agreement:.2%} ({row.source}) | {row.source_cosine:.4f} / {row.source_kl:.4f} | "
                         f"{row.top5:.2%} | {self.num_images} | {gate} |")
        lines.append(f"\nGate: top-1 drop vs float Keras <= {self.max_top1_drop:g} pts and agreement with the Keras "
                     f"source >= {self.min_agreement:.0%}; LiteRT {self.kernels} kernels.")
        return "\n".join(lines)

    def format_per_class(self) -> str:
        """A Markdown table of top-1 per class: float Keras and every `.tflite`."""
        names = self.class_names or tuple(str(i) for i in range(len(self.keras_per_class_top1)))
        lines = ["| class | images | float Keras | " + " | ".join(row.variant for row in self.rows) + " |",
                 "|---|---:|---:|" + "---:|" * len(self.rows)]
        counts = [sum(r) for r in self.keras_confusion]
        for i, name in enumerate(names):
            cells = [self.keras_per_class_top1[i], *(row.per_class_top1[i] for row in self.rows)]
            lines.append(f"| {name} | {counts[i]} | " + " | ".join(f"{c:.1%}" for c in cells) + " |")
        return "\n".join(lines)

    def check(self) -> "ParityReport":  # noqa: UP037 - tests/api_snapshot.txt records it quoted
        """Return self when every row passed, else raise `ParityError` with the report attached."""
        if not self.passed:
            failed = [f"float Keras: {'; '.join(self.keras_failures)}"] if self.keras_failures else []
            failed += [f"{row.variant}: {'; '.join(row.failures)}" for row in self.rows if not row.passed]
            raise ParityError("Parity gate failed for " + " | ".join(failed) + "\n" + self.format_table(), self)
        return self


@dataclass(frozen=True)
class Expected:
    """A top-1 a model must reproduce on this data, within `tolerance` (a fraction), and where it comes from."""

    top1: float
    tolerance: float
    source: str

    def problem(self, top1: float, what: str) -> str:
        if abs(top1 - self.top1) <= self.tolerance + 1e-9:
            return ""
        return f"{what} top-1 {top1:.2%} is not the {self.top1:.2%} ± {self.tolerance * 100:.2g} pts of {self.source}"


def read_reference_metrics(path: str | Path) -> dict[str, Expected]:
    """A reference metrics file: `{"variants": {"keras": {"top1": 0.87, "tolerance": 0.002}, "int8": {...}}}`
    (what `tests/reference/make_reference.py` writes). Keys are `keras` and `.tflite` variants (`int8` matches
    `model_int8.tflite`). Raises `DataError` for a file that is not one."""
    where = str(path)
    try:
        variants = json.loads(Path(path).read_text(encoding="utf-8"))["variants"]
        return {str(name): Expected(float(entry["top1"]), float(entry.get("tolerance", 0.005)), f"reference {where}")
                for name, entry in variants.items()}
    except OSError as error:
        raise DataError(f"Cannot read reference metrics {where!r}: {error.strerror}.") from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise DataError(f"Reference metrics {where!r} are not usable ({type(error).__name__}: {error}); expected "
                        '{"variants": {"keras": {"top1": 0.87, "tolerance": 0.005}, "int8": {...}}}.') from None


def expected_for(variant: str, expected: Mapping[str, Expected]) -> Expected | None:
    """The expectation of `variant` (exact name, else the longest key it ends with after `_`)."""
    if variant in expected:
        return expected[variant]
    matches = [key for key in expected if key != "keras" and variant.endswith(f"_{key}")]
    return expected[max(matches, key=len)] if matches else None


def class_order_problem(confusion: np.ndarray, class_names: Sequence[str]) -> str:
    """Say so when the float model's predictions are a reordering of the labels: most images land in one
    off-diagonal cell of their row (labels.txt in another order than the model's outputs), else ""."""
    confusion = np.asarray(confusion)
    if confusion.size == 0 or confusion.sum() == 0:
        return ""
    dominant = np.argmax(confusion, axis=1)
    moved = [i for i, j in enumerate(dominant) if j != i and confusion[i, j] > 0.5 * confusion[i].sum()]
    distinct = len({int(dominant[i]) for i in moved}) == len(moved)  # a reordering, not a collapse onto one class
    if len(moved) < 2 or not distinct or sum(confusion[i, dominant[i]] for i in moved) < 0.5 * confusion.sum():
        return ""
    names = list(class_names) or [str(i) for i in range(len(confusion))]
    pairs = ", ".join(f"{names[i]!r} -> {names[dominant[i]]!r}" for i in moved[:4])
    return (f"the class order looks wrong: images of {len(moved)} classes are mostly predicted as another class "
            f"({pairs}{', ...' if len(moved) > 4 else ''}); labels.txt must list the classes in the model's "
            "output order")


def _input_range_problem(represented: tuple[float, float] | None, data: tuple[float, float]) -> list[str]:
    """Why an integer model may have failed: its input quantization does not fit the preprocessed images (the
    model was calibrated for another preprocessing, or its input scale / zero point were changed)."""
    if represented is None:
        return []
    low, high = represented
    span = max(data[1] - data[0], 1e-12)
    clipped = max(0.0, low - data[0]) + max(0.0, data[1] - high)
    if clipped <= 0.05 * span and high - low <= 4 * span:
        return []
    return [f"its integer input represents [{low:.4g}, {high:.4g}] but the preprocessed images span "
            f"[{data[0]:.4g}, {data[1]:.4g}]: the input scale / zero point do not fit this preprocessing"]


def _matrix(confusion: np.ndarray) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(v) for v in row) for row in confusion)


def measure_parity(keras_model, tflite_models: Mapping[str, str | Path | bytes], folder: ImageFolder,
                   spec: PreprocessSpec, config: VerifyConfig = VerifyConfig(), *,
                   sources: Mapping[str, tuple[str, Any]] | None = None,
                   expected: Mapping[str, Expected] | None = None,
                   input_specs: Mapping[str, PreprocessSpec] | None = None,
                   log: Callable[[str], None] = progress.log) -> ParityReport:
    """Run the float Keras model, each `.tflite` and each `.tflite`'s Keras source over `folder` in one pass.

    `sources` maps a `.tflite` name to `(label, keras model)` it was converted from (default: the
    float model itself, as for post-training quantization). The gate: top-1 drop vs the float model
    <= `max_top1_drop` and agreement with the source >= `min_agreement`. Per model it also counts a
    confusion matrix, and against the source: mean cosine similarity of the outputs and KL divergence
    of the probabilities. `expected` (`read_reference_metrics`, or the top-1 the run measured) adds: the float
    model and each `.tflite` must reproduce their expected top-1. And the float model's predictions must not be
    a reordering of the labels. `input_specs` names the `.tflite`s whose input takes another preprocessing of the
    same pixels than `spec` (the pixels variant: raw pixels). Returns the report whether or not it passes; call
    `.check()` to gate.
    Shows progress (images done / total, eta) and a summary line, to `log`.
    Raises `ModelError` for a class-count mismatch.
    """
    from tflite_pipeline.model.properties import check_labels, outputs_probabilities

    check_labels(keras_model, folder.class_names, f"the data folder {str(folder.root)!r}")
    num_classes = len(folder.class_names)
    sources = dict(sources or {})
    runners = {name: LiteRTClassifier(model, num_threads=config.num_threads, batch_size=config.batch_size,
                                      kernels=config.kernels)
               for name, model in tflite_models.items()}
    for name, runner in runners.items():
        if runner.num_classes != num_classes:
            raise ModelError(f"The {name} .tflite outputs {runner.num_classes} classes but the data has "
                             f"{num_classes}.")
    kerases = {id(keras_model): keras_model, **{id(m): m for _, m in sources.values()}}
    source_of = {name: id(sources.get(name, ("", keras_model))[1]) for name in runners}
    softmax = {key: outputs_probabilities(model) for key, model in kerases.items()}
    keras_tally = {key: _Tally(num_classes) for key in kerases}
    tflite_tally = {name: _Tally(num_classes) for name in runners}
    labels: list[np.ndarray] = []
    specs = {name: (input_specs or {}).get(name, spec) for name in runners}
    ranges = dict.fromkeys(runners, (np.inf, -np.inf))
    pixel_spec = replace(spec, normalization="raw")  # every model's input is normalized from the same pixels
    with progress.bar("verify", len(folder), "images", log=log, inherit_step=True) as meter:
        for pixels, batch_labels in folder.batches(pixel_spec, config.batch_size):
            labels.append(batch_labels)
            images = spec.normalize(pixels)
            inputs = {name: images if specs[name] == spec else specs[name].normalize(pixels) for name in runners}
            for name, x in inputs.items():
                ranges[name] = min(ranges[name][0], float(x.min())), max(ranges[name][1], float(x.max()))
            keras_scores = {key: np.asarray(model(images, training=False)) for key, model in kerases.items()}
            for key, scores in keras_scores.items():
                keras_tally[key].add(scores, batch_labels)
            # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." once, at the first allocation
            with env.hidden_native_output(once="litert-delegate") if not meter.done else contextlib.nullcontext():
                for name, runner in runners.items():
                    scores = runner.predict(inputs[name])
                    tflite_tally[name].add(scores, batch_labels)
                    key = source_of[name]
                    tflite_tally[name].compare(scores, keras_scores[key], softmax[key])
            meter.advance(len(images))
        models = len(runners) + len(kerases)
        meter.finish(f"[{meter.step}] {meter.done} images through {models} models in "
                     f"{progress.duration(meter.elapsed)} ({meter.done / max(meter.elapsed, 1e-9):,.0f} images/s)")
    y = np.concatenate(labels)
    reference_tally = keras_tally[id(keras_model)]
    reference = reference_tally.tops()
    keras_top1 = float(np.mean(reference[:, 0] == y))
    rows = []
    for name, tally in tflite_tally.items():
        top = tally.tops()
        source_label = sources.get(name, ("float Keras", keras_model))[0]
        top1 = float(np.mean(top[:, 0] == y))
        drop = (keras_top1 - top1) * 100.0
        agreement = float(np.mean(top[:, 0] == reference[:, 0]))
        source_agreement = float(np.mean(top[:, 0] == keras_tally[source_of[name]].tops()[:, 0]))
        failures = []
        if drop > config.max_top1_drop + 1e-9:
            failures.append(f"top-1 drop {drop:.2f} pts > {config.max_top1_drop:g}")
        if source_agreement < config.min_agreement - 1e-12:
            failures.append(f"agreement {source_agreement:.2%} < {config.min_agreement:.2%}")
        row_expected = expected_for(name, expected or {})
        missed_expected = row_expected.problem(top1, "its") if row_expected is not None else ""
        if missed_expected:
            failures.append(missed_expected)
        if failures:
            failures.extend(_input_range_problem(runners[name].input_range, ranges[name]))
        rows.append(ParityRow(variant=name, top1=top1, top5=_in_topk(top, y), top1_drop=drop, agreement=agreement,
                              source_agreement=source_agreement, source=source_label, failures=tuple(failures),
                              source_cosine=tally.cosine_sum / len(y), source_kl=tally.kl_sum / len(y),
                              per_class_top1=per_class_top1(tally.confusion), confusion=_matrix(tally.confusion)))
    keras_failures = []
    keras_expected = (expected or {}).get("keras")
    missed = keras_expected.problem(keras_top1, "its") if keras_expected is not None else ""
    if missed:
        keras_failures.append(f"{missed}: the images reach it with another preprocessing (here `{spec.formula()}`) "
                              "or other labels than when that was measured, or it is another model")
    order = class_order_problem(reference_tally.confusion, folder.class_names)
    if order:
        keras_failures.append(order)
    return ParityReport(num_images=len(y), keras_top1=keras_top1, keras_top5=_in_topk(reference, y), rows=tuple(rows),
                        max_top1_drop=config.max_top1_drop, min_agreement=config.min_agreement,
                        data=str(folder.root), class_names=folder.class_names, kernels=config.kernels,
                        keras_per_class_top1=per_class_top1(reference_tally.confusion),
                        keras_confusion=_matrix(reference_tally.confusion), keras_failures=tuple(keras_failures))


def keras_accuracy(model, folder: ImageFolder, spec: PreprocessSpec, batch_size: int = 64) -> float:
    """Top-1 of a Keras model (inference mode) on `folder`."""
    correct = 0
    for images, labels in folder.batches(spec, batch_size):
        correct += int(np.sum(np.argmax(np.asarray(model(images, training=False)), axis=1) == labels))
    return correct / len(folder)


def _in_topk(top: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.any(top == labels[:, None], axis=1)))
