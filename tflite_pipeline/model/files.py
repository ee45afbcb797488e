"""Our own model files, in one place: `.keras`, or `.h5` for QAT models (tfmot's quantize wrappers only
reload from h5, inside its quantize scope), and copies of a model (independent, or free of a tf.distribute
strategy). Used by the stage cache, the run folder and the isolated converter.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow_model_optimization as tfmot
import tf_keras as keras

from tflite_pipeline.errors import ModelError
from tflite_pipeline.model.load import load_model, refuse_lambda_layers


def copy_model(model: keras.Model) -> keras.Model:
    """An independent copy (same architecture and weights), so stages never mutate their input."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone




def save_model_file(model: keras.Model, folder: str | Path, stem: str = "model") -> Path:
    """Save `model` into `folder` as `<stem>.h5` when it is a QAT model, else `<stem>.keras`; returns the path."""
    path = Path(folder) / f"{stem}{'.h5' if is_qat_model(model) else '.keras'}"
    if path.suffix == ".h5":
        save_qat_model(model, path)
    else:
        model.save(path)
    return path


def load_model_file(path: str | Path, *, safe_mode: bool = False) -> keras.Model:
    """Load a file written by `save_model_file` (tf_keras or Keras 3; `.h5` in tfmot's quantize scope). Our own
    cache files load without the safe-mode scan; pass `safe_mode=True` for files a user hands us."""
    path = Path(path)
    return load_qat_model(path, safe_mode=safe_mode) if path.suffix == ".h5" else load_model(path, safe_mode=safe_mode)


def standalone_copy(model: keras.Model) -> keras.Model:
    """The same model and weights through its file format: plain variables, free of the tf.distribute strategy it
    was trained under (whose collective ops the TFLite converter cannot take)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tflite-pipeline-model-") as folder:
        return load_model_file(save_model_file(model, folder))


def is_qat_model(model: keras.Model) -> bool:
    """Whether `model` holds tfmot's quantize wrappers (it then saves as .h5 and loads in the quantize scope)."""
    return any(isinstance(layer, tfmot.quantization.keras.QuantizeWrapper)
               or (isinstance(layer, keras.Model) and is_qat_model(layer)) for layer in model.layers)


def save_qat_model(model: keras.Model, path: str | Path) -> Path:
    """Save a QAT model as .h5 (tfmot's quantize layers do not reload from the .keras format)."""
    path = Path(path)
    model.save(path, save_format="h5", include_optimizer=False)
    return path


def load_qat_model(path: str | Path, *, safe_mode: bool = True) -> keras.Model:
    """Reload a QAT model saved by `save_qat_model` (inside tfmot's quantize scope). In safe mode a file with
    Lambda layers raises `ModelError` instead of running their code.

    A cluster-preserving (CQAT) model comes back for inference and conversion: its quantize configs
    serialize as tfmot's default 8-bit ones, which do not create the clustering variables CQAT trains with
    (`_CQAT_TRAINING_ONLY`); the kernels already hold the clustered weights, so the outputs are the same."""
    if safe_mode:
        refuse_lambda_layers(Path(path))
    from tflite_pipeline.optimize.qat import CUSTOM_OBJECTS  # our quantize configs (tfmot's own load by name)

    with tfmot.quantization.keras.quantize_scope(CUSTOM_OBJECTS):
        try:
            return keras.models.load_model(path, compile=False)
        except ValueError as error:
            if "Weight count mismatch" not in str(error):
                raise
            return _load_without_training_only_variables(Path(path))


# Variables tfmot's cluster-preserving weight quantizer adds for training. At inference it uses the kernel,
# into which every training step writes the clustered weights.
_CQAT_TRAINING_ONLY = frozenset({"cluster_centroids_tf", "pulling_indices_tf", "ori_weights_vars_tf"})


def short_variable_name(name: str) -> str:
    return name.rsplit("/", maxsplit=1)[-1].split(":", maxsplit=1)[0]


def _load_without_training_only_variables(path: Path) -> keras.Model:
    """Build the model from the .h5 file's config and set each variable from the saved one of the same name,
    leaving out `_CQAT_TRAINING_ONLY`. Call inside the quantize scope."""
    import h5py

    with h5py.File(path, "r") as file:
        config = file.attrs["model_config"]
        model = keras.models.model_from_json(config.decode() if isinstance(config, bytes) else config)
        groups = file["model_weights"]
        for layer in model.layers:
            variables = layer.trainable_weights + layer.non_trainable_weights
            if not variables:
                continue
            group = groups[layer.name]
            saved = [(name.decode() if isinstance(name, bytes) else name) for name in group.attrs["weight_names"]]
            kept = [name for name in saved if short_variable_name(name) not in _CQAT_TRAINING_ONLY]
            if [short_variable_name(n) for n in kept] != [short_variable_name(v.name) for v in variables]:
                raise ModelError(f"Cannot reload layer {layer.name!r} from {str(path)!r}: the file holds weights "
                                 f"{[short_variable_name(n) for n in saved]}, the rebuilt layer has "
                                 f"{[short_variable_name(v.name) for v in variables]}. Re-save it with this "
                                 "tflite_pipeline.")
            keras.backend.batch_set_value([(v, group[name][()]) for v, name in zip(variables, kept, strict=True)])
    return model
