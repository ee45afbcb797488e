"""Conversion and inspection on the tiny run's models (converted once, in the session fixture)."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tflite_pipeline as tp
from tflite_pipeline.data.folders import ImageFolder
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.tflite.convert import convert_int8, representative_dataset


def test_int8_model_is_strict_full_integer(tiny_run):
    info = tp.inspect_tflite(tiny_run.tflite_path("int8"))
    assert info.is_full_integer and info.float_ops == ()
    (inp,), (out,) = info.inputs, info.outputs
    assert inp.dtype == "int8" and out.dtype == "int8"
    assert inp.shape == (-1, 32, 32, 3) and out.shape == (-1, 10)
    # [-1, 1] input: scale 2/255 and a zero point near the middle of int8
    assert inp.scale == pytest.approx(2 / 255, rel=0.02) and -2 <= inp.zero_point <= 1
    assert {op.name for op in info.ops} >= {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "FULLY_CONNECTED", "SOFTMAX"}
    assert all(op.version >= 1 for op in info.ops)


def test_float32_model_computes_in_float(tiny_run):
    info = tp.inspect_tflite(tiny_run.tflite_path("float32"))
    assert not info.is_full_integer and info.inputs[0].dtype == "float32" and info.inputs[0].scale is None
    assert info.float_ops  # every op runs in float


def test_int8_weights_are_per_channel(tiny_run):
    from ai_edge_litert import schema_py_generated as schema

    from tflite_pipeline.tflite.flatbuffer import read_flatbuffer

    _, model = read_flatbuffer(tiny_run.tflite_path("int8"))
    conv = schema.BuiltinOperator.CONV_2D
    graph = model.subgraphs[0]
    weights = [graph.tensors[op.inputs[1]] for op in graph.operators
               if max(model.operatorCodes[op.opcodeIndex].builtinCode,
                      model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode) == conv]
    assert weights and all(len(w.quantization.scale) == w.shape[0] > 1 for w in weights)


def _keras_macs(model: keras.Model) -> int:
    """Multiply-accumulates per image, counted from the Keras layers (an independent oracle)."""
    total = 0
    for layer in model.layers:
        outputs = int(np.prod(layer.output_shape[1:]))
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            total += outputs * int(np.prod(layer.kernel_size))
        elif isinstance(layer, keras.layers.Conv2D):
            total += outputs * int(np.prod(layer.kernel_size)) * int(layer.input_shape[-1])
        elif isinstance(layer, keras.layers.Dense):
            total += outputs * int(layer.input_shape[-1])
    return total


@pytest.mark.parametrize("variant", ["float32", "int8"])
def test_macs_read_from_the_flatbuffer_match_the_keras_layers(tiny_run, tiny_model, variant):
    info = tp.inspect_tflite(tiny_run.tflite_path(variant))
    assert info.macs == _keras_macs(tiny_model) > 1_000_000
    assert f"MACs: {info.macs:,}" in info.format() and info.to_dict()["macs"] == info.macs


def test_uint8_io_is_selectable(tiny_model, tiny_data):
    spec = PreprocessSpec(32, 32)
    folder = ImageFolder.scan(tiny_data / "calibration")
    data = convert_int8(tiny_model, representative_dataset(folder, spec, 30), io_dtype="uint8")
    info = tp.inspect_tflite(data)
    assert info.inputs[0].dtype == info.outputs[0].dtype == "uint8" and info.is_full_integer
    assert 126 <= info.inputs[0].zero_point <= 129


def test_op_without_int8_kernel_fails_naming_the_op():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.Lambda(tf.math.sin, name="sine")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    rng = np.random.default_rng(0)
    representative = lambda: ([rng.uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32)] for _ in range(10))
    with pytest.raises(tp.ConversionError, match=r"would leave ops in float: SIN #\d+ \(.*sine.*\)"):
        convert_int8(model, representative)


def test_too_few_calibration_images_is_a_data_error(tiny_data):
    folder = ImageFolder.scan(tiny_data / "calibration").subset(5)
    with pytest.raises(tp.DataError, match=r"has 5 images; full-integer calibration needs at least 10"):
        representative_dataset(folder, PreprocessSpec(32, 32), 300)


def test_representative_data_uses_the_exact_preprocessing(tiny_data):
    spec = PreprocessSpec(32, 32, normalization="zero_to_one")
    folder = ImageFolder.scan(tiny_data / "calibration")
    first = next(iter(representative_dataset(folder, spec, 12)()))[0]
    assert first.shape == (1, 32, 32, 3) and first.min() >= 0.0 and first.max() <= 1.0
    np.testing.assert_array_equal(first[0], spec.load(folder.subset(12).files[0]))


@pytest.mark.parametrize("content, message", [
    (b"", r"not a TFLite model"),
    (b"PK\x03\x04 this is a zip" * 4, r"not a TFLite model"),
])
def test_non_tflite_files_are_rejected(tmp_path, content, message):
    path = tmp_path / "bad.tflite"
    path.write_bytes(content)
    with pytest.raises(tp.TFLiteFileError, match=message):
        tp.inspect_tflite(path)


def test_truncated_tflite_is_rejected(tmp_path, tiny_run):
    data = tiny_run.tflite_path("int8").read_bytes()
    path = tmp_path / "cut.tflite"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(tp.TFLiteFileError, match=r"truncated or damaged"):
        tp.inspect_tflite(path)
