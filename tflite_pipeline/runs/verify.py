"""`verify`: the parity gate on files that already exist, a run folder or `.tflite` files beside a Keras model.

A run folder (`tflite-pipeline run` / `convert` output) brings its own model, labels, preprocessing and the
gate it was checked with; on its own validation images the float model is also held to the top-1 it scored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tf_keras as keras

from tflite_pipeline.config.recipe import load_recipe
from tflite_pipeline.config.sections import PreprocessConfig, VerifyConfig
from tflite_pipeline.data.folders import ImageFolder, read_labels
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.errors import DataError, ModelError, OutputError, RecipeError
from tflite_pipeline.export.metadata import input_spec, read_metadata
from tflite_pipeline.model.files import load_model_file
from tflite_pipeline.model.load import load_model
from tflite_pipeline.model.properties import image_input_shape
from tflite_pipeline.progress import Log
from tflite_pipeline.progress import log as _stderr
from tflite_pipeline.tflite.parity import Expected, ParityReport, measure_parity, read_reference_metrics

KERAS_FILE_SUFFIX = "_float.keras"


@dataclass(frozen=True)
class RecordedRun:
    """A run folder as `verify` reads it: the float Keras model, labels, preprocessing, every `.tflite`, and what
    its report.json recorded (read once; empty when the report is missing or unreadable)."""

    folder: Path
    keras: Path
    labels: Path | None
    spec: PreprocessSpec
    tflites: dict[str, Path]
    report: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, run_dir: str | Path) -> RecordedRun:
        run_dir = Path(run_dir)
        kerases = sorted(run_dir.glob(f"*{KERAS_FILE_SUFFIX}"))
        if not kerases or not (run_dir / "preprocessing.json").is_file():
            raise OutputError(f"{str(run_dir)!r} is not a run folder (expected *{KERAS_FILE_SUFFIX} and "
                              "preprocessing.json written by `tflite-pipeline run` or `convert`).")
        try:
            report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            report = {}
        labels = run_dir / "labels.txt"
        return cls(run_dir, kerases[0], labels if labels.is_file() else None,
                   PreprocessSpec.read_json(run_dir / "preprocessing.json"),
                   {p.stem: p for p in sorted(run_dir.glob("*.tflite"))}, report if isinstance(report, dict) else {})

    def gate(self) -> dict[str, object]:
        """The gate the run was checked with (`verify.max_top1_drop`, `verify.min_agreement`, `verify.kernels`), as
        recipe overrides; empty when the report does not say."""
        try:
            verify = dict(self.report["recipe"]["verify"])
        except (KeyError, TypeError, ValueError):
            return {}
        return {f"verify.{key}": verify[key] for key in ("max_top1_drop", "min_agreement", "kernels") if key in verify}

    def keras_top1(self, tolerance_pts: float) -> dict[str, Expected]:
        """The float model's top-1 the run measured on its validation folder, as the expectation `verify RUN_DIR`
        holds it to (within the gate's top-1 budget); empty when the report does not say."""
        try:
            top1 = float(self.report["parity"]["keras_top1"])
        except (KeyError, ValueError, TypeError):
            return {}
        return {"keras": Expected(top1, tolerance_pts / 100.0, "the run (report.json)")}

    def validation_dir(self) -> Path:
        """The validation folder the run used."""
        try:
            return Path(self.report["parity"]["data"])
        except (KeyError, TypeError):
            raise DataError(f"Cannot find the validation folder in {str(self.folder / 'report.json')!r}; pass "
                            "--data DIR.") from None


def stage_sources(run_dir: str | Path, *, safe_mode: bool = True) -> dict[str, tuple[str, keras.Model]]:
    """For a run folder with fine-tune stages: `<model>_<stage>_<kind>[_fallback]` -> (label, the stage's Keras
    model), for every `.tflite` converted from a stage rather than from the baseline."""
    out, loaded = {}, {}
    for tflite in sorted(Path(run_dir).glob("*.tflite")):
        stem = tflite.stem.removesuffix("_fallback").rpartition("_")[0]  # drop the kind (int8, float32, ...)
        for path in (tflite.with_name(f"{stem}.h5"), tflite.with_name(f"{stem}.keras")):
            if path.is_file():
                if path not in loaded:
                    loaded[path] = load_model_file(path, safe_mode=safe_mode)
                out[tflite.stem] = (f"{stem.rsplit('_', 1)[-1]} Keras", loaded[path])
    return out


def verify_files(keras_path: str | Path, tflite_paths: Mapping[str, str | Path], data_dir: str | Path, *,
                 preprocessing: PreprocessSpec | None = None, preprocess: PreprocessConfig = PreprocessConfig(),
                 labels: str | Path | None = None, config: VerifyConfig = VerifyConfig(),
                 sources: Mapping[str, tuple[str, keras.Model]] | None = None, safe_mode: bool = True,
                 expected: Mapping[str, Expected] | None = None, log: Log = _stderr) -> ParityReport:
    """Verify `.tflite` files against a Keras model file on an image folder (its `validation/` split when
    it has one; class order from `labels`, else the folder's labels.txt, else sorted folder names); `expected`
    top-1s (reference metrics, or what the run measured) are gated too. A `.tflite` whose TFLite metadata names
    another normalization (the pixels variant: raw pixels) is fed that. Returns the report; call `.check()`."""
    model = load_model(keras_path, safe_mode=safe_mode)
    shape = image_input_shape(model)
    spec = preprocessing or PreprocessSpec.from_config(preprocess, shape)
    if spec.input_shape != shape:
        raise ModelError(f"The preprocessing spec gives input {spec.input_shape} but the model takes {shape}.")
    root = Path(data_dir)
    if labels is None and (root / "labels.txt").is_file():  # as `open_splits` reads a dataset root
        labels = root / "labels.txt"
    class_names = read_labels(labels) if labels is not None else None
    folder = ImageFolder.scan(root / "validation", class_names) if (root / "validation").is_dir() else \
        ImageFolder.scan(root, class_names)
    input_specs = {name: input_spec(spec, read_metadata(path)) for name, path in tflite_paths.items()}
    return measure_parity(model, tflite_paths, folder, spec, config, sources=sources, expected=expected,
                          input_specs=input_specs, log=log)


def verify(*paths: str | Path, data: str | Path | None = None, keras_model: str | Path | None = None,
           labels: str | Path | None = None, preprocessing: str | Path | None = None,
           overrides: Mapping[str, object] | None = None, reference: str | Path | None = None,
           safe_mode: bool = True, log: Log = _stderr) -> ParityReport:
    """The parity gate on existing files: run folders and/or `.tflite` files (then `keras_model` and `data` are
    needed). A run folder's model, labels, preprocessing, data and gate are used unless given here;
    `overrides` are recipe keys (`verify.*`, `preprocess.*`; explicit `preprocess.*` win over the folder's
    preprocessing). `reference` is a metrics file (`read_reference_metrics`) every model is held to; without it,
    on a run's own validation images the float model is held to the top-1 the run recorded.

    Returns the report; call `.check()` to gate (raises `ParityError`)."""
    overrides = dict(overrides or {})
    tflites: dict[str, Path] = {}
    sources: dict[str, tuple[str, keras.Model]] = {}
    runs = [RecordedRun.open(p) for p in paths if Path(p).is_dir()]
    for path in paths:
        if not Path(path).is_dir():
            tflites[Path(path).stem] = Path(path)
    for recorded in runs:
        tflites.update(recorded.tflites)
        sources.update(stage_sources(recorded.folder, safe_mode=safe_mode))
    first = runs[0] if runs else None
    keras_model = keras_model or (first.keras if first else None)
    labels = labels or (first.labels if first else None)
    data_dir = data or (first.validation_dir() if first else None)
    if keras_model is None or data_dir is None:
        raise RecipeError("verify needs a Keras model and a data folder (keras_model=, data=; CLI --keras, --data) "
                          "unless a run folder is given.")
    recipe = load_recipe("default").with_overrides({**(first.gate() if first else {}), **overrides})
    spec = PreprocessSpec.read_json(preprocessing) if preprocessing is not None else first.spec if first else None
    if any(key.startswith("preprocess.") for key in overrides):
        spec = None   # explicit preprocessing settings win over a spec file and the run folder's
    if reference is not None:
        expected = read_reference_metrics(reference)
    elif first is not None and data is None:  # on the run's own images the float model must score what it did
        expected = first.keras_top1(recipe.verify.max_top1_drop)
    else:
        expected = {}
    return verify_files(keras_model, tflites, data_dir, preprocessing=spec, preprocess=recipe.preprocess,
                        labels=labels, config=recipe.verify, sources=sources, safe_mode=safe_mode, expected=expected,
                        log=log)
