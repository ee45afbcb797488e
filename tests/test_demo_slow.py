"""The demo as a test (`make test-slow`, ~8 min on 2 cores): the default recipe on the bundled data
must meet the product's parity targets. Not part of `make test`/CI because of its length."""

import pytest

import tflite_pipeline as tp


@pytest.mark.slow
def test_default_recipe_meets_the_parity_targets(tmp_path):
    result = tp.run(tp.load_recipe("default"), output_dir=tmp_path, run_name="demo")
    parity = result.report.parity
    assert parity.num_images == 2000 and parity.keras_top1 > 0.85
    assert parity.row("float32").agreement == 1.0
    int8 = parity.row("int8")
    assert int8.top1_drop <= 0.5 and int8.agreement >= 0.98
    assert tp.inspect_tflite(result.tflite_path("int8")).is_full_integer
