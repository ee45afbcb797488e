"""Quantization-aware training (tfmot): default 8-bit, prune-preserving (PQAT) and
cluster-preserving (CQAT) schemes. QAT models save to .h5 and reload inside `quantize_scope`."""

from __future__ import annotations

from pathlib import Path

import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve import (
    default_8bit_cluster_preserve_quantize_scheme as cluster_preserve)
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
    default_8bit_prune_preserve_quantize_scheme as prune_preserve)

from .errors import ModelError
from .layers import check_flat

_quant = tfmot.quantization.keras
SCHEMES = ("default", "prune_preserve", "cluster_preserve")


def _scheme(name: str):
    if name == "prune_preserve":
        return prune_preserve.Default8BitPrunePreserveQuantizeScheme()
    if name == "cluster_preserve":
        return cluster_preserve.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True)
    return _quant.default_8bit.Default8BitQuantizeScheme()


def quantize_aware(model: keras.Model, scheme: str = "default") -> keras.Model:
    """A QAT copy of `model` (fake-quant on weights and activations) under `scheme`.

    Raises `ModelError` for nested models and for layers tfmot cannot quantize, naming them.
    """
    if scheme not in SCHEMES:
        raise ModelError(f"Received QAT scheme {scheme!r}; expected one of {SCHEMES}.")
    check_flat(model)
    try:
        with _quant.quantize_scope():
            return _quant.quantize_apply(_quant.quantize_annotate_model(model), _scheme(scheme))
    except Exception as error:  # noqa: BLE001 - tfmot raises RuntimeError, ValueError, NameError, ...
        raise ModelError(f"tfmot cannot quantize {model.name!r} for QAT: {error}".split("\n")[0] +
                         " Remove or replace that layer, or skip the [qat] stage (post-training int8 still "
                         "works).") from None


def save_qat_model(model: keras.Model, path: str | Path) -> Path:
    """Save a QAT model as .h5 (tfmot's quantize layers do not reload from the .keras format)."""
    path = Path(path)
    model.save(path, save_format="h5", include_optimizer=False)
    return path


def load_qat_model(path: str | Path) -> keras.Model:
    with _quant.quantize_scope():
        return keras.models.load_model(path, compile=False)
