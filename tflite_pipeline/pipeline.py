"""Orchestration: recipe -> float baseline -> [training] -> TFLite variants -> LiteRT parity -> run folder.

Stages live in their own modules; this one only wires them, names the artifacts, times them and
publishes the run folder atomically (see `runfolder.RunFolder`).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import tf_keras as keras

from . import env
from .convert import convert_variant, representative_dataset
from .data import DatasetSplits, ImageFolder, PreprocessSpec, bundled_data_root, open_splits, read_labels
from .errors import DataError, ModelError, OutputError
from .inspect import inspect_tflite
from .models import MOBILENET_V2, build_mobilenet_v2, check_labels, image_input_shape, load_model
from .recipe import BUNDLED_DATA, PreprocessConfig, Recipe, VerifyConfig
from .report import ModelArtifact, RunReport
from .runfolder import RunFolder, check_run_name
from .train import train_classifier
from .verify import ParityReport, measure_parity

Log = Callable[[str], None]
KERAS_FILE_SUFFIX = "_float.keras"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RunResult:
    """A finished run: where its folder is and what it measured. `passed` is the parity gate."""

    run_dir: Path
    report: RunReport

    @property
    def passed(self) -> bool:
        return self.report.passed

    def tflite_path(self, variant: str) -> Path:
        artifact = next(a for a in self.report.artifacts if a.variant == variant)
        return self.run_dir / artifact.file


def data_root(recipe: Recipe) -> Path:
    return bundled_data_root() if recipe.data.root == BUNDLED_DATA else Path(recipe.data.root)


def model_name(recipe: Recipe) -> str:
    if recipe.model.name:
        return check_run_name(recipe.model.name)
    if recipe.model.source == MOBILENET_V2:
        return MOBILENET_V2
    stem = Path(recipe.model.source).name.split(".")[0]
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in stem) or "model"


def baseline_model(recipe: Recipe, num_classes: int) -> keras.Model:
    """Build the recipe's MobileNetV2, or load the user's model file (safe mode)."""
    m = recipe.model
    if m.source == MOBILENET_V2:
        return build_mobilenet_v2(num_classes, m.input_size, alpha=m.alpha, weights=m.weights, dropout=m.dropout,
                                  bn_momentum=m.bn_momentum, seed=recipe.train.seed)
    return load_model(m.source)


def run(recipe: Recipe, *, output_dir: str | Path = "models", run_name: str | None = None, overwrite: bool = False,
        log: Log = _stderr) -> RunResult:
    """Run a recipe end to end and publish `output_dir/run_name/`.

    The run folder is written (with its report) even when the parity gate fails; check
    `result.passed` or call `result.report.parity.check()`. Raises `PipelineError` subclasses for
    bad input, before any long work where it can be detected up front.
    """
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    folder = RunFolder(Path(output_dir) / check_run_name(run_name or recipe.name), overwrite=overwrite)
    folder.check_available()

    def stage(name: str, t0: float) -> None:
        seconds[name] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    training = recipe.train.epochs > 0
    d = recipe.data
    splits = open_splits(data_root(recipe), train=d.train, validation=d.validation, calibration=d.calibration,
                         labels=d.labels, need_train=training)
    log(f"[data] {splits.root}: {len(splits.class_names)} classes, " +
        ", ".join(f"{k} {v}" for k, v in splits.counts().items()))
    model = baseline_model(recipe, len(splits.class_names))
    check_labels(model, splits.class_names, f"the labels of {str(splits.root)!r}")
    spec = PreprocessSpec.from_config(recipe.preprocess, image_input_shape(model))
    stage("prepare", t0)

    if training:
        t0 = time.perf_counter()
        log(f"[train] {model.name}, {model.count_params():,} parameters, input {spec.input_shape}")
        model = train_classifier(model, splits.train, spec, recipe.train, validation=splits.validation, log=log)
        stage("train", t0)

    report = export_and_verify(model, splits, spec, recipe, folder, name=model_name(recipe), seconds=seconds,
                               started=started, log=log)
    log(f"[done] {folder.final} in {report.seconds['total']:.0f} s; parity gate "
        f"{'passed' if report.passed else 'FAILED'}")
    return RunResult(folder.final, report)


def export_and_verify(model: keras.Model, splits: DatasetSplits, spec: PreprocessSpec, recipe: Recipe,
                      folder: RunFolder, *, name: str, seconds: dict[str, float], started: float,
                      log: Log = _stderr) -> RunReport:
    """Convert every variant, verify them against `model`, and write the complete run folder.

    `seconds` holds the earlier stages' wall times; `started` is the run's `time.perf_counter()` start."""
    warnings = []
    with folder:
        t0 = time.perf_counter()
        representative = None
        if "int8" in recipe.convert.variants:
            representative = representative_dataset(splits.calibration, spec, recipe.convert.calibration_samples,
                                                    seed=recipe.train.seed)
            if representative.num_samples < recipe.convert.calibration_samples:
                warnings.append(f"calibration used {representative.num_samples} images, fewer than the "
                                f"{recipe.convert.calibration_samples} asked for")
        flatbuffers: dict[str, bytes] = {}
        artifacts = []
        for variant in recipe.convert.variants:
            log(f"[convert] {variant}" + (f" ({representative.num_samples} calibration images)"
                                          if variant == "int8" else ""))
            data = convert_variant(model, variant, representative=representative, io_dtype=recipe.convert.io_dtype)
            file = f"{name}_{variant}.tflite"
            folder.write_bytes(file, data)
            flatbuffers[variant] = data
            artifacts.append(ModelArtifact.measure(variant, file, data, inspect_tflite(data)))
        seconds["convert"] = round(time.perf_counter() - t0, 2)

        t0 = time.perf_counter()
        log(f"[verify] {', '.join(flatbuffers)} vs float Keras on {len(splits.validation)} validation images")
        parity = measure_parity(model, flatbuffers, splits.validation, spec, recipe.verify, log=log)
        seconds["verify"] = round(time.perf_counter() - t0, 2)
        chance = 1.0 / len(splits.class_names)
        if parity.keras_top1 < 1.5 * chance:
            warnings.append(f"the float model scores {parity.keras_top1:.1%} (chance is {chance:.1%}); it is not "
                            "a usable baseline (train longer, or lower model.bn_momentum)")

        model.save(folder.path(f"{name}{KERAS_FILE_SUFFIX}"))
        folder.write_text("labels.txt", "\n".join(splits.class_names) + "\n")
        folder.write_json("preprocessing.json", spec.to_dict())
        seconds["total"] = round(time.perf_counter() - started, 2)
        report = RunReport(
            run_name=folder.final.name, recipe=recipe.to_dict(),
            versions={"python": platform.python_version(), **env.library_versions()},
            data={"root": str(splits.root), "classes": len(splits.class_names), **splits.counts()},
            model={"name": name, "keras_name": model.name, "input_shape": list(spec.input_shape),
                   "classes": len(splits.class_names), "parameters": int(model.count_params())},
            preprocessing=spec.to_dict(), artifacts=tuple(artifacts), parity=parity, seconds=dict(seconds),
            warnings=tuple(warnings))
        folder.write_json("report.json", report.to_dict())
        folder.write_text("report.md", report.to_markdown())
    for warning in warnings:
        log(f"warning: {warning}")
    return report


def open_run_folder(run_dir: str | Path) -> dict[str, Path]:
    """The files `verify` needs from a run folder: the Keras model, labels, preprocessing, .tflite files."""
    run_dir = Path(run_dir)
    kerases = sorted(run_dir.glob(f"*{KERAS_FILE_SUFFIX}"))
    if not kerases or not (run_dir / "preprocessing.json").is_file():
        raise OutputError(f"{str(run_dir)!r} is not a run folder (expected *{KERAS_FILE_SUFFIX} and "
                          "preprocessing.json written by `tflite-pipeline run` or `convert`).")
    return {"keras": kerases[0], "labels": run_dir / "labels.txt", "preprocessing": run_dir / "preprocessing.json",
            "report": run_dir / "report.json"}


def verify_files(keras_path: str | Path, tflite_paths: Mapping[str, str | Path], data_dir: str | Path, *,
                 preprocessing: PreprocessSpec | None = None, preprocess: PreprocessConfig = PreprocessConfig(),
                 labels: str | Path | None = None, config: VerifyConfig = VerifyConfig(), log: Log = _stderr
                 ) -> ParityReport:
    """Verify `.tflite` files against a Keras model file on an image folder (its `validation/` split when
    it has one). Returns the report; call `.check()` to gate."""
    model = load_model(keras_path)
    shape = image_input_shape(model)
    spec = preprocessing or PreprocessSpec.from_config(preprocess, shape)
    if spec.input_shape != shape:
        raise ModelError(f"The preprocessing spec gives input {spec.input_shape} but the model takes {shape}.")
    class_names = read_labels(labels) if labels is not None else None
    root = Path(data_dir)
    folder = ImageFolder.scan(root / "validation", class_names) if (root / "validation").is_dir() else \
        ImageFolder.scan(root, class_names)
    return measure_parity(model, tflite_paths, folder, spec, config, log=log)


def recorded_validation_dir(report_path: Path) -> Path:
    """The validation folder a run used, from its report.json."""
    try:
        return Path(json.loads(report_path.read_text(encoding="utf-8"))["parity"]["data"])
    except (OSError, KeyError, ValueError):
        raise DataError(f"Cannot find the validation folder in {str(report_path)!r}; pass --data DIR.") from None
