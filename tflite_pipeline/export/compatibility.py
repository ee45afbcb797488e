"""Will these `.tflite` files load and run where they are going? Every op code and the whole model, in LiteRT
and in the TFLite 2.14 runtime the Android app ships (a separate Python environment running `runtime_probe.py`),
with outputs compared against LiteRT's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.errors import DependencyError
from tflite_pipeline.export.metadata import read_metadata, tasks_problems
from tflite_pipeline.tflite.flatbuffer import inspect_tflite, op_name, pack_model, read_flatbuffer

LEGACY_PYTHON_ENV = "TFLITE_PIPELINE_LEGACY_PYTHON"


LEGACY_RUNTIME = "TFLite 2.14"


DEFAULT_LEGACY_PYTHON = Path(__file__).resolve().parents[2] / ".venv-tflite2.14" / "bin" / "python"


_PROBE_SCRIPT = Path(__file__).with_name("runtime_probe.py")


_LEGACY_SETUP = ("create it with `make setup` (a venv with tflite-runtime==2.14.0 and numpy<2), or point "
                 f"{LEGACY_PYTHON_ENV} / --legacy-python at a Python that has tflite_runtime")


def min_runtime_version(source: str | Path | bytes) -> str:
    """The `min_runtime_version` the converter wrote into the model's metadata ('' when absent)."""
    _, model = read_flatbuffer(source)
    for entry in model.metadata or ():
        if entry.name == b"min_runtime_version":
            return bytes(model.buffers[entry.buffer].data).split(b"\0")[0].decode()
    return ""


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
    tasks_problems: tuple[str, ...] = ()   # why MediaPipe Tasks' ImageClassifier cannot take it (empty: it can)

    @property
    def ok(self) -> bool:
        return not self.problems and all(check.ok for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("reference_outputs")
        out["ok"] = self.ok
        return out


def format_compatibility(reports: Sequence[Compatibility]) -> str:
    """A markdown table: one row per model, one column per runtime, and whether MediaPipe Tasks can take it
    (metadata, uint8/float32 RGB input; not a verdict: our app needs none of it)."""
    runtimes = list(dict.fromkeys(check.runtime for report in reports for check in report.checks))
    lines = ["| model | ops (version) | converter's min runtime | " + " | ".join(runtimes) + " | verdict | "
             "MediaPipe Tasks |", "|---|---|---|" + "---|" * len(runtimes) + "---|---|"]
    for report in reports:
        cells = {check.runtime: check.summary() for check in report.checks}
        verdict = "ok" if report.ok else "NOT COMPATIBLE" + (": " + "; ".join(report.problems) if report.problems
                                                              else "")
        lines.append(f"| {Path(report.model).name} | {', '.join(report.ops)} | {report.min_runtime_version or '?'} | "
                     + " | ".join(cells.get(runtime, "not checked") for runtime in runtimes) + f" | {verdict} | "
                     + ("ready" if not report.tasks_problems else "no: " + "; ".join(report.tasks_problems)) + " |")
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


def _run_probe(python: Path, request: dict, work_dir: Path) -> dict:
    try:  # no module of this folder shadows the standard library (tests/test_api.py), so it runs in place
        done = subprocess.run([str(python), str(_PROBE_SCRIPT)], input=json.dumps(request), capture_output=True,
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
                        spec: PreprocessSpec | Mapping[str, PreprocessSpec] | None = None,
                        num_labels: int | None = None,
                        legacy_python: str | Path | bool | None = None) -> tuple[Compatibility, ...]:
    """Load every op and run every model in LiteRT (this environment) and in TFLite 2.14 (`legacy_python`;
    found by `find_legacy_python` when None, skipped when False). `inputs` maps a model path to raw input
    tensors (a zero tensor when absent); the older runtime must give the same top-1 on them. With `spec` (one,
    or one per model path) and `num_labels`, the app's contract is checked too. Raises nothing for an
    incompatible model: read `.ok`.
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
                tensors = [np.zeros([max(d, 1) for d in tensor.shape], NUMPY_DTYPES.get(tensor.dtype, np.float32))]
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
            model_spec = spec.get(str(model_path)) if isinstance(spec, Mapping) else spec
            problems = contract_problems(info, model_spec, num_labels) if model_spec is not None and num_labels else []
            reports.append(Compatibility(
                model=str(model_path), ops=tuple(f"{op.name} v{op.version}" for op in info.ops),
                min_runtime_version=min_runtime_version(model_path), problems=tuple(problems),
                checks=tuple(checks), not_checked=not_checked, reference_outputs=tuple(reference),
                tasks_problems=tuple(tasks_problems(info, read_metadata(model_path)))))
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


# int16 I/O is an int16x8 model's (int16 activations, int8 weights; integer-only): LiteRT runs its ops on the builtin
# kernels, XNNPACK takes none of them (it loads and runs, slower than int8)
APP_DTYPES = ("float32", "int8", "uint8", "int16")


NUMPY_DTYPES = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8, "int16": np.int16}


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
    if "int16" in (tensor_in.dtype, tensor_out.dtype) and info.float_ops:
        problems.append(f"has int16 I/O but {len(info.float_ops)} op(s) compute in float ({info.float_ops[0]}); "
                        "the app takes int16 I/O from integer-only int16x8 models")
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
