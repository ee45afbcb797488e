"""Weight clustering (weight sharing, tfmot): each selected layer's weights take one of `clusters`
shared values, which compresses well and survives cluster-preserving QAT."""

from __future__ import annotations

import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from .errors import RecipeError
from .layers import select_layers
from .models import copy_model
from .rebuild import flat_model
from .recipe import ClusterConfig

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


def cluster_weights(model: keras.Model, config: ClusterConfig) -> tuple[keras.Model, list[str]]:
    """A copy of `model` with the selected layers wrapped for clustering (k-means++ centroids), and their names.

    Raises `RecipeError` when a layer has fewer weights than `clusters` or a pattern matches nothing.
    """
    model = flat_model(model)
    names = check_clustering(model, config)
    params = {"number_of_clusters": config.clusters,
              "cluster_centroids_init": _clustering.CentroidInitialization.KMEANS_PLUS_PLUS}

    base = copy_model(model)  # tfmot wraps the layer objects themselves: never the caller's

    def wrap(layer: keras.layers.Layer) -> keras.layers.Layer:
        return _clustering.cluster_weights(layer, **params) if layer.name in names else layer

    clustered = keras.models.clone_model(base, clone_function=wrap)
    return clustered, names


def strip_clustering(model: keras.Model) -> keras.Model:
    """Remove the clustering wrappers, keeping the shared weight values."""
    return _clustering.strip_clustering(model)


def unique_weights(model: keras.Model, names: list[str]) -> dict[str, int]:
    """Number of distinct kernel values per named layer (Keras side)."""
    return {name: int(np.unique(model.get_layer(name).get_weights()[0]).size) for name in names}
