"""The tfmot stages on the tiny model: pruning (magnitude and 2:4), clustering, QAT/PQAT/CQAT,
distillation, and one chained run whose int8 flatbuffer must keep the pruned zeros."""

import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from conftest import REFERENCE_MODEL

import tflite_pipeline as tp
from tflite_pipeline.config.sections import ClusterConfig, DistillConfig, PruneConfig
from tflite_pipeline.data.folders import ImageFolder
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.model.distill import DistillationLoss, with_teacher_targets
from tflite_pipeline.model.files import load_qat_model, save_qat_model
from tflite_pipeline.model.properties import count_parameters, outputs_probabilities
from tflite_pipeline.model.train import fit
from tflite_pipeline.optimize.cluster import cluster_weights, strip_clustering, unique_weights
from tflite_pipeline.optimize.prune import kernel_sparsity, prune_low_magnitude, pruning_callbacks, strip_pruning
from tflite_pipeline.optimize.qat import activation_range_variables, quantize_aware

SPEC = PreprocessSpec(32, 32)
SMALL_SPEC = PreprocessSpec(28, 28, channels=1)   # the reference CNN (conftest.small_model)
SMALL_EXCLUDE = ("^stem$", "^classes$")              # its stem and classifier (MobileNetV2's defaults name others)
SMALL_EXCLUDE_NAMES = ("stem", "classes")


@pytest.fixture(scope="module")
def train_folder(tiny_data):
    return ImageFolder.scan(tiny_data / "train").subset(96)  # 6 steps of 16: enough for the masks to settle


def test_pqat_int8_flatbuffer_keeps_the_target_sparsity_on_pruned_layers(pqat_run):
    (artifact,) = pqat_run.report["artifacts"]
    assert artifact["variant"] == "pqat_int8" and artifact["info"]["is_full_integer"]
    sparsity = artifact["layer_sparsity"]
    assert len(sparsity) == len(pqat_run.report["stages"][1]["layers"]) == 6
    assert all(abs(s - 0.8) <= 0.02 for s in sparsity.values()), sparsity
    assert "stem" not in sparsity and "classes" in sparsity  # recipe: stem only
    assert artifact["gzip_bytes"] < 0.6 * artifact["size_bytes"]  # zeros compress


def test_pcqat_int8_flatbuffer_keeps_both_the_zeros_and_the_clusters(tiny_recipe, tmp_path):
    """prune 80% -> cluster (8 values, zeros kept) -> PCQAT -> int8: the deep-compression stack."""
    recipe = tp.load_recipe("default").with_overrides({
        "data.root": tiny_recipe.data.root, "model.source": str(REFERENCE_MODEL), "model.name": "tiny",
        "train.epochs": 0, "train.batch_size": 16, "prune.enabled": True, "prune.epochs": 2,
        "prune.exclude": SMALL_EXCLUDE, "cluster.enabled": True, "cluster.clusters": 8, "cluster.epochs": 1,
        "cluster.exclude": SMALL_EXCLUDE, "qat.enabled": True, "qat.epochs": 1, "convert.variants": [],
        "convert.calibration_samples": 30, "verify.max_top1_drop": 100.0, "verify.min_agreement": 0.0})
    result = tp.run(recipe, output_dir=tmp_path, run_name="pcqat", log=lambda _: None)
    report = json.loads((result.run_dir / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["baseline", "pruned", "clustered", "pcqat"]
    assert all(abs(s["sparsity"] - 0.8) <= 0.02 for s in report["stages"][1:]), report["stages"]
    (artifact,) = report["artifacts"]
    assert artifact["variant"] == "pcqat_int8" and artifact["info"]["is_full_integer"]
    assert all(abs(s - 0.8) <= 0.02 for s in artifact["layer_sparsity"].values()), artifact["layer_sparsity"]
    clustered = {w["name"]: w for w in artifact["info"]["weights"] if w["sparsity"] > 0.5}
    assert len(clustered) == len(report["stages"][2]["layers"])
    assert all(w["max_unique"] <= 8 + 1 for w in clustered.values()), clustered  # 8 clusters and the zero


def test_stage_report_shows_every_stage_side_by_side(pqat_run):
    stages = pqat_run.report["stages"]
    assert [s["name"] for s in stages] == ["baseline", "pruned", "pqat"]
    assert stages[1]["sparsity"] == pytest.approx(0.8, abs=0.02) and stages[2]["sparsity"] == stages[1]["sparsity"]
    (row,) = pqat_run.report["parity"]["rows"]
    assert row["source"] == "pqat Keras" and 0.0 <= row["source_agreement"] <= 1.0
    markdown = (pqat_run.run_dir / "report.md").read_text()
    assert "## Stages (Keras side)" in markdown and "| pqat |" in markdown
    assert (pqat_run.run_dir / "tiny_pqat.h5").is_file()


def test_cli_verify_of_an_optimized_run_gates_each_tflite_against_its_source(pqat_run, tmp_path, capsys):
    from tflite_pipeline.cli import main

    assert main(["verify", str(pqat_run.run_dir), "--max-top1-drop", "100", "--min-agreement", "0",
                 "--json", str(tmp_path / "parity.json")]) == 0
    (row,) = json.loads((tmp_path / "parity.json").read_text())["rows"]
    assert row["variant"] == "tiny_pqat_int8" and row["source"] == "pqat Keras"
    assert row["source_agreement"] == pqat_run.report["parity"]["rows"][0]["source_agreement"]
    assert "(pqat Keras)" in capsys.readouterr().out


@pytest.mark.parametrize("scheme", ["default", "prune_preserve", "cluster_preserve"])
def test_qat_model_saves_and_reloads_with_the_same_outputs(small_model, tmp_path, scheme):
    """The stage cache, the converter's child process and runs under tf.distribute all reload QAT models from .h5;
    tfmot's CQAT configs serialize as default ones, without the clustering variables CQAT trains with."""
    model = small_model
    if scheme == "cluster_preserve":
        config = ClusterConfig(enabled=True, clusters=8, exclude=SMALL_EXCLUDE)
        model = strip_clustering(cluster_weights(small_model, config)[0])
    qat = quantize_aware(model, scheme)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 28, 28, 1)).astype(np.float32)
    qat(x, training=True)  # a training step: CQAT writes the clustered kernels, ranges move
    reloaded = load_qat_model(save_qat_model(qat, tmp_path / "qat.h5"))
    np.testing.assert_allclose(reloaded(x, training=False), qat(x, training=False), atol=1e-6)


@pytest.mark.parametrize("scheme", ["default", "prune_preserve", "cluster_preserve"])
def test_qat_fake_quantizes_depthwise_kernels_per_channel_like_tflite(small_model, scheme):
    """Each depthwise channel sits on its own int8 grid (max|w_c| / 127), the one the converter uses."""
    qat = quantize_aware(small_model, scheme)
    wrapper = next(layer for layer in qat.layers
                   if type(getattr(layer, "layer", None)) is keras.layers.DepthwiseConv2D)
    ((variable, quantizer, weights),) = wrapper._weight_vars
    kernel = variable.numpy()
    fake = quantizer(tf.constant(kernel), training=True, weights=weights).numpy()
    step = np.abs(kernel).max(axis=(0, 1, 3)) / 127
    assert np.ptp(step) > 0  # channels differ in range, so one per-tensor grid could not pass
    np.testing.assert_allclose(fake / step[None, None, :, None], np.round(fake / step[None, None, :, None]),
                               atol=1e-3)


def test_qat_activation_ranges_start_from_the_calibration_data(small_model, tiny_data):
    """tfmot starts every range at [-6, 6]; calibrated, a ReLU6 output's range is [0, <= 6] before any step."""
    batches = [images for images, _ in ImageFolder.scan(tiny_data / "calibration").batches(SMALL_SPEC, 10)]
    before = [v.numpy() for v in small_model.variables]
    plain, calibrated = quantize_aware(small_model), quantize_aware(small_model, calibration=iter(batches))
    ranges = {v.name.split(":")[0]: float(v.numpy()) for v in activation_range_variables(calibrated)}
    assert {float(v.numpy()) for v in activation_range_variables(plain)} == {-6.0, 6.0}
    assert abs(ranges["quant_head_relu/output_min"]) < 1e-6 and 0.0 < ranges["quant_head_relu/output_max"] <= 6.0
    moving = [(a.numpy(), b.numpy()) for a, b in zip(plain.variables, calibrated.variables, strict=True)
              if "moving_" in a.name]
    assert moving and all(np.array_equal(a, b) for a, b in moving)  # BatchNorm statistics restored
    assert all(np.array_equal(a, b) for a, b in zip(before, [v.numpy() for v in small_model.variables], strict=True))


def test_pruning_does_not_touch_the_input_model(tiny_model):
    before = [w.copy() for w in tiny_model.get_weights()]
    _pruned, names = prune_low_magnitude(tiny_model, PruneConfig(enabled=True), total_steps=10)
    assert names and all(np.array_equal(a, b) for a, b in zip(before, tiny_model.get_weights(), strict=True))
    assert not any(n in ("Conv1", "predictions") for n in names)  # MobileNetV2 defaults keep stem and classifier


def test_two_four_pruning_reaches_half_sparsity(small_model, train_folder):
    config = PruneConfig(enabled=True, structure="2:4", target_sparsity=0.5, epochs=1, end_fraction=0.5,
                         exclude=SMALL_EXCLUDE)
    wrapped, names = prune_low_magnitude(small_model, config, total_steps=6)
    fit(wrapped, train_folder, SMALL_SPEC, epochs=1, learning_rate=1e-4, batch_size=16, callbacks=pruning_callbacks(),
        log=lambda _: None)
    sparsity = kernel_sparsity(strip_pruning(wrapped), names)
    assert all(abs(s - 0.5) < 0.01 for s in sparsity.values()), sparsity


def test_clustering_leaves_at_most_n_distinct_weights(small_model, train_folder):
    wrapped, names = cluster_weights(small_model, ClusterConfig(enabled=True, clusters=8, exclude=SMALL_EXCLUDE))
    fit(wrapped, train_folder, SMALL_SPEC, epochs=1, learning_rate=1e-4, batch_size=16, log=lambda _: None)
    clustered = strip_clustering(wrapped)
    assert max(unique_weights(clustered, names).values()) <= 8
    cqat = quantize_aware(clustered, "cluster_preserve")  # CQAT applies to the clustered model
    assert any("quant" in layer.name for layer in cqat.layers)


def test_pcqat_keeps_the_zeros_of_every_pruned_layer_even_after_a_dense_one(small_model, train_folder):
    """tfmot shares one weight quantizer between layers and turns its sparsity preservation off at the first layer
    without zeros (here the dense stem): each layer must get its own."""
    pruned = keras.models.clone_model(small_model)
    pruned.set_weights(small_model.get_weights())
    for layer in pruned.layers:
        if type(layer) in (keras.layers.Conv2D, keras.layers.Dense) and layer.name not in SMALL_EXCLUDE_NAMES:
            kernel, *rest = layer.get_weights()
            kernel[np.abs(kernel) < np.quantile(np.abs(kernel), 0.7)] = 0.0
            layer.set_weights([kernel, *rest])
    wrapped, names = cluster_weights(pruned, ClusterConfig(enabled=True, clusters=8, exclude=SMALL_EXCLUDE))
    clustered = strip_clustering(wrapped)
    pcqat = quantize_aware(clustered, "cluster_preserve")
    fit(pcqat, train_folder, SMALL_SPEC, epochs=1, learning_rate=1e-2, batch_size=16, log=lambda _: None)
    quantizers = {layer.layer.name: layer.quantize_config.weight_quantizer for layer in pcqat.layers
                  if hasattr(layer, "quantize_config") and layer.layer.name in names}
    assert len(quantizers) == len(names) and len({id(q) for q in quantizers.values()}) == len(names)
    assert all(q.preserve_sparsity for q in quantizers.values())
    for layer in pcqat.layers:
        if hasattr(layer, "quantize_config") and layer.layer.name in names:
            kernel = next(v for v in layer.weights if v.name.split("/")[-1].startswith("kernel")).numpy()
            assert np.mean(kernel == 0) >= 0.69, layer.layer.name  # QAT writes the clustered kernel back each step


def test_a_pruned_layer_with_fewer_nonzero_weights_than_clusters_keeps_its_zeros_and_values(small_model,
                                                                                            train_folder):
    """tfmot's sparsity-preserving k-means++ fails on such a layer (one weight per centroid on each side of zero):
    it gets a cluster per nonzero weight, stays wrapped, and so keeps its zeros through the fine-tune."""
    pruned = keras.models.clone_model(small_model)
    pruned.set_weights(small_model.get_weights())
    small = next(layer for layer in pruned.layers
                 if type(layer) is keras.layers.Conv2D and layer.name not in SMALL_EXCLUDE_NAMES)
    kernel, *rest = small.get_weights()
    kernel.reshape(-1)[np.argsort(np.abs(kernel.reshape(-1)))[:-6]] = 0.0   # 6 nonzero weights, 8 clusters asked
    small.set_weights([kernel, *rest])
    said = []
    wrapped, names = cluster_weights(pruned, ClusterConfig(enabled=True, clusters=8, exclude=SMALL_EXCLUDE),
                                     log=said.append)
    assert said == [f"[cluster] {small.name}: 6 nonzero weights after pruning, fewer than 8 clusters: each keeps its "
                    "own value (7 clusters with the zero)"]
    fit(wrapped, train_folder, SMALL_SPEC, epochs=1, learning_rate=1e-2, batch_size=16, log=lambda _: None)
    after = strip_clustering(wrapped).get_layer(small.name).get_weights()[0]
    assert small.name in names and np.array_equal(after == 0, kernel == 0)   # the zeros stay where pruning put them
    assert np.unique(after).size <= 7


@pytest.mark.fast
def test_distillation_loss_reduces_to_cross_entropy_and_zero_kl():
    probs = tf.constant([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = tf.one_hot([0, 2], 3)
    hard_only = DistillationLoss(3, DistillConfig(alpha=1.0))(tf.concat([labels, probs], 1), probs)
    ce = keras.losses.categorical_crossentropy(labels, probs)
    np.testing.assert_allclose(hard_only, tf.reduce_mean(ce), rtol=1e-5)
    soft_only = DistillationLoss(3, DistillConfig(alpha=0.0, temperature=3.0))(tf.concat([labels, probs], 1), probs)
    assert abs(float(soft_only)) < 1e-5  # student == teacher


@pytest.mark.parametrize("wrap", ["prune", "cluster", "qat", "pqat", "cqat"])
def test_a_wrapped_model_keeps_the_parameters_and_the_softmax_of_the_model_it_wraps(small_model, wrap):
    """Quantizer ranges, pruning masks and CQAT's centroids and indices are not parameters (CQAT tripled the
    count). And the loss's `from_logits` comes from `outputs_probabilities`: a QAT student read as giving logits got
    log_softmax(probabilities) in the distillation loss (tfmot's QuantizeAwareActivation hides the softmax)."""
    if wrap == "prune":
        wrapped = prune_low_magnitude(small_model, PruneConfig(enabled=True, exclude=SMALL_EXCLUDE), total_steps=2)[0]
    elif wrap in ("qat", "pqat"):
        wrapped = quantize_aware(small_model, "default" if wrap == "qat" else "prune_preserve")
    else:
        wrapped = cluster_weights(small_model, ClusterConfig(enabled=True, clusters=8, exclude=SMALL_EXCLUDE))[0]
        if wrap == "cqat":
            wrapped = quantize_aware(strip_clustering(wrapped), "cluster_preserve")
    assert wrapped.count_params() > small_model.count_params()
    assert count_parameters(wrapped) == count_parameters(small_model) == small_model.count_params()
    assert outputs_probabilities(small_model) and outputs_probabilities(wrapped)


@pytest.mark.fast
def test_a_teacher_that_outputs_logits_hands_probabilities_to_the_loss():
    inputs = keras.Input((4,))
    logits_teacher = keras.Model(inputs, keras.layers.Dense(3, kernel_initializer="ones")(inputs))
    images = tf.constant(np.arange(8, dtype=np.float32).reshape(2, 4) / 8)
    dataset = tf.data.Dataset.from_tensor_slices((images, tf.constant([0, 2]))).batch(2)
    (_, targets), = list(with_teacher_targets(dataset, logits_teacher, 3))
    np.testing.assert_allclose(targets[:, 3:], tf.nn.softmax(logits_teacher(images)), rtol=1e-6)
    np.testing.assert_array_equal(targets[:, :3], tf.one_hot([0, 2], 3))


# --- impossible recipes fail before training, naming the field ---------------------------------

@pytest.mark.parametrize("overrides, error, message", [
    ({"prune.enabled": True, "prune.layers": ["^nope$"]}, tp.RecipeError, r"`prune.layers` pattern '\^nope\$'"),
    ({"cluster.enabled": True, "cluster.clusters": 256}, tp.RecipeError,
     r"`cluster.clusters=256` but layer '.*' has only \d+ weights"),
    ({"prune.enabled": True, "cluster.enabled": True, "cluster.preserve_sparsity": False}, tp.RecipeError,
     r"fill the pruned zeros back in"),
    ({"prune.enabled": True, "prune.target_sparsity": 1.0}, tp.RecipeError, r"prune.target_sparsity=1.0"),
    ({"prune.enabled": True, "prune.layer_types": ["DepthwiseConv2D"]}, tp.RecipeError, r"depthwise"),
    ({"prune.enabled": True, "prune.structure": "2:4"}, tp.RecipeError, r"2:4 sparsity is exactly 0.5"),
    ({"distill.enabled": True}, tp.RecipeError, r"without a fine-tune stage"),
])
def test_impossible_recipes_fail_before_training(tiny_recipe, tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        recipe = tiny_recipe.with_overrides({"train.epochs": 5, **overrides})
        tp.run(recipe, output_dir=tmp_path, run_name="x", log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_qat_on_a_layer_tfmot_cannot_quantize_is_a_model_error():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.LayerNormalization(name="norm")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x)))
    with pytest.raises(tp.ModelError, match=r"tfmot cannot quantize .*norm.*not supported"):
        quantize_aware(model)


def test_a_nested_model_is_quantized_through_its_flat_rebuild():
    """tfmot refuses nested models ("Quantizing a keras Model inside another keras Model is not supported");
    quantize_aware takes them through `rebuild.flat_model`, inner layers keeping their names."""
    base = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="inner_conv")], name="backbone")
    model = keras.Sequential([base, keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")])
    qat = quantize_aware(model)
    assert "quant_inner_conv" in [layer.name for layer in qat.layers]
    assert not [layer.name for layer in qat.layers if isinstance(layer, keras.Model)]
