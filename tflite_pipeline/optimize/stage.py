"""The stage protocol: every model-changing step of a run is one `Stage`.

A stage is enabled and shaped by its recipe section, takes the previous stage's model and returns a new one
(never mutating its input), and says what it did in a `StageRecord`. The orchestrator (`runs.pipeline`) only
loops over `STAGES` (see `optimize/__init__.py`): it caches each finished stage under a key chained from
`settings()` and times it; adding a technique means one module with a `Stage` and one line in `STAGES`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, ClassVar, Protocol

import numpy as np
import tf_keras as keras

from tflite_pipeline.config.recipe import Recipe
from tflite_pipeline.data.folders import DatasetSplits, ImageFolder
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.model.properties import count_parameters
from tflite_pipeline.model.train import FineTuner
from tflite_pipeline.progress import Log
from tflite_pipeline.progress import log as _stderr


@dataclass(frozen=True)
class StageRecord:
    """One Keras stage of a run: its accuracy and what it did to the weights."""

    name: str
    keras_top1: float
    parameters: int
    layers: tuple[str, ...] = ()          # layers the stage pruned or clustered
    sparsity: float | None = None         # mean zero fraction over those layers (Keras side)
    clusters: int | None = None           # most distinct values in one clustered kernel
    macs: int | None = None               # multiply-accumulates per image (channel pruning lowers them)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageRecord:
        return cls(**{**data, "layers": tuple(data.get("layers", ()))})

    def inherited(self) -> dict[str, Any]:
        """The weight facts a later stage that keeps them (QAT) reports again: layers, sparsity, clusters."""
        facts = {"layers": self.layers, "sparsity": self.sparsity, "clusters": self.clusters}
        return {key: value for key, value in facts.items() if value not in (None, ())}


@dataclass(frozen=True)
class StageOutput:
    """What a stage made: `label` names it (baseline, thinned, pruned, clustered, qat, pqat, cqat), `record`
    is None only for the baseline (its accuracy is measured by the parity check). `extras` are stage-specific
    facts the report needs (the thinned stage's channel plan), as JSON-able state."""

    label: str
    model: keras.Model
    record: StageRecord | None
    is_qat: bool = False
    changes_architecture: bool = False   # fewer channels: its float32 model is exported too (latency before/after)
    extras: Mapping[str, Any] | None = None

    def cache_info(self) -> dict[str, Any]:
        return {"record": asdict(self.record) if self.record else None, "extras": dict(self.extras or {})}

    @classmethod
    def from_cache(cls, stage: Stage, label: str, model: keras.Model, info: Mapping[str, Any]) -> StageOutput:
        record = info.get("record")
        return cls(label, model, StageRecord.from_dict(record) if record else None, is_qat=stage.is_qat,
                   changes_architecture=stage.changes_architecture, extras=info.get("extras") or None)


@dataclass(frozen=True)
class StageContext:
    """What every stage may use: the recipe, the data and its preprocessing, the float baseline (the teacher
    when `[distill]` is on) and the log."""

    recipe: Recipe
    splits: DatasetSplits
    spec: PreprocessSpec
    baseline: keras.Model | None = None
    log: Log = _stderr

    @cached_property
    def tuner(self) -> FineTuner:
        """The fine-tune loop every stage after the baseline shares (same data, batch size, seed, teacher)."""
        r = self.recipe
        distill = r.distill if r.distill.enabled else None
        return FineTuner(train=self.splits.train, spec=self.spec, batch_size=r.train.batch_size, seed=r.train.seed,
                         augment=r.train.augment, teacher=self.baseline if distill else None, distill=distill,
                         deterministic=r.data.deterministic, log=self.log)

    def calibration_images(self) -> ImageFolder:
        """The calibration images every int8 step uses: QAT's activation ranges and the converter's."""
        return self.splits.calibration.subset(self.recipe.convert.calibration_samples, seed=self.recipe.train.seed)

    def batches(self, folder: ImageFolder) -> Iterator[np.ndarray]:
        """`folder`'s preprocessed images, in training-size batches, without labels."""
        return (images for images, _ in folder.batches(self.spec, self.recipe.train.batch_size))

    def record(self, label: str, model: keras.Model, *, macs: int | None, **weight_facts: Any) -> StageRecord:
        """Measure `model`'s Keras top-1 on the validation split and log it: the stage's record."""
        from tflite_pipeline.tflite.parity import keras_accuracy

        top1 = keras_accuracy(model, self.splits.validation, self.spec, self.recipe.verify.batch_size)
        self.log(f"  {label}: Keras top-1 {top1:.2%}")
        return StageRecord(name=label, keras_top1=top1, parameters=count_parameters(model), macs=macs,
                           **weight_facts)


class Stage(Protocol):
    """One model-changing step. `section` is the recipe section that enables and shapes it."""

    section: ClassVar[str]
    makes_baseline: ClassVar[bool]   # True for the step whose output is the float baseline (train)
    is_qat: ClassVar[bool]           # its model carries fake-quant wrappers (saved as .h5, converted as QAT)
    changes_architecture: ClassVar[bool]  # it removes channels (MACs and float latency change)

    def enabled(self, recipe: Recipe) -> bool: ...

    def label(self, recipe: Recipe) -> str:
        """The stage's name in file names, the report and the cache (`pruned`, `pqat`, ...)."""
        ...

    def step_name(self, recipe: Recipe) -> str:
        """Its tag in progress lines and its key in the report's `seconds`."""
        ...

    def settings(self, recipe: Recipe) -> list[object]:
        """Everything in the recipe that shapes its output: with the previous stage's key, its cache key."""
        ...

    def check(self, model: keras.Model, recipe: Recipe) -> None:
        """Fail with a typed error before any training when the stage cannot work on `model`."""
        ...

    def run(self, model: keras.Model, previous: StageRecord | None, context: StageContext) -> StageOutput:
        """Return the stage's new model (the input is left untouched) and its record. `previous` is the
        record of the stage before (None after the baseline)."""
        ...


class FineTuneStage:
    """Defaults shared by the stages after the baseline: named by a fixed label, keyed by their section and
    `[distill]`, nothing to check up front."""

    section: ClassVar[str] = ""
    stage_label: ClassVar[str] = ""
    makes_baseline: ClassVar[bool] = False
    is_qat: ClassVar[bool] = False
    changes_architecture: ClassVar[bool] = False

    def enabled(self, recipe: Recipe) -> bool:
        return bool(getattr(recipe, self.section).enabled)

    def label(self, recipe: Recipe) -> str:
        return self.stage_label

    def step_name(self, recipe: Recipe) -> str:
        return self.label(recipe)

    def settings(self, recipe: Recipe) -> list[object]:
        return [getattr(recipe, self.section).to_dict(), recipe.distill.to_dict() if recipe.distill.enabled else None]

    def check(self, model: keras.Model, recipe: Recipe) -> None:
        return None

    def output(self, recipe: Recipe, model: keras.Model, record: StageRecord, **extras: Any) -> StageOutput:
        return StageOutput(self.label(recipe), model, record, is_qat=self.is_qat,
                           changes_architecture=self.changes_architecture, extras=extras or None)


def macs_before(previous: StageRecord | None, model: keras.Model) -> int:
    """The multiply-accumulates of the model a stage starts from (stages that keep the graph keep them)."""
    if previous is not None and previous.macs is not None:
        return previous.macs
    from tflite_pipeline.optimize.channels import model_macs

    return model_macs(model)
