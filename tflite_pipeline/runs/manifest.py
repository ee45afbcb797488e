"""`manifest.json`: what a run was made from (versions, recipe, input model and data listings) and the sha256
of everything it wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tflite_pipeline.config.recipe import Recipe
from tflite_pipeline.config.sections import MOBILENET_V2
from tflite_pipeline.data.folders import DatasetSplits
from tflite_pipeline.files import sha256_tree


def run_manifest(recipe: Recipe, splits: DatasetSplits, versions: Mapping[str, str], outputs: Mapping[str, str]
                 ) -> dict[str, object]:
    """What a run was made from and what it wrote: library versions, the recipe, sha256 of the input model
    file (when the baseline came from a file) and of the data listing (paths and sizes per split), and
    sha256 of every output file. Written last, as `manifest.json`."""
    source = Path(recipe.model.source)
    model = {"source": recipe.model.source,
             "sha256": sha256_tree(source) if recipe.model.source != MOBILENET_V2 and source.exists() else None}
    data = {"root": str(splits.root), "class_names": list(splits.class_names),
            **{name: {"images": len(split), "listing_sha256": splits.listings[name]}
               for name, split in splits.named().items()}}
    return {"versions": dict(versions), "recipe": recipe.to_dict(), "model": model, "data": data,
            "outputs": dict(outputs)}
