import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from PIL import Image

import tflite_pipeline as tp
from tflite_pipeline.config.sections import VerifyConfig
from tflite_pipeline.data.folders import ImageFolder
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.tflite.convert import convert_float32
from tflite_pipeline.tflite.interpreter import LiteRTClassifier, dequantize, quantize
from tflite_pipeline.tflite.parity import measure_parity


def test_quantize_uses_scale_zero_point_and_saturates():
    x = np.array([-3.0, -1.0, 0.0, 1 / 128, 3 / 128, 1.0, 3.0], np.float32)  # exact in binary
    # ties round up (0.5 -> 1, 1.5 -> 2, -64.5 would give -64), then add the zero point, then saturate
    np.testing.assert_array_equal(quantize(x, 1 / 64, -1, np.int8), [-128, -65, -1, 0, 1, 63, 127])
    np.testing.assert_array_equal(quantize(x, 1 / 64, 128, np.uint8), [0, 64, 128, 129, 130, 192, 255])
    np.testing.assert_array_equal(quantize(np.float32([-1.5, -0.5]), 1.0, 0, np.int8), [-1, 0])
    into = np.full(7, 99, np.int8)  # e.g. an interpreter's input tensor
    assert quantize(x, 1 / 64, -1, np.int8, out=into) is into
    np.testing.assert_array_equal(into, [-128, -65, -1, 0, 1, 63, 127])
    np.testing.assert_allclose(dequantize(np.array([-128, 127], np.int8), 1 / 256, -128), [0.0, 255 / 256])


@pytest.mark.parametrize("normalization, low, high", [("minus_one_to_one", -1.0, 1.0), ("zero_to_one", 0.0, 1.0),
                                                      ("minus_one_to_one", -0.75, 1.5)])
def test_quantize_gives_every_pixel_the_integer_tensorflow_fake_quantization_gives_it(normalization, low, high):
    """A QAT model quantizes its input with FakeQuantWithMinMaxVars; its .tflite gets `quantize`d input.
    Under x = p / 127.5 - 1 every pixel is an exact tie of the scale 2/255 (x / scale lands below it for p >= 224)."""
    x = PreprocessSpec(1, 1, normalization=normalization).normalize(np.arange(256, dtype=np.uint8))
    faked = tf.quantization.fake_quant_with_min_max_vars(x, low, high, num_bits=8).numpy()
    scale = np.float32((high - low) / 255)
    zero_point = round(-low / scale) - 128  # tflite's int8 zero point for this range
    expected = np.round(faked / scale).astype(int) + zero_point
    np.testing.assert_array_equal(quantize(x, scale, zero_point, np.int8), expected)
    np.testing.assert_array_equal(quantize(x, scale, zero_point + 128, np.uint8), expected + 128)


def test_float32_tflite_agrees_with_keras_on_every_image(tiny_run):
    row = tiny_run.report.parity.row("float32")
    assert row.agreement == 1.0 and abs(row.top1_drop) < 1e-9


def test_litert_scores_match_keras_closely(tiny_run, tiny_model, tiny_data):
    spec = PreprocessSpec(32, 32)
    images, _ = next(ImageFolder.scan(tiny_data / "validation").batches(spec, 16))
    keras_scores = np.asarray(tiny_model(images, training=False))
    float_scores = LiteRTClassifier(tiny_run.tflite_path("float32")).predict(images)
    int8_scores = LiteRTClassifier(tiny_run.tflite_path("int8")).predict(images)
    np.testing.assert_allclose(float_scores, keras_scores, atol=1e-4)
    assert np.abs(int8_scores - keras_scores).max() < 0.1  # dequantized probabilities, not raw int8


def test_batched_and_one_by_one_inference_agree(tiny_run, tiny_data):
    spec = PreprocessSpec(32, 32)
    images, _ = next(ImageFolder.scan(tiny_data / "validation").batches(spec, 7))
    batched = LiteRTClassifier(tiny_run.tflite_path("int8"), batch_size=7).predict(images)
    single = np.concatenate([LiteRTClassifier(tiny_run.tflite_path("int8"), batch_size=1).predict(images[i:i + 1])
                             for i in range(len(images))])
    np.testing.assert_array_equal(batched, single)


@pytest.mark.parametrize("kernels", ["builtin", "reference"])
def test_every_litert_kernel_set_runs_the_int8_model_close_to_xnnpack(tiny_run, tiny_data, kernels):
    spec = PreprocessSpec(32, 32)
    images, _ = next(ImageFolder.scan(tiny_data / "validation").batches(spec, 8))
    xnnpack = LiteRTClassifier(tiny_run.tflite_path("int8")).predict(images)
    other = LiteRTClassifier(tiny_run.tflite_path("int8"), kernels=kernels).predict(images)
    assert np.abs(other - xnnpack).max() <= 4 / 256  # a few output steps of integer rounding apart


def test_report_counts_every_validation_image(tiny_run):
    parity = tiny_run.report.parity
    assert parity.num_images == 50 and {r.variant for r in parity.rows} == {"float32", "int8", "pixels"}
    assert 0.0 <= parity.keras_top1 <= parity.keras_top5 <= 1.0


def test_float32_passes_the_strictest_gate(tiny_run, tiny_model, tiny_data):
    folder = ImageFolder.scan(tiny_data / "validation")
    strict = VerifyConfig(max_top1_drop=0.0, min_agreement=1.0)
    report = measure_parity(tiny_model, {"float32": tiny_run.tflite_path("float32")}, folder,
                               PreprocessSpec(32, 32), strict, log=lambda _: None)
    assert report.check() is report


def test_wrong_model_fails_the_gate_with_the_report_attached(tiny_model, tiny_data):
    # A .tflite of a different model must not pass against the Keras model, and the ParityError carries
    # the full report so CI can print or store it. "Different": the classifier's columns rotated by one,
    # so every prediction moves to the next class (a random model may share a weak model's constant answer).
    other = tf_keras.models.clone_model(tiny_model)
    weights = tiny_model.get_weights()
    weights[-2], weights[-1] = np.roll(weights[-2], 1, axis=-1), np.roll(weights[-1], 1)
    other.set_weights(weights)
    folder = ImageFolder.scan(tiny_data / "validation")
    report = measure_parity(tiny_model, {"other": convert_float32(other)}, folder, PreprocessSpec(32, 32),
                               VerifyConfig(), log=lambda _: None)
    assert not report.passed and report.row("other").agreement < 0.98
    with pytest.raises(tp.ParityError, match=r"other: .*agreement .* < 98.00%") as caught:
        report.check()
    assert caught.value.report is report
    json.dumps(report.to_dict())


def test_labels_that_do_not_match_the_model_output(tiny_model, tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        Image.new("L", (8, 8)).save(tmp_path / name / "0.png")
    folder = ImageFolder.scan(tmp_path)
    with pytest.raises(tp.ModelError, match=r"outputs 10 classes but the data folder .* lists 3"):
        measure_parity(tiny_model, {}, folder, PreprocessSpec(32, 32))
