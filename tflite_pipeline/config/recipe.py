"""Recipes: every section of a run, loaded from TOML by name or path, with dotted overrides.

    recipe = load_recipe("default")                    # bundled: tflite_pipeline/config/recipes/default.toml
    recipe = load_recipe("my_recipe.toml")             # a file of your own
    recipe = recipe.with_overrides({"train.epochs": 2})
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tflite_pipeline.config.sections import (
    BenchConfig,
    ChannelsConfig,
    ClusterConfig,
    ConvertConfig,
    DataConfig,
    DiagnoseConfig,
    DistillConfig,
    DistributeConfig,
    LowRankConfig,
    MicroConfig,
    ModelConfig,
    PreprocessConfig,
    PruneConfig,
    PTQConfig,
    QATConfig,
    Section,
    TrainConfig,
    VerifyConfig,
)
from tflite_pipeline.errors import RecipeError

SECTIONS: dict[str, type[Section]] = {  # TOML table name -> its dataclass, in recipe order
    cls.section: cls for cls in (ModelConfig, DataConfig, PreprocessConfig, TrainConfig, DistributeConfig,
                                 ChannelsConfig, LowRankConfig, PruneConfig, ClusterConfig, QATConfig, DistillConfig,
                                 ConvertConfig, PTQConfig, VerifyConfig, DiagnoseConfig, BenchConfig, MicroConfig)
}


@dataclass(frozen=True)
class Recipe:
    """A whole run's configuration. Build with `load_recipe` or `Recipe.from_dict`."""

    name: str = "custom"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distribute: DistributeConfig = field(default_factory=DistributeConfig)
    channels: ChannelsConfig = field(default_factory=ChannelsConfig)
    lowrank: LowRankConfig = field(default_factory=LowRankConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    qat: QATConfig = field(default_factory=QATConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    convert: ConvertConfig = field(default_factory=ConvertConfig)
    ptq: PTQConfig = field(default_factory=PTQConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    diagnose: DiagnoseConfig = field(default_factory=DiagnoseConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    micro: MicroConfig = field(default_factory=MicroConfig)

    def __post_init__(self) -> None:
        if self.prune.enabled and self.cluster.enabled and not self.cluster.preserve_sparsity:
            raise RecipeError("Received `prune.enabled=true` and `cluster.enabled=true` with "
                              "`cluster.preserve_sparsity=false`: clustering would fill the pruned zeros back in; "
                              "set `cluster.preserve_sparsity = true` (prune -> cluster -> PCQAT).")
        if self.prune.enabled and self.prune.structure == "2:4" and self.prune.target_sparsity != 0.5:
            raise RecipeError(f"Received `prune.structure='2:4'` with `prune.target_sparsity="
                              f"{self.prune.target_sparsity}`; 2:4 sparsity is exactly 0.5, set target_sparsity = 0.5.")
        if not self.convert.variants and not self.optimizes:
            raise RecipeError("Received `convert.variants=[]` with no fine-tune stage: nothing would be exported. "
                              "List float32 and/or int8, or enable [channels], [lowrank], [prune], [cluster] or [qat].")
        if self.distill.enabled and not self.optimizes:
            raise RecipeError("Received `distill.enabled=true` without a fine-tune stage to distill into; enable "
                              "[channels], [lowrank], [prune], [cluster] or [qat].")

    @property
    def optimizes(self) -> bool:
        """Whether the recipe has fine-tuning stages after the baseline (an enabled `fine_tune` section)."""
        return any(cls.fine_tune and getattr(self, key).enabled for key, cls in SECTIONS.items())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str = "custom") -> Recipe:
        top_level = {"name", "description"}
        unknown = sorted(set(data) - set(SECTIONS) - top_level)
        if unknown:
            raise RecipeError(f"Unknown section `[{unknown[0]}]` in recipe {name!r}; known sections: "
                              f"{', '.join(sorted(SECTIONS))}.")
        sections = {key: SECTIONS[key].from_dict(data[key]) for key in SECTIONS if key in data}
        return cls(name=str(data.get("name", name)), description=str(data.get("description", "")), **sections)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        out.update({key: getattr(self, key).to_dict() for key in SECTIONS})
        return out

    def with_overrides(self, overrides: Mapping[str, Any]) -> Recipe:
        """A copy with dotted keys replaced, e.g. `{"train.epochs": 1, "model.alpha": 0.5}`."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if section not in SECTIONS or not key:
                raise RecipeError(f"Received override `{dotted}`; expected `section.key` with section one of "
                                  f"{', '.join(sorted(SECTIONS))}.")
            data[section][key] = value
        return Recipe.from_dict(data, name=self.name)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a CLI `--set section.key=value`; the value is read as TOML, else taken as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"Received `--set {text}`; expected `section.key=value`, e.g. `train.epochs=2`.")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def bundled_recipes() -> list[str]:
    """Names of the recipes shipped inside the package."""
    folder = resources.files(__package__) / "recipes"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load a bundled recipe by name (`"default"`) or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise RecipeError(f"Recipe file {str(path)!r} does not exist.")
        text, name = path.read_text(encoding="utf-8"), path.stem
    else:
        resource = resources.files(__package__) / "recipes" / f"{name_or_path}.toml"
        if not resource.is_file():
            raise RecipeError(f"Unknown recipe {str(name_or_path)!r}; bundled recipes: "
                              f"{', '.join(bundled_recipes())}, or pass a path to a .toml file.")
        text, name = resource.read_text(encoding="utf-8"), str(name_or_path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(f"Recipe {str(name_or_path)!r} is not valid TOML: {error}.") from None
    return Recipe.from_dict(data, name=name)
