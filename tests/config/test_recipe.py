import dataclasses

import pytest

import tflite_pipeline as tp
from tflite_pipeline.config.recipe import parse_override

pytestmark = pytest.mark.fast  # `make test-fast`: no model is built here


def test_default_recipe_loads_by_name_and_is_frozen():
    recipe = tp.load_recipe("default")
    assert recipe.model.source == "mobilenet_v2" and recipe.convert.variants == ("float32", "int8", "pixels")
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.train.epochs = 3


def test_recipe_loads_from_a_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[model]\nalpha = 0.5\n[train]\nepochs = 2\n')
    recipe = tp.load_recipe(path)
    assert recipe.name == "mine" and recipe.model.alpha == 0.5 and recipe.train.epochs == 2
    assert recipe.convert == tp.Recipe().convert  # untouched sections keep defaults


@pytest.mark.parametrize("name", ["default", "channels-qat-kd"])
def test_recipe_round_trips_through_dict(name):
    recipe = tp.load_recipe(name).with_overrides({"channels.ratios": {"^Conv_1$": 0.25}})
    assert tp.Recipe.from_dict(recipe.to_dict()) == recipe and recipe.channels.ratios == {"^Conv_1$": 0.25}


@pytest.mark.parametrize("toml, message", [
    ("[model]\nalpah = 0.5\n", r"Unknown key `model.alpah`"),
    ("[modle]\n", r"Unknown section `\[modle\]`"),
    ("[model]\nalpha = 2.0\n", r"Received `model.alpha=2.0`; expected a width multiplier"),
    ("[train]\nepochs = -1\n", r"Received `train.epochs=-1`"),
    ("[train]\nepochs = 'ten'\n", r"Received `train.epochs='ten'`; expected a int"),
    ("[convert]\nvariants = ['int4']\n", r"Received `convert.variants=\('int4',\)`"),
    ("[convert]\nio_dtype = 'float32'\n", r"convert.io_dtype"),
    ("[verify]\nmin_agreement = 98\n", r"Received `verify.min_agreement=98.0`; expected a fraction"),
    ("[preprocess]\nnormalization = 'imagenet'\n", r"preprocess.normalization"),
    ("[preprocess]\nnormalization = 'mean_std'\nmean = [0.5, 0.5]\nstd = [0.2, 0.2]\n", r"1 or 3 values"),
    ("[model\n", r"not valid TOML"),
    ("[channels]\nmac_budget = 1.5\n", r"Received `channels.mac_budget=1.5`; expected a fraction of the MACs"),
    ("[channels]\nratios = { '^Conv_1$' = 'half' }\n", r"Received `channels.ratios.\^Conv_1\$='half'`"),
    ("[channels]\nratios = [0.5]\n", r"`channels.ratios=\[0.5\]`; expected a table"),
    ("[channels]\ncriterion = 'taylor'\n", r"channels.criterion"),
])
def test_bad_recipe_names_the_field(tmp_path, toml, message):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(tp.RecipeError, match=message):
        tp.load_recipe(path)


def test_unknown_recipe_name_lists_bundled_ones():
    with pytest.raises(tp.RecipeError, match=r"Unknown recipe 'nope'; bundled recipes: .*default"):
        tp.load_recipe("nope")


def test_overrides_are_validated():
    recipe = tp.load_recipe("default").with_overrides({"train.epochs": 1, "model.alpha": 0.5})
    assert (recipe.train.epochs, recipe.model.alpha) == (1, 0.5)
    with pytest.raises(tp.RecipeError, match=r"Unknown key `train.epoch`"):
        recipe.with_overrides({"train.epoch": 1})


def test_cli_override_values_are_parsed_as_toml():
    assert parse_override("train.epochs=2") == ("train.epochs", 2)
    assert parse_override("convert.variants=['int8']") == ("convert.variants", ["int8"])
    assert parse_override("data.root=/some/dir") == ("data.root", "/some/dir")
    with pytest.raises(tp.RecipeError, match=r"expected `section\.key=value`"):
        parse_override("epochs")
