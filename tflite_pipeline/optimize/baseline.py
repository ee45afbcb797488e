"""The baseline stage: train (or fine-tune) the float model before any compression, when `train.epochs > 0`.

Its output is the float baseline every later stage and every `.tflite` is measured against."""

from __future__ import annotations

from typing import ClassVar

import tf_keras as keras

from tflite_pipeline.config.recipe import Recipe
from tflite_pipeline.config.sections import MOBILENET_V2
from tflite_pipeline.model.train import train_classifier
from tflite_pipeline.optimize.stage import StageContext, StageOutput, StageRecord


class TrainBaseline:
    section: ClassVar[str] = "train"
    makes_baseline: ClassVar[bool] = True
    is_qat: ClassVar[bool] = False
    changes_architecture: ClassVar[bool] = False

    def enabled(self, recipe: Recipe) -> bool:
        return recipe.train.epochs > 0

    def label(self, recipe: Recipe) -> str:
        return "baseline"

    def step_name(self, recipe: Recipe) -> str:
        return "train"

    def settings(self, recipe: Recipe) -> list[object]:
        return []  # [train] is in every stage's key (see runs.pipeline.stage_keys)

    def check(self, model: keras.Model, recipe: Recipe) -> None:
        return None

    def run(self, model: keras.Model, previous: StageRecord | None, context: StageContext) -> StageOutput:
        r, log = context.recipe, context.log
        if r.model.source != MOBILENET_V2:
            log(f"[train] fine-tuning your model for {r.train.epochs} epochs first (train.epochs; set "
                "train.epochs=0 to take it as trained)")
        log(f"[train] {model.name}, {model.count_params():,} parameters, input {context.spec.input_shape}")
        trained = train_classifier(model, context.splits.train, context.spec, r.train,
                                   validation=context.splits.validation, deterministic=r.data.deterministic, log=log)
        return StageOutput("baseline", trained, None)
