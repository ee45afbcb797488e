"""Users' models as they really come: Keras 3, the transfer-learning guide's nested shape, preprocessing inside
the model. Rebuilds are proven output-equal; both shapes go through `convert` and through one tfmot stage."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import REPO, save_small_cnn

import tflite_pipeline as tp
from tflite_pipeline.cli import main
from tflite_pipeline.config.sections import PreprocessConfig
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.model.load import load_model
from tflite_pipeline.model.rebuild import flat_tf_keras, input_preprocessing, nested_models
from tflite_pipeline.optimize.channels import model_macs
from tflite_pipeline.tflite.convert import anchor_pixel_range

sys.path.insert(0, str(REPO / "benchmarks"))
from user_models import build_keras3_guide_model, build_tf_keras_guide_model

SIZE = 32
GATE_OPEN = ["--max-top1-drop", "100", "--min-agreement", "0"]  # untrained tiny models: parity is not the point


def randomized(model, seed: int = 0):
    """BatchNorm statistics and scales random, smallish variances (a random-init MobileNetV2's outputs barely
    depend on its input otherwise; much smaller ones make it chaotic), a random head bias: outputs that vary with
    the input, so an equality test fails on any misplaced weight."""
    rng = np.random.default_rng(seed)
    for layer in _all_layers(model):
        kind = type(layer).__name__
        if kind == "BatchNormalization":
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.1, 0.3, variance.shape)])
        elif kind == "Dense":
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 1, bias.shape)])
    return model


def _all_layers(model):
    for layer in model.layers:
        yield from _all_layers(layer) if hasattr(layer, "layers") else [layer]


def pixels(n: int = 6, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def guide_h5(tmp_path_factory):
    """tf_keras, preprocess_input op layers, nested MobileNetV2 base, logits: saved as .h5."""
    path = tmp_path_factory.mktemp("guide") / "guide_tf_keras.h5"
    build_tf_keras_guide_model(10, SIZE).save(path)
    return path


@pytest.fixture(scope="module")
def guide_keras3(tmp_path_factory):
    """Keras 3, Rescaling inside, nested MobileNetV2 base, logits: saved as .keras."""
    path = tmp_path_factory.mktemp("guide3") / "guide_keras3.keras"
    build_keras3_guide_model(10, SIZE).save(path)
    return path


@pytest.mark.parametrize("shape", ["tf_keras functional", "tf_keras sequential", "keras3 functional"])
def test_the_flat_tf_keras_rebuild_has_identical_outputs(shape):
    import tf_keras

    model = randomized(build_keras3_guide_model(10, SIZE) if shape.startswith("keras3") else
                       build_tf_keras_guide_model(10, SIZE, sequential=shape.endswith("sequential")))
    images = pixels()
    flat, record = flat_tf_keras(model, images)
    reference = np.asarray(model(images, training=False))
    assert np.abs(reference).max() > 1.0 and reference.std(axis=0).max() > 1e-3  # they depend on the input
    scale = max(1.0, np.abs(reference).max())   # float32 sums in another order: ~1e-7 of the output's size
    np.testing.assert_allclose(np.asarray(flat(images, training=False)), reference, atol=1e-5 * scale, rtol=0)
    assert isinstance(flat, tf_keras.Model) and not nested_models(flat)
    assert record.max_abs_diff <= 1e-5 * scale and record.nested == ("mobilenetv2_0.35_32",)
    kinds = [type(layer).__name__ for layer in flat.layers]
    assert "TFOpLambda" not in kinds and kinds.count("Rescaling") == 1   # preprocess_input -> one Rescaling
    assert "Conv1" in [layer.name for layer in flat.layers]              # inner layers keep their names


def test_a_keras3_layer_without_a_tf_keras_twin_is_a_model_error_naming_it():
    import keras

    @keras.saving.register_keras_serializable(package="test")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    inputs = keras.Input((SIZE, SIZE, 3))
    x = Doubler(name="my_doubler")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(tp.ModelError, match=r"'my_doubler' \(.*Doubler\).*no tf_keras twin"):
        flat_tf_keras(model)


def test_a_rebuild_whose_outputs_differ_is_refused(monkeypatch):
    from tflite_pipeline.model import rebuild

    monkeypatch.setattr(rebuild, "max_output_difference", lambda *args, **kwargs: (0.5, 1.0))
    with pytest.raises(tp.ModelError, match=r"differs from it by up to 0.5"):
        flat_tf_keras(build_keras3_guide_model(10, SIZE))


def test_preprocessing_inside_the_model_is_detected_and_means_raw_pixels():
    detected = input_preprocessing(build_tf_keras_guide_model(10, SIZE))
    assert detected and "truediv" in detected
    assert "Rescaling" in input_preprocessing(build_keras3_guide_model(10, SIZE))
    assert "Rescaling" in input_preprocessing(build_tf_keras_guide_model(10, SIZE, sequential=True))
    spec = PreprocessSpec.from_config(PreprocessConfig(), (SIZE, SIZE, 3), model_normalizes=detected)
    assert spec.normalization == "raw" and "normalizes its own input" in spec.source
    assert PreprocessSpec.from_config(PreprocessConfig(), (SIZE, SIZE, 3)).normalization == "minus_one_to_one"
    # the user's setting wins
    explicit = PreprocessSpec.from_config(PreprocessConfig(normalization="zero_to_one"), (SIZE, SIZE, 3),
                                          model_normalizes=detected)
    assert explicit.normalization == "zero_to_one"


def test_raw_calibration_is_anchored_at_255_only_when_no_image_reaches_it():
    dark = [np.full((4, 4, 3), 100.0, np.float32), np.full((4, 4, 3), 7.0, np.float32)]
    original = dark[0]
    anchor_pixel_range(dark)
    assert dark[0][0, 0].tolist() == [255.0] * 3 and (dark[0] == 255).sum() == 3 and original.max() == 100.0
    bright = [np.full((4, 4, 3), 255.0, np.float32)]
    anchor_pixel_range(bright)
    assert (bright[0] == 255).all()


def _convert(model_path, data, out, *extra):
    return main(["convert", str(model_path), "--data", str(data), "--calibration-samples", "20",
                 "--output-dir", str(out), *GATE_OPEN, *extra])


@pytest.mark.parametrize("fixture, io_dtype, zero_point", [("guide_h5", "uint8", 0), ("guide_keras3", "int8", -128)])
def test_convert_takes_the_guide_shape_as_it_is_with_raw_pixel_bytes_in(fixture, io_dtype, zero_point, request,
                                                                        tiny_data, tmp_path, capsys):
    model_path = request.getfixturevalue(fixture)
    assert _convert(model_path, tiny_data, tmp_path, "--io-dtype", io_dtype, "--variants", "int8") == 0, \
        capsys.readouterr().err
    run_dir = tmp_path / model_path.stem
    spec = json.loads((run_dir / "preprocessing.json").read_text())
    assert spec["normalization"] == "raw" and "normalizes its own input" in spec["source"]
    info = tp.inspect_tflite(run_dir / f"{model_path.stem}_int8.tflite")
    assert info.is_full_integer and info.inputs[0].dtype == io_dtype
    assert (info.inputs[0].scale, info.inputs[0].zero_point) == (1.0, zero_point)  # the input byte is the pixel
    report = json.loads((run_dir / "report.json").read_text())
    assert report["failed_steps"] == [] and report["stages"][0]["macs"] > 0  # MACs counted through the nesting
    assert main(["verify", str(run_dir), *GATE_OPEN]) == 0


@pytest.mark.parametrize("flavour, stage", [("tf_keras", "qat"), ("keras3", "prune")])
def test_a_tfmot_stage_runs_on_the_proven_flat_rebuild(flavour, stage, tiny_data, tmp_path, capsys):
    """The guide's shape with a small base (a MobileNetV2 base takes minutes here; the rebuild of one is proven
    above and in benchmarks/user_model_runs.py): tf_keras .h5 with op-layer preprocessing, Keras 3 .keras."""
    model_path = tmp_path / ("small_guide.h5" if flavour == "tf_keras" else "small_guide.keras")
    _small_nested(flavour).save(model_path)
    sections = {"qat": ["--set", "qat.enabled=true", "--set", "qat.epochs=1"],
                "prune": ["--set", "prune.enabled=true", "--set", "prune.epochs=1", "--set", "prune.exclude=[]"]}
    code = main(["run", "--set", f"model.source={model_path}", "--set", f"data.root={tiny_data}",
                 "--set", "train.epochs=0", "--set", "train.batch_size=16", "--set", "convert.variants=[]",
                 "--set", "convert.calibration_samples=20", "--set", "verify.max_top1_drop=100",
                 "--set", "verify.min_agreement=0", *sections[stage], "--output-dir", str(tmp_path),
                 "--run-name", "staged", "--no-cache"])
    assert code == 0, capsys.readouterr().err
    run_dir = tmp_path / "staged"
    report = json.loads((run_dir / "report.json").read_text())
    rebuild = report["model"]["rebuild"]
    assert rebuild["max_abs_diff"] <= 1e-5 and rebuild["images"] == 20 and rebuild["nested"] == ["base"]
    assert "Largest output difference from the original" in (run_dir / "report.md").read_text()
    label = {"qat": "qat", "prune": "pruned"}[stage]
    info = tp.inspect_tflite(run_dir / f"{model_path.stem}_{label}_int8.tflite")
    assert info.is_full_integer and (info.inputs[0].scale, info.inputs[0].zero_point) == (1.0, -128)
    assert main(["verify", str(run_dir), *GATE_OPEN]) == 0


def _keras3_lambda_model(marker):
    import keras

    # a lambda (its bytecode goes into the file) that leaves a mark whenever it runs
    touch = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x)[1]")
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Lambda(touch, name="touch")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))


def test_a_keras3_file_with_a_lambda_is_refused_and_its_code_never_runs(tmp_path, tiny_data, capsys):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "lambda3.keras"
    _keras3_lambda_model(marker).save(path)
    marker.unlink()
    assert _convert(path, tiny_data, tmp_path / "out") == 6
    assert "--unsafe-load" in capsys.readouterr().err and not marker.exists() and not (tmp_path / "out").exists()
    load_model(path, safe_mode=False)   # trusted: the user opts out, and the code runs
    assert marker.exists()


@pytest.mark.parametrize("step, error, exit_code", [("plots", RuntimeError("matplotlib broke"), 12),
                                                    ("diagnose", tp.ConversionError("debugger broke"), 7)])
def test_a_failing_optional_step_still_publishes_the_verified_run(step, error, exit_code, tiny_data, tmp_path,
                                                                  monkeypatch, capsys):
    from tflite_pipeline.runs import optional, report

    def fail(*args, **kwargs):
        raise error

    if step == "plots":
        monkeypatch.setattr(report.RunReport, "figures", fail)
    else:
        monkeypatch.setattr(optional, "diagnose_and_repair", fail)
    model = save_small_cnn(tmp_path / "cnn.keras")
    code = main(["convert", str(model), "--data", str(tiny_data), "--calibration-samples", "20",
                 "--output-dir", str(tmp_path / "out"), *GATE_OPEN])
    assert code == exit_code
    assert "the verified models are in the run folder" in capsys.readouterr().err
    run_dir = tmp_path / "out" / "cnn"
    data = json.loads((run_dir / "report.json").read_text())
    assert [f["exit_code"] for f in data["failed_steps"]] == [exit_code] and data["failed_steps"][0]["step"] \
        .startswith(step)
    assert "## Optional steps that failed" in (run_dir / "report.md").read_text()
    assert (run_dir / "cnn_int8.tflite").is_file() and (run_dir / "manifest.json").is_file()
    if step == "plots":
        assert not list(run_dir.glob("report_*.png")) and "report_" not in (run_dir / "report.md").read_text()
    manifest = json.loads((run_dir / "manifest.json").read_text())["outputs"]
    assert sorted(manifest) == sorted(p.name for p in run_dir.iterdir() if p.name != "manifest.json")
    assert main(["verify", str(run_dir), *GATE_OPEN]) == 0


def test_when_ptq_misses_the_gate_on_a_user_model_the_report_says_what_to_do_next(tiny_run):
    from dataclasses import replace

    report = tiny_run.report
    passing = replace(report, parity=replace(report.parity, rows=tuple(replace(row, failures=()) for row in
                                                                      report.parity.rows), keras_failures=()))
    assert passing.passed and passing.next_steps() == []
    missed = replace(report.parity.row("int8"), failures=("top-1 drop 3.0 pts > 0.5",))
    recipe = {**report.recipe, "model": {**report.recipe["model"], "source": "/data/my model.keras"}}
    failed = replace(report, recipe=recipe, parity=replace(report.parity, rows=(missed,)))
    steps = " ".join(failed.next_steps())
    assert "--recipe qat --set 'model.source=/data/my model.keras' --set train.epochs=0" in steps
    assert "fallback" in steps and "ptq.adaround=true" in steps and "int16x8" in steps
    assert "## Next steps (the gate failed)" in failed.to_markdown() and failed.exit_code == 9


def _small_nested(flavour: str):
    """A small classifier of the guide's shape (fast to convert): raw pixels, preprocessing inside, a nested
    convolutional base, logits."""
    if flavour == "keras3":
        import keras
    else:
        import tf_keras as keras
    keras.utils.set_random_seed(0)
    base = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(8, 3, strides=2),
                             keras.layers.BatchNormalization(), keras.layers.ReLU(6.0),
                             keras.layers.DepthwiseConv2D(3), keras.layers.ReLU(6.0)], name="base")
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs) if flavour == "keras3" else inputs / 127.5 - 1
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(base(x)))
    return keras.Model(inputs, outputs, name="small_guide")


@pytest.mark.parametrize("flavour", ["tf_keras", "keras3"])
def test_diagnosis_and_the_float_fallback_take_nested_and_keras3_models(flavour, tiny_data):
    from tflite_pipeline.data.folders import ImageFolder
    from tflite_pipeline.tflite.convert import representative_dataset
    from tflite_pipeline.tflite.diagnose import QuantizationDebug

    model = _small_nested(flavour)
    spec = PreprocessSpec(SIZE, SIZE, 3, normalization="raw")
    samples = representative_dataset(ImageFolder.scan(tiny_data / "calibration"), spec, 20)
    debug = QuantizationDebug(model, samples, debug_samples=samples)
    diagnosis = debug.diagnose()
    assert len(diagnosis.layers) >= 4 and np.isfinite(diagnosis.output_error)
    fallback = tp.inspect_tflite(debug.quantize([diagnosis.worst(1)[0].tensor]))
    assert fallback.float_ops and not fallback.is_full_integer   # the worst layer kept in float
    assert model_macs(model) == model_macs(flat_tf_keras(model)[0]) > 0


def test_when_a_compressed_stage_misses_the_gate_the_report_names_the_stage_that_lost_it(tiny_run):
    from dataclasses import replace

    from tflite_pipeline.optimize.stage import StageRecord

    report = tiny_run.report
    missed = replace(report.parity.row("int8"), variant="pqat_int8", source="pqat Keras",
                     failures=("top-1 drop 1.35 pts > 1",))
    stages = (StageRecord("baseline", 0.86, 1000), StageRecord("pruned", 0.8375, 1000),
              StageRecord("pqat", 0.8475, 1000))
    failed = replace(report, stages=stages, parity=replace(report.parity, rows=(missed,), max_top1_drop=1.0))
    steps = " ".join(failed.next_steps())
    assert "lost accuracy in Keras already (baseline 86.00%; pruned 83.75%, pqat 84.75%)" in steps
    assert "give `pruned` more epochs" in steps and "prune.target_sparsity" in steps
