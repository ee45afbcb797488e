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
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema
from PIL import Image

from tflite_pipeline.data.folders import ImageFolder, read_labels
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.errors import CompatibilityError, DataError, DependencyError
from tflite_pipeline.files import atomic_write_bytes, atomic_write_json, missing_folders, remove_stale, temporary_dir
from tflite_pipeline.tflite.flatbuffer import TensorInfo, inspect_tflite, op_name, read_flatbuffer
from tflite_pipeline.tflite.interpreter import QUANTIZATION_FORMULA, dequantize, quantize

CONFIG_FORMAT = "tflite_pipeline.model_config/1"
GOLDEN_FORMAT = "tflite_pipeline.golden/1"
APP_DTYPES = ("float32", "int8", "uint8")
ASSETS_DIR = Path("app/src/main/assets")
MODELS_DIR = "models"
GOLDEN_DIR = Path("app/src/androidTest/assets/golden")
LEGACY_PYTHON_ENV = "TFLITE_PIPELINE_LEGACY_PYTHON"
LEGACY_RUNTIME = "TFLite 2.14"
_PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_APP_DIR = _PROJECT_ROOT / "android_demo"
DEFAULT_LEGACY_PYTHON = _PROJECT_ROOT / ".venv-tflite2.14" / "bin" / "python"
_PROBE_SCRIPT = Path(__file__).with_name("runtime_probe.py")
_NUMPY_DTYPES = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8}
_LEGACY_SETUP = ("create it with `make setup` (a venv with tflite-runtime==2.14.0 and numpy<2), or point "
                 f"{LEGACY_PYTHON_ENV} / --legacy-python at a Python that has tflite_runtime")


# ---------------------------------------------------------------------------------------------- contract

def contract_problems(info, spec: PreprocessSpec, num_labels: int) -> list[str]:
    """Everything that stops the app from running a model (empty when it can): input, output, dtypes, ops."""
    problems = []
    if len(info.inputs) != 1 or len(info.outputs) != 1:
        return [f"has {len(info.inputs)} inputs and {len(info.outputs)} outputs; the app runs image "
                "classifiers with one image input and one class-score output"]
    tensor_in, tensor_out = info.inputs[0], info.outputs[0]
    expected = (spec.height, spec.width, spec.channels)
    if len(tensor_in.shape) != 4 or tuple(tensor_in.shape[1:]) != expected or tensor_in.shape[0] not in (1, -1):
        problems.append(f"input shape {list(tensor_in.shape)} is not [1, {spec.height}, {spec.width}, "
                        f"{spec.channels}] (NHWC, from preprocessing.json)")
    for role, tensor in (("input", tensor_in), ("output", tensor_out)):
        if tensor.dtype not in APP_DTYPES:
            problems.append(f"{role} dtype {tensor.dtype} is not one of {APP_DTYPES}")
        elif tensor.dtype != "float32" and not tensor.scale:
            problems.append(f"{role} is {tensor.dtype} without a quantization scale")
    classes = int(np.prod([d for d in tensor_out.shape if d > 0])) if tensor_out.shape else 0
    if classes != num_labels:
        problems.append(f"output shape {list(tensor_out.shape)} gives {classes} scores but labels.txt has "
                        f"{num_labels} names")
    custom = [op.name for op in info.ops if op.name.startswith(("CUSTOM", "Flex"))]
    if custom:
        problems.append(f"uses custom/Flex ops {custom}, which the LiteRT runtime alone cannot run; convert with "
                        "TFLITE_BUILTINS(_INT8) only")
    return problems


def outputs_are_probabilities(source: str | Path | bytes) -> bool:
    """True when the graph output comes from SOFTMAX (through an output QUANTIZE/DEQUANTIZE, if any)."""
    _, model = read_flatbuffer(source)
    graph = model.subgraphs[0]
    producer = {int(out): op for op in graph.operators or () for out in op.outputs}
    tensor = int(graph.outputs[0])
    while tensor in producer:
        op = producer[tensor]
        name = op_name(model.operatorCodes[op.opcodeIndex])
        if name not in ("QUANTIZE", "DEQUANTIZE"):
            return name == "SOFTMAX"
        tensor = int(op.inputs[0])
    return False


def min_runtime_version(source: str | Path | bytes) -> str:
    """The `min_runtime_version` the converter wrote into the model's metadata ('' when absent)."""
    _, model = read_flatbuffer(source)
    for entry in model.metadata or ():
        if entry.name == b"min_runtime_version":
            return bytes(model.buffers[entry.buffer].data).split(b"\0")[0].decode()
    return ""


# ------------------------------------------------------------------------------------ runtime compatibility

@dataclass(frozen=True)
class RuntimeCheck:
    """One model in one runtime: did it load, which op codes are missing, does it predict the same top-1."""

    runtime: str
    loaded: bool
    error: str = ""
    missing_ops: tuple[str, ...] = ()        # "FULLY_CONNECTED v12: <the runtime's words>"
    same_top1: bool | None = None            # vs the app's runtime on the golden inputs (None: not compared)
    max_output_diff: float | None = None     # largest raw output difference vs the app's runtime

    @property
    def ok(self) -> bool:
        return self.loaded and not self.missing_ops and self.same_top1 is not False

    def summary(self) -> str:
        if self.ok:
            extra = "" if self.max_output_diff is None else f", max output diff {self.max_output_diff:g}"
            return f"loads, runs{', same top-1' if self.same_top1 else ''}{extra}"
        if self.missing_ops:
            return "FAILS: no kernel for " + "; ".join(self.missing_ops)
        if not self.loaded:
            return f"FAILS: {self.error}"
        return f"FAILS: top-1 differs from the app runtime (max output diff {self.max_output_diff:g})"


@dataclass(frozen=True)
class Compatibility:
    """A model's verdict for the Android app: contract problems and one `RuntimeCheck` per runtime."""

    model: str
    ops: tuple[str, ...]
    min_runtime_version: str
    problems: tuple[str, ...] = ()
    checks: tuple[RuntimeCheck, ...] = ()
    not_checked: tuple[str, ...] = ()
    reference_outputs: tuple[np.ndarray, ...] = field(default=(), repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return not self.problems and all(check.ok for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("reference_outputs")
        out["ok"] = self.ok
        return out


def format_compatibility(reports: Sequence[Compatibility]) -> str:
    """A markdown table: one row per model, one column per runtime."""
    runtimes = list(dict.fromkeys(check.runtime for report in reports for check in report.checks))
    lines = ["| model | ops (version) | converter's min runtime | " + " | ".join(runtimes) + " | verdict |",
             "|---|---|---|" + "---|" * len(runtimes) + "---|"]
    for report in reports:
        cells = {check.runtime: check.summary() for check in report.checks}
        verdict = "ok" if report.ok else "NOT COMPATIBLE" + (": " + "; ".join(report.problems) if report.problems
                                                              else "")
        lines.append(f"| {Path(report.model).name} | {', '.join(report.ops)} | {report.min_runtime_version or '?'} | "
                     + " | ".join(cells.get(runtime, "not checked") for runtime in runtimes) + f" | {verdict} |")
    skipped = sorted({note for report in reports for note in report.not_checked})
    return "\n".join(lines + [f"\nnot checked: {note}" for note in skipped])


def find_legacy_python(explicit: str | Path | None = None) -> Path | None:
    """The Python that has `tflite_runtime` 2.14: `explicit`, else $TFLITE_PIPELINE_LEGACY_PYTHON, else
    the project's `.venv-tflite2.14`; None when there is none. An explicit path that is missing raises."""
    for candidate, named in ((explicit, True), (os.environ.get(LEGACY_PYTHON_ENV), True),
                             (DEFAULT_LEGACY_PYTHON, False)):
        if candidate:
            path = Path(candidate)
            if path.is_file():
                return path
            if named:
                raise DependencyError(f"Received legacy runtime Python {str(path)!r}, which does not exist; "
                                      f"{_LEGACY_SETUP}.")
    return None


def _single_op_model(model: schema.ModelT, code: schema.OperatorCodeT) -> bytes:
    """A model holding one operator code and one tensor, no operators: loads iff the runtime has the kernel."""
    tensor = schema.TensorT()
    tensor.name, tensor.shape, tensor.type, tensor.buffer = b"x", [1], schema.TensorType.FLOAT32, 0
    graph = schema.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = [tensor], [0], [0], []
    probe = schema.ModelT()
    probe.version, probe.operatorCodes, probe.subgraphs, probe.buffers = model.version, [code], [graph], \
        [schema.BufferT()]
    return pack_model(probe)


def pack_model(model: schema.ModelT) -> bytes:
    """Serialize a (modified) model object tree back to `.tflite` bytes."""
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _run_probe(python: Path, request: dict, work_dir: Path) -> dict:
    script = work_dir / _PROBE_SCRIPT.name  # run from a copy: this package's folder would shadow stdlib `inspect`
    shutil.copyfile(_PROBE_SCRIPT, script)
    try:
        done = subprocess.run([str(python), str(script)], input=json.dumps(request), capture_output=True,
                              text=True, timeout=600, check=False, cwd=work_dir)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DependencyError(f"Cannot run the runtime probe with {str(python)!r}: {error}.") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise DependencyError(f"The runtime probe failed in {str(python)!r} (exit {done.returncode}):\n{tail}\n"
                              f"Does that Python have numpy and tflite_runtime or ai_edge_litert? {_LEGACY_SETUP}.")
    return json.loads(done.stdout)


def _runtime_name(raw: str) -> str:
    distribution, _, version = raw.partition(" ")
    return f"LiteRT {version}" if distribution == "ai-edge-litert" else f"TFLite {version}"


def check_compatibility(models: Sequence[str | Path], *, inputs: Mapping[str, Sequence[np.ndarray]] | None = None,
                        spec: PreprocessSpec | None = None, num_labels: int | None = None,
                        legacy_python: str | Path | bool | None = None) -> tuple[Compatibility, ...]:
    """Load every op and run every model in LiteRT (this environment) and in TFLite 2.14 (`legacy_python`;
    found by `find_legacy_python` when None, skipped when False). `inputs` maps a model path to raw input
    tensors (a zero tensor when absent); the older runtime must give the same top-1 on them. With `spec`
    and `num_labels`, the app's contract is checked too. Raises nothing for an incompatible model: read `.ok`.
    """
    legacy = None if legacy_python is False else find_legacy_python(legacy_python or None)
    runtimes = [sys.executable] + ([str(legacy)] if legacy else [])
    not_checked = () if legacy or legacy_python is False else (f"{LEGACY_RUNTIME}: no runtime found; {_LEGACY_SETUP}",)
    with tempfile.TemporaryDirectory(prefix="tflite-compat-") as work:
        work_dir = Path(work)
        request, infos = {"models": []}, {}
        for number, model_path in enumerate(models):
            info = infos[str(model_path)] = inspect_tflite(model_path)
            _, model = read_flatbuffer(model_path)
            copy = work_dir / f"m{number}.tflite"
            shutil.copyfile(model_path, copy)
            probes = []
            for index, code in enumerate(model.operatorCodes):
                probe = work_dir / f"m{number}.op{index}.tflite"
                probe.write_bytes(_single_op_model(model, code))
                probes.append({"op": f"{op_name(code)} v{code.version}", "path": str(probe)})
            tensors = list(inputs.get(str(model_path), ())) if inputs else []
            if not tensors:
                tensor = info.inputs[0]
                tensors = [np.zeros([max(d, 1) for d in tensor.shape], _NUMPY_DTYPES.get(tensor.dtype, np.float32))]
            input_paths = []
            for k, tensor in enumerate(tensors):
                input_paths.append(str(work_dir / f"m{number}.in{k}.npy"))
                np.save(input_paths[-1], tensor)
            request["models"].append({"path": str(copy), "inputs": input_paths, "probes": probes})
        answers = [_run_probe(Path(python), request, work_dir) for python in runtimes]
        reports = []
        for number, model_path in enumerate(models):
            results = [(answer["runtime"], answer["models"][number]) for answer in answers]
            reference = [np.load(path) for path in results[0][1]["outputs"]]
            checks = [_runtime_check(name, result, reference) for name, result in results]
            info = infos[str(model_path)]
            problems = contract_problems(info, spec, num_labels) if spec is not None and num_labels else []
            reports.append(Compatibility(
                model=str(model_path), ops=tuple(f"{op.name} v{op.version}" for op in info.ops),
                min_runtime_version=min_runtime_version(model_path), problems=tuple(problems),
                checks=tuple(checks), not_checked=not_checked, reference_outputs=tuple(reference)))
    return tuple(reports)


def _runtime_check(raw_runtime: str, result: dict, reference: Sequence[np.ndarray]) -> RuntimeCheck:
    missing = tuple(f"{probe['op']}: {probe['error']}" for probe in result["probes"] if not probe["loaded"])
    outputs = [np.load(path) for path in result["outputs"]]
    same_top1 = max_diff = None
    if outputs and len(outputs) == len(reference):
        same_top1 = all(int(np.argmax(a)) == int(np.argmax(b)) for a, b in zip(outputs, reference, strict=True))
        max_diff = max(float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
                       for a, b in zip(outputs, reference, strict=True))
    return RuntimeCheck(runtime=_runtime_name(raw_runtime), loaded=result["loaded"], error=result["error"],
                        missing_ops=missing, same_top1=same_top1, max_output_diff=max_diff)


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
    return quantize(x, tensor.scale, tensor.zero_point, _NUMPY_DTYPES[tensor.dtype])


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


def _run_models(run_dir: Path, names: Sequence[str] | None) -> list[Path]:
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


def _golden_folder(run_dir: Path, images: str | Path | None, labels: Sequence[str]) -> ImageFolder:
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


def model_config(spec: PreprocessSpec, labels: Sequence[str], models: Sequence[Path],
                 reports: Sequence[Compatibility], run_name: str) -> dict[str, Any]:
    """The `model_config.json` the app reads: preprocessing, labels file and each model's I/O contract."""
    entries = []
    for path, report in zip(models, reports, strict=True):
        info = inspect_tflite(path)
        entries.append({"file": f"{MODELS_DIR}/{path.name}", "size_bytes": info.size_bytes,
                        "input": asdict(info.inputs[0]), "output": asdict(info.outputs[0]),
                        "outputs_are_probabilities": outputs_are_probabilities(path),
                        "min_runtime_version": report.min_runtime_version,
                        "runtimes": {check.runtime: check.summary() for check in report.checks}})
    preprocessing = spec.to_dict()
    preprocessing.update(resize_policy="stretch", quantization=QUANTIZATION_FORMULA,
                         gray="L = (19595 R + 38470 G + 7471 B + 32768) >> 16")
    return {"format": CONFIG_FORMAT, "source_run": run_name, "labels_file": "labels.txt",
            "num_classes": len(labels), "preprocessing": preprocessing, "models": entries}


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
    paths = _run_models(run_dir, models)
    infos = {path: inspect_tflite(path) for path in paths}
    problems = {path.name: contract_problems(info, spec, len(labels)) for path, info in infos.items()}
    if any(problems.values()):
        raise CompatibilityError("The Android app cannot run: " + "; ".join(
            f"{name} {', '.join(found)}" for name, found in problems.items() if found) + ".")

    chosen = golden_images(_golden_folder(run_dir, images, labels), golden_count)
    pixels = [spec.load_rgb(path) for path, _ in chosen]
    inputs = {str(path): [model_input(p, spec, infos[path].inputs[0]) for p in pixels] for path in paths}
    log(f"[android] checking {len(paths)} model(s) in LiteRT and {LEGACY_RUNTIME}")
    reports = check_compatibility(paths, inputs=inputs, spec=spec, num_labels=len(labels),
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
    config = model_config(spec, labels, paths, reports, run_dir.name)
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
