"""Android export: the model contract, golden test vectors and runtime compatibility.

    run folder ─► contract check (one NHWC image input, one class-score output, app dtypes, no custom ops)
               ─► runtime check: load every op and run the model in LiteRT (what the app ships) and in
                  TFLite 2.14 (the oldest of the 2.14-2.16 runtimes still common in deployed apps)
               ─► golden vectors: a few images, the exact input bytes, the raw output and top-3
               ─► android_demo/app/src/main/assets/{models/*.tflite, labels.txt, model_config.json}
                  android_demo/app/src/androidTest/assets/golden/{golden.json, *.png, *.rgb, *.bin}

Loading and running a model in the runtime itself is the proof of compatibility. The older runtime
needs numpy 1.x, so it lives in its own virtual environment (`make setup` creates `.venv-tflite2.14`)
and runs `runtime_probe.py` as a child process. Besides the whole model, each operator code is loaded
alone (a copy of the model with that one code and no operators), so every op and version a runtime
lacks is named, not only the first. Nothing is written unless every check passes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tflite_pipeline.data.folders import ImageFolder, read_labels
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.errors import CompatibilityError, DataError
from tflite_pipeline.export.compatibility import (
    LEGACY_RUNTIME,
    NUMPY_DTYPES,
    Compatibility,
    check_compatibility,
    contract_problems,
    format_compatibility,
    outputs_are_probabilities,
)
from tflite_pipeline.export.metadata import input_spec, read_metadata
from tflite_pipeline.files import atomic_write_bytes, atomic_write_json, missing_folders, remove_stale, temporary_dir
from tflite_pipeline.tflite.flatbuffer import TensorInfo, inspect_tflite
from tflite_pipeline.tflite.interpreter import QUANTIZATION_FORMULA, dequantize, quantize

CONFIG_FORMAT = "tflite_pipeline.model_config/1"
GOLDEN_FORMAT = "tflite_pipeline.golden/1"
ASSETS_DIR = Path("app/src/main/assets")
MODELS_DIR = "models"
GOLDEN_DIR = Path("app/src/androidTest/assets/golden")
_PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_APP_DIR = _PROJECT_ROOT / "android_demo"


# ---------------------------------------------------------------------------------------------- contract


# ------------------------------------------------------------------------------------ runtime compatibility


# ------------------------------------------------------------------------------------------- golden vectors

def golden_images(folder: ImageFolder, count: int) -> list[tuple[str, int]]:
    """The first image of each of the first `count` classes: deterministic and spread over classes."""
    chosen: dict[int, str] = {}
    for path, label in zip(folder.files, folder.labels, strict=True):
        if label not in chosen:
            chosen[label] = path
    return [(chosen[label], label) for label in sorted(chosen)[:count]]


def model_input(pixels: np.ndarray, spec: PreprocessSpec, tensor: TensorInfo) -> np.ndarray:
    """uint8 RGB `(h, w, 3)` -> the exact input tensor `(1, h, w, c)` the app must produce."""
    x = spec.normalize(spec.from_rgb(pixels))[None]
    if tensor.dtype == "float32":
        return x.astype(np.float32)
    return quantize(x, tensor.scale, tensor.zero_point, NUMPY_DTYPES[tensor.dtype])


def scores(output: np.ndarray, tensor: TensorInfo) -> np.ndarray:
    """Raw output tensor -> float32 scores, dequantized like the app does."""
    flat = output.reshape(-1)
    return flat.astype(np.float32) if tensor.dtype == "float32" else dequantize(flat, tensor.scale, tensor.zero_point)


def top_k(values: np.ndarray, k: int = 3) -> list[int]:
    """Best k indices, ties to the lower index (the app's Kotlin sorts the same way)."""
    return [int(i) for i in np.argsort(-values, kind="stable")[:k]]


# ------------------------------------------------------------------------------------------------- export

@dataclass(frozen=True)
class AndroidExport:
    """What `export_android` wrote, and each model's compatibility verdict."""

    app_dir: Path
    models: tuple[Path, ...]
    config: Path
    labels: Path
    golden: Path
    compatibility: tuple[Compatibility, ...]

    def format(self) -> str:
        lines = [f"exported {len(self.models)} model(s) to {self.app_dir}:"]
        lines += [f"  {path}" for path in (*self.models, self.labels, self.config, self.golden)]
        return "\n".join(lines) + "\n\n" + format_compatibility(self.compatibility)


def run_models(run_dir: Path, names: Sequence[str] | None) -> list[Path]:
    """The run's `.tflite` files, or the `names` of them; `DataError` for one it does not have."""
    found = sorted(run_dir.glob("*.tflite"))
    if names is None:
        if not found:
            raise DataError(f"Run folder {str(run_dir)!r} holds no .tflite files; run `tflite-pipeline run` first.")
        return found
    chosen = []
    for name in names:
        path = run_dir / Path(name).name
        if not path.is_file():
            raise DataError(f"Received model {name!r}, which is not in {str(run_dir)!r}; it has "
                            f"{[p.name for p in found]}.")
        chosen.append(path)
    return chosen


def run_images(run_dir: Path, images: str | Path | None, labels: Sequence[str]) -> ImageFolder:
    """`images`, else the data the run was verified on (its validation split, found through report.json)."""
    if images is not None:
        return ImageFolder.scan(images, labels)
    try:
        root = Path(json.loads((run_dir / "report.json").read_text(encoding="utf-8"))["data"]["root"])
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"Cannot tell which data {str(run_dir)!r} was trained on (no readable report.json); pass "
                        "--images DIR (a folder with one sub-folder of images per class).") from None
    for split in ("validation", "calibration", ""):
        if (root / split).is_dir() and any((root / split).iterdir()):
            return ImageFolder.scan(root / split, labels)
    raise DataError(f"The run's data folder {str(root)!r} is gone; pass --images DIR for the golden images.")


def _app_preprocessing(spec: PreprocessSpec) -> dict[str, Any]:
    preprocessing = spec.to_dict()
    preprocessing.update(resize_policy="stretch", quantization=QUANTIZATION_FORMULA,
                         gray="L = (19595 R + 38470 G + 7471 B + 32768) >> 16")
    return preprocessing


def model_config(spec: PreprocessSpec, labels: Sequence[str], models: Sequence[Path],
                 reports: Sequence[Compatibility], run_name: str,
                 specs: Mapping[Path, PreprocessSpec] | None = None) -> dict[str, Any]:
    """The `model_config.json` the app reads: preprocessing, labels file and each model's I/O contract. Each model
    names its own preprocessing (`specs`, default the run's: the pixels variant takes raw pixels)."""
    entries = []
    for path, report in zip(models, reports, strict=True):
        info = inspect_tflite(path)
        entries.append({"file": f"{MODELS_DIR}/{path.name}", "size_bytes": info.size_bytes,
                        "preprocessing": _app_preprocessing((specs or {}).get(path, spec)),
                        "has_metadata": read_metadata(path) is not None, "tasks_ready": not report.tasks_problems,
                        "input": asdict(info.inputs[0]), "output": asdict(info.outputs[0]),
                        "outputs_are_probabilities": outputs_are_probabilities(path),
                        "min_runtime_version": report.min_runtime_version,
                        "runtimes": {check.runtime: check.summary() for check in report.checks}})
    return {"format": CONFIG_FORMAT, "source_run": run_name, "labels_file": "labels.txt",
            "num_classes": len(labels), "preprocessing": _app_preprocessing(spec), "models": entries}


def export_android(run_dir: str | Path, app_dir: str | Path | None = None, *, models: Sequence[str] | None = None,
                   images: str | Path | None = None, golden_count: int = 3,
                   legacy_python: str | Path | bool | None = None,
                   log: Callable[[str], None] = print) -> AndroidExport:
    """Check a run's models and copy them, `labels.txt`, `model_config.json` and golden vectors into the app.

    Raises `CompatibilityError` (nothing written) when a model breaks the app's contract or a runtime
    cannot load or run it; `DataError` for a run folder without models, labels or preprocessing.json.
    """
    run_dir, app = Path(run_dir), Path(app_dir) if app_dir is not None else DEFAULT_APP_DIR
    if not (app / "app").is_dir():
        raise DataError(f"{str(app)!r} is not the Android project (no app/ module); pass --app android_demo.")
    if golden_count < 1:
        raise DataError(f"Received golden_count={golden_count}; expected at least 1 golden image.")
    spec = PreprocessSpec.read_json(run_dir / "preprocessing.json")
    labels = read_labels(run_dir / "labels.txt")
    paths = run_models(run_dir, models)
    infos = {path: inspect_tflite(path) for path in paths}
    specs = {path: input_spec(spec, read_metadata(path)) for path in paths}  # the pixels variant takes raw pixels
    problems = {path.name: contract_problems(info, specs[path], len(labels)) for path, info in infos.items()}
    if any(problems.values()):
        raise CompatibilityError("The Android app cannot run: " + "; ".join(
            f"{name} {', '.join(found)}" for name, found in problems.items() if found) + ".")

    chosen = golden_images(run_images(run_dir, images, labels), golden_count)
    pixels = [spec.load_rgb(path) for path, _ in chosen]
    inputs = {str(path): [model_input(p, specs[path], infos[path].inputs[0]) for p in pixels] for path in paths}
    log(f"[android] checking {len(paths)} model(s) in LiteRT and {LEGACY_RUNTIME}")
    reports = check_compatibility(paths, inputs=inputs, spec={str(p): s for p, s in specs.items()},
                                  num_labels=len(labels),
                                  legacy_python=legacy_python)
    failed = [report for report in reports if not report.ok]
    if failed:
        raise CompatibilityError("Not exported; a target runtime cannot run every model:\n"
                                 + format_compatibility(reports))

    cases = []
    golden_files: dict[str, bytes] = {}
    for number, ((source, label), rgb) in enumerate(zip(chosen, pixels, strict=True)):
        stem = f"{number}_{labels[label]}"
        png = Image.fromarray(rgb)
        golden_files[f"{stem}.png"] = _png_bytes(png)
        golden_files[f"{stem}.rgb"] = rgb.tobytes()
        for path, report in zip(paths, reports, strict=True):
            info = infos[path]
            raw_in = inputs[str(path)][number]
            raw_out = report.reference_outputs[number]
            values = scores(raw_out, info.outputs[0])
            top = top_k(values)
            golden_files[f"{stem}.{path.stem}.input.bin"] = raw_in.tobytes()
            golden_files[f"{stem}.{path.stem}.output.bin"] = raw_out.tobytes()
            cases.append({"model": path.name, "image": f"{stem}.png", "pixels": f"{stem}.rgb",
                          "source": Path(source).name, "label": labels[label],
                          "input": f"{stem}.{path.stem}.input.bin", "output": f"{stem}.{path.stem}.output.bin",
                          "top3": top, "top3_labels": [labels[i] for i in top],
                          "top3_scores": [float(values[i]) for i in top]})
    config = model_config(spec, labels, paths, reports, run_dir.name, specs)
    golden = {"format": GOLDEN_FORMAT, "height": spec.height, "width": spec.width, "cases": cases}
    written = _publish(app, paths, labels, config, golden, golden_files)
    log(f"[android] wrote {len(paths)} model(s), labels.txt, model_config.json and {len(cases)} golden case(s)")
    return AndroidExport(app_dir=app, models=written, config=app / ASSETS_DIR / "model_config.json",
                         labels=app / ASSETS_DIR / "labels.txt", golden=app / GOLDEN_DIR, compatibility=reports)


def _png_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _publish(app: Path, paths: Sequence[Path], labels: Sequence[str], config: dict, golden: dict,
             golden_files: Mapping[str, bytes]) -> tuple[Path, ...]:
    """Write atomically: models first, the config last (it names what the app may load); golden as a
    whole folder swapped in. Models an earlier export listed and this one does not are removed."""
    assets = app / ASSETS_DIR
    old_config = assets / "model_config.json"
    previous: set[str] = set()
    if old_config.is_file():
        try:
            previous = {entry["file"] for entry in json.loads(old_config.read_text(encoding="utf-8"))["models"]}
        except (ValueError, KeyError, TypeError):
            previous = set()
    golden_dir = app / GOLDEN_DIR
    written: list[Path] = []
    staging: Path | None = None
    created = missing_folders(assets / MODELS_DIR) + missing_folders(golden_dir.parent)  # innermost first
    try:
        for path in paths:
            written.append(atomic_write_bytes(assets / MODELS_DIR / path.name, path.read_bytes()))
        golden_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(golden_dir.parent, ".golden-")
        staging = temporary_dir(golden_dir.parent, ".golden-")
        for name, data in golden_files.items():
            atomic_write_bytes(staging / name, data)
        atomic_write_json(staging / "golden.json", golden)
    except BaseException:  # stopped or failed before the swap: the app is left as it was
        for file in written:
            if file.name not in {Path(name).name for name in previous}:
                file.unlink(missing_ok=True)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for folder in created:
            with contextlib.suppress(OSError):  # only while empty
                folder.rmdir()
        raise
    atomic_write_bytes(assets / "labels.txt", ("\n".join(labels) + "\n").encode("utf-8"))
    retired = golden_dir.with_name(f".golden-old-{os.getpid()}")
    if golden_dir.exists():
        golden_dir.rename(retired)
    staging.rename(golden_dir)
    shutil.rmtree(retired, ignore_errors=True)
    atomic_write_json(old_config, config)
    current = {entry["file"] for entry in config["models"]}
    for stale in previous - current:
        (assets / MODELS_DIR / Path(stale).name).unlink(missing_ok=True)  # only ever a file in models/
    return tuple(written)
