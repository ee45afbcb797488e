"""The steps after verification that a run can do without: diagnosis with the float fallback, latency, and the
microcontroller export.

Each is an `OptionalStep` in `OPTIONAL_STEPS`; the orchestrator runs the ones the recipe wants, in order, on the
run's `RunOutputs`. A step that fails is recorded by `OptionalSteps` (typed errors keep their exit code, anything
else is an `OptionalStepError`, exit 12) and costs the user nothing that was verified.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import tf_keras as keras

from tflite_pipeline.config.recipe import Recipe
from tflite_pipeline.config.sections import PTQConfig
from tflite_pipeline.errors import OptionalStepError, PipelineError
from tflite_pipeline.optimize.stage import StageContext
from tflite_pipeline.progress import Log
from tflite_pipeline.progress import log as _stderr
from tflite_pipeline.runs.outputs import RunOutputs
from tflite_pipeline.runs.report import ModelArtifact, StepFailure
from tflite_pipeline.tflite.bench import LatencyResult, measure_latency
from tflite_pipeline.tflite.convert import RepresentativeDataset, convert_variant, representative_dataset
from tflite_pipeline.tflite.diagnose import (
    Diagnosis,
    FallbackResult,
    MeasuredOption,
    OptionRanking,
    QuantizationDebug,
    accuracy_budgeted_fallback,
    top1_evaluator,
)
from tflite_pipeline.tflite.flatbuffer import gzip_size, inspect_tflite
from tflite_pipeline.tflite.parity import ParityRow, measure_parity


class OptionalSteps:
    """Runs a function as an optional step: a failure is recorded (`failures`), logged, and returns `default`."""

    def __init__(self, log: Log = _stderr) -> None:
        self.failures: list[StepFailure] = []
        self._log = log

    def run(self, step: str, function: Callable[..., object], *args: object, default: object = None,
            **kwargs: object) -> object:
        try:
            return function(*args, **kwargs)
        except Exception as error:
            family = error if isinstance(error, PipelineError) else OptionalStepError
            message = " ".join(str(error).split())[:500] or type(error).__name__
            failure = StepFailure(step=step, error=type(error).__name__, message=message, exit_code=family.exit_code)
            self.failures.append(failure)
            self._log(f"warning: optional step {step!r} failed ({failure.error}: {message}); the verified models "
                      "are kept and the report names the failure")
            return default


@dataclass(frozen=True)
class OptionalStep:
    """`name` (its key in the report's `seconds`), whether a recipe wants it, and the step itself."""

    name: str
    wanted: Callable[[Recipe], bool]
    run: Callable[[RunOutputs, OptionalSteps], None]


# --- diagnose + float fallback ---------------------------------------------------------------------------------

def diagnose_post_training_models(out: RunOutputs, optional: OptionalSteps) -> None:
    """For every post-training int8 model: the per-layer quantization error when the recipe asks, and the float
    fallback (verified, then written) when it misses the top-1 budget."""
    context = out.context
    for job in [j for j in out.jobs if j.kind == "int8" and not (j.stage and j.stage.is_qat)]:
        source_top1 = job.stage.record.keras_top1 if job.stage else out.parity.keras_top1
        outcome = optional.run(f"diagnose {job.variant}", diagnose_and_repair, job.variant,
                               job.source_model(out.baseline), out.parity.row(job.variant), source_top1, context,
                               out.representative)
        if outcome is None:
            continue
        diagnosis, fallback = outcome
        out.diagnoses.append(diagnosis)
        out.folder.write_text(f"{out.name}_{job.variant}_layers.csv", diagnosis.to_csv())
        if fallback is None:
            continue
        out.fallbacks.append(fallback)
        if fallback.model is None:
            if not fallback.met:
                out.warnings.append(f"float fallback for {job.variant}: budget not met: {fallback.reason}")
            continue
        variant = f"{job.variant}_fallback"
        sources = {variant: out.sources[job.variant]} if job.variant in out.sources else None
        rows = optional.run(f"verify {variant}", measure_parity, out.baseline, {variant: fallback.model},
                            context.splits.validation, context.spec, context.recipe.verify, sources=sources,
                            log=context.log)
        if rows is None:
            continue
        file = f"{out.name}_{variant}.tflite"   # written once verified, so the folder claims it
        out.folder.write_bytes(file, fallback.model)
        out.artifacts.append(ModelArtifact.measure(variant, file, fallback.model, inspect_tflite(fallback.model)))
        out.flatbuffers[variant] = fallback.model
        out.parity = replace(out.parity, rows=out.parity.rows + rows.rows)
    for job in [j for j in out.jobs if j.kind == "int8" and not (j.stage and j.stage.is_qat)]:
        if not out.parity.row(job.variant).passed:
            ranking = optional.run(f"rank options {job.variant}", rank_options, out, job.variant,
                                   job.source_model(out.baseline))
            if ranking is not None:
                out.rankings.append(ranking)


# the [ptq] combination the ranking tries when the recipe's own settings missed the gate
ALL_TECHNIQUES = PTQConfig(ranges="percentile", adaround=True, bias_correction=True)


def rank_options(out: RunOutputs, variant: str, source: keras.Model) -> OptionRanking:
    """Measure what could replace a post-training int8 model that missed the gate: the `[ptq]` techniques (when
    the recipe did not use them all), int16x8, the float fallback and a QAT model of the run (when there are),
    ranked by agreement with the Keras source, then by top-1."""
    context = out.context
    recipe, log = context.recipe, context.log
    row = out.parity.row(variant)
    size = {a.variant: a.size_bytes for a in out.artifacts}
    strict_name = f"post-training int8 ({', '.join(recipe.ptq.techniques()) or 'converter'})"
    options = [MeasuredOption(strict_name, variant, row.source_agreement, row.top1,
                              row.top1_drop, size[variant], None, "int8 kernels (XNNPACK)")]
    candidates = [("int16x8", "int16x8", None, "int16 activations: 2x activation memory, LiteRT built-in kernels "
                   "(no XNNPACK), slower")]
    if recipe.ptq != ALL_TECHNIQUES:
        candidates.insert(0, ("[ptq] percentile ranges + adaround + bias correction", "int8", ALL_TECHNIQUES,
                              "int8 kernels (XNNPACK), same speed; --set ptq.ranges=percentile --set ptq.adaround=true "
                              "--set ptq.bias_correction=true"))
    for name, kind, ptq, cost in candidates:
        log(f"[diagnose] {variant}: measuring {name}")
        started = time.monotonic()
        model = convert_variant(source, kind, representative=out.representative, io_dtype=recipe.convert.io_dtype,
                                ptq=ptq, log=log, label=name)
        seconds = time.monotonic() - started
        label, keras_source = out.sources.get(variant, ("float Keras", out.baseline))
        measured = measure_parity(out.baseline, {name: model}, context.splits.validation, context.spec,
                                  recipe.verify, sources={name: (label, keras_source)}, log=log).row(name)
        options.append(MeasuredOption(name, "", measured.source_agreement, measured.top1, measured.top1_drop,
                                      len(model), seconds, cost))
    fallback_variant = f"{variant}_fallback"
    if any(r.variant == fallback_variant for r in out.parity.rows):
        r = out.parity.row(fallback_variant)
        options.append(MeasuredOption("float fallback", fallback_variant, r.source_agreement, r.top1, r.top1_drop,
                                      size[fallback_variant], None, "float ops: not for int8-only accelerators"))
    for job in out.jobs:
        if job.stage is not None and job.stage.is_qat:
            r = out.parity.row(job.variant)
            options.append(MeasuredOption(f"QAT ({job.variant})", job.variant, r.agreement, r.top1, r.top1_drop,
                                          size[job.variant], None, "training: the recipe's QAT epochs"))
    ranked = tuple(sorted(options, key=lambda o: (-o.agreement, -o.top1)))
    log(f"[diagnose] {variant}: options by agreement: " + ", ".join(f"{o.name} {o.agreement:.2%}" for o in ranked))
    return OptionRanking(variant, ranked)


def diagnose_and_repair(variant: str, source: keras.Model, row: ParityRow, source_top1: float,
                        context: StageContext, representative: RepresentativeDataset
                        ) -> tuple[Diagnosis, FallbackResult | None] | None:
    """Run the quantization debugger on a post-training int8 model when the recipe asks (always, or when
    it failed the gate or misses the fallback budget), then the float fallback when it misses the budget.
    Returns None when nothing was asked for."""
    recipe, log = context.recipe, context.log
    d = recipe.diagnose
    drop = (source_top1 - row.top1) * 100.0
    misses_budget = d.fallback and drop > d.max_top1_drop + 1e-9
    if d.mode == "off" or (d.mode == "on_failure" and row.passed and not misses_budget):
        return None
    samples = representative_dataset(context.calibration_images(), context.spec, d.samples, seed=recipe.train.seed + 1)
    log(f"[diagnose] {variant}: per-layer quantization error on {samples.num_samples} calibration images")
    debug = QuantizationDebug(source, representative, debug_samples=samples, io_dtype=recipe.convert.io_dtype,
                              variant=variant)
    diagnosis = debug.diagnose()
    log("  worst layers (RMSE/scale): " + ", ".join(f"{e.short_name} {e.rmse_over_scale:.2f}"
                                                   for e in diagnosis.worst(3)))
    if not misses_budget:
        return diagnosis, None
    log(f"[fallback] {variant}: top-1 drop {drop:+.2f} pts > budget {d.max_top1_drop:g}; keeping layers in "
        "float one step at a time")
    evaluate = top1_evaluator(context.splits.validation, context.spec, batch_size=recipe.verify.batch_size,
                              num_threads=recipe.verify.num_threads, kernels=recipe.verify.kernels)
    fallback = accuracy_budgeted_fallback(debug, diagnosis, evaluate, reference_top1=source_top1,
                                          max_top1_drop=d.max_top1_drop, max_float_fraction=d.max_float_fraction,
                                          log=log)
    return diagnosis, fallback


# --- latency ----------------------------------------------------------------------------------------------------

def measure_latencies(out: RunOutputs, optional: OptionalSteps) -> None:
    """Every written `.tflite`'s latency on this machine (`[bench]`), into its artifact."""
    recipe = out.context.recipe
    latencies = optional.run("latency", lambda: [latency(out.flatbuffers[a.variant], recipe) for a in out.artifacts])
    if latencies is not None:
        out.artifacts[:] = [replace(a, latency=value) for a, value in zip(out.artifacts, latencies, strict=True)]


def latency(model: bytes, recipe: Recipe) -> LatencyResult:
    b = recipe.bench
    return measure_latency(model, threads=b.threads, runs=b.runs, warmup=b.warmup, kernels=recipe.verify.kernels)


# --- microcontroller export -------------------------------------------------------------------------------------

def export_for_microcontrollers(out: RunOutputs, optional: OptionalSteps) -> None:
    """Every full-integer int8 model of the run as TFLM sources in `micro/<model>/` (`[micro]`), measured in TFLM
    and proven against LiteRT on the validation images; a model over the budget fails the step (`BudgetError`)."""
    from tflite_pipeline.export.micro import MicroSource, export_models

    context, settings = out.context, out.context.recipe.micro
    other_input = out.input_specs()   # the pixels variant: the micro sources feed the run's preprocessing
    paths = tuple(out.folder.path(a.file) for a in out.artifacts if a.variant not in other_input
                  and a.info.is_full_integer and a.info.inputs[0].dtype in ("int8", "uint8"))
    validation = context.splits.validation
    images = validation.subset(settings.max_images) if settings.max_images else validation
    source = MicroSource(paths, tuple(context.splits.class_names), context.spec, images,
                         out.parity.keras_top1 if images is validation else None)
    exports = optional.run("micro", export_models, source, out.folder.path("micro"), budget=settings.budget(),
                           margin=settings.margin, log=context.log)
    out.micro.extend(replace(e, folder=f"micro/{Path(e.folder).name}") for e in exports or ())


# --- TFLite metadata -------------------------------------------------------------------------------------------

def embed_run_metadata(out: RunOutputs, optional: OptionalSteps) -> None:
    """TFLite metadata (labels, normalization) in every `.tflite` of the run (`convert.metadata`), each proven to
    give bit-identical outputs on the validation images before its file is replaced; on any failure no file
    changes."""
    records = optional.run("metadata", _with_metadata, out)
    out.metadata.extend(records or ())


def _with_metadata(out: RunOutputs) -> list:
    from tflite_pipeline import __version__
    from tflite_pipeline.export.compatibility import outputs_are_probabilities
    from tflite_pipeline.export.metadata import (
        ClassifierMetadata,
        MetadataRecord,
        embed_metadata,
        identical_outputs,
        read_metadata,
        tasks_problems,
    )

    context, other_input = out.context, out.input_specs()
    labels = context.splits.class_names
    embedded: dict[str, tuple[bytes, bytes, object]] = {}
    for artifact in out.artifacts:
        data, spec = out.flatbuffers[artifact.variant], other_input.get(artifact.variant, context.spec)
        row = out.parity.row(artifact.variant) if any(r.variant == artifact.variant for r in out.parity.rows) else None
        measured = (f" Top-1 {row.top1:.2%} on {out.parity.num_images} validation images (float Keras "
                    f"{out.parity.keras_top1:.2%})." if row else "")
        meta = ClassifierMetadata.for_classifier(
            spec, labels, name=f"{out.name}_{artifact.variant}", version=__version__,
            outputs_are_probabilities=outputs_are_probabilities(data),
            description=f"Image classifier, {len(labels)} classes, {artifact.info.inputs[0].dtype} input "
                        f"({spec.formula()}), made by tflite_pipeline {__version__} (variant "
                        f"{artifact.variant}).{measured}")
        embedded[artifact.variant] = (data, embed_metadata(data, meta), spec)
    context.log(f"[metadata] {len(embedded)} model(s): labels and normalization embedded; checking the outputs are "
                f"unchanged on {len(context.splits.validation)} validation images")
    images = identical_outputs(embedded, context.splits.validation, context.recipe.verify.batch_size)
    records = []
    for index, artifact in enumerate(out.artifacts):
        before, after, spec = embedded[artifact.variant]
        out.folder.write_bytes(artifact.file, after)
        out.flatbuffers[artifact.variant] = after
        out.artifacts[index] = replace(artifact, size_bytes=len(after), gzip_bytes=gzip_size(after),
                                       info=inspect_tflite(after))
        records.append(MetadataRecord(artifact.variant, artifact.file, len(labels), spec.formula(),
                                      len(after) - len(before), images,
                                      tuple(tasks_problems(artifact.info, read_metadata(after)))))
    return records


OPTIONAL_STEPS: tuple[OptionalStep, ...] = (
    OptionalStep("diagnose", lambda recipe: recipe.diagnose.mode != "off",
                 diagnose_post_training_models),
    OptionalStep("latency", lambda recipe: recipe.bench.enabled, measure_latencies),
    OptionalStep("micro", lambda recipe: recipe.micro.enabled, export_for_microcontrollers),
    OptionalStep("metadata", lambda recipe: recipe.convert.metadata, embed_run_metadata),
)
