"""What a run makes after its stages: the `.tflite` files to write (`ExportJob`) and everything measured about
them so far (`RunOutputs`), which conversion, verification and the optional steps fill in turn."""

from __future__ import annotations

from dataclasses import dataclass, field

import tf_keras as keras

from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.optimize.stage import StageContext, StageOutput
from tflite_pipeline.runs.folder import RunFolder
from tflite_pipeline.runs.report import ModelArtifact
from tflite_pipeline.tflite.convert import RepresentativeDataset, pixel_input_model
from tflite_pipeline.tflite.diagnose import Diagnosis, FallbackResult, OptionRanking
from tflite_pipeline.tflite.parity import ParityReport


@dataclass(frozen=True)
class ExportJob:
    """One `.tflite` to write: `<model>_<variant>.tflite`, converted as `kind` from a stage (None: the baseline)."""

    variant: str
    kind: str
    stage: StageOutput | None = None

    def source_model(self, baseline: keras.Model) -> keras.Model:
        return baseline if self.stage is None else self.stage.model

    def input_spec(self, spec: PreprocessSpec) -> PreprocessSpec:
        """The preprocessing of this `.tflite`'s input: the run's, or raw pixels for the pixels variant."""
        return spec.folded() if self.kind == "pixels" else spec

    def converted_model(self, baseline: keras.Model, spec: PreprocessSpec) -> keras.Model:
        """What the converter takes: the source model, behind its normalization for the pixels variant."""
        model = self.source_model(baseline)
        return pixel_input_model(model, spec) if self.kind == "pixels" else model


def export_jobs(stages: tuple[StageOutput, ...], variants: tuple[str, ...]) -> list[ExportJob]:
    """The recipe's variants of the baseline, the last stage as int8 (and as pixels when the recipe asks for that
    variant), and a stage that changed the architecture (channel pruning) also as float32 when float32 is asked
    for, so float latency before/after is measured."""
    jobs = [ExportJob(variant, variant) for variant in variants]
    thinned = next((s for s in stages if s.changes_architecture), None)
    if thinned is not None and "float32" in variants:
        jobs.append(ExportJob(f"{thinned.label}_float32", "float32", thinned))
    if stages:
        jobs.append(ExportJob(f"{stages[-1].label}_int8", "int8", stages[-1]))
        if "pixels" in variants:
            jobs.append(ExportJob(f"{stages[-1].label}_pixels", "pixels", stages[-1]))
    return jobs



@dataclass
class RunOutputs:
    """What a run has made so far, in its folder: the `.tflite` files (bytes and measured artifacts), the Keras
    model each came from, the parity report, and what the optional steps add (diagnoses, fallbacks, latency)."""

    baseline: keras.Model
    context: StageContext
    folder: RunFolder
    name: str                                  # file-name stem: `<name>_<variant>.tflite`
    jobs: list[ExportJob]
    representative: RepresentativeDataset | None = None
    pixel_representative: RepresentativeDataset | None = None  # raw-pixel calibration of the pixels variant
    flatbuffers: dict[str, bytes] = field(default_factory=dict)
    artifacts: list[ModelArtifact] = field(default_factory=list)
    sources: dict[str, tuple[str, keras.Model]] = field(default_factory=dict)  # variant -> (label, its Keras model)
    parity: ParityReport | None = None
    diagnoses: list[Diagnosis] = field(default_factory=list)
    fallbacks: list[FallbackResult] = field(default_factory=list)
    rankings: list[OptionRanking] = field(default_factory=list)    # options measured for a failed int8 model
    micro: list = field(default_factory=list)                      # export.micro.MicroExport per int8 model
    metadata: list = field(default_factory=list)                   # export.metadata.MetadataRecord per model
    warnings: list[str] = field(default_factory=list)

    def input_specs(self) -> dict[str, PreprocessSpec]:
        """The `.tflite`s whose input preprocessing is not the run's (the pixels variant's raw pixels)."""
        spec = self.context.spec
        return {job.variant: job.input_spec(spec) for job in self.jobs if job.input_spec(spec) != spec}
