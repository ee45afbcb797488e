"""Channel pruning: remove whole channels and rebuild a thinner Keras model with the surviving weights.

Magnitude pruning stores its zeros densely: the `.tflite` is smaller only after compression and no
faster. This stage deletes channels, so every kernel shrinks and dense kernels do less work.

Which channels can go is read from the graph, not from layer names. A *channel group* starts at a
Conv2D or Dense layer (its source) whose output channels pass only through channel-wise layers
(BatchNormalization, depthwise convolution, activations, padding, pooling, dropout) into Conv2D or
Dense layers (its consumers), which lose the matching input channels. In MobileNetV2 these are the
expanded channels of every inverted-residual block (expand 1x1 -> depthwise 3x3 -> project 1x1), the
stem (Conv1 -> block 0's depthwise -> its project), the outputs of single-block stages (project ->
the next expand) and the head (Conv_1 -> pooling -> classifier). Channels that reach a residual Add,
a Concatenate, a Flatten, a model output or an unknown layer are left alone, with the reason in
`ChannelGraph.skipped`, so nothing here ever breaks a residual connection.

    graph = ChannelGraph.of(model)
    scores = channel_importance(graph, "activation", image_batches)
    plan = plan_channels(graph, scores, ChannelsConfig(mac_budget=0.5))   # half the MACs
    thinner = apply_plan(model, plan)                                      # surviving weights copied in
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tf_keras as keras

from tflite_pipeline.config.recipe import Recipe
from tflite_pipeline.config.sections import ChannelsConfig
from tflite_pipeline.errors import ModelError, RecipeError
from tflite_pipeline.model.rebuild import flat_model
from tflite_pipeline.optimize.stage import FineTuneStage, StageContext, StageOutput, StageRecord

_L = keras.layers
# Layers that keep channel c in channel c and have no per-channel weights
_PASSTHROUGH = (_L.ReLU, _L.LeakyReLU, _L.ELU, _L.ThresholdedReLU, _L.ZeroPadding2D, _L.Cropping2D,
                _L.UpSampling2D, _L.Dropout, _L.GaussianDropout, _L.GaussianNoise, _L.MaxPooling2D,
                _L.AveragePooling2D, _L.GlobalAveragePooling2D, _L.GlobalMaxPooling2D)
_NOT_ELEMENTWISE = ("softmax", "log_softmax")


@dataclass(frozen=True)
class ChannelGroup:
    """Channels removed together: `source`'s outputs, the same channels of `channelwise` layers
    (BatchNormalization, depthwise convolutions) and the matching inputs of `consumers`."""

    source: str
    channels: int
    channelwise: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Cost:
    """MACs of one weighted layer: `factor * in_channels * out_channels`; the groups that resize them."""

    factor: int
    in_channels: int
    out_channels: int
    in_group: str | None = None
    out_group: str | None = None


@dataclass(frozen=True)
class ChannelGraph:
    """The prunable channel groups of a model, the sources left alone (and why), and a MAC model."""

    model: keras.Model
    groups: tuple[ChannelGroup, ...]
    skipped: Mapping[str, str]           # source layer -> why its channels stay
    costs: Mapping[str, _Cost]           # every Conv2D/DepthwiseConv2D/Dense layer

    @classmethod
    def of(cls, model: keras.Model) -> ChannelGraph:
        """Trace every Conv2D/Dense layer's output channels (of the flat tf_keras rebuild of a nested or Keras 3
        model, `rebuild.flat_model`)."""
        model = flat_model(model)
        config = model.get_config()
        outbound: dict[str, list[str]] = {layer["name"]: [] for layer in config["layers"]}
        node_count = {layer["name"]: len(layer["inbound_nodes"]) for layer in config["layers"]}
        for layer in config["layers"]:
            for node in layer["inbound_nodes"]:
                for inbound in node:
                    outbound[inbound[0]].append(layer["name"])
        outputs = {name for name, *_ in config["output_layers"]}
        groups, skipped = [], {}
        for layer in model.layers:
            if not _is_source(layer):
                continue
            traced = _trace(model, layer, outbound, node_count, outputs)
            if isinstance(traced, str):
                skipped[layer.name] = traced
            else:
                groups.append(traced)
        group_of_out = {g.source: g.source for g in groups}
        group_of_in: dict[str, str] = {}
        for g in groups:
            for name in g.channelwise:
                group_of_in[name] = group_of_out[name] = g.source
            for name in g.consumers:
                group_of_in[name] = g.source
        costs = {layer.name: _layer_cost(layer, node_count[layer.name], group_of_in.get(layer.name),
                                         group_of_out.get(layer.name))
                 for layer in model.layers if _is_weighted(layer)}
        return cls(model=model, groups=tuple(groups), skipped=skipped, costs=costs)

    def group(self, source: str) -> ChannelGroup:
        return next(g for g in self.groups if g.source == source)

    def macs(self, counts: Mapping[str, int] | None = None) -> int:
        """Multiply-accumulates per image, with the groups in `counts` resized (default: as the model is)."""
        counts = counts or {}
        total = 0
        for cost in self.costs.values():
            cin = counts.get(cost.in_group, cost.in_channels) if cost.in_group else cost.in_channels
            cout = counts.get(cost.out_group, cost.out_channels) if cost.out_group else cost.out_channels
            total += cost.factor * cin * cout
        return total


def _is_source(layer: _L.Layer) -> bool:
    return type(layer) in (_L.Conv2D, _L.Dense)


def _is_weighted(layer: _L.Layer) -> bool:
    return type(layer) in (_L.Conv2D, _L.DepthwiseConv2D, _L.Dense)


def _channels_last(layer: _L.Layer) -> bool:
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def _is_channelwise(layer: _L.Layer) -> bool:
    """Per-channel weights, channel c in -> channel c out."""
    if type(layer) is _L.BatchNormalization:
        rank = len(layer.input_shape)
        return len(layer.axis) == 1 and layer.axis[0] in (-1, rank - 1)
    return type(layer) is _L.DepthwiseConv2D and layer.depth_multiplier == 1 and _channels_last(layer)


def _is_passthrough(layer: _L.Layer) -> bool:
    if type(layer) is _L.Activation:
        return getattr(layer.activation, "__name__", "") not in _NOT_ELEMENTWISE
    return type(layer) in _PASSTHROUGH and _channels_last(layer)


def _is_consumer(layer: _L.Layer) -> bool:
    if type(layer) is _L.Conv2D:
        return layer.groups == 1 and _channels_last(layer)
    return type(layer) is _L.Dense and len(layer.input_shape) == 2


def _trace(model: keras.Model, source: _L.Layer, outbound: Mapping[str, list[str]], node_count: Mapping[str, int],
           outputs: set[str]) -> ChannelGroup | str:
    """The group that `source`'s output channels form, or why they cannot be removed."""
    if node_count[source.name] != 1:
        return "the layer is called more than once (shared weights)"
    if not _channels_last(source) or (type(source) is _L.Conv2D and source.groups != 1):
        return "grouped or channels-first convolution"
    if getattr(source.activation, "__name__", "") in _NOT_ELEMENTWISE:
        return "its activation (softmax) mixes channels"
    channelwise, consumers, seen = [], [], {source.name}
    frontier = [source.name]
    while frontier:
        name = frontier.pop(0)
        if name in outputs:
            return f"its channels are a model output (via {name})" if name != source.name else "it is a model output"
        for nxt in outbound[name]:
            if nxt in seen:
                continue
            seen.add(nxt)
            layer = model.get_layer(nxt)
            if node_count[nxt] != 1:
                return f"its channels reach {nxt!r}, which is called more than once"
            if _is_consumer(layer):
                consumers.append(nxt)
            elif _is_channelwise(layer):
                channelwise.append(nxt)
                frontier.append(nxt)
            elif _is_passthrough(layer):
                frontier.append(nxt)
            else:
                return f"its channels reach {nxt!r} ({type(layer).__name__}), which must keep them"
    if not consumers:
        return "no Conv2D or Dense layer consumes its channels"
    return ChannelGroup(source=source.name, channels=int(source.get_weights()[0].shape[-1]),
                        channelwise=tuple(channelwise), consumers=tuple(consumers))


def _layer_cost(layer: _L.Layer, calls: int, in_group: str | None, out_group: str | None) -> _Cost:
    kernel = layer.get_weights()[0]
    # output pixels (1 for a Dense on vectors), over every call of a shared layer
    positions = sum(int(np.prod(layer.get_output_shape_at(i)[1:-1])) for i in range(calls))
    if type(layer) is _L.DepthwiseConv2D:  # (kh, kw, C, multiplier): no input-channel sum
        return _Cost(factor=positions * int(np.prod(kernel.shape[:2])) * kernel.shape[3], in_channels=1,
                     out_channels=kernel.shape[2], out_group=out_group)
    return _Cost(factor=positions * int(np.prod(kernel.shape[:-2])), in_channels=kernel.shape[-2],
                 out_channels=kernel.shape[-1], in_group=in_group, out_group=out_group)


def model_macs(model: keras.Model) -> int:
    """Multiply-accumulates per image of the model's Conv2D, DepthwiseConv2D and Dense layers."""
    return ChannelGraph.of(model).macs()


# --- importance -------------------------------------------------------------------------------------------

def _l1(graph: ChannelGraph, group: ChannelGroup) -> np.ndarray:
    kernel = graph.model.get_layer(group.source).get_weights()[0]
    return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)


def _bn_scale(graph: ChannelGraph, group: ChannelGroup) -> np.ndarray:
    """|gamma| of the BatchNormalization closest to the consumers (network slimming); L1 without one."""
    for name in reversed(group.channelwise):
        layer = graph.model.get_layer(name)
        if type(layer) is _L.BatchNormalization and layer.scale:
            return np.abs(layer.gamma.numpy())
    return _l1(graph, group)


def _activation(graph: ChannelGraph, groups: list[ChannelGroup], batches: Iterable[np.ndarray]
                ) -> dict[str, np.ndarray]:
    """Mean |activation| reaching each consumer times the L2 norm of that consumer's weights for the
    channel, summed over consumers: a first-order estimate of what removing the channel changes."""
    consumers = [(g.source, name) for g in groups for name in g.consumers]
    model = graph.model
    probe = keras.Model(model.inputs, [model.get_layer(name).input for _, name in consumers])
    sums = [np.zeros(graph.group(source).channels) for source, _ in consumers]
    count = 0
    for images in batches:
        outputs = probe(images, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for total, activation in zip(sums, outputs, strict=True):
            values = np.abs(np.asarray(activation, dtype=np.float64))
            total += values.reshape(len(values), -1, values.shape[-1]).mean(axis=1).sum(axis=0)  # per-image means
        count += len(images)
    if count == 0:
        raise ModelError("The activation criterion received no images; pass calibration images or use `l1`.")
    scores = {g.source: np.zeros(g.channels) for g in groups}
    for (source, name), total in zip(consumers, sums, strict=True):
        kernel = model.get_layer(name).get_weights()[0]
        rows = np.moveaxis(kernel, -2, 0).reshape(kernel.shape[-2], -1)  # input channel -> its weights
        scores[source] += total / count * np.linalg.norm(rows, axis=1)
    return scores


def channel_importance(graph: ChannelGraph, criterion: str, batches: Iterable[np.ndarray] | None = None
                       ) -> dict[str, np.ndarray]:
    """Per group (by source name), one score per channel; higher = more important.

    `criterion`: "activation" (needs `batches` of preprocessed images), "bn_scale" or "l1".
    """
    if criterion == "activation":
        if batches is None:
            raise ModelError("The activation criterion needs image batches; pass them or use `l1` or `bn_scale`.")
        return _activation(graph, list(graph.groups), batches)
    rank = {"l1": _l1, "bn_scale": _bn_scale}.get(criterion)
    if rank is None:
        raise RecipeError(f"Received `channels.criterion={criterion!r}`; expected activation, bn_scale or l1.")
    return {g.source: rank(graph, g) for g in graph.groups}


# --- planning ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChannelPlan:
    """Which channels of each group survive (sorted indices), and the MACs before and after."""

    keep: Mapping[str, np.ndarray]
    channels: Mapping[str, int]          # group source -> channels before
    macs_before: int
    macs_after: int
    ratio: float | None = None           # the uniform ratio the MAC budget solved for
    skipped: Mapping[str, str] = field(default_factory=dict)

    @property
    def mac_fraction(self) -> float:
        return self.macs_after / self.macs_before

    def counts(self) -> dict[str, tuple[int, int]]:
        """Group source -> (channels before, after)."""
        return {name: (self.channels[name], len(kept)) for name, kept in self.keep.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"macs_before": self.macs_before, "macs_after": self.macs_after, "ratio": self.ratio,
                "groups": {name: {"before": b, "after": a} for name, (b, a) in self.counts().items()},
                "skipped": dict(self.skipped)}

    def format_table(self) -> str:
        return format_groups(self.to_dict()["groups"])

    def state(self) -> dict[str, Any]:
        """Everything, the kept channel indices included, as JSON-ready values (what the stage cache stores)."""
        return {"keep": {name: kept.tolist() for name, kept in self.keep.items()}, "channels": dict(self.channels),
                "macs_before": self.macs_before, "macs_after": self.macs_after, "ratio": self.ratio,
                "skipped": dict(self.skipped)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ChannelPlan:
        return cls(**{**state, "keep": {name: np.asarray(kept, np.int64) for name, kept in state["keep"].items()}})


def format_groups(groups: Mapping[str, Mapping[str, int]]) -> str:
    """Markdown table of `ChannelPlan.to_dict()["groups"]`: channels before and after per group."""
    lines = ["| channel group (source layer) | channels before | after | removed |", "|---|---:|---:|---:|"]
    for name, g in groups.items():
        lines.append(f"| {name} | {g['before']} | {g['after']} | {1 - g['after'] / g['before']:.0%} |")
    return "\n".join(lines)


def kept_count(channels: int, ratio: float, *, multiple: int, min_channels: int) -> int:
    """Channels left after removing `ratio` of `channels`, rounded to a multiple of `multiple` (SIMD-friendly),
    never below `min_channels` (nor above `channels`). A ratio of 0 keeps every channel."""
    if ratio <= 0.0 or channels <= min_channels:
        return channels
    rounded = multiple * round(channels * (1.0 - ratio) / multiple)
    return min(channels, max(rounded, min_channels, multiple))


def _group_ratios(graph: ChannelGraph, config: ChannelsConfig) -> dict[str, float | None]:
    """Source -> the fixed ratio a `channels.ratios` pattern gives it, or None (the global ratio applies)."""
    for pattern in [*config.ratios, *config.exclude]:
        if not any(re.search(pattern, g.source) for g in graph.groups):
            field_name = "ratios" if pattern in config.ratios else "exclude"
            raise RecipeError(f"Received `channels.{field_name}` pattern {pattern!r}, which matches no channel group "
                              f"of {graph.model.name!r}; groups: {[g.source for g in graph.groups][:6]} ...")
    out: dict[str, float | None] = {}
    for g in graph.groups:
        if any(re.search(p, g.source) for p in config.exclude):
            out[g.source] = 0.0
            continue
        out[g.source] = next((r for p, r in config.ratios.items() if re.search(p, g.source)), None)
    return out


def plan_channels(graph: ChannelGraph, scores: Mapping[str, np.ndarray], config: ChannelsConfig) -> ChannelPlan:
    """Choose the channels to keep: the highest-scoring ones of each group.

    With `config.mac_budget > 0`, the global ratio is the smallest one (found by bisection) that brings
    the model within the budget; groups with a `ratios` entry keep theirs. Raises `RecipeError` when the
    budget cannot be met and `ModelError` when the model has no prunable channel group.
    """
    if not graph.groups:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(graph.skipped.items())[:5])
        raise ModelError(f"Model {graph.model.name!r} has no channels this stage can remove ({reasons}). It needs "
                         "Conv2D/Dense layers whose outputs reach other Conv2D/Dense layers only through "
                         "BatchNormalization, depthwise convolutions, activations, padding or pooling.")
    fixed = _group_ratios(graph, config)

    def counts_for(ratio: float) -> dict[str, int]:
        return {g.source: kept_count(g.channels, ratio if fixed[g.source] is None else fixed[g.source],
                                     multiple=config.multiple, min_channels=config.min_channels)
                for g in graph.groups}

    before = graph.macs()
    ratio: float | None = config.ratio
    if config.mac_budget > 0.0:
        target = config.mac_budget * before
        floor_macs = graph.macs(counts_for(1.0))
        if floor_macs > target:
            raise RecipeError(f"Received `channels.mac_budget={config.mac_budget}`; removing every prunable channel "
                              f"down to `min_channels={config.min_channels}` leaves {floor_macs / before:.1%} of "
                              f"the MACs ({len(graph.groups)} groups; {len(graph.skipped)} layers kept whole). "
                              "Raise the budget, lower min_channels, or take `exclude`/`ratios` off some groups.")
        low, high = 0.0, 1.0
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (low, mid) if graph.macs(counts_for(mid)) <= target else (mid, high)
        ratio = high
    counts = counts_for(ratio)
    keep = {g.source: np.sort(np.argsort(-np.asarray(scores[g.source]), kind="stable")[:counts[g.source]])
            for g in graph.groups}
    return ChannelPlan(keep=keep, channels={g.source: g.channels for g in graph.groups}, macs_before=before,
                       macs_after=graph.macs(counts), ratio=ratio if config.mac_budget > 0.0 else None,
                       skipped=dict(graph.skipped))


# --- rebuilding -------------------------------------------------------------------------------------------

def _slice(layer: _L.Layer, weights: list[np.ndarray], keep_in: np.ndarray | None,
           keep_out: np.ndarray | None) -> list[np.ndarray]:
    if type(layer) is _L.BatchNormalization or type(layer) is _L.DepthwiseConv2D:
        keep = keep_out if keep_out is not None else keep_in
        if keep is None:
            return weights
        axis = {4: 2}  # a depthwise kernel (kh, kw, C, 1): channels on axis 2; vectors on axis 0
        return [np.take(w, keep, axis=axis.get(w.ndim, 0)) for w in weights]
    kernel, *rest = weights
    if keep_in is not None:
        kernel = np.take(kernel, keep_in, axis=-2)
    if keep_out is not None:
        kernel = np.take(kernel, keep_out, axis=-1)
        rest = [np.take(bias, keep_out, axis=0) for bias in rest]
    return [kernel, *rest]


def apply_plan(model: keras.Model, plan: ChannelPlan) -> keras.Model:
    """A new, thinner model with `plan`'s channels and the original weights of the channels kept.

    The input model is untouched. A plan that keeps every channel gives a model with identical outputs.
    """
    model = flat_model(model)
    graph = ChannelGraph.of(model)
    keep_in: dict[str, np.ndarray] = {}
    keep_out: dict[str, np.ndarray] = {}
    for group in graph.groups:
        kept = plan.keep[group.source]
        keep_out[group.source] = kept
        for name in group.channelwise:
            keep_in[name] = keep_out[name] = kept
        for name in group.consumers:
            keep_in[name] = kept

    def clone_layer(layer: _L.Layer) -> _L.Layer:
        config = layer.get_config()
        if layer.name in plan.keep:
            config["filters" if type(layer) is _L.Conv2D else "units"] = len(plan.keep[layer.name])
        return layer.__class__.from_config(config)

    thin = keras.models.clone_model(model, clone_function=clone_layer)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            thin.get_layer(layer.name).set_weights(
                _slice(layer, weights, keep_in.get(layer.name), keep_out.get(layer.name)))
    return thin


def prune_channels(model: keras.Model, config: ChannelsConfig, batches: Iterable[np.ndarray] | None = None
                   ) -> tuple[keras.Model, ChannelPlan]:
    """Model in, thinner model out: score channels by `config.criterion`, plan for the ratio or MAC budget,
    rebuild. `batches` (preprocessed image arrays) feed the activation criterion."""
    model = flat_model(model)
    graph = ChannelGraph.of(model)
    scores = channel_importance(graph, config.criterion, batches) if graph.groups else {}
    plan = plan_channels(graph, scores, config)
    return apply_plan(model, plan), plan


def describe(plan: ChannelPlan) -> str:
    """One line for logs."""
    removed = sum(b - a for b, a in plan.counts().values())
    total = sum(b for b, _ in plan.counts().values())
    ratio = "" if plan.ratio is None else f", solved ratio {plan.ratio:.3f}"
    return (f"{len(plan.keep)} groups, {removed:,} of {total:,} channels removed{ratio}; MACs "
            f"{plan.macs_before / 1e6:,.1f}M -> {plan.macs_after / 1e6:,.1f}M ({plan.mac_fraction:.1%}); "
            f"{len(plan.skipped)} layers kept whole")


class ThinChannels(FineTuneStage):
    """`[channels]`: remove whole channels of the inverted-residual blocks (real MAC savings), then fine-tune."""

    section = "channels"
    stage_label = "thinned"
    changes_architecture = True

    def check(self, model: keras.Model, recipe: Recipe) -> None:
        graph = ChannelGraph.of(model)   # the groups exist and the budget can be met (l1 scores need no data)
        plan_channels(graph, channel_importance(graph, "l1") if graph.groups else {}, recipe.channels)

    def run(self, model: keras.Model, previous: StageRecord | None, context: StageContext) -> StageOutput:
        c, log = context.recipe.channels, context.log
        scored = context.splits.calibration.subset(c.samples, seed=context.recipe.train.seed)
        log(f"[channels] scoring channels by {c.criterion}" +
            (f" on {len(scored)} calibration images" if c.criterion == "activation" else ""))
        thinned, plan = prune_channels(model, c, context.batches(scored))
        log(f"  {describe(plan)}")
        if c.epochs:
            thinned = context.tuner.fit(thinned, epochs=c.epochs, learning_rate=c.learning_rate)
        record = context.record(self.stage_label, thinned, macs=plan.macs_after)
        return self.output(context.recipe, thinned, record, channels=plan.to_dict())
