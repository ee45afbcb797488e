"""Microcontroller export: a full-integer `.tflite` as C++ sources for TensorFlow Lite for Microcontrollers (TFLM),
with its flash and tensor-arena RAM measured in TFLM's own interpreter and its outputs proven against LiteRT.

    model ─► checks: full-integer, one image input and one score output, every op has a TFLM kernel (`tflm_ops`)
          ─► TFLM, in a child process (`micro_probe.py`): the arena its recording allocator measures; then the
             model run with the arena the export writes (measured + margin) on the validation images
          ─► parity: TFLM's outputs vs LiteRT's on the same input bytes (LiteRT's reference kernels by default, the
             arithmetic TFLM's kernels implement: measured on the demo model, identical outputs; XNNPACK rounds
             differently and disagrees on ~1.5% of images)
          ─► budget: model bytes (flash) and arena (RAM) against a board preset or explicit limits
          ─► OUT/<model>/  model_data.cc/.h, model_ops.h, model_settings.h, labels.h, sample_image.h,
                           <model>.ino + classify.cc/.h (the demo sketch), micro_report.json

Nothing is written unless every check passes and the model fits; each model's folder is staged and renamed in.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tflite_pipeline.data.folders import ImageFolder, read_labels
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.errors import BudgetError, CompatibilityError, DataError, DependencyError, RecipeError
from tflite_pipeline.export import micro_sources as sources
from tflite_pipeline.export.boards import MicroBudget, micro_budget
from tflite_pipeline.export.compatibility import NUMPY_DTYPES, outputs_are_probabilities
from tflite_pipeline.export.metadata import input_spec, read_metadata
from tflite_pipeline.export.tflm_ops import RESOLVER_METHODS
from tflite_pipeline.files import atomic_write_bytes, atomic_write_json, atomic_write_text, temporary_dir
from tflite_pipeline.tflite.flatbuffer import TFLiteInfo, inspect_tflite
from tflite_pipeline.tflite.interpreter import LiteRTClassifier, dequantize, quantize

MICRO_FORMAT = "tflite_pipeline.micro_report/1"
DEFAULT_MARGIN = 0.10
_PROBE_SCRIPT = Path(__file__).with_name("micro_probe.py")
_SKETCH_DIR = Path(__file__).with_name("sketch")   # the demo sketch, copied into every export
_INTEGER_IO = ("int8", "uint8", "int16")


# ------------------------------------------------------------------------------------------- TFLM runs

@dataclass(frozen=True)
class TFLMRun:
    """One model in TFLM's interpreter with one arena size: did it allocate, what the recording allocator counted,
    the raw outputs, and TFLM's own log lines."""

    runtime: str
    arena_bytes: int
    allocated: bool
    error: str
    arena_used: int | None
    outputs: np.ndarray | None
    log: tuple[str, ...]

    def failing_ops(self) -> list[str]:
        """The ops TFLM names in its log: no kernel for an opcode, or a kernel that failed to prepare or run."""
        found = [f"{m.group(1)} (no TFLM kernel)" for m in re.finditer(r"Didn't find op for builtin opcode '(\w+)'",
                                                                       "\n".join(self.log))]
        found += [f"{m.group(1)} #{m.group(2)} (TFLM's kernel failed to {m.group(3)})" for m in
                  re.finditer(r"Node (\w+) \(number (\d+)\) failed to (prepare|invoke)", "\n".join(self.log))]
        return list(dict.fromkeys(found))

    def out_of_memory(self) -> bool:
        return any("Failed to resize buffer" in line or "Failed to allocate" in line for line in self.log)


def run_in_tflm(model: str | Path, arena_bytes: int | str, inputs: np.ndarray | None = None) -> TFLMRun:
    """Run `model` in TFLM's interpreter (`tflite-micro`, a child process) with a tensor arena of `arena_bytes`
    (`"minimum"`: the smallest that allocates, to 16 bytes), on raw input tensors `inputs` `[N, 1, H, W, C]`
    (none: allocate only). Raises `DependencyError` when the
    package is missing; a model TFLM refuses (or crashes on) comes back with `allocated=False` and TFLM's words."""
    with tempfile.TemporaryDirectory(prefix="tflite-micro-") as work:
        request = {"model": str(Path(model).resolve()), "arena_bytes": arena_bytes, "inputs": None,
                   "outputs": str(Path(work) / "outputs.npy")}
        if inputs is not None:
            request["inputs"] = str(Path(work) / "inputs.npy")
            np.save(request["inputs"], inputs)
        try:
            done = subprocess.run([sys.executable, str(_PROBE_SCRIPT)], input=json.dumps(request),
                                  capture_output=True, text=True, timeout=3600, check=False, cwd=work)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise DependencyError(f"Cannot run TFLM's interpreter: {error}.") from None
        log = tuple(line for line in done.stderr.splitlines() if line.strip())
        if "No module named 'tflite_micro'" in done.stderr:
            raise DependencyError("TFLM's interpreter is not installed: `pip install tflite-micro` (`make setup` "
                                  "does).")
        if done.returncode != 0 or not done.stdout.strip():  # TFLM crashed: some arenas too small end that way
            return TFLMRun("tflite-micro", arena_bytes if isinstance(arena_bytes, int) else 0, False,
                           f"TFLM's process ended with exit code {done.returncode}", None, None, log)
        answer = json.loads(done.stdout)
        used = re.search(r"Arena allocation total (\d+) bytes", done.stderr)
        outputs = np.load(request["outputs"]) if answer["ran"] else None
    size = answer["arena_bytes"]
    return TFLMRun(answer["runtime"], size if isinstance(size, int) else 0,
                   bool(answer["allocated"]) and not answer["error"], answer["error"],
                   int(used.group(1)) if used else None, outputs, log)


def measure_arena(model: str | Path) -> TFLMRun:
    """The smallest tensor arena in which TFLM allocates and runs `model` (one inference on a zero input; its
    `arena_bytes`), with the recording allocator's count of what stays in use (`arena_used`). Raises
    `CompatibilityError` naming the op when TFLM cannot allocate or run the model."""
    tensor = inspect_tflite(model).inputs[0]
    zero = np.zeros([1, 1, *[max(d, 1) for d in tensor.shape[1:]]], NUMPY_DTYPES[tensor.dtype])
    run = run_in_tflm(model, "minimum", zero)
    if not run.allocated or run.arena_used is None or run.outputs is None:
        raise CompatibilityError(_refusal(Path(model).name, run))
    return run


def _refusal(name: str, run: TFLMRun) -> str:
    ops = run.failing_ops()
    if ops:
        return f"TFLM cannot run {name}: {'; '.join(ops)}. Keep to ops and types TFLM's kernels take (docs/micro.md)."
    if run.out_of_memory():
        return f"TFLM cannot allocate {name}'s tensors in a {run.arena_bytes:,}-byte arena."
    detail = "; ".join(run.log[-3:]) or run.error
    return f"TFLM cannot run {name}: {detail}."


def arena_with_margin(measured: int, margin: float) -> int:
    """`measured * (1 + margin)`, rounded up to 16 bytes: the `kTensorArenaSize` the export writes."""
    return int(math.ceil(measured * (1.0 + margin) / sources.ALIGNMENT) * sources.ALIGNMENT)


# ------------------------------------------------------------------------------------------------- checks

def micro_problems(info: TFLiteInfo, num_labels: int | None = None) -> list[str]:
    """Everything that stops TFLM from running `info`'s model as an image classifier (empty when nothing does)."""
    problems = []
    if len(info.inputs) != 1 or len(info.outputs) != 1:
        problems.append(f"has {len(info.inputs)} inputs and {len(info.outputs)} outputs; the export takes image "
                        "classifiers with one image input and one class-score output")
    for role, tensor in [("input", t) for t in info.inputs] + [("output", t) for t in info.outputs]:
        if tensor.dtype not in _INTEGER_IO or not tensor.scale:
            problems.append(f"{role} is {tensor.dtype}{'' if tensor.scale else ' without a scale'}; a "
                            "microcontroller model takes and returns quantized integers (convert int8)")
    if info.inputs and len(info.inputs[0].shape) != 4:
        problems.append(f"input shape {list(info.inputs[0].shape)} is not NHWC [1, H, W, C]")
    if info.float_ops:
        problems.append(f"{len(info.float_ops)} op(s) compute in float ({', '.join(info.float_ops[:3])}"
                        f"{' ...' if len(info.float_ops) > 3 else ''}); export a full-integer model")
    missing = sorted({op.name for op in info.ops if op.name not in RESOLVER_METHODS})
    if missing:
        problems.append(f"uses {', '.join(missing)}, which TFLM has no kernel for")
    if num_labels is not None and info.outputs:
        classes = int(np.prod([d for d in info.outputs[0].shape if d > 0]))
        if classes != num_labels:
            problems.append(f"gives {classes} scores but labels.txt has {num_labels} names")
    return problems


# ------------------------------------------------------------------------------------------------- parity

@dataclass(frozen=True)
class MicroParity:
    """TFLM vs LiteRT on the same input bytes, and each one's top-1 against the labels."""

    images: int
    litert_kernels: str
    agreement: float             # same top-1 in TFLM and LiteRT
    max_output_diff: float       # largest |score difference|, dequantized
    max_output_steps: int        # the same in output quantization steps
    tflm_top1: float
    litert_top1: float


def micro_parity(model: str | Path, folder: ImageFolder, spec: PreprocessSpec, arena_bytes: int, *,
                 kernels: str = "reference", log: Callable[[str], None] = print) -> tuple[MicroParity, TFLMRun,
                                                                                       np.ndarray]:
    """Run the model in TFLM with `arena_bytes` and in LiteRT on every image of `folder`; returns the comparison,
    the TFLM run and TFLM's scores. Raises `CompatibilityError` when TFLM cannot run it in that arena."""
    info = inspect_tflite(model)
    tensor_in, tensor_out = info.inputs[0], info.outputs[0]
    images = np.stack([spec.load(path) for path in folder.files])
    raw = quantize(images, tensor_in.scale, tensor_in.zero_point, NUMPY_DTYPES[tensor_in.dtype])[:, None]
    log(f"[micro] {Path(model).name}: {len(folder)} images in TFLM (reference kernels, arena {arena_bytes:,} bytes)")
    run = run_in_tflm(model, arena_bytes, raw)
    if not run.allocated or run.outputs is None or len(run.outputs) != len(raw):
        raise CompatibilityError(_refusal(Path(model).name, run))
    tflm = dequantize(run.outputs.reshape(len(raw), -1), tensor_out.scale, tensor_out.zero_point)
    litert = LiteRTClassifier(model, kernels=kernels).predict(images)
    labels = np.asarray(folder.labels)
    diff = float(np.max(np.abs(tflm - litert))) if len(raw) else 0.0
    parity = MicroParity(images=len(raw), litert_kernels=kernels,
                         agreement=float(np.mean(tflm.argmax(1) == litert.argmax(1))), max_output_diff=diff,
                         max_output_steps=round(diff / tensor_out.scale),
                         tflm_top1=float(np.mean(tflm.argmax(1) == labels)),
                         litert_top1=float(np.mean(litert.argmax(1) == labels)))
    return parity, run, tflm


# ------------------------------------------------------------------------------------------------- export

@dataclass(frozen=True)
class MicroExport:
    """One model's microcontroller export: where it went, what it needs (flash, arena) and what was proven."""

    model: str                   # the .tflite's file name
    folder: str                  # where its files went
    files: tuple[str, ...]
    runtime: str
    flash_bytes: int
    arena_measured: int          # the smallest arena TFLM allocates and runs the model in (to 16 bytes)
    arena_in_use: int            # the recording allocator's total once allocated (planning scratch given back)
    arena_bytes: int             # exported: measured + margin
    margin: float
    ops: tuple[str, ...]
    parity: MicroParity
    budget: MicroBudget | None = None
    keras_top1: float | None = None      # the run's float Keras top-1 on its validation images (report.json)

    def headroom(self) -> dict[str, float | None]:
        """Budget left after the model, as fractions of the budget (None: no limit)."""
        if self.budget is None:
            return {"flash": None, "ram": None}
        return {"flash": None if self.budget.flash_bytes is None else 1 - self.flash_bytes / self.budget.flash_bytes,
                "ram": None if self.budget.ram_bytes is None else 1 - self.arena_bytes / self.budget.ram_bytes}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(format=MICRO_FORMAT, headroom=self.headroom())
        return out

    def table_row(self) -> str:
        """This model's row of `format_micro_table`."""
        p, room = self.parity, self.headroom()

        def limit(value: int | None, left: float | None) -> str:
            return "no limit" if value is None else f"{value / 1024:,.0f} KB ({left:.0%} left)"

        keras = f"{self.keras_top1:.2%}" if self.keras_top1 is not None else "n/a"
        return (f"| `{Path(self.model).name}` | {keras} | {p.litert_top1:.2%} | {p.tflm_top1:.2%} | "
                f"{p.agreement:.2%} | {p.max_output_diff:.4g} ({p.max_output_steps} steps) | {p.images} | "
                f"{self.flash_bytes:,} B | {self.arena_measured:,} B | {self.arena_bytes:,} B (+{self.margin:.0%}) | "
                f"{self.budget.name if self.budget else 'none'} | "
                f"{limit(self.budget.flash_bytes if self.budget else None, room['flash'])} | "
                f"{limit(self.budget.ram_bytes if self.budget else None, room['ram'])} |")

    def format(self) -> str:
        """The table, where the files went, and the ops the resolver registers."""
        return "\n".join([format_micro_table([self]), f"written to {self.folder} ({self.runtime})",
                          f"ops ({len(self.ops)}): {', '.join(self.ops)}"])


def format_micro_table(exports: Sequence[MicroExport]) -> str:
    """A Markdown table, one row per exported model: top-1 (float Keras, LiteRT, TFLM), TFLM vs LiteRT, flash,
    arena and the budget."""
    kernels = exports[0].parity.litert_kernels if exports else "reference"
    return "\n".join([
        "| model | top-1 float Keras | top-1 LiteRT | top-1 TFLM | agreement TFLM vs LiteRT "
        f"({kernels}) | max output diff | images | flash (model) | smallest arena (TFLM) | arena exported (margin) "
        "| budget | flash budget | RAM budget |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
        *(export.table_row() for export in exports)])


@dataclass(frozen=True)
class MicroSource:
    """The models to export and what proving them needs: labels, preprocessing, the images to run, and the float
    Keras top-1 on those images when known (for the report)."""

    models: tuple[Path, ...]
    labels: tuple[str, ...]
    spec: PreprocessSpec
    images: ImageFolder
    keras_top1: float | None = None


def export_micro(source: str | Path, output_dir: str | Path | None = None, *, models: Sequence[str] | None = None,
                 board: str | None = None, flash_kb: float | None = None, ram_kb: float | None = None,
                 images: str | Path | None = None, labels: str | Path | None = None,
                 preprocessing: str | Path | None = None, max_images: int | None = None,
                 margin: float = DEFAULT_MARGIN, kernels: str = "reference",
                 log: Callable[[str], None] = print) -> tuple[MicroExport, ...]:
    """Export a run folder's int8 models (or one `.tflite`) for TFLM into `output_dir/<model>/` (default:
    `<run folder or the file's folder>/micro`). A model beside no run folder needs `images` and `preprocessing`.

    Raises `CompatibilityError` (nothing written) for a model TFLM cannot run, `BudgetError` with the measured
    flash and arena when one does not fit the budget, `DataError` for missing labels, images or preprocessing."""
    budget = micro_budget(board, flash_kb, ram_kb)
    found = open_micro_source(Path(source), models, images, labels, preprocessing, max_images)
    out_root = Path(output_dir) if output_dir is not None else _default_output(Path(source))
    return export_models(found, out_root, budget=budget, margin=margin, kernels=kernels, log=log)


def export_models(found: MicroSource, out_root: Path, *, budget: MicroBudget | None, margin: float = DEFAULT_MARGIN,
                  kernels: str = "reference", log: Callable[[str], None] = print) -> tuple[MicroExport, ...]:
    """`export_micro` once the models, labels, preprocessing and images are known (a run calls it on its staged
    folder). Checks every model and measures and proves each before writing any."""
    if not 0 <= margin <= 1:
        raise RecipeError(f"Received margin={margin}; expected a fraction in [0, 1] (0.10 = 10%).")
    infos = {path: inspect_tflite(path) for path in found.models}
    problems = {path.name: micro_problems(info, len(found.labels)) for path, info in infos.items()}
    if any(problems.values()):
        raise CompatibilityError("Not exported; TFLM cannot run: " + "; ".join(
            f"{name} {', '.join(p)}" for name, p in problems.items() if p) + ".")
    planned = []
    for path, info in infos.items():
        measurement = measure_arena(path)
        measured, runtime = measurement.arena_bytes, measurement.runtime
        arena = arena_with_margin(measured, margin)
        log(f"[micro] {path.name}: {info.size_bytes:,} bytes of flash; the smallest arena TFLM runs it in is "
            f"{measured:,} bytes ({measurement.arena_used:,} in use after planning) -> {arena:,} with a {margin:.0%} "
            "margin")
        misses = budget.problems(info.size_bytes, arena) if budget is not None else []
        if misses:
            raise BudgetError(f"{path.name} does not fit {budget.name} ({budget.note}): {'; '.join(misses)}. "
                              f"Measured in {runtime}: flash {info.size_bytes:,} bytes, arena {measured:,} bytes "
                              f"(+{margin:.0%} = {arena:,}). Nothing was written.",
                              {"model": str(path), "flash_bytes": info.size_bytes, "arena_measured": measured,
                               "arena_bytes": arena, "budget": asdict(budget)})
        parity, run, scores = micro_parity(path, found.images, found.spec, arena, kernels=kernels, log=log)
        planned.append((path, info, measurement, arena, parity, run, scores))
    exports = []
    for path, info, measurement, arena, parity, run, scores in planned:
        folder = out_root / path.stem
        export = MicroExport(model=path.name, folder=str(folder), files=(), runtime=run.runtime,
                             flash_bytes=info.size_bytes,
                             arena_measured=measurement.arena_bytes, arena_in_use=measurement.arena_used,
                             arena_bytes=arena, margin=margin,
                             ops=_op_names(info), parity=parity, budget=budget,
                             keras_top1=found.keras_top1)
        files = _write_folder(folder, export, path, info, found, scores)
        exports.append(_with_files(export, files))
        log(f"[micro] wrote {out_root.name}/{folder.name} ({len(files)} files); TFLM vs LiteRT agreement "
            f"{parity.agreement:.2%} on {parity.images} images")
    return tuple(exports)


def _with_files(export: MicroExport, files: Sequence[str]) -> MicroExport:
    return replace(export, files=tuple(files))


def _op_names(info: TFLiteInfo) -> tuple[str, ...]:
    return tuple(dict.fromkeys(op.name for op in info.ops))


def _default_output(source: Path) -> Path:
    return (source if source.is_dir() else source.parent) / "micro"


def _read_report(folder: Path) -> Mapping[str, Any]:
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def _keras_top1(report: Mapping[str, Any]) -> float | None:
    try:
        return float(report["parity"]["keras_top1"])
    except (KeyError, TypeError, ValueError):
        return None


def open_micro_source(source: Path, names: Sequence[str] | None = None, images: str | Path | None = None,
                      labels: str | Path | None = None, preprocessing: str | Path | None = None,
                      max_images: int | None = None) -> MicroSource:
    """A run folder's int8 models (or `names` of its models), or one `.tflite`, with the labels, preprocessing and
    validation images beside them or given. Raises `DataError` for what is missing."""
    if not source.exists():
        raise DataError(f"Received {str(source)!r}, which does not exist; pass a run folder or a .tflite file.")
    folder = source if source.is_dir() else source.parent
    if source.is_dir():
        found = sorted(source.glob("*.tflite"))
        if names:
            chosen = []
            for name in names:
                path = source / Path(name).name
                if not path.is_file():
                    raise DataError(f"Received model {name!r}, which is not in {str(source)!r}; it has "
                                    f"{[p.name for p in found]}.")
                chosen.append(path)
        else:  # the run's int8-family models: float models cannot run, int16x8 only when named
            chosen = [p for p in found if inspect_tflite(p).inputs[0].dtype in ("int8", "uint8")]
        if not chosen:
            raise DataError(f"{str(source)!r} holds no int8 .tflite (it has {[p.name for p in found]}); run "
                            "`tflite-pipeline run` or `convert` with the int8 variant first.")
    else:
        chosen = [source]
    spec_file = Path(preprocessing) if preprocessing is not None else folder / "preprocessing.json"
    if not spec_file.is_file():
        raise DataError(f"No preprocessing for {source.name}: {str(spec_file)!r} is missing; pass --preprocessing "
                        "PREPROCESSING.json (a run folder's).")
    spec = PreprocessSpec.read_json(spec_file)
    other_input = [p for p in chosen if input_spec(spec, read_metadata(p)) is not spec]  # the pixels variant
    if source.is_dir() and not names:
        chosen = [p for p in chosen if p not in other_input]
    elif other_input:
        raise DataError(f"{[p.name for p in other_input]} take another preprocessing than {spec_file.name} "
                        f"({spec.formula()}); the micro export feeds that one. Export the int8 model instead.")
    labels_file = Path(labels) if labels is not None else folder / "labels.txt"
    if not labels_file.is_file() and images is not None and (Path(images) / "labels.txt").is_file():
        labels_file = Path(images) / "labels.txt"
    class_names = read_labels(labels_file) if labels_file.is_file() else None
    report = _read_report(folder)
    image_folder = _validation_images(folder, report, images, class_names)
    if class_names is None:
        class_names = image_folder.class_names
    if max_images is not None:
        if max_images < 1:
            raise DataError(f"Received max_images={max_images}; expected at least 1 image.")
        image_folder = image_folder.subset(max_images)
    return MicroSource(tuple(chosen), tuple(class_names), spec, image_folder,
                       _keras_top1(report) if images is None and max_images is None else None)


def _validation_images(folder: Path, report: Mapping[str, Any], images: str | Path | None,
                       class_names: Sequence[str] | None) -> ImageFolder:
    if images is not None:
        root = Path(images)
        return ImageFolder.scan(root / "validation" if (root / "validation").is_dir() else root, class_names)
    try:
        return ImageFolder.scan(Path(report["parity"]["data"]), class_names)
    except (KeyError, TypeError):
        raise DataError(f"Cannot tell which images to prove the model on ({str(folder)!r} has no readable "
                        "report.json); pass --images DIR (one sub-folder of images per class).") from None


def _write_folder(folder: Path, export: MicroExport, model_path: Path, info: TFLiteInfo, found: MicroSource,
                  scores: np.ndarray) -> list[str]:
    """Stage every file in a hidden sibling folder, then swap it in for `folder` (an earlier export is replaced
    whole, never mixed)."""
    model, name = model_path.read_bytes(), model_path.name
    sample = _sample(found, scores)
    texts = {
        "model_data.cc": sources.model_data_cc(model, name),
        "model_data.h": sources.model_data_h(model, name, export.arena_bytes, export.arena_measured, export.margin),
        "model_ops.h": sources.model_ops_h(export.ops, RESOLVER_METHODS, name),
        "model_settings.h": sources.model_settings_h(found.spec, info.inputs[0], info.outputs[0],
                                                     outputs_are_probabilities(model_path), name),
        "labels.h": sources.labels_h(found.labels, name),
        "sample_image.h": sources.sample_image_h(*sample, name),
    }
    sketch = {f"{folder.name}.ino": _SKETCH_DIR / "micro_demo.ino", "classify.h": _SKETCH_DIR / "classify.h",
              "classify.cc": _SKETCH_DIR / "classify.cc"}
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_dir(folder.parent, f".{folder.name}-")
    try:
        for filename, text in texts.items():
            atomic_write_text(staging / filename, text)
        for filename, template in sketch.items():
            atomic_write_bytes(staging / filename, template.read_bytes())
        atomic_write_json(staging / "micro_report.json", replace(  # the folder it sits in is the export's
            export, folder=".", files=tuple(sorted([*texts, *sketch, "micro_report.json"]))).to_dict())
        retired = folder.with_name(f".{folder.name}-old")
        if folder.exists():
            shutil.rmtree(retired, ignore_errors=True)
            folder.rename(retired)
        staging.rename(folder)
        shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(p.name for p in folder.iterdir())


def _sample(found: MicroSource, scores: np.ndarray) -> tuple[np.ndarray, int, int, str]:
    """The first validation image TFLM classified right (else the first): pixels, label, TFLM's class, name."""
    labels = np.asarray(found.images.labels)
    right = np.flatnonzero(scores.argmax(1) == labels)
    index = int(right[0]) if len(right) else 0
    path = found.images.files[index]
    pixels = found.spec.load_pixels(path)
    return pixels, int(labels[index]), int(scores[index].argmax()), Path(path).name
