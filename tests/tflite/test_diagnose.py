"""Diagnosis (TFLite quantization debugger), the accuracy-budgeted float fallback, the extra variants
and the visual report, on the tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tf_keras as keras

import tflite_pipeline as tp
from tflite_pipeline.data.folders import ImageFolder
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.runs.plots import ModelPoint, pareto_front
from tflite_pipeline.tflite.convert import representative_dataset
from tflite_pipeline.tflite.diagnose import QuantizationDebug, accuracy_budgeted_fallback, layer_name
from tflite_pipeline.tflite.flatbuffer import inspect_tflite

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def outlier_model(tiny_model):
    """The tiny model with one channel of block_16's output scaled x1000 and Conv_1 compensating: the same
    float function, but the activation range of that tensor is dominated by one channel (PTQ's weak spot)."""
    model = keras.models.clone_model(tiny_model)
    model.set_weights(tiny_model.get_weights())
    bn, conv = model.get_layer("block_16_project_BN"), model.get_layer("Conv_1")
    gamma, beta, mean, var = bn.get_weights()
    channel = int(np.argmax(np.abs(beta)))
    gamma[channel] *= 1000.0
    beta[channel] *= 1000.0
    bn.set_weights([gamma, beta, mean, var])
    kernel, *rest = conv.get_weights()
    kernel[:, :, channel, :] /= 1000.0
    conv.set_weights([kernel, *rest])
    return model


@pytest.fixture(scope="module")
def debug(outlier_model, tiny_run, tiny_data):
    spec = PreprocessSpec.read_json(tiny_run.run_dir / "preprocessing.json")
    calibration = ImageFolder.scan(tiny_data / "calibration")
    return QuantizationDebug(outlier_model, representative_dataset(calibration, spec, 30),
                             debug_samples=representative_dataset(calibration, spec, 16, seed=1))


@pytest.fixture(scope="module")
def diagnosis(debug):
    return debug.diagnose()


def test_outlier_model_computes_the_same_float_function(outlier_model, tiny_model):
    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(outlier_model(x).numpy(), tiny_model(x).numpy(), atol=1e-4)


def test_diagnosis_measures_every_quantized_layer(diagnosis):
    assert len(diagnosis.layers) > 50
    assert all(np.isfinite(e.rmse_over_scale) and e.rmse_over_scale >= 0 and e.scale > 0 for e in diagnosis.layers)
    worst = diagnosis.worst(5)
    assert [e.rmse_over_scale for e in worst] == sorted((e.rmse_over_scale for e in worst), reverse=True)
    assert diagnosis.output_error > 0
    assert diagnosis.to_csv().splitlines()[0].startswith("index,op,tensor,rmse_over_scale")
    assert "RMSE / scale" in diagnosis.format_table()


def test_float_layers_stay_float_and_io_stays_int8(debug, diagnosis):
    names = [e.tensor for e in diagnosis.worst(2)]
    info = inspect_tflite(debug.quantize(names))
    assert info.inputs[0].dtype == "int8" and info.outputs[0].dtype == "int8"
    computing = [op for op in info.float_ops if not op.startswith(("QUANTIZE ", "DEQUANTIZE "))]
    assert len(computing) == 2
    assert inspect_tflite(debug.quantize()).is_full_integer


def test_fallback_finds_the_outlier_pair(debug, diagnosis):
    """The fix needs the outlier tensor AND its consumer in float: neither alone helps much."""
    cap = 2.5 / len(diagnosis.layers)
    result = accuracy_budgeted_fallback(debug, diagnosis, lambda model: 0.0, reference_top1=1.0, max_top1_drop=0.3,
                                        max_float_fraction=cap, log=lambda _: None)
    assert {layer_name(t) for t in result.steps[1].float_layers} == {"block_16_project_BN", "out_relu"}
    assert debug.output_error(debug.quantize(result.steps[1].float_layers)) < 0.5 * diagnosis.output_error


def test_fallback_that_cannot_meet_the_budget_says_why(debug, diagnosis):
    result = accuracy_budgeted_fallback(debug, diagnosis, lambda model: 0.5, reference_top1=0.9, max_top1_drop=0.3,
                                        max_float_fraction=0.02, log=lambda _: None)
    assert not result.met and result.model is None
    assert len(result.float_layers) <= result.max_float_layers == int(0.02 * len(diagnosis.layers))
    assert "cap" in result.reason and "+40.00" in result.reason
    assert "NOT met" in result.format_table()


def test_fallback_within_budget_at_once_writes_no_new_model(debug, diagnosis):
    result = accuracy_budgeted_fallback(debug, diagnosis, lambda model: 0.9, reference_top1=0.9, max_top1_drop=0.3,
                                        log=lambda _: None)
    assert result.met and result.model is None and len(result.steps) == 1


def test_pareto_front_keeps_only_undominated_models():
    points = [ModelPoint("a", 0.90, 100), ModelPoint("b", 0.89, 50), ModelPoint("c", 0.88, 80),
              ModelPoint("d", 0.91, 400)]
    assert [p.name for p in pareto_front(points)] == ["b", "a", "d"]


@pytest.fixture(scope="module")
def diagnosed_run(outlier_model, tiny_data, tmp_path_factory):
    """A post-training run of the outlier model with every variant, diagnosis always, and the fallback."""
    source = tmp_path_factory.mktemp("outlier") / "outlier.keras"
    outlier_model.save(source)
    from conftest import tiny_overrides

    recipe = tp.load_recipe("ptq").with_overrides({
        **tiny_overrides(tiny_data), "model.source": str(source), "train.epochs": 0,
        "convert.variants": ["float32", "int8", "float16", "dynamic"], "diagnose.mode": "always",
        "diagnose.fallback": True, "diagnose.max_top1_drop": 0.0, "diagnose.max_float_fraction": 0.05,
        "bench.runs": 3, "bench.warmup": 1})
    return tp.run(recipe, output_dir=tmp_path_factory.mktemp("runs"), run_name="outlier", log=lambda _: None)


def test_extra_variants_are_verified_like_the_others(diagnosed_run):
    parity, report = diagnosed_run.report.parity, diagnosed_run.report
    assert parity.row("float16").source_agreement >= 0.98
    assert parity.row("float16").source_cosine > 0.999
    assert 0.45 < report.artifact("float16").size_bytes / report.artifact("float32").size_bytes < 0.6
    assert report.artifact("dynamic").info.inputs[0].dtype == "float32"
    assert report.artifact("dynamic").size_bytes < 0.4 * report.artifact("float32").size_bytes


def test_per_class_and_output_similarity_are_consistent(diagnosed_run):
    parity = diagnosed_run.report.parity
    for row in parity.rows:
        confusion = np.array(row.confusion)
        assert confusion.sum() == parity.num_images
        assert np.trace(confusion) / parity.num_images == pytest.approx(row.top1)
        assert row.source_kl >= 0 and -1 <= row.source_cosine <= 1 + 1e-9
    assert parity.row("float32").source_kl == pytest.approx(0.0, abs=1e-4)
    assert parity.row("float32").per_class_top1 == pytest.approx(parity.keras_per_class_top1)


def test_diagnosed_run_writes_layers_fallback_and_a_self_contained_html(diagnosed_run):
    run_dir, report = diagnosed_run.run_dir, diagnosed_run.report
    assert (run_dir / "outlier_int8_layers.csv").is_file()
    saved = json.loads((run_dir / "report.json").read_text())
    assert saved["diagnoses"][0]["variant"] == "int8"
    assert "## Quantization diagnosis: `int8`" in (run_dir / "report.md").read_text()
    # the fallback runs only when the int8 model misses the budget (on 50 images it may not)
    assert len(saved["fallbacks"]) == len(report.fallbacks) <= 1
    for fallback in report.fallbacks:
        assert (run_dir / "outlier_int8_fallback.tflite").is_file() == (fallback.model is not None)
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(report.figure_titles()) >= 5
    assert "src=\"report_" not in html  # nothing links outside the file
    for file in report.figure_titles():
        assert (run_dir / file).read_bytes().startswith(PNG_MAGIC)
    assert all(a.latency is not None and a.latency.median_ms > 0 for a in report.artifacts)
    assert saved["machine"]["machine"]
