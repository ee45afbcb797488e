"""Low-rank factorization: a 1x1 convolution or Dense layer replaced by two thinner ones from a truncated SVD of
its kernel, then a (distilled) fine-tune.

A kernel W (C_in x C_out) is U S Vᵀ; keeping the r largest singular values gives W ≈ A B with
A = U_r √S_r (C_in x r) and B = √S_r V_rᵀ (r x C_out): a first layer of r channels (no bias, no activation)
and a second with the original layer's name, bias and activation. It costs r (C_in + C_out) weights and MACs per
position instead of C_in C_out, so it pays only below the break-even rank C_in C_out / (C_in + C_out); layers
whose chosen rank is not below it are left whole, with the reason. MobileNetV2's 3x3 convolutions are depthwise
(one filter per channel: nothing to factor), so its candidates are the expand and project 1x1 convolutions and
the classifier.

    plan = plan_ranks(model, LowRankConfig(energy=0.9))    # or mac_budget=0.5: the energy solved for
    thinner = factorize(model, plan.ranks)                 # weights from the SVD, every other layer copied
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import tf_keras as keras

from tflite_pipeline.config.recipe import Recipe
from tflite_pipeline.config.sections import LowRankConfig
from tflite_pipeline.errors import RecipeError
from tflite_pipeline.model.rebuild import flat_model
from tflite_pipeline.optimize.channels import model_macs
from tflite_pipeline.optimize.layers import select_layers
from tflite_pipeline.optimize.stage import FineTuneStage, StageContext, StageOutput, StageRecord

FIRST_SUFFIX = "_lowrank"   # the first (rank-r) layer of a factored pair; the second keeps the layer's name


@dataclass(frozen=True)
class LayerRank:
    """One candidate layer: its kernel's shape, the rank chosen, and why it was left whole (`skipped`)."""

    layer: str
    c_in: int
    c_out: int
    positions: int               # output positions per image (H x W for a convolution, 1 for Dense)
    rank: int                    # the chosen rank (factored only when below `break_even`)
    energy: float                # fraction of sum(s²) the rank keeps
    skipped: str = ""

    @property
    def break_even(self) -> float:
        return self.c_in * self.c_out / (self.c_in + self.c_out)

    @property
    def macs_before(self) -> int:
        return self.positions * self.c_in * self.c_out

    @property
    def macs_after(self) -> int:
        return self.macs_before if self.skipped else self.positions * self.rank * (self.c_in + self.c_out)


@dataclass(frozen=True)
class RankPlan:
    """The ranks for a model: every candidate layer, the energy they were chosen at, and the MACs it saves."""

    layers: tuple[LayerRank, ...]
    energy: float
    macs_before: int

    @property
    def ranks(self) -> dict[str, int]:
        return {r.layer: r.rank for r in self.layers if not r.skipped}

    @property
    def macs_after(self) -> int:
        return self.macs_before - sum(r.macs_before - r.macs_after for r in self.layers)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RankPlan:
        fields = {f.name for f in dataclasses.fields(LayerRank)}
        return cls(tuple(LayerRank(**{k: v for k, v in r.items() if k in fields}) for r in data["layers"]),
                   data["energy"], data["macs_before"])

    def to_dict(self) -> dict[str, Any]:
        return {"energy": self.energy, "macs_before": self.macs_before, "macs_after": self.macs_after,
                "layers": [{**asdict(r), "break_even": round(r.break_even, 2)} for r in self.layers]}

    def format_table(self) -> str:
        rows = ["| layer | C_in x C_out | break-even rank | rank | energy kept | MACs |",
                "|---|---|---:|---:|---:|---|"]
        for r in self.layers:
            macs = f"{r.macs_before:,} -> {r.macs_after:,}" if not r.skipped else f"left whole: {r.skipped}"
            rows.append(f"| {r.layer} | {r.c_in} x {r.c_out} | {r.break_even:.1f} | {r.rank} | {r.energy:.1%} | "
                        f"{macs} |")
        return "\n".join(rows)


def _kernel_matrix(layer: keras.layers.Layer) -> np.ndarray:
    kernel = layer.get_weights()[0]
    return kernel.reshape(-1, kernel.shape[-1])   # (1, 1, C_in, C_out) -> (C_in, C_out)


def _is_candidate(layer: keras.layers.Layer) -> bool:
    if type(layer) is keras.layers.Dense:
        return True
    return (type(layer) is keras.layers.Conv2D and tuple(layer.kernel_size) == (1, 1) and layer.groups == 1
            and layer.data_format == "channels_last")


def candidate_layers(model: keras.Model, config: LowRankConfig) -> list[keras.layers.Layer]:
    """The selected 1x1 Conv2D and Dense layers (`layers`, `layer_types`, `exclude` as in the other stages)."""
    model = flat_model(model)
    names = select_layers(model, "lowrank", patterns=config.layers, layer_types=config.layer_types,
                          exclude=config.exclude)
    return [model.get_layer(n) for n in names if _is_candidate(model.get_layer(n))]


def _rank_for(singular: np.ndarray, energy: float, multiple: int) -> tuple[int, float]:
    """The smallest rank keeping `energy` of sum(s²), rounded up to `multiple`; with the energy it keeps."""
    share = np.cumsum(singular ** 2) / max(float(np.sum(singular ** 2)), 1e-30)
    rank = int(np.searchsorted(share, energy - 1e-9) + 1)
    rank = min(len(singular), int(math.ceil(rank / multiple) * multiple))
    return rank, float(share[rank - 1])


def plan_ranks(model: keras.Model, config: LowRankConfig) -> RankPlan:
    """Each candidate layer's rank: by retained `energy`, or, with `mac_budget`, by the one energy (found by
    bisection) at which the whole model keeps at most that fraction of its MACs. Raises `RecipeError` when no
    candidate layer exists or the budget cannot be met by factoring alone."""
    model = flat_model(model)
    layers = candidate_layers(model, config)
    if not layers:
        raise RecipeError(f"`lowrank` finds no 1x1 Conv2D or Dense layer to factor in {model.name!r} (types "
                          f"{list(config.layer_types)}, exclude {list(config.exclude)}).")
    total = model_macs(model)
    classes = int(model.outputs[0].shape[-1])
    shapes = []   # per layer, once: (name, C_in, C_out, output positions, singular values)
    for layer in layers:
        matrix = _kernel_matrix(layer)
        shapes.append((layer.name, *matrix.shape, int(np.prod([d or 1 for d in layer.output_shape[1:-1]])),
                       np.linalg.svd(matrix, compute_uv=False)))

    def at(energy: float) -> RankPlan:
        ranks = []
        for name, c_in, c_out, positions, singular in shapes:
            row = LayerRank(name, c_in, c_out, positions, *_rank_for(singular, energy, config.multiple))
            if c_out == classes:
                row = replace(row, skipped="the classifier (a rank below the class count caps the classes it can "
                                           "tell apart)")
            elif row.rank >= row.break_even:
                row = replace(row, skipped=f"rank {row.rank} is not below the break-even {row.break_even:.1f}")
            ranks.append(row)
        return RankPlan(tuple(ranks), energy, total)

    if not config.mac_budget:
        return at(config.energy)
    target = config.mac_budget * total
    low, high = 0.0, 1.0
    smallest = at(low).macs_after
    if smallest > target:
        raise RecipeError(f"Received `lowrank.mac_budget={config.mac_budget}`, but factoring every candidate layer "
                          f"to rank {config.multiple} keeps {smallest / total:.1%} of the MACs; raise the "
                          "budget, or combine with [channels].")
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if at(middle).macs_after <= target else (low, middle)
    return at(low)


def factorize(model: keras.Model, ranks: Mapping[str, int]) -> keras.Model:
    """A copy of `model` where every layer in `ranks` is two layers from its kernel's truncated SVD at that rank
    (the first named `<layer>_lowrank`; the second keeps the name, bias and activation); other weights copied."""
    model = flat_model(model)
    if isinstance(model, keras.Sequential):
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    config = model.get_config()
    entries = []
    for entry in config["layers"]:
        name = entry["config"]["name"]
        if name not in ranks:
            entries.append(entry)
            continue
        first = copy.deepcopy(entry)
        first["name"] = first["config"]["name"] = name + FIRST_SUFFIX
        first["config"].update({"use_bias": False, "activation": "linear", "kernel_regularizer": None,
                                "activity_regularizer": None,
                                "filters" if entry["class_name"] == "Conv2D" else "units": int(ranks[name])})
        second = copy.deepcopy(entry)
        if entry["class_name"] == "Conv2D":
            second["config"]["strides"] = (1, 1)
        second["inbound_nodes"] = [[[first["name"], index, 0, {}]] for index in range(len(entry["inbound_nodes"]))]
        entries += [first, second]
    config["layers"] = entries
    factored = keras.Model.from_config(config)
    for layer in factored.layers:
        if layer.name in ranks:
            source = model.get_layer(layer.name)
            a, b = _factors(_kernel_matrix(source), ranks[layer.name])
            first = factored.get_layer(layer.name + FIRST_SUFFIX)
            first.set_weights([a.reshape(first.get_weights()[0].shape)])
            layer.set_weights([b.reshape(layer.get_weights()[0].shape), *source.get_weights()[1:]])
        elif not layer.name.endswith(FIRST_SUFFIX) or layer.name[:-len(FIRST_SUFFIX)] not in ranks:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return factored


def _factors(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    u, s, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
    root = np.sqrt(s[:rank])
    return (u[:, :rank] * root).astype(np.float32), (root[:, None] * vt[:rank]).astype(np.float32)


class LowRank(FineTuneStage):
    """`[lowrank]`: 1x1 convolutions and Dense layers factored by truncated SVD, then fine-tuned (distilled when
    `[distill]` is on)."""

    section = "lowrank"
    stage_label = "factored"
    changes_architecture = True

    def check(self, model: keras.Model, recipe: Recipe) -> None:
        plan_ranks(model, recipe.lowrank)

    def run(self, model: keras.Model, previous: StageRecord | None, context: StageContext) -> StageOutput:
        config = context.recipe.lowrank
        plan = plan_ranks(model, config)
        factored = len(plan.ranks)
        context.log(f"[lowrank] {factored} of {len(plan.layers)} layers factored at {plan.energy:.1%} energy: MACs "
                    f"{plan.macs_before:,} -> {plan.macs_after:,} ({plan.macs_after / plan.macs_before:.1%}); "
                    f"{len(plan.layers) - factored} left whole (rank not below break-even)")
        if not factored:
            raise RecipeError(f"`lowrank` factors no layer of {model.name!r}: at {plan.energy:.1%} energy every "
                              "candidate's rank is at or above its break-even; lower `lowrank.energy` or set "
                              "`lowrank.mac_budget`.")
        thinner = context.tuner.fit(factorize(model, plan.ranks), epochs=config.epochs,
                                    learning_rate=config.learning_rate)
        record = context.record(self.stage_label, thinner, macs=model_macs(thinner), layers=tuple(plan.ranks))
        return self.output(context.recipe, thinner, record, lowrank=plan.to_dict())
