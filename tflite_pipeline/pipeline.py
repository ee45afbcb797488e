"""Orchestration: recipe -> float baseline -> [training] -> TFLite variants -> LiteRT parity -> run folder.

Stages live in their own modules; this one only wires them, names the artifacts, times them and
publishes the run folder atomically (see `runfolder.RunFolder`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import tf_keras as keras

from . import env, progress
from .convert import IsolatedConverter, RepresentativeDataset, convert_variant, representative_dataset
from .data import DatasetSplits, ImageFolder, PreprocessSpec, bundled_data_root, open_splits, read_labels
from .errors import DataError, ModelError, OptionalStepError, OutputError, PipelineError
from .inspect import inspect_tflite
from .models import (MOBILENET_V2, build_mobilenet_v2, check_finite_weights, check_labels, count_parameters,
                     image_input_shape, load_model)
from .recipe import BUNDLED_DATA, PreprocessConfig, Recipe, VerifyConfig
from .rebuild import Rebuild, flat_tf_keras, input_preprocessing, is_keras3, needs_rebuild
from .report import ModelArtifact, RunReport, StageRecord, StepFailure
from .runfolder import RunFolder, check_run_name, sha256_tree
from .cache import CachedStage, StageCache, inputs_key, stage_key
from .bench import LatencyResult, cpu_description, measure_latency
from .channels import ChannelGraph, ChannelPlan, channel_importance, model_macs, plan_channels, prune_channels
from .channels import describe as describe_plan
from .cluster import check_clustering, cluster_weights, strip_clustering, unique_weights
from .layers import select_layers
from .prune import kernel_sparsity, prune_low_magnitude, pruning_callbacks, strip_pruning
from .quantize import load_qat_model, quantize_aware, save_qat_model, standalone_copy
from .train import FineTuner, train_classifier
from .distribute import is_chief, make_strategy
from .diagnose import Diagnosis, FallbackResult, QuantizationDebug, accuracy_budgeted_fallback, top1_evaluator
from .verify import Expected, ParityReport, ParityRow, keras_accuracy, measure_parity

Log = Callable[[str], None]
KERAS_FILE_SUFFIX = "_float.keras"


_stderr = progress.log


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
    return load_model(m.source, safe_mode=m.safe_mode)


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
    started = time.perf_counter()
    seconds: dict[str, float] = {}
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
            trained = train_stages(recipe, cache=cache, seconds=seconds, log=log)
        if strategy is not None:  # conversion and verification take plain models, not distributed variables
            trained = trained.standalone()
        report = export_and_verify(trained.baseline, trained.splits, trained.spec, recipe, folder,
                                   name=model_name(recipe), seconds=seconds, started=started, stages=trained.stages,
                                   reused=trained.reused, rebuild=trained.rebuild, log=log)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    failed = f"; optional steps failed: {', '.join(f.step for f in report.failed_steps)}" if report.failed_steps else ""
    log(f"[done] {folder.final if scratch is None else 'worker (the chief writes the run folder)'} in "
        f"{report.seconds['total']:.0f} s; parity gate {'passed' if report.passed else 'FAILED'}{failed}")
    return RunResult(folder.final, report)


@dataclass(frozen=True)
class TrainedStages:
    """What the training part of a run made: the float baseline, its data and preprocessing, the fine-tune
    stages, and which of them came from the cache."""

    baseline: keras.Model
    splits: DatasetSplits
    spec: PreprocessSpec
    stages: list[OptimizedStage]
    reused: tuple[str, ...]
    rebuild: Rebuild | None = None

    def standalone(self) -> "TrainedStages":
        """The same models reloaded outside the tf.distribute strategy they were trained under."""
        return replace(self, baseline=standalone_copy(self.baseline),
                       stages=[replace(stage, model=standalone_copy(stage.model)) for stage in self.stages])


def train_stages(recipe: Recipe, *, cache: StageCache, seconds: dict[str, float], log: Log = _stderr
                 ) -> TrainedStages:
    """Open the data, build or load the baseline, check the recipe against it, then train (or load from `cache`)
    the baseline and every fine-tune stage. Call inside the strategy's scope."""
    t0 = time.perf_counter()
    training = recipe.train.epochs > 0
    d = recipe.data
    log(f"[data] listing {data_root(recipe)}")
    splits = open_splits(data_root(recipe), train=d.train, validation=d.validation, calibration=d.calibration,
                         labels=d.labels, need_train=training or recipe.optimizes, skip_bad_images=d.skip_bad_images)
    log(f"[data] {splits.root}: {len(splits.class_names)} classes, " +
        ", ".join(f"{k} {v}" for k, v in splits.counts().items()))
    model = baseline_model(recipe, len(splits.class_names))
    check_labels(model, splits.class_names, f"the labels of {str(splits.root)!r}")
    spec = PreprocessSpec.from_config(recipe.preprocess, image_input_shape(model),
                                      model_normalizes=input_preprocessing(model))
    log(f"[preprocess] {spec.formula()} ({spec.source})")
    rebuild = None
    if (training or recipe.optimizes) and needs_rebuild(model):  # tf_keras training and tfmot need flat tf_keras
        model, rebuild = prove_rebuild(model, calibration_images(splits, recipe), spec, recipe, log)
    preflight(recipe, model)
    keys = stage_keys(recipe, inputs_key(model, splits, {"preprocess": spec.to_dict()}))
    seconds["prepare"] = round(time.perf_counter() - t0, 2)

    if training:
        t0 = time.perf_counter()
        key = keys["baseline"]
        cached = cache.get("baseline", key)
        if cached is not None:
            model = cached.model
            log(f"[train] finished by an earlier run with the same inputs: loaded {cache.entry('baseline', key)}")
        else:
            if recipe.model.source != MOBILENET_V2:
                log(f"[train] fine-tuning your model for {recipe.train.epochs} epochs first (train.epochs; set "
                    "train.epochs=0 to take it as trained)")
            log(f"[train] {model.name}, {model.count_params():,} parameters, input {spec.input_shape}")
            model = train_classifier(model, splits.train, spec, recipe.train, validation=splits.validation,
                                     deterministic=d.deterministic, log=log)
            cache.put("baseline", key, model, {})
        seconds["train"] = round(time.perf_counter() - t0, 2)

    stages = optimize(model, splits, spec, recipe, seconds=seconds, log=log, cache=cache, keys=keys)
    return TrainedStages(model, splits, spec, stages, tuple(cache.reused), rebuild)


def prove_rebuild(model: object, calibration: ImageFolder, spec: PreprocessSpec, recipe: Recipe, log: Log
                  ) -> tuple[keras.Model, Rebuild]:
    """The flat tf_keras twin of a Keras 3 or nested model, proven on the calibration images before any stage runs
    (`rebuild.flat_tf_keras`; `ModelError` when it differs or a layer has no twin)."""
    images = np.concatenate([images for images, _ in calibration.batches(spec, recipe.verify.batch_size)])
    flat, record = flat_tf_keras(model, images)
    log(f"[rebuild] {record.describe()} (allowed {record.tolerance:g} x max(1, max |output|))")
    if record.dropped:
        log(f"  Keras 3 settings with no tf_keras twin, dropped: {record.dropped}")
    return flat, record


def enable_determinism(log: Log = _stderr) -> None:
    """TensorFlow op determinism (process-wide, cannot be turned off): identical training for identical inputs."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    log("[determinism] TensorFlow op determinism on: training stages are bit-reproducible (and slower)")


_QAT_LABELS = {"default": "qat", "prune_preserve": "pqat", "cluster_preserve": "cqat"}


def qat_scheme(recipe: Recipe) -> str:
    """tfmot's QAT scheme after the recipe's earlier stages: prune- or cluster-preserving, else the default."""
    return "prune_preserve" if recipe.prune.enabled else "cluster_preserve" if recipe.cluster.enabled else "default"


def training_stages(recipe: Recipe) -> list[tuple[str, list[object]]]:
    """`(label, the settings that shape it)` for each training stage of the recipe, in run order."""
    distill = recipe.distill.to_dict() if recipe.distill.enabled else None
    stages: list[tuple[str, list[object]]] = [("baseline", [])] if recipe.train.epochs > 0 else []
    for label, section in (("thinned", recipe.channels), ("pruned", recipe.prune), ("clustered", recipe.cluster)):
        if section.enabled:
            stages.append((label, [section.to_dict(), distill]))
    if recipe.qat.enabled:
        stages.append((_QAT_LABELS[qat_scheme(recipe)],
                       [recipe.qat.to_dict(), recipe.convert.calibration_samples, distill]))
    return stages


def stage_keys(recipe: Recipe, inputs: str) -> dict[str, str]:
    """Cache key of each training stage: the `[train]` section and the replica layout chained onto `inputs`
    (versions, initial model, data), then each stage's key over the one before it and its own settings. A
    changed setting therefore changes the keys of its stage and of every stage after it, and of no other."""
    shared = {"train": recipe.train.to_dict(), "data_order": recipe.data.deterministic,
              "replicas": [recipe.distribute.strategy, recipe.distribute.cpu_devices]}  # replicas change BN statistics
    keys, key = {}, stage_key(inputs, "train", shared)
    for label, settings in training_stages(recipe):
        key = keys[label] = stage_key(key, label, *settings)
    return keys


def preflight(recipe: Recipe, model: keras.Model) -> None:
    """Fail before any training on a model or settings that cannot work (NaN/Inf weights, channel groups and MAC
    budget, layer patterns, cluster counts, QAT support)."""
    check_finite_weights(model)
    if recipe.channels.enabled:  # the groups exist and the budget can be met (scored by l1: no data needed)
        graph = ChannelGraph.of(model)
        plan_channels(graph, channel_importance(graph, "l1") if graph.groups else {}, recipe.channels)
    if recipe.prune.enabled:
        p = recipe.prune
        select_layers(model, "prune", patterns=p.layers, layer_types=p.layer_types, exclude=p.exclude)
    if recipe.cluster.enabled:
        check_clustering(model, recipe.cluster)
    if recipe.qat.enabled:
        quantize_aware(model)


def calibration_images(splits: DatasetSplits, recipe: Recipe) -> ImageFolder:
    """The calibration images every int8 step uses: QAT's activation ranges and the converter's."""
    return splits.calibration.subset(recipe.convert.calibration_samples, seed=recipe.train.seed)


@dataclass(frozen=True)
class OptimizedStage:
    """A fine-tuned model and what it is: `label` names the stage (thinned, pruned, clustered, qat, pqat, cqat)."""

    label: str
    model: keras.Model
    record: StageRecord
    is_qat: bool = False
    channel_plan: ChannelPlan | None = None   # the thinned stage: which channels survived

    def cache_info(self) -> dict[str, object]:
        return {"record": asdict(self.record),
                "channel_plan": self.channel_plan.state() if self.channel_plan is not None else None}

    @classmethod
    def from_cache(cls, label: str, cached: CachedStage, *, is_qat: bool) -> "OptimizedStage":
        plan = cached.info["channel_plan"]
        return cls(label, cached.model, StageRecord.from_dict(cached.info["record"]), is_qat=is_qat,
                   channel_plan=ChannelPlan.from_state(plan) if plan is not None else None)


def optimize(baseline: keras.Model, splits: DatasetSplits, spec: PreprocessSpec, recipe: Recipe, *,
             seconds: dict[str, float], log: Log = _stderr, cache: StageCache | None = None,
             keys: Mapping[str, str] | None = None) -> list[OptimizedStage]:
    """Chain the recipe's fine-tune stages on the float baseline: [channels] -> [prune | cluster] -> [QAT].

    A stage found in `cache` under its key (`stage_keys`) is loaded instead of trained (and listed in
    `cache.reused`)."""
    if not recipe.optimizes:
        return []
    cache = cache or StageCache(None)
    distill = recipe.distill if recipe.distill.enabled else None
    tuner = FineTuner(train=splits.train, spec=spec, batch_size=recipe.train.batch_size, seed=recipe.train.seed,
                      augment=recipe.train.augment, teacher=baseline if distill else None, distill=distill,
                      deterministic=recipe.data.deterministic, log=log)
    stages: list[OptimizedStage] = []

    def record(label: str, model: keras.Model, t0: float, macs: int, **weights_info) -> StageRecord:
        seconds[label] = round(time.perf_counter() - t0, 2)
        top1 = keras_accuracy(model, splits.validation, spec, recipe.verify.batch_size)
        log(f"  {label}: Keras top-1 {top1:.2%}")
        return StageRecord(name=label, keras_top1=top1, parameters=count_parameters(model), macs=macs,
                           **weights_info)

    def run_stage(label: str, train: Callable[[float], OptimizedStage], *, is_qat: bool = False) -> OptimizedStage:
        """Train the stage, or load it when an earlier run finished it with the same inputs."""
        key = (keys or {}).get(label, "")
        t0 = time.perf_counter()
        cached = cache.get(label, key) if key else None
        if cached is not None:
            stage = OptimizedStage.from_cache(label, cached, is_qat=is_qat)
            seconds[label] = round(time.perf_counter() - t0, 2)
            log(f"[{label}] finished by an earlier run with the same inputs: loaded {cache.entry(label, key)} "
                f"(Keras top-1 {stage.record.keras_top1:.2%})")
        else:
            stage = train(t0)
            if key:
                cache.put(label, key, stage.model, stage.cache_info())
        stages.append(stage)
        return stage

    def previous() -> tuple[keras.Model, int, dict[str, object]]:
        """The model the next stage starts from, its MACs, and the weight facts QAT inherits (layers, sparsity)."""
        if not stages:
            return baseline, model_macs(baseline), {}
        r = stages[-1].record
        inherited = {"layers": r.layers, "sparsity": r.sparsity, "clusters": r.clusters}
        return stages[-1].model, r.macs, {k: v for k, v in inherited.items() if v not in (None, ())}

    if recipe.channels.enabled:
        c = recipe.channels

        def thin(t0: float) -> OptimizedStage:
            scored = splits.calibration.subset(c.samples, seed=recipe.train.seed)
            log(f"[channels] scoring channels by {c.criterion}" +
                (f" on {len(scored)} calibration images" if c.criterion == "activation" else ""))
            thinned, plan = prune_channels(previous()[0], c, (images for images, _ in
                                                              scored.batches(spec, recipe.train.batch_size)))
            log(f"  {describe_plan(plan)}")
            if c.epochs:
                thinned = tuner.fit(thinned, epochs=c.epochs, learning_rate=c.learning_rate)
            return OptimizedStage("thinned", thinned, record("thinned", thinned, t0, plan.macs_after),
                                  channel_plan=plan)

        run_stage("thinned", thin)
    if recipe.prune.enabled:
        p = recipe.prune

        def prune(t0: float) -> OptimizedStage:
            current, macs, _ = previous()
            wrapped, layers = prune_low_magnitude(current, p, tuner.steps(p.epochs))
            log(f"[prune] {len(layers)} layers, {p.structure} {p.schedule} "
                f"{p.initial_sparsity:.0%}->{p.target_sparsity:.0%}" if p.structure == "unstructured" else
                f"[prune] {len(layers)} layers, 2:4 structured")
            pruned = strip_pruning(tuner.fit(wrapped, epochs=p.epochs, learning_rate=p.learning_rate,
                                             callbacks=pruning_callbacks()))
            sparsity = kernel_sparsity(pruned, layers)
            return OptimizedStage("pruned", pruned, record("pruned", pruned, t0, macs, layers=tuple(layers),
                                                           sparsity=sum(sparsity.values()) / len(sparsity)))

        run_stage("pruned", prune)
    if recipe.cluster.enabled:
        c = recipe.cluster

        def cluster(t0: float) -> OptimizedStage:
            current, macs, _ = previous()
            wrapped, layers = cluster_weights(current, c)
            log(f"[cluster] {len(layers)} layers, {c.clusters} clusters")
            clustered = strip_clustering(tuner.fit(wrapped, epochs=c.epochs, learning_rate=c.learning_rate))
            return OptimizedStage("clustered", clustered, record(
                "clustered", clustered, t0, macs, layers=tuple(layers),
                clusters=max(unique_weights(clustered, layers).values())))

        run_stage("clustered", cluster)
    if recipe.qat.enabled:
        q = recipe.qat
        scheme = qat_scheme(recipe)
        label = _QAT_LABELS[scheme]

        def quantize(t0: float) -> OptimizedStage:
            current, macs, inherited = previous()
            log(f"[{label}] quantization-aware fine-tune ({scheme.replace('_', '-')} scheme)")
            calibration = None
            if q.calibrate_ranges:
                calibration = (images for images, _ in
                               calibration_images(splits, recipe).batches(spec, recipe.train.batch_size))
            input_range = (0.0, 255.0) if spec.normalization == "raw" else None  # the input byte is the pixel
            qat = tuner.fit(quantize_aware(current, scheme, calibration=calibration, input_range=input_range),
                            epochs=q.epochs, learning_rate=q.learning_rate)
            return OptimizedStage(label, qat, record(label, qat, t0, macs, **inherited), is_qat=True)

        run_stage(label, quantize, is_qat=True)
    return stages


@dataclass(frozen=True)
class ExportJob:
    """One `.tflite` to write: `<model>_<variant>.tflite`, converted as `kind` from a stage (None: the baseline)."""

    variant: str
    kind: str
    stage: OptimizedStage | None = None

    def source_model(self, baseline: keras.Model) -> keras.Model:
        return baseline if self.stage is None else self.stage.model


def export_jobs(stages: list[OptimizedStage], variants: tuple[str, ...]) -> list[ExportJob]:
    """The recipe's variants of the baseline, the last stage as int8, and a thinned (channel-pruned) stage also
    as float32 when float32 is asked for, so float latency before/after thinning is measured too."""
    jobs = [ExportJob(variant, variant) for variant in variants]
    thinned = next((s for s in stages if s.channel_plan is not None), None)
    if thinned is not None and "float32" in variants:
        jobs.append(ExportJob(f"{thinned.label}_float32", "float32", thinned))
    if stages:
        jobs.append(ExportJob(f"{stages[-1].label}_int8", "int8", stages[-1]))
    return jobs


class OptionalSteps:
    """Runs the steps after verification that a run can do without: a failure is recorded (`failures`), logged,
    and costs the user nothing that was verified. Typed errors keep their exit code; anything else is an
    `OptionalStepError` (exit 12)."""

    def __init__(self, log: Log = _stderr) -> None:
        self.failures: list[StepFailure] = []
        self._log = log

    def run(self, step: str, function: Callable[..., object], *args: object, default: object = None,
            **kwargs: object) -> object:
        try:
            return function(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - an optional step must never cost the verified models
            family = error if isinstance(error, PipelineError) else OptionalStepError
            message = " ".join(str(error).split())[:500] or type(error).__name__
            failure = StepFailure(step=step, error=type(error).__name__, message=message, exit_code=family.exit_code)
            self.failures.append(failure)
            self._log(f"warning: optional step {step!r} failed ({failure.error}: {message}); the verified models "
                      "are kept and the report names the failure")
            return default


def export_and_verify(model: keras.Model, splits: DatasetSplits, spec: PreprocessSpec, recipe: Recipe,
                      folder: RunFolder, *, name: str, seconds: dict[str, float], started: float,
                      stages: list[OptimizedStage] = (), reused: tuple[str, ...] = (), rebuild: Rebuild | None = None,
                      log: Log = _stderr) -> RunReport:
    """Convert every variant, verify them against `model`, and write the complete run folder.

    Conversion and verification are the run; the steps after them (diagnosis and fallback, latency, MACs, plots)
    are optional: one that fails is recorded in the report (`failed_steps`) and the folder is still published.
    `seconds` holds the earlier stages' wall times; `started` is the run's `time.perf_counter()` start."""
    warnings = []
    skipped = sorted({file for files in splits.skipped().values() for file in files})
    if skipped:
        warnings.append(f"skipped {len(skipped)} files that are not decodable images (data.skip_bad_images): "
                        + ", ".join(repr(Path(f).name) for f in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    optional = OptionalSteps(log)
    with folder:
        t0 = time.perf_counter()
        jobs = export_jobs(stages, recipe.convert.variants)
        representative = None
        if any(job.kind == "int8" for job in jobs):
            representative = representative_dataset(calibration_images(splits, recipe), spec,
                                                    recipe.convert.calibration_samples)
            if representative.num_samples < recipe.convert.calibration_samples:
                warnings.append(f"calibration used {representative.num_samples} images, fewer than the "
                                f"{recipe.convert.calibration_samples} asked for")
        flatbuffers: dict[str, bytes] = {}
        sources: dict[str, tuple[str, keras.Model]] = {}
        artifacts = []
        pruned = next((list(s.record.layers) for s in stages if s.record.sparsity is not None), [])
        with IsolatedConverter() if recipe.convert.isolate else contextlib.nullcontext() as isolated:
            convert = isolated.convert if isolated else convert_variant
            for job in jobs:
                variant = job.variant
                where = " in a child process" if isolated else ""
                log(f"[convert] {variant}{where}" + (f" ({representative.num_samples} calibration images)"
                                                     if job.kind == "int8" else ""))
                data = convert(job.source_model(model), job.kind, representative=representative,
                               io_dtype=recipe.convert.io_dtype)
                file = f"{name}_{variant}.tflite"
                folder.write_bytes(file, data)
                flatbuffers[variant] = data
                if job.stage is not None:
                    sources[variant] = (f"{job.stage.label} Keras", job.stage.model)
                info = inspect_tflite(data)
                artifacts.append(ModelArtifact.measure(variant, file, data, info,
                                                       layer_sparsity=info.layer_sparsity(pruned)))
        seconds["convert"] = round(time.perf_counter() - t0, 2)

        t0 = time.perf_counter()
        log(f"[verify] {', '.join(flatbuffers)} vs float Keras on {len(splits.validation)} validation images")
        parity = measure_parity(model, flatbuffers, splits.validation, spec, recipe.verify, sources=sources, log=log)
        seconds["verify"] = round(time.perf_counter() - t0, 2)
        chance = 1.0 / len(splits.class_names)
        if parity.keras_top1 < 1.5 * chance:
            warnings.append(f"the float model scores {parity.keras_top1:.1%} (chance is {chance:.1%}); it is not "
                            "a usable baseline (train longer, or lower model.bn_momentum)")
        # the float baseline, the stages' Keras models, labels and preprocessing: what `verify RUN_DIR` needs
        model.save(folder.path(f"{name}{KERAS_FILE_SUFFIX}"))
        for optimized in {id(job.stage): job.stage for job in jobs if job.stage}.values():
            if optimized.is_qat:
                save_qat_model(optimized.model, folder.path(f"{name}_{optimized.label}.h5"))
            else:
                optimized.model.save(folder.path(f"{name}_{optimized.label}.keras"))
        folder.write_text("labels.txt", "\n".join(splits.class_names) + "\n")
        folder.write_json("preprocessing.json", spec.to_dict())

        # --- optional steps: a failure is recorded, the verified models stay ---
        t0 = time.perf_counter()
        ptq = [job for job in jobs if job.kind == "int8" and not (job.stage and job.stage.is_qat)]
        diagnoses, fallbacks = [], []
        for job in ptq:
            outcome = optional.run(f"diagnose {job.variant}", diagnose_and_repair, job.variant,
                                   job.source_model(model), parity.row(job.variant),
                                   job.stage.record.keras_top1 if job.stage else parity.keras_top1, splits, spec,
                                   recipe, representative, log=log)
            if outcome is None:
                continue
            diagnosis, fallback = outcome
            diagnoses.append(diagnosis)
            folder.write_text(f"{name}_{job.variant}_layers.csv", diagnosis.to_csv())
            if fallback is None:
                continue
            fallbacks.append(fallback)
            if fallback.model is None:
                if not fallback.met:
                    warnings.append(f"float fallback for {job.variant}: budget not met: {fallback.reason}")
                continue
            rows = optional.run(f"verify {job.variant}_fallback", measure_parity, model,
                                {f"{job.variant}_fallback": fallback.model}, splits.validation, spec, recipe.verify,
                                sources={f"{job.variant}_fallback": sources[job.variant]}
                                if job.variant in sources else None, log=log)
            if rows is None:
                continue
            file = f"{name}_{job.variant}_fallback.tflite"   # written once verified, so the folder claims it
            folder.write_bytes(file, fallback.model)
            artifacts.append(ModelArtifact.measure(f"{job.variant}_fallback", file, fallback.model,
                                                   inspect_tflite(fallback.model)))
            flatbuffers[f"{job.variant}_fallback"] = fallback.model
            parity = replace(parity, rows=parity.rows + rows.rows)
        if diagnoses:
            seconds["diagnose"] = round(time.perf_counter() - t0, 2)
        if recipe.bench.enabled:
            t0 = time.perf_counter()
            latencies = optional.run("latency", lambda: [_latency(flatbuffers[a.variant], recipe) for a in artifacts])
            if latencies is not None:
                artifacts = [replace(a, latency=latency) for a, latency in zip(artifacts, latencies, strict=True)]
            seconds["latency"] = round(time.perf_counter() - t0, 2)
        baseline_macs = optional.run("MACs", model_macs, model)
        seconds["total"] = round(time.perf_counter() - started, 2)
        report = RunReport(
            run_name=folder.final.name, recipe=recipe.to_dict(),
            versions=env.run_versions(),
            data={"root": str(splits.root), "classes": len(splits.class_names), **splits.counts(),
                  "skipped_files": len(skipped), "skipped": splits.skipped()},
            model={"name": name, "keras_name": model.name, "input_shape": list(spec.input_shape),
                   "classes": len(splits.class_names), "parameters": int(model.count_params()),
                   "keras": "Keras 3" if is_keras3(model) else "tf_keras",
                   "rebuild": rebuild.to_dict() if rebuild else None},
            preprocessing=spec.to_dict(), artifacts=tuple(artifacts), parity=parity, seconds=dict(seconds),
            stages=(StageRecord("baseline", parity.keras_top1, int(model.count_params()), macs=baseline_macs),
                    *(s.record for s in stages)),
            channels=next((s.channel_plan.to_dict() for s in stages if s.channel_plan), None),
            warnings=tuple(warnings), diagnoses=tuple(diagnoses), fallbacks=tuple(fallbacks),
            machine=cpu_description(), reused_stages=reused)
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
    for warning in warnings:
        log(f"warning: {warning}")
    return report


def run_manifest(recipe: Recipe, splits: DatasetSplits, versions: Mapping[str, str], outputs: Mapping[str, str]
                 ) -> dict[str, object]:
    """What a run was made from and what it wrote: library versions, the recipe, sha256 of the input model
    file (when the baseline came from a file) and of the data listing (paths and sizes per split), and
    sha256 of every output file. Written last, as `manifest.json`."""
    source = Path(recipe.model.source)
    model = {"source": recipe.model.source,
             "sha256": sha256_tree(source) if recipe.model.source != MOBILENET_V2 and source.exists() else None}
    data = {"root": str(splits.root), "class_names": list(splits.class_names),
            **{name: {"images": len(split), "listing_sha256": splits.listings[name]}
               for name, split in splits.named().items()}}
    return {"versions": dict(versions), "recipe": recipe.to_dict(), "model": model, "data": data,
            "outputs": dict(outputs)}


def _latency(model: bytes, recipe: Recipe) -> LatencyResult | None:
    b = recipe.bench
    return measure_latency(model, threads=b.threads, runs=b.runs, warmup=b.warmup,
                           kernels=recipe.verify.kernels) if b.enabled else None


def diagnose_and_repair(variant: str, source: keras.Model, row: ParityRow, source_top1: float,
                        splits: DatasetSplits, spec: PreprocessSpec, recipe: Recipe,
                        representative: RepresentativeDataset, *, log: Log = _stderr
                        ) -> tuple[Diagnosis, FallbackResult | None] | None:
    """Run the quantization debugger on a post-training int8 model when the recipe asks (always, or when
    it failed the gate or misses the fallback budget), then the float fallback when it misses the budget.
    Returns None when nothing was asked for."""
    d = recipe.diagnose
    drop = (source_top1 - row.top1) * 100.0
    misses_budget = d.fallback and drop > d.max_top1_drop + 1e-9
    if d.mode == "off" or (d.mode == "on_failure" and row.passed and not misses_budget):
        return None
    log(f"[diagnose] {variant}: per-layer quantization error on {d.samples} calibration images")
    samples = representative_dataset(calibration_images(splits, recipe), spec, d.samples, seed=recipe.train.seed + 1)
    debug = QuantizationDebug(source, representative, debug_samples=samples, io_dtype=recipe.convert.io_dtype,
                              variant=variant)
    diagnosis = debug.diagnose()
    log("  worst layers (RMSE/scale): " + ", ".join(f"{e.short_name} {e.rmse_over_scale:.2f}"
                                                   for e in diagnosis.worst(3)))
    if not misses_budget:
        return diagnosis, None
    log(f"[fallback] {variant}: top-1 drop {drop:+.2f} pts > budget {d.max_top1_drop:g}; keeping layers in "
        "float one step at a time")
    evaluate = top1_evaluator(splits.validation, spec, batch_size=recipe.verify.batch_size,
                              num_threads=recipe.verify.num_threads, kernels=recipe.verify.kernels)
    fallback = accuracy_budgeted_fallback(debug, diagnosis, evaluate, reference_top1=source_top1,
                                          max_top1_drop=d.max_top1_drop, max_float_fraction=d.max_float_fraction,
                                          log=log)
    return diagnosis, fallback


def open_run_folder(run_dir: str | Path) -> dict[str, Path]:
    """The files `verify` needs from a run folder: the Keras model, labels, preprocessing, .tflite files."""
    run_dir = Path(run_dir)
    kerases = sorted(run_dir.glob(f"*{KERAS_FILE_SUFFIX}"))
    if not kerases or not (run_dir / "preprocessing.json").is_file():
        raise OutputError(f"{str(run_dir)!r} is not a run folder (expected *{KERAS_FILE_SUFFIX} and "
                          "preprocessing.json written by `tflite-pipeline run` or `convert`).")
    return {"keras": kerases[0], "labels": run_dir / "labels.txt", "preprocessing": run_dir / "preprocessing.json",
            "report": run_dir / "report.json"}


def stage_sources(run_dir: str | Path, *, safe_mode: bool = True) -> dict[str, tuple[str, keras.Model]]:
    """For a run folder with fine-tune stages: `<model>_<stage>_<kind>[_fallback]` -> (label, the stage's Keras
    model), for every `.tflite` converted from a stage rather than from the baseline."""
    out, loaded = {}, {}
    for tflite in sorted(Path(run_dir).glob("*.tflite")):
        stem = tflite.stem.removesuffix("_fallback").rpartition("_")[0]  # drop the kind (int8, float32, ...)
        for path, loader in ((tflite.with_name(f"{stem}.h5"), load_qat_model),
                             (tflite.with_name(f"{stem}.keras"), load_model)):
            if path.is_file():
                if path not in loaded:
                    loaded[path] = loader(path, safe_mode=safe_mode)
                out[tflite.stem] = (f"{stem.rsplit('_', 1)[-1]} Keras", loaded[path])
    return out


def verify_files(keras_path: str | Path, tflite_paths: Mapping[str, str | Path], data_dir: str | Path, *,
                 preprocessing: PreprocessSpec | None = None, preprocess: PreprocessConfig = PreprocessConfig(),
                 labels: str | Path | None = None, config: VerifyConfig = VerifyConfig(),
                 sources: Mapping[str, tuple[str, keras.Model]] | None = None, safe_mode: bool = True,
                 expected: Mapping[str, Expected] | None = None, log: Log = _stderr) -> ParityReport:
    """Verify `.tflite` files against a Keras model file on an image folder (its `validation/` split when
    it has one; class order from `labels`, else the folder's labels.txt, else sorted folder names); `expected` top-1s (reference metrics, or what the run measured) are gated too. Returns the
    report; call `.check()` to gate."""
    model = load_model(keras_path, safe_mode=safe_mode)
    shape = image_input_shape(model)
    spec = preprocessing or PreprocessSpec.from_config(preprocess, shape)
    if spec.input_shape != shape:
        raise ModelError(f"The preprocessing spec gives input {spec.input_shape} but the model takes {shape}.")
    root = Path(data_dir)
    if labels is None and (root / "labels.txt").is_file():  # as `open_splits` reads a dataset root
        labels = root / "labels.txt"
    class_names = read_labels(labels) if labels is not None else None
    folder = ImageFolder.scan(root / "validation", class_names) if (root / "validation").is_dir() else \
        ImageFolder.scan(root, class_names)
    return measure_parity(model, tflite_paths, folder, spec, config, sources=sources, expected=expected, log=log)


def recorded_gate(report_path: Path) -> dict[str, object]:
    """The gate a run was checked with (`verify.max_top1_drop`, `verify.min_agreement`, `verify.kernels` from its
    report.json), as recipe overrides; empty when the report does not say."""
    try:
        verify = json.loads(report_path.read_text(encoding="utf-8"))["recipe"]["verify"]
    except (OSError, KeyError, ValueError, TypeError):
        return {}
    return {f"verify.{key}": verify[key] for key in ("max_top1_drop", "min_agreement", "kernels") if key in verify}


def recorded_keras_top1(report_path: Path, tolerance_pts: float) -> dict[str, Expected]:
    """The float model's top-1 the run measured on its validation folder, as the expectation `verify RUN_DIR`
    holds it to (within the gate's top-1 budget); empty when the report does not say."""
    try:
        top1 = float(json.loads(report_path.read_text(encoding="utf-8"))["parity"]["keras_top1"])
    except (OSError, KeyError, ValueError, TypeError):
        return {}
    return {"keras": Expected(top1, tolerance_pts / 100.0, f"the run ({report_path.name})")}


def recorded_validation_dir(report_path: Path) -> Path:
    """The validation folder a run used, from its report.json."""
    try:
        return Path(json.loads(report_path.read_text(encoding="utf-8"))["parity"]["data"])
    except (OSError, KeyError, ValueError):
        raise DataError(f"Cannot find the validation folder in {str(report_path)!r}; pass --data DIR.") from None
