import numpy as np
import pytest
import tf_keras as keras
from conftest import save_small_cnn

import tflite_pipeline as tp
from tflite_pipeline.model.build import build_mobilenet_v2
from tflite_pipeline.model.load import load_model
from tflite_pipeline.model.properties import image_input_shape


@pytest.fixture(scope="module")
def small_model():
    return build_mobilenet_v2(10, 32, alpha=0.35, seed=0)


def test_builder_is_flat_with_the_requested_momentum(small_model):
    assert not any(isinstance(layer, keras.Model) for layer in small_model.layers)
    momenta = {layer.momentum for layer in small_model.layers
              if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.9}
    assert image_input_shape(small_model) == (32, 32, 3) and small_model.output_shape == (None, 10)


def test_builder_is_seeded_whatever_the_process_built_before(small_model):
    build_mobilenet_v2(5, 48, alpha=0.5)   # Keras' op seeds and name counters move on
    again = build_mobilenet_v2(10, 32, alpha=0.35, seed=0)
    assert [layer.name for layer in again.layers] == [layer.name for layer in small_model.layers]
    for ours, theirs in zip(small_model.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)   # every weight: explore's candidates share one cached baseline


def test_local_weights_file_is_the_offline_path(tmp_path, small_model):
    pooling = next(layer for layer in small_model.layers
                   if isinstance(layer, keras.layers.GlobalAveragePooling2D))
    backbone = keras.Model(small_model.input, pooling.output)
    path = tmp_path / "backbone.h5"
    backbone.save_weights(path)
    rebuilt = build_mobilenet_v2(10, 32, alpha=0.35, weights=str(path))
    np.testing.assert_array_equal(rebuilt.get_layer("Conv1").get_weights()[0],
                                  small_model.get_layer("Conv1").get_weights()[0])


def test_imagenet_weights_unreachable_is_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr("tf_keras.src.applications.mobilenet_v2.data_utils.get_file", offline)
    with pytest.raises(tp.ModelError, match=r"Could not fetch the MobileNetV2 ImageNet weights.*weights='<path"):
        build_mobilenet_v2(10, 96, alpha=0.35, weights="imagenet")


def test_imagenet_weights_need_a_supported_size():
    with pytest.raises(tp.ModelError, match=r"ImageNet weights exist for"):
        build_mobilenet_v2(10, 64, weights="imagenet")


@pytest.mark.parametrize("suffix", [".keras", ".h5", ""])
def test_user_models_load_from_keras_h5_and_savedmodel(tmp_path, suffix):
    model = load_model(save_small_cnn(tmp_path / "cnn.keras"))  # a SavedModel of MobileNetV2 takes ~25 s
    path = tmp_path / f"model{suffix}"
    model.save(path) if suffix else model.save(path, save_format="tf")
    loaded = load_model(path)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), atol=1e-5)


def test_keras3_model_object_is_an_image_classifier_too():
    import keras as keras3

    model = keras3.Sequential([keras3.Input((8, 8, 3)), keras3.layers.Flatten(), keras3.layers.Dense(2)])
    assert image_input_shape(model) == (8, 8, 3)


def test_keras3_file_loads_as_a_keras3_model(tmp_path):
    import keras as keras3

    model = keras3.Sequential([keras3.Input((8, 8, 3)), keras3.layers.Flatten(), keras3.layers.Dense(2)])
    model.save(tmp_path / "k3.keras")
    loaded = load_model(tmp_path / "k3.keras")
    assert isinstance(loaded, keras3.Model)
    x = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)


def test_model_whose_input_is_not_an_image_is_rejected(tmp_path):
    inputs = keras.Input((20,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    model.save(tmp_path / "tabular.keras")
    with pytest.raises(tp.ModelError, match=r"expected an image batch"):
        load_model(tmp_path / "tabular.keras")


def test_missing_and_unknown_model_files(tmp_path):
    with pytest.raises(tp.ModelError, match="does not exist"):
        load_model(tmp_path / "none.keras")
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(tp.ModelError, match=r"expected a .keras or .h5 file"):
        load_model(tmp_path / "model.onnx")


def _lambda_classifier() -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="doubler")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("suffix", [".keras", ".h5", ""])
def test_files_with_lambda_code_are_refused_unless_the_user_opts_out(tmp_path, suffix):
    """Keras' safe mode only guards .keras; .h5 and SavedModel would run the Lambda's code on load."""
    path = tmp_path / f"lambda{suffix or '_savedmodel'}"
    _lambda_classifier().save(path, **({"save_format": "tf"} if not suffix else {}))
    with pytest.raises(tp.ModelError, match=r"Lambda layer.*would run while loading.*--unsafe-load"):
        load_model(path)
    assert load_model(path, safe_mode=False).get_layer("doubler") is not None


def test_cli_refuses_a_lambda_model_with_exit_6_and_documents_the_danger(tmp_path, tiny_data, capsys):
    from tflite_pipeline.cli import build_parser, main

    path = tmp_path / "lambda.h5"
    _lambda_classifier().save(path)
    assert main(["convert", str(path), "--data", str(tiny_data), "--output-dir", str(tmp_path / "out")]) == 6
    assert "--unsafe-load" in capsys.readouterr().err and not (tmp_path / "out").exists()
    help_text = build_parser()._subparsers._group_actions[0].choices["convert"].format_help()
    assert "DANGEROUS" in help_text and "runs while the file loads" in " ".join(help_text.split())
