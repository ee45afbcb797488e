"""Magnitude pruning (tfmot `prune_low_magnitude`): unstructured with a polynomial or constant
schedule, or structured 2:4. Pruned weights stay in the dense tensors: the `.tflite` gets smaller
only after compression, and runs no faster on dense kernels."""

from __future__ import annotations

import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from tflite_pipeline.config.recipe import Recipe
from tflite_pipeline.config.sections import PruneConfig
from tflite_pipeline.model.files import copy_model
from tflite_pipeline.model.rebuild import flat_model
from tflite_pipeline.optimize.layers import select_layers
from tflite_pipeline.optimize.stage import FineTuneStage, StageContext, StageOutput, StageRecord, macs_before

_sparsity = tfmot.sparsity.keras


def pruning_schedule(config: PruneConfig, total_steps: int) -> _sparsity.PruningSchedule:
    """The schedule over `total_steps` fine-tune steps; the target is reached at `end_fraction` of them."""
    end_step = max(1, int(total_steps * config.end_fraction))
    frequency = max(1, end_step // 20)
    if config.structure == "2:4":
        return _sparsity.ConstantSparsity(0.5, begin_step=0, frequency=frequency)
    if config.schedule == "constant":
        return _sparsity.ConstantSparsity(config.target_sparsity, begin_step=0, end_step=end_step, frequency=frequency)
    return _sparsity.PolynomialDecay(config.initial_sparsity, config.target_sparsity, begin_step=0,
                                     end_step=end_step, frequency=frequency)


def prune_low_magnitude(model: keras.Model, config: PruneConfig, total_steps: int) -> tuple[keras.Model, list[str]]:
    """A copy of `model` with the selected layers wrapped for pruning, and their names.

    Train it with `pruning_callbacks()`, then `strip_pruning`. Raises `RecipeError` when a layer
    pattern matches nothing.
    """
    model = flat_model(model)
    names = select_layers(model, "prune", patterns=config.layers, layer_types=config.layer_types,
                          exclude=config.exclude)
    schedule = pruning_schedule(config, total_steps)
    extra = {"sparsity_m_by_n": (2, 4)} if config.structure == "2:4" else {}

    base = copy_model(model)  # tfmot wraps the layer objects themselves: never the caller's

    def wrap(layer: keras.layers.Layer) -> keras.layers.Layer:
        return _sparsity.prune_low_magnitude(layer, pruning_schedule=schedule, **extra) if layer.name in names \
            else layer

    pruned = keras.models.clone_model(base, clone_function=wrap)
    return pruned, names


def pruning_callbacks() -> list[keras.callbacks.Callback]:
    """`UpdatePruningStep` must run during every pruning fine-tune, or the masks never update."""
    return [_sparsity.UpdatePruningStep()]


def strip_pruning(model: keras.Model) -> keras.Model:
    """Remove the pruning wrappers, keeping the zeroed weights (required before export)."""
    return _sparsity.strip_pruning(model)


def kernel_sparsity(model: keras.Model, names: list[str]) -> dict[str, float]:
    """Fraction of exact zeros in each named layer's kernel (Keras side)."""
    return {name: float(np.mean(model.get_layer(name).get_weights()[0] == 0)) for name in names}


class Prune(FineTuneStage):
    """`[prune]`: magnitude pruning (unstructured, or 2:4) while fine-tuning; the zeros are kept in the weights."""

    section = "prune"
    stage_label = "pruned"

    def check(self, model: keras.Model, recipe: Recipe) -> None:
        p = recipe.prune
        select_layers(model, "prune", patterns=p.layers, layer_types=p.layer_types, exclude=p.exclude)

    def run(self, model: keras.Model, previous: StageRecord | None, context: StageContext) -> StageOutput:
        p, tuner = context.recipe.prune, context.tuner
        wrapped, layers = prune_low_magnitude(model, p, tuner.steps(p.epochs))
        context.log(f"[prune] {len(layers)} layers, {p.structure} {p.schedule} "
                    f"{p.initial_sparsity:.0%}->{p.target_sparsity:.0%}" if p.structure == "unstructured" else
                    f"[prune] {len(layers)} layers, 2:4 structured")
        pruned = strip_pruning(tuner.fit(wrapped, epochs=p.epochs, learning_rate=p.learning_rate,
                                         callbacks=pruning_callbacks()))
        sparsity = kernel_sparsity(pruned, layers)
        record = context.record(self.stage_label, pruned, macs=macs_before(previous, model), layers=tuple(layers),
                                sparsity=sum(sparsity.values()) / len(sparsity))
        return self.output(context.recipe, pruned, record)
