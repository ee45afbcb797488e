"""Channel pruning: groups traced from the graph, exact rebuilds, MAC budgets, and a thinned run end to end."""

import json

import numpy as np
import pytest
import tf_keras as keras

import tflite_pipeline as tp
from tflite_pipeline.config.sections import ChannelsConfig
from tflite_pipeline.model.build import build_mobilenet_v2
from tflite_pipeline.model.files import copy_model
from tflite_pipeline.optimize.channels import (
    ChannelGraph,
    apply_plan,
    channel_importance,
    kept_count,
    model_macs,
    plan_channels,
    prune_channels,
)
from tflite_pipeline.tflite.convert import convert_float32
from tflite_pipeline.tflite.flatbuffer import inspect_tflite

IMAGES = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
EXACT = {"multiple": 1, "min_channels": 1}  # no SIMD rounding: the ratio is applied as given


@pytest.fixture(scope="module")
def mobilenet():
    """Random weights with non-trivial BatchNorm statistics, so every channel carries a different signal."""
    model = build_mobilenet_v2(10, 32, alpha=0.35, seed=1)
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 2.0, var.shape)])
    return model


def test_a_zero_ratio_rebuild_has_identical_outputs(mobilenet):
    same, plan = prune_channels(mobilenet, ChannelsConfig(ratio=0.0, criterion="l1"))
    assert plan.macs_after == plan.macs_before and same is not mobilenet
    np.testing.assert_array_equal(same(IMAGES, training=False).numpy(), mobilenet(IMAGES, training=False).numpy())


def test_groups_are_the_expanded_stem_and_head_channels_and_residual_adds_stay_whole(mobilenet):
    graph = ChannelGraph.of(mobilenet)
    sources = {g.source for g in graph.groups}
    assert {f"block_{i}_expand" for i in range(1, 17)} <= sources
    assert {"Conv1", "Conv_1", "expanded_conv_project", "block_16_project"} <= sources
    block = graph.group("block_5_expand")
    assert block.channelwise == ("block_5_expand_BN", "block_5_depthwise", "block_5_depthwise_BN")
    assert block.consumers == ("block_5_project",)
    assert graph.group("Conv_1").consumers == ("predictions",)
    assert "block_5_add" in graph.skipped["block_5_project"] and "Add" in graph.skipped["block_5_project"]
    assert "softmax" in graph.skipped["predictions"]


def test_removing_channels_that_contribute_nothing_leaves_the_outputs_unchanged(mobilenet):
    """Zero the consumers' weights of the channels the plan removes: the thinner model must compute the same
    function, which checks every slice (sources, BatchNorms, depthwise kernels, consumers, the classifier)."""
    model = copy_model(mobilenet)
    graph = ChannelGraph.of(model)
    config = ChannelsConfig(ratio=0.5, criterion="activation", **EXACT)
    for group in graph.groups:
        removed = group.channels - kept_count(group.channels, 0.5, **EXACT)
        for name in group.consumers:
            layer = model.get_layer(name)
            kernel, *rest = layer.get_weights()
            kernel[..., :removed, :] = 0.0
            layer.set_weights([kernel, *rest])
    thin, plan = prune_channels(model, config, [IMAGES])
    scores = channel_importance(graph, "activation", [IMAGES])
    for group in graph.groups:  # what went scored 0: the zeroed channels (or ties: channels ReLU left all-zero)
        assert not np.delete(scores[group.source], plan.keep[group.source]).any(), group.source
    assert plan.macs_after < 0.45 * plan.macs_before and thin.count_params() < 0.6 * model.count_params()
    np.testing.assert_allclose(thin(IMAGES, training=False).numpy(), model(IMAGES, training=False).numpy(),
                               atol=1e-5)


def test_kept_channels_carry_their_original_weights(mobilenet):
    thin, plan = prune_channels(mobilenet, ChannelsConfig(ratio=0.5, criterion="bn_scale"))
    kept = plan.keep["block_3_expand"]
    np.testing.assert_array_equal(thin.get_layer("block_3_expand").get_weights()[0],
                                  mobilenet.get_layer("block_3_expand").get_weights()[0][..., kept])
    np.testing.assert_array_equal(thin.get_layer("block_3_depthwise").get_weights()[0],
                                  mobilenet.get_layer("block_3_depthwise").get_weights()[0][:, :, kept, :])
    np.testing.assert_array_equal(thin.get_layer("block_3_project").get_weights()[0],
                                  mobilenet.get_layer("block_3_project").get_weights()[0][:, :, kept, :])
    gamma = np.abs(mobilenet.get_layer("block_3_depthwise_BN").get_weights()[0])
    assert gamma[kept].min() >= np.delete(gamma, kept).max()  # bn_scale keeps the largest |gamma|


def test_a_mac_budget_is_met_with_simd_multiple_channel_counts(mobilenet):
    graph = ChannelGraph.of(mobilenet)
    plan = plan_channels(graph, channel_importance(graph, "l1"), ChannelsConfig(mac_budget=0.5))
    assert 0.45 <= plan.mac_fraction <= 0.5 and 0 < plan.ratio < 1
    assert all(after % 8 == 0 or after == before for before, after in plan.counts().values())


def test_keras_macs_match_the_converted_flatbuffer(mobilenet):
    thin, plan = prune_channels(mobilenet, ChannelsConfig(mac_budget=0.5, criterion="l1"))
    assert model_macs(thin) == plan.macs_after == inspect_tflite(convert_float32(thin)).macs


def test_a_budget_below_what_min_channels_allow_fails_naming_the_field(mobilenet):
    with pytest.raises(tp.RecipeError, match=r"channels.mac_budget=0.01.*leaves"):
        prune_channels(mobilenet, ChannelsConfig(mac_budget=0.01, criterion="l1"))
    with pytest.raises(tp.RecipeError, match=r"channels.exclude.*matches no channel group"):
        prune_channels(mobilenet, ChannelsConfig(exclude=("^no_such_layer$",), criterion="l1"))
    with pytest.raises(tp.RecipeError, match=r"channels.ratio=1.0"):
        ChannelsConfig(ratio=1.0)


def test_per_group_ratios_and_exclusions_apply(mobilenet):
    config = ChannelsConfig(ratio=0.5, ratios={"^Conv_1$": 0.25}, exclude=("^Conv1$",), criterion="l1")
    _, plan = prune_channels(mobilenet, config)
    counts = plan.counts()
    assert counts["Conv1"] == (16, 16) and counts["Conv_1"] == (1280, 960) and counts["block_2_expand"] == (48, 24)


def test_a_stock_keras_mobilenet_v2_of_a_user_is_thinned_to_the_budget():
    """keras.applications' own MobileNetV2 with its top (what users have), not our builder's."""
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.5, weights=None, classes=7)
    thin, plan = prune_channels(model, ChannelsConfig(mac_budget=0.6, criterion="activation"), [IMAGES])
    assert len(plan.keep) == 20 and plan.mac_fraction <= 0.6 and model_macs(thin) == plan.macs_after
    assert thin(IMAGES).shape == (8, 7) and "softmax" in plan.skipped["predictions"]


def test_other_cnns_are_pruned_where_possible_and_the_rest_is_reported():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv_a")(inputs)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(32, 3, name="conv_b")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(4, name="logits")(x)
    model = keras.Model(inputs, outputs)
    graph = ChannelGraph.of(model)
    assert [g.source for g in graph.groups] == ["conv_a"]
    assert "Flatten" in graph.skipped["conv_b"] and "model output" in graph.skipped["logits"]
    x = IMAGES[:2, :16, :16]
    thin = apply_plan(model, plan_channels(graph, channel_importance(graph, "l1"), ChannelsConfig(ratio=0.0)))
    np.testing.assert_array_equal(thin(x).numpy(), model(x).numpy())


def test_a_model_with_nothing_to_remove_is_rejected_with_the_reasons():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    outputs = keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(x))
    with pytest.raises(tp.ModelError, match=r"no channels this stage can remove.*conv: its channels reach"):
        prune_channels(keras.Model(inputs, outputs), ChannelsConfig(criterion="l1"))


@pytest.fixture(scope="module")
def thinned_run(tiny_run, tiny_recipe, tmp_path_factory):
    """Channels down to half the MACs with distillation -> QAT -> int8, from the tiny run's trained baseline."""
    recipe = tp.load_recipe("channels-qat-kd").with_overrides({
        "data.root": tiny_recipe.data.root, "model.source": str(tiny_run.run_dir / "mobilenet_v2_float.keras"),
        "model.name": "tiny", "train.epochs": 0, "train.batch_size": 16, "channels.epochs": 1, "channels.samples": 30,
        "qat.epochs": 1, "convert.variants": ["float32"], "convert.calibration_samples": 30,
        "verify.max_top1_drop": 100.0, "verify.min_agreement": 0.0, "bench.runs": 5})
    return tp.run(recipe, output_dir=tmp_path_factory.mktemp("thinned"), run_name="thinned", log=lambda _: None)


def test_a_thinned_run_reports_macs_channels_and_latency_before_and_after(thinned_run):
    report = thinned_run.report
    assert [s.name for s in report.stages] == ["baseline", "thinned", "qat"]
    base, thinned, qat = report.stages
    assert thinned.macs <= 0.5 * base.macs and qat.macs == thinned.macs and thinned.parameters < base.parameters
    assert [a.variant for a in report.artifacts] == ["float32", "thinned_float32", "qat_int8"]
    float32, thin32, int8 = report.artifacts
    assert thin32.info.macs == thinned.macs == int8.info.macs and int8.info.is_full_integer
    assert thin32.size_bytes < 0.7 * float32.size_bytes
    assert report.channels["macs_after"] == thinned.macs and report.channels["groups"]["block_1_expand"]["after"] < 48
    markdown = (thinned_run.run_dir / "report.md").read_text()
    assert "## Channel pruning" in markdown and "| block_1_expand | 48 |" in markdown
    assert "LiteRT latency `float32`" in markdown and "-> `thinned_float32`" in markdown
    assert (thinned_run.run_dir / "tiny_thinned.keras").is_file() and (thinned_run.run_dir / "tiny_qat.h5").is_file()


def test_thinned_keras_and_its_tflite_files_agree_as_in_the_parity_check(thinned_run):
    """Each .tflite is compared with the Keras stage it came from: float32 exactly, int8 with its QAT model.
    (The tiny model is barely trained, so its top-1 flips easily; agreement on real data is the benchmark's.)"""
    parity = thinned_run.report.parity
    thin32, int8 = parity.row("thinned_float32"), parity.row("qat_int8")
    assert thin32.source == "thinned Keras" and thin32.source_agreement == 1.0 and thin32.source_cosine > 0.9999
    # KL of the probabilities themselves (a QAT model was once read as giving logits, which flattened them)
    assert int8.source == "qat Keras" and int8.source_cosine > 0.95 and int8.source_kl < 0.05


def test_cli_verify_of_a_thinned_run_finds_each_stage_source(thinned_run, tmp_path):
    from tflite_pipeline.cli import main

    assert main(["verify", str(thinned_run.run_dir), "--max-top1-drop", "100", "--min-agreement", "0",
                 "--json", str(tmp_path / "parity.json")]) == 0
    rows = {r["variant"]: r for r in json.loads((tmp_path / "parity.json").read_text())["rows"]}
    assert rows["tiny_thinned_float32"]["source"] == "thinned Keras"
    assert rows["tiny_qat_int8"]["source"] == "qat Keras"
