"""Weight clustering (weight sharing, tfmot): each selected layer's weights take one of `clusters`
shared values, which compresses well and survives cluster-preserving QAT."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from tflite_pipeline.config.recipe import Recipe
from tflite_pipeline.config.sections import ClusterConfig
from tflite_pipeline.errors import RecipeError
from tflite_pipeline.model.files import copy_model
from tflite_pipeline.model.rebuild import flat_model
from tflite_pipeline.optimize.layers import select_layers
from tflite_pipeline.optimize.prune import kernel_sparsity
from tflite_pipeline.optimize.stage import FineTuneStage, StageContext, StageOutput, StageRecord, macs_before

_clustering = tfmot.clustering.keras


def check_clustering(model: keras.Model, config: ClusterConfig) -> list[str]:
    """The layers to cluster; `RecipeError` when one has fewer weights than `clusters`."""
    model = flat_model(model)
    names = select_layers(model, "cluster", patterns=config.layers, layer_types=config.layer_types,
                          exclude=config.exclude)
    for name in names:
        size = int(np.prod(model.get_layer(name).get_weights()[0].shape))
        if size < config.clusters:
            raise RecipeError(f"Received `cluster.clusters={config.clusters}` but layer {name!r} has only {size} "
                              "weights; lower `cluster.clusters` or exclude the layer in `cluster.exclude`.")
    return names


def too_sparse_for_clusters(model: keras.Model, names: list[str], config: ClusterConfig) -> dict[str, int]:
    """With `preserve_sparsity`, the layers among `names` left with fewer than `clusters - 1` nonzero weights (a
    small layer at high sparsity), with that count. tfmot's sparsity-preserving k-means++ needs a weight per
    centroid on each side of zero and fails on them; they get one cluster per nonzero weight plus the zero instead,
    and stay wrapped, or the fine-tune would fill their zeros back in."""
    if not config.preserve_sparsity:
        return {}
    nonzero = {name: int(np.count_nonzero(model.get_layer(name).get_weights()[0])) for name in names}
    return {name: count for name, count in nonzero.items() if count < config.clusters - 1}


def cluster_weights(model: keras.Model, config: ClusterConfig,
                    log: Callable[[str], None] = lambda _: None) -> tuple[keras.Model, list[str]]:
    """A copy of `model` with the selected layers wrapped for clustering (k-means++ centroids), and their names.
    A pruned layer with fewer nonzero weights than `clusters` keeps each of them (`too_sparse_for_clusters`, said
    in `log`).

    Raises `RecipeError` when a layer has fewer weights than `clusters` or a pattern matches nothing.
    """
    model = flat_model(model)
    names = check_clustering(model, config)
    counts = dict.fromkeys(names, config.clusters)
    for name, nonzero in too_sparse_for_clusters(model, names, config).items():
        counts[name] = max(nonzero + 1, 2)
        log(f"[cluster] {name}: {nonzero} nonzero weights after pruning, fewer than {config.clusters} clusters: "
            f"each keeps its own value ({counts[name]} clusters with the zero)")
    init = _clustering.CentroidInitialization.KMEANS_PLUS_PLUS
    base = copy_model(model)  # tfmot wraps the layer objects themselves: never the caller's

    def wrap(layer: keras.layers.Layer) -> keras.layers.Layer:
        if layer.name not in counts:
            return layer
        return _clustering.cluster_weights(layer, number_of_clusters=counts[layer.name], cluster_centroids_init=init,
                                           preserve_sparsity=config.preserve_sparsity)

    clustered = keras.models.clone_model(base, clone_function=wrap)
    return clustered, names


def strip_clustering(model: keras.Model) -> keras.Model:
    """Remove the clustering wrappers, keeping the shared weight values."""
    return _clustering.strip_clustering(model)


def unique_weights(model: keras.Model, names: list[str]) -> dict[str, int]:
    """Number of distinct kernel values per named layer (Keras side)."""
    return {name: int(np.unique(model.get_layer(name).get_weights()[0]).size) for name in names}


class Cluster(FineTuneStage):
    """`[cluster]`: weight sharing (at most `clusters` distinct values per kernel) while fine-tuning."""

    section = "cluster"
    stage_label = "clustered"

    def check(self, model: keras.Model, recipe: Recipe) -> None:
        check_clustering(model, recipe.cluster)

    def run(self, model: keras.Model, previous: StageRecord | None, context: StageContext) -> StageOutput:
        c = context.recipe.cluster
        wrapped, layers = cluster_weights(model, c, log=context.log)
        unkept = [name for name in (previous.layers if previous and previous.sparsity else ()) if name not in layers]
        if unkept:
            context.log(f"[cluster] warning: {', '.join(unkept)} pruned but not clustered: this fine-tune fills "
                        "their zeros back in (select them in `cluster.layers` / drop them from `cluster.exclude`)")
        context.log(f"[cluster] {len(layers)} layers, {c.clusters} clusters")
        clustered = strip_clustering(context.tuner.fit(wrapped, epochs=c.epochs, learning_rate=c.learning_rate))
        sparsity = kernel_sparsity(clustered, layers)
        kept = {"sparsity": sum(sparsity.values()) / len(sparsity)} if previous and previous.sparsity else {}
        record = context.record(self.stage_label, clustered, macs=macs_before(previous, model), layers=tuple(layers),
                                clusters=max(unique_weights(clustered, layers).values()), **kept)
        return self.output(context.recipe, clustered, record)
