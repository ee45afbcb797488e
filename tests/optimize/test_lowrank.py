"""Low-rank factorization on the reference CNN: exact at full rank, the parameters and MACs it promises at lower
rank, layers that cannot pay left whole, a MAC budget met, and the stage in a run down to an int8 file."""

import json

import numpy as np
import pytest

from tflite_pipeline.config.sections import LowRankConfig
from tflite_pipeline.errors import RecipeError
from tflite_pipeline.model.properties import count_parameters
from tflite_pipeline.optimize.channels import model_macs
from tflite_pipeline.optimize.lowrank import FIRST_SUFFIX, candidate_layers, factorize, plan_ranks
from tflite_pipeline.tflite.flatbuffer import inspect_tflite

IMAGES = np.random.default_rng(0).uniform(0, 1, (8, 28, 28, 1)).astype(np.float32)
POINTWISE = ["b1_expand", "b1_project", "b2_expand", "b2_project", "head"]   # the reference CNN's 1x1 convolutions


def test_candidates_are_the_pointwise_convolutions_and_dense_layers(small_model):
    assert [layer.name for layer in candidate_layers(small_model, LowRankConfig())] == [*POINTWISE, "classes"]


def test_full_rank_factorization_reproduces_the_model(small_model):
    full = {layer.name: min(layer.get_weights()[0].shape[-2:]) for layer in candidate_layers(small_model,
                                                                                             LowRankConfig())}
    factored = factorize(small_model, full)
    assert len(factored.layers) == len(small_model.layers) + len(full)
    np.testing.assert_allclose(factored(IMAGES).numpy(), small_model(IMAGES).numpy(), atol=1e-5)


def test_lower_rank_cuts_parameters_and_macs_by_exactly_what_the_ranks_promise(small_model):
    factored = factorize(small_model, {"b2_expand": 8, "head": 16})   # 24x96 and 48x128 kernels
    saved = (24 * 96 - 8 * (24 + 96)) + (48 * 128 - 16 * (48 + 128))
    assert count_parameters(small_model) - count_parameters(factored) == saved
    assert factored.get_layer("b2_expand" + FIRST_SUFFIX).get_weights()[0].shape == (1, 1, 24, 8)
    assert not factored.get_layer("b2_expand" + FIRST_SUFFIX).use_bias
    assert factored.get_layer("b2_expand").get_weights()[0].shape == (1, 1, 8, 96)
    def positions(name):
        return int(np.prod(small_model.get_layer(name).output_shape[1:3]))

    assert model_macs(small_model) - model_macs(factored) == \
        positions("b2_expand") * (24 * 96 - 8 * 120) + positions("head") * (48 * 128 - 16 * 176)
    assert small_model.get_layer("b2_expand").get_weights()[0].shape == (1, 1, 24, 96)  # the input left alone


def test_a_rank_that_cannot_pay_leaves_the_layer_whole_and_says_why(small_model):
    plan = plan_ranks(small_model, LowRankConfig(energy=1.0))
    assert plan.ranks == {}
    assert all("break-even" in r.skipped or "classifier" in r.skipped for r in plan.layers)
    assert plan.macs_after == plan.macs_before
    row = next(r for r in plan.layers if r.layer == "b1_expand")
    assert row.break_even == pytest.approx(24 * 72 / 96) and "rank 24 is not below the break-even 18.0" in row.skipped
    assert "classifier" in next(r for r in plan.layers if r.layer == "classes").skipped


def test_a_mac_budget_is_met_by_one_energy_for_every_layer(small_model):
    plan = plan_ranks(small_model, LowRankConfig(mac_budget=0.7))
    assert plan.macs_after <= 0.7 * plan.macs_before and plan.ranks
    assert model_macs(factorize(small_model, plan.ranks)) == plan.macs_after
    with pytest.raises(RecipeError, match=r"keeps .* of the MACs; raise the budget"):
        plan_ranks(small_model, LowRankConfig(mac_budget=0.05))


def test_a_run_with_lowrank_factors_fine_tunes_and_converts_to_int8(tiny_data, tmp_path):
    from conftest import REFERENCE_MODEL

    import tflite_pipeline as tp

    result = tp.convert(REFERENCE_MODEL, tiny_data, calibration_samples=20, output_dir=tmp_path, run_name="lr",
                        overrides={"lowrank.enabled": True, "lowrank.energy": 0.6, "lowrank.epochs": 1,
                                   "train.batch_size": 16, "verify.max_top1_drop": 100.0,
                                   "verify.min_agreement": 0.0}, log=lambda _: None)
    report = json.loads((result.run_dir / "report.json").read_text())
    baseline, factored = report["stages"][0], report["stages"][-1]
    assert factored["name"] == "factored" and factored["macs"] < baseline["macs"]
    assert report["lowrank"]["macs_after"] == factored["macs"] and set(factored["layers"]) <= set(POINTWISE)
    info = inspect_tflite(result.run_dir / "reference_cnn_factored_int8.tflite")
    assert info.is_full_integer and info.macs == factored["macs"]
    assert sum(op.count for op in info.ops if op.name == "CONV_2D") == 6 + len(factored["layers"])
