"""Recipes: every setting of a run, as frozen validated dataclasses loaded from TOML by name or path.

    sections.py   one dataclass per recipe section ([model], [data], [train], [prune], ...), with its checks
    recipe.py     `Recipe` (all sections), `load_recipe(name_or_path)`, dotted overrides, `bundled_recipes()`
    recipes/      the bundled recipes (`default`, `ptq`, `qat`, `prune-pqat`, `thin`, ...)
    reference.py  docs/recipe-reference.md, generated from the dataclasses
"""
