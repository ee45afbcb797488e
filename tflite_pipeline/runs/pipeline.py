"""Orchestration: a recipe in, a published run folder out.

    prepare    open the data, build or load the baseline, flat tf_keras twin when a stage needs it, preflight
    stages     for each of the recipe's `optimize.STAGES`: load it from the stage cache, or run it
    convert    every variant of the baseline, and the last stage as int8                  (tflite/convert.py)
    verify     LiteRT vs float Keras on the validation split: the parity gate               (tflite/parity.py)
    optional   diagnosis + float fallback, latency: a failure is recorded, nothing verified is lost (optional.py)
    publish    report, plots, manifest; the folder appears complete or not at all            (folder.py)

This module names the artifacts, keeps the run clock and decides nothing about how a stage works.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import tf_keras as keras

from tflite_pipeline import env
from tflite_pipeline.config.recipe import Recipe, load_recipe
from tflite_pipeline.config.sections import BUNDLED_DATA, CALIBRATED_VARIANTS, MOBILENET_V2, VARIANTS
from tflite_pipeline.data.folders import DatasetSplits, bundled_data_root, open_splits
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.model.build import build_mobilenet_v2
from tflite_pipeline.model.distribute import is_chief, make_strategy
from tflite_pipeline.model.files import standalone_copy
from tflite_pipeline.model.load import load_model
from tflite_pipeline.model.properties import check_finite_weights, check_labels, image_input_shape
from tflite_pipeline.model.rebuild import Rebuild, flat_tf_keras, input_preprocessing, is_keras3, needs_rebuild
from tflite_pipeline.optimize import Stage, StageContext, StageOutput, StageRecord, active_stages
from tflite_pipeline.optimize.channels import model_macs
from tflite_pipeline.progress import Log
from tflite_pipeline.progress import log as _stderr
from tflite_pipeline.runs.cache import StageCache, inputs_key, stage_key
from tflite_pipeline.runs.folder import RunFolder, check_run_name
from tflite_pipeline.runs.manifest import run_manifest
from tflite_pipeline.runs.optional import OPTIONAL_STEPS, OptionalSteps
from tflite_pipeline.runs.outputs import RunOutputs, export_jobs
from tflite_pipeline.runs.report import ModelArtifact, RunReport
from tflite_pipeline.runs.verify import KERAS_FILE_SUFFIX
from tflite_pipeline.tflite.bench import cpu_description
from tflite_pipeline.tflite.convert import IsolatedConverter, convert_variant, representative_dataset
from tflite_pipeline.tflite.flatbuffer import inspect_tflite
from tflite_pipeline.tflite.parity import measure_parity


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


class RunClock:
    """The run's one clock: `with clock.step(name):` adds the step's wall time to `seconds`."""

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 2)

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total": round(time.perf_counter() - self._started, 2)}


def run(recipe: Recipe, *, output_dir: str | Path = "models", run_name: str | None = None, overwrite: bool = False,
        cache_dir: str | Path | None = None, use_cache: bool = True, log: Log = _stderr) -> RunResult:
    """Run a recipe end to end and publish `output_dir/run_name/`.

    The run folder is written (with its report) even when the parity gate fails; check
    `result.passed` or call `result.report.parity.check()`. Raises `PipelineError` subclasses for
    bad input, before any long work where it can be detected up front.

    Finished training stages are cached in `cache_dir` (default `output_dir/.cache`; see `cache.py`): a run
    stopped midway resumes from its last finished stage. `use_cache=False` trains every stage.
    Training runs under the recipe's tf.distribute strategy (`[distribute]`); in a multi-worker run only the
    chief writes the run folder (other workers' outputs go to a temporary folder, deleted at the end).
    """
    clock = RunClock()
    d = recipe.distribute
    multi_worker = d.strategy == "multi-worker"
    name = check_run_name(run_name or recipe.name)
    # only a multi-worker run has workers that write nothing (a TF_CONFIG left in the environment changes nothing)
    scratch = Path(tempfile.mkdtemp(prefix="tflite-pipeline-worker-")) if multi_worker and not is_chief() else None
    folder = RunFolder((scratch or Path(output_dir)) / name, overwrite=overwrite)
    folder.check_available()
    strategy = make_strategy(d, log) if d.strategy != "default" or d.cpu_devices else None
    if recipe.train.deterministic:
        enable_determinism(log)
    if multi_worker and use_cache:
        log("[cache] off in multi-worker runs: every worker must train the same stages")
    cache = StageCache((cache_dir or Path(output_dir) / ".cache") if use_cache and not multi_worker else None, log=log)
    try:
        with strategy.scope() if strategy else contextlib.nullcontext():
            with clock.step("prepare"):
                prepared = prepare(recipe, log)
            trained = run_stages(prepared, cache, clock)
        if strategy is not None:  # conversion and verification take plain models, not distributed variables
            trained = trained.standalone()
        report = convert_verify_publish(trained, folder, clock)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    failed = f"; optional steps failed: {', '.join(f.step for f in report.failed_steps)}" if report.failed_steps else ""
    log(f"[done] {folder.final if scratch is None else 'worker (the chief writes the run folder)'} in "
        f"{report.seconds['total']:.0f} s; parity gate {'passed' if report.passed else 'FAILED'}{failed}")
    return RunResult(folder.final, report)


def convert(model: str | Path, data: str | Path, *, variants: tuple[str, ...] = VARIANTS, io_dtype: str = "int8",
            calibration_samples: int = 300, labels: str | Path | None = None,
            overrides: Mapping[str, object] | None = None, output_dir: str | Path = "models",
            run_name: str | None = None, overwrite: bool = False, safe_mode: bool = True,
            skip_bad_images: bool = False, log: Log = _stderr) -> RunResult:
    """Convert a trained Keras model file (no training) to `variants` and verify them on `data` (DIR/<class>/*,
    or DIR/{validation,calibration}/<class>/*): `run` with the default recipe and `train.epochs = 0`.
    `overrides` are further recipe keys (`preprocess.*`, `verify.*`, `ptq.*`, ...); the default recipe's bias
    correction (the demo's) is off unless asked for. The run folder is named after the model file unless `run_name`
    is given."""
    settings: dict[str, object] = {
        "model.source": str(model), "data.root": str(data), "train.epochs": 0, "convert.variants": list(variants),
        "convert.io_dtype": io_dtype, "convert.calibration_samples": calibration_samples,
        "model.safe_mode": safe_mode, "data.skip_bad_images": skip_bad_images,
        "ptq.bias_correction": False,   # the demo's choice (default.toml); a user's model starts from plain PTQ
        **dict(overrides or {})}
    if labels is not None:
        settings["data.labels"] = str(Path(labels).resolve())
    recipe = load_recipe("default").with_overrides(settings)
    recipe = recipe.with_overrides({"model.name": model_name(recipe)})
    return run(recipe, output_dir=output_dir, run_name=run_name or recipe.model.name, overwrite=overwrite, log=log)


# --- prepare -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prepared:
    """A run's checked inputs: the stage context (recipe, data, preprocessing), the model the first stage
    starts from, its flat-rebuild record, and each stage's cache key."""

    context: StageContext
    model: keras.Model
    rebuild: Rebuild | None
    keys: dict[str, str]


def data_root(recipe: Recipe) -> Path:
    """The dataset folder, absolute: a run folder's report must lead `verify` back to it from anywhere."""
    return bundled_data_root() if recipe.data.root == BUNDLED_DATA else Path(recipe.data.root).absolute()


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
    return load_model(m.source, safe_mode=m.safe_mode)


def prepare(recipe: Recipe, log: Log = _stderr) -> Prepared:
    """Open the data, build or load the baseline, check it against the labels and every stage (before any
    training), and key the stages. Call inside the strategy's scope."""
    stages = active_stages(recipe)
    d = recipe.data
    log(f"[data] listing {data_root(recipe)}")
    splits = open_splits(data_root(recipe), train=d.train, validation=d.validation, calibration=d.calibration,
                         labels=d.labels, need_train=bool(stages), skip_bad_images=d.skip_bad_images, log=log)
    log(f"[data] {splits.root}: {len(splits.class_names)} classes, " +
        ", ".join(f"{k} {v}" for k, v in splits.counts().items()))
    model = baseline_model(recipe, len(splits.class_names))
    check_labels(model, splits.class_names, f"the labels of {str(splits.root)!r}")
    spec = PreprocessSpec.from_config(recipe.preprocess, image_input_shape(model),
                                      model_normalizes=input_preprocessing(model))
    log(f"[preprocess] {spec.formula()} ({spec.source})")
    context = StageContext(recipe, splits, spec, log=log)
    rebuild = None
    if stages and needs_rebuild(model):  # tf_keras training and tfmot need flat tf_keras
        model, rebuild = prove_rebuild(model, context)
    check_finite_weights(model)
    for stage in stages:
        stage.check(model, recipe)
    keys = stage_keys(recipe, inputs_key(model, splits, {"preprocess": spec.to_dict()}))
    return Prepared(context, model, rebuild, keys)


def prove_rebuild(model: object, context: StageContext) -> tuple[keras.Model, Rebuild]:
    """The flat tf_keras twin of a Keras 3 or nested model, proven on the calibration images before any stage runs
    (`rebuild.flat_tf_keras`; `ModelError` when it differs or a layer has no twin)."""
    images = np.concatenate([images for images, _ in
                             context.calibration_images().batches(context.spec, context.recipe.verify.batch_size)])
    flat, record = flat_tf_keras(model, images)
    context.log(f"[rebuild] {record.describe()} (allowed {record.tolerance:g} x max(1, max |output|))")
    if record.dropped:
        context.log(f"  Keras 3 settings with no tf_keras twin, dropped: {record.dropped}")
    return flat, record


def enable_determinism(log: Log = _stderr) -> None:
    """TensorFlow op determinism (process-wide, cannot be turned off): identical training for identical inputs."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    log("[determinism] TensorFlow op determinism on: training stages are bit-reproducible (and slower)")


def stage_keys(recipe: Recipe, inputs: str) -> dict[str, str]:
    """Cache key of each stage: the `[train]` section and the replica layout chained onto `inputs` (versions,
    initial model, data), then each stage's key over the one before it and its `settings()`. A changed setting
    therefore changes the keys of its stage and of every stage after it, and of no other."""
    shared = {"train": recipe.train.to_dict(), "data_order": recipe.data.deterministic,
              "replicas": [recipe.distribute.strategy, recipe.distribute.cpu_devices]}  # replicas change BN statistics
    keys, key = {}, stage_key(inputs, "train", shared)
    for stage in active_stages(recipe):
        label = stage.label(recipe)
        key = keys[label] = stage_key(key, label, *stage.settings(recipe))
    return keys


# --- stages ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Trained:
    """What the stages made: the float baseline, the stages after it (in order), which came from the cache."""

    prepared: Prepared
    baseline: keras.Model
    stages: tuple[StageOutput, ...]
    reused: tuple[str, ...]

    @property
    def context(self) -> StageContext:
        return self.prepared.context

    def standalone(self) -> Trained:
        """The same models reloaded outside the tf.distribute strategy they were trained under."""
        return replace(self, baseline=standalone_copy(self.baseline),
                       stages=tuple(replace(stage, model=standalone_copy(stage.model)) for stage in self.stages))


def run_stages(prepared: Prepared, cache: StageCache, clock: RunClock) -> Trained:
    """The loop over the recipe's stages: each takes the previous one's model, is loaded from `cache` when an
    earlier run finished it with the same inputs, and is timed. Call inside the strategy's scope."""
    context, recipe = prepared.context, prepared.context.recipe
    baseline = model = prepared.model
    previous: StageRecord | None = None
    outputs: list[StageOutput] = []
    for stage in active_stages(recipe):
        with clock.step(stage.step_name(recipe)):
            output = cached_or_run(stage, model, previous, replace(context, baseline=baseline), cache,
                                   prepared.keys[stage.label(recipe)])
        if stage.makes_baseline:
            baseline = output.model
        else:
            outputs.append(output)
        model, previous = output.model, output.record
    return Trained(prepared, baseline, tuple(outputs), tuple(cache.reused))


def cached_or_run(stage: Stage, model: keras.Model, previous: StageRecord | None, context: StageContext,
                  cache: StageCache, key: str) -> StageOutput:
    """Run `stage`, or load its output when the cache holds it under `key`; a fresh output is cached."""
    label = stage.label(context.recipe)
    cached = cache.get(label, key)
    if cached is None:
        output = stage.run(model, previous, context)
        cache.put(label, key, output.model, output.cache_info())
        return output
    output = StageOutput.from_cache(stage, label, cached.model, cached.info)
    top1 = f" (Keras top-1 {output.record.keras_top1:.2%})" if output.record else ""
    context.log(f"[{stage.step_name(context.recipe)}] finished by an earlier run with the same inputs: loaded "
                f"{cache.entry(label, key)}{top1}")
    return output


# --- convert, verify, publish ---------------------------------------------------------------------------------

def convert_verify_publish(trained: Trained, folder: RunFolder, clock: RunClock) -> RunReport:
    """Convert every variant, verify them against the baseline, run the optional steps, and publish the folder.

    Conversion and verification are the run; a failing optional step (`OPTIONAL_STEPS`, plots, MACs) is recorded
    in the report (`failed_steps`) and the folder is still published."""
    context, recipe = trained.context, trained.context.recipe
    splits, spec, log = context.splits, context.spec, context.log
    name = model_name(recipe)
    out = RunOutputs(trained.baseline, context, folder, name, export_jobs(trained.stages, recipe.convert.variants))
    skipped = splits.skipped_files()
    if skipped:
        out.warnings.append(f"skipped {len(skipped)} files that are not decodable images (data.skip_bad_images): "
                            + ", ".join(repr(Path(f).name) for f in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    optional = OptionalSteps(log)
    with folder:
        with clock.step("convert"):
            convert_jobs(out, trained.stages)
        with clock.step("verify"):
            log(f"[verify] {', '.join(out.flatbuffers)} vs float Keras on {len(splits.validation)} validation images")
            out.parity = measure_parity(trained.baseline, out.flatbuffers, splits.validation, spec, recipe.verify,
                                        sources=out.sources, input_specs=out.input_specs(), log=log)
        chance = 1.0 / len(splits.class_names)
        if out.parity.keras_top1 < 1.5 * chance:
            out.warnings.append(f"the float model scores {out.parity.keras_top1:.1%} (chance is {chance:.1%}); it is "
                                "not a usable baseline (train longer, or lower model.bn_momentum)")
        save_keras_models(out, folder)
        for step in OPTIONAL_STEPS:
            if step.wanted(recipe):
                with clock.step(step.name):
                    step.run(out, optional)
        report = write_report(build_report(trained, out, optional, clock), folder, optional, recipe, splits)
    for warning in out.warnings:
        log(f"warning: {warning}")
    return report


def convert_jobs(out: RunOutputs, stages: tuple[StageOutput, ...]) -> None:
    """Convert every job (in a child process when `convert.isolate`), write each `.tflite` and measure it."""
    recipe, log = out.context.recipe, out.context.log
    if any(job.kind in CALIBRATED_VARIANTS for job in out.jobs):
        out.representative = representative_dataset(out.context.calibration_images(), out.context.spec,
                                                    recipe.convert.calibration_samples)
        if any(job.kind == "pixels" for job in out.jobs):
            out.pixel_representative = representative_dataset(
                out.context.calibration_images(), out.context.spec.folded(), recipe.convert.calibration_samples)
        if out.representative.num_samples < recipe.convert.calibration_samples:
            out.warnings.append(f"calibration used {out.representative.num_samples} images, fewer than the "
                                f"{recipe.convert.calibration_samples} asked for")
    pruned = next((list(s.record.layers) for s in stages if s.record and s.record.sparsity is not None), [])
    with IsolatedConverter() if recipe.convert.isolate else contextlib.nullcontext() as isolated:
        convert = isolated.convert if isolated else convert_variant
        for job in out.jobs:
            where = " in a child process" if isolated else ""
            ptq = None if job.stage is not None and job.stage.is_qat else recipe.ptq  # QAT carries its own ranges
            techniques = ", ".join(ptq.techniques()) if ptq is not None and job.kind == "int8" else ""
            log(f"[convert] {job.variant}{where}" + (f" ({out.representative.num_samples} calibration images"
                                                     + (f"; {techniques}" if techniques else "") + ")"
                                                     if job.kind in CALIBRATED_VARIANTS else ""))
            representative = out.pixel_representative if job.kind == "pixels" else out.representative
            data = convert(job.converted_model(out.baseline, out.context.spec), job.kind, representative=representative,
                           io_dtype=recipe.convert.io_dtype, ptq=ptq, log=log, label=job.variant)
            file = f"{out.name}_{job.variant}.tflite"
            out.folder.write_bytes(file, data)
            out.flatbuffers[job.variant] = data
            if job.stage is not None:
                out.sources[job.variant] = (f"{job.stage.label} Keras", job.stage.model)
            info = inspect_tflite(data)
            out.artifacts.append(ModelArtifact.measure(job.variant, file, data, info,
                                                       layer_sparsity=info.layer_sparsity(pruned)))


def save_keras_models(out: RunOutputs, folder: RunFolder) -> None:
    """The float baseline, the stages' Keras models, labels and preprocessing: what `verify RUN_DIR` needs."""
    out.baseline.save(folder.path(f"{out.name}{KERAS_FILE_SUFFIX}"))
    for stage in {id(job.stage): job.stage for job in out.jobs if job.stage}.values():
        folder.write_model(f"{out.name}_{stage.label}", stage.model)
    folder.write_text("labels.txt", "\n".join(out.context.splits.class_names) + "\n")
    folder.write_json("preprocessing.json", out.context.spec.to_dict())


def build_report(trained: Trained, out: RunOutputs, optional: OptionalSteps, clock: RunClock) -> RunReport:
    """Everything the run measured, as one `RunReport` (the baseline's MACs are an optional step)."""
    context, model, rebuild = trained.context, trained.baseline, trained.prepared.rebuild
    splits, spec, parity = context.splits, context.spec, out.parity
    baseline_macs = optional.run("MACs", model_macs, model)

    def stage_extra(key: str) -> dict | None:
        return next((s.extras[key] for s in trained.stages if s.extras and key in s.extras), None)

    return RunReport(
        run_name=out.folder.final.name, recipe=context.recipe.to_dict(), versions=env.run_versions(),
        data={"root": str(splits.root), "classes": len(splits.class_names), **splits.counts(),
              "skipped_files": len(splits.skipped_files()),
              "skipped": splits.skipped()},
        model={"name": out.name, "keras_name": model.name, "input_shape": list(spec.input_shape),
               "classes": len(splits.class_names), "parameters": int(model.count_params()),
               "keras": "Keras 3" if is_keras3(model) else "tf_keras",
               "rebuild": rebuild.to_dict() if rebuild else None},
        preprocessing=spec.to_dict(), artifacts=tuple(out.artifacts), parity=parity, seconds=clock.total(),
        stages=(StageRecord("baseline", parity.keras_top1, int(model.count_params()), macs=baseline_macs),
                *(s.record for s in trained.stages if s.record)),
        channels=stage_extra("channels"), lowrank=stage_extra("lowrank"), warnings=tuple(out.warnings),
        diagnoses=tuple(out.diagnoses), fallbacks=tuple(out.fallbacks), rankings=tuple(out.rankings),
        micro=tuple(out.micro), metadata=tuple(out.metadata), machine=cpu_description(),
        reused_stages=trained.reused)


def write_report(report: RunReport, folder: RunFolder, optional: OptionalSteps, recipe: Recipe,
                 splits: DatasetSplits) -> RunReport:
    """report.json / .md / .html and the plots (each an optional step), then manifest.json, written last.
    Returns the report as written (with the optional steps that failed)."""
    figures = optional.run("plots", report.figures, default={})
    report = replace(report, failed_steps=tuple(optional.failures), figures_written=tuple(figures))
    page = optional.run("report.html", report.to_html, figures)
    report = replace(report, failed_steps=tuple(optional.failures))
    folder.write_json("report.json", report.to_dict())
    folder.write_text("report.md", report.to_markdown())
    for file, png in figures.items():
        folder.write_bytes(file, png)
    if page is not None:
        folder.write_text("report.html", page)
    folder.write_json("manifest.json", run_manifest(recipe, splits, report.versions, folder.output_hashes()))
    return report
