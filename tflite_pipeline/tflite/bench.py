"""Latency, size and peak memory of `.tflite` files in the LiteRT interpreter, on this machine's CPU.

Latency is batch 1 (what the Android app runs): random input of the input tensor's dtype, warm-up
invokes excluded, only `invoke()` timed with `time.perf_counter_ns`. `bench_models` interleaves the
timed runs of all models in rounds, so background load hits every model alike and the int8/float32
ratio it prints is measured side by side. Every number is tied to the CPU and its ISA
(`cpu_description`): int8 kernels are only faster than float ones where the CPU has int8 dot-product
instructions (x86 VNNI/AMX, ARM dotprod/i8mm), so a ratio measured here says nothing about a phone.

Peak memory is measured in a child process (so this process's own heap does not count): the
high-water RSS of a child that loads, allocates and invokes the model, minus that of a child that
only imports the interpreter.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from tflite_pipeline import env
from tflite_pipeline.errors import RecipeError, TFLiteFileError
from tflite_pipeline.tflite.flatbuffer import gzip_size, inspect_tflite, read_flatbuffer
from tflite_pipeline.tflite.interpreter import OP_RESOLVERS

_X86_FEATURES = ("sse4_1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                 "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
_ARM_FEATURES = ("asimd", "asimdhp", "asimddp", "i8mm", "sve", "sve2", "bf16")
_INT8_DOT_FEATURES = {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"}
_MEMORY_TIMEOUT_S = 300
_ROUNDS = 5  # bench_models splits each model's runs into this many interleaved rounds


def cpu_description(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """Machine, CPU model, core counts and the ISA features LiteRT/XNNPACK kernels use.

    Reads the flags from `cpuinfo` when it exists (Linux); elsewhere `features` is empty and the
    summary says the ISA is unknown. Never raises.
    """
    machine = platform.machine() or "unknown"
    fields: dict[str, str] = {}
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() not in fields:
                fields[key.strip().lower()] = value.strip()
        source: str | None = str(cpuinfo)
    except OSError:
        source = None
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    features = [f for f in _X86_FEATURES + _ARM_FEATURES if f in flags]
    model = (fields.get("model name") or fields.get("model") or fields.get("hardware") or platform.processor()
             or "unknown")
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return {"machine": machine, "model": model, "logical_cpus": os.cpu_count(), "usable_cpus": usable,
            "features": features, "summary": _isa_summary(machine, flags, source is not None), "source": source}


def _isa_summary(machine: str, flags: set[str], have_cpuinfo: bool) -> str:
    if not flags:
        why = "no flags in /proc/cpuinfo" if have_cpuinfo else "no /proc/cpuinfo"
        return f"{machine} (ISA features unknown: {why})"
    if "asimd" in flags or machine in ("aarch64", "arm64"):
        extras = [name for flag, name in (("asimddp", "dotprod"), ("i8mm", "i8mm")) if flag in flags]
        missing = [name for flag, name in (("asimddp", "dotprod"), ("i8mm", "i8mm")) if flag not in flags]
        return f"{machine} {'+'.join(['NEON', *extras])}" + (f", no {'/'.join(missing)}" if missing else "")
    vector = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")) if flag in flags),
                  "SSE")
    parts = [vector] + (["FMA"] if "fma" in flags else [])
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    text = f"{machine} {'+'.join(parts)}, " + ("VNNI" if vnni else "no VNNI")
    return text + (", AMX" if "amx_int8" in flags else "")


@dataclass(frozen=True)
class LatencyResult:
    """Invoke latency of one model at one thread count (milliseconds, warm-up excluded)."""

    file: str
    threads: int
    runs: int
    warmup: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    batch: int = 1
    kernels: str = "xnnpack"

    @classmethod
    def from_times(cls, file: str, times_ns: Sequence[int], *, threads: int, warmup: int, batch: int,
                   kernels: str) -> LatencyResult:
        ms = np.asarray(times_ns, dtype=np.float64) / 1e6
        return cls(file=file, threads=threads, runs=len(ms), warmup=warmup, median_ms=float(np.median(ms)),
                   p90_ms=float(np.percentile(ms, 90)), mean_ms=float(ms.mean()), min_ms=float(ms.min()),
                   batch=batch, kernels=kernels)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelBenchmark:
    """Size, compute and measured latency (one entry per thread count) and peak memory of one `.tflite`."""

    name: str
    file: str
    precision: str  # int8 (full-integer), int16x8, float32, float16, dynamic (int8 weights) or mixed
    size_bytes: int
    gzip_bytes: int
    parameters: int
    macs: int
    input_dtype: str
    latencies: tuple[LatencyResult, ...] = ()
    peak_memory_bytes: int | None = None
    memory_note: str = ""               # how peak memory was measured, or why it was not

    def latency(self, threads: int) -> LatencyResult | None:
        return next((r for r in self.latencies if r.threads == threads), None)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["latencies"] = [r.to_dict() for r in self.latencies]
        return out


def _check_settings(*, threads: Sequence[int], runs: int, warmup: int, kernels: str) -> None:
    bad = [t for t in threads if not isinstance(t, (int, np.integer)) or isinstance(t, bool) or t < 1]
    if bad or not threads:
        raise RecipeError(f"Received threads={list(threads)}; expected one or more integers >= 1, e.g. 1 2 4.")
    if not isinstance(runs, (int, np.integer)) or runs < 1:
        raise RecipeError(f"Received runs={runs!r}; expected an integer >= 1 (50 is a good default).")
    if not isinstance(warmup, (int, np.integer)) or warmup < 0:
        raise RecipeError(f"Received warmup={warmup!r}; expected an integer >= 0.")
    if kernels not in OP_RESOLVERS:
        raise RecipeError(f"Received kernels={kernels!r}; expected one of {sorted(OP_RESOLVERS)}.")


def _random_input(shape: Sequence[int], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -128), min(info.max, 255) + 1, size=shape, dtype=dtype)
    return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)


class _Runner:
    """One interpreter at batch 1 with seeded random inputs set once; `time(n)` invokes n times."""

    def __init__(self, content: bytes, where: str, *, threads: int, kernels: str, seed: int = 0) -> None:
        try:
            self.interpreter = Interpreter(model_content=content, num_threads=threads,
                                           experimental_op_resolver_type=OP_RESOLVERS[kernels])
            for detail in self.interpreter.get_input_details():
                signature = detail.get("shape_signature", detail["shape"])
                if len(signature) and signature[0] == -1 and detail["shape"][0] != 1:
                    self.interpreter.resize_tensor_input(detail["index"], [1, *detail["shape"][1:]])
            with env.hidden_native_output(once="litert-delegate"):  # LiteRT's "Created ... delegate" line
                self.interpreter.allocate_tensors()
            rng = np.random.default_rng(seed)
            details = self.interpreter.get_input_details()
            for detail in details:
                self.interpreter.set_tensor(detail["index"], _random_input(detail["shape"], detail["dtype"], rng))
            self.batch = int(details[0]["shape"][0]) if len(details[0]["shape"]) else 1
            self.interpreter.invoke()
        except (ValueError, RuntimeError) as error:
            raise TFLiteFileError(f"LiteRT cannot load or run {where!r}: {error}") from None

    def time(self, n: int) -> list[int]:
        invoke, clock = self.interpreter.invoke, time.perf_counter_ns
        out = []
        for _ in range(n):
            start = clock()
            invoke()
            out.append(clock() - start)
        return out


def _load(model: str | Path | bytes) -> tuple[bytes, str]:
    content, _ = read_flatbuffer(model)
    return content, "<bytes>" if isinstance(model, (bytes, bytearray)) else str(model)


def measure_latency(model: str | Path | bytes, *, threads: int = 1, runs: int = 50, warmup: int = 5,
                    kernels: str = "xnnpack", seed: int = 0) -> LatencyResult:
    """Batch-1 `invoke()` latency of one model in LiteRT.

    Raises `TFLiteFileError` for a missing, truncated or non-TFLite file (or one LiteRT cannot run)
    and `RecipeError` for threads < 1, runs < 1, warmup < 0 or unknown kernels.
    """
    _check_settings(threads=[threads], runs=runs, warmup=warmup, kernels=kernels)
    content, where = _load(model)
    runner = _Runner(content, where, threads=threads, kernels=kernels, seed=seed)
    runner.time(warmup)
    return LatencyResult.from_times(where, runner.time(runs), threads=threads, warmup=warmup, batch=runner.batch,
                                    kernels=kernels)


# Runs in a fresh interpreter process. VmHWM (this process's RSS high-water mark) is used where it exists:
# after fork/vfork + exec, Linux's ru_maxrss still includes the parent's peak, so it would report the
# parent's memory (e.g. a test process with TensorFlow loaded) instead of the child's.
_MEMORY_CHILD = r"""
import json, sys
def peak():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "VmHWM"
    except OSError:
        pass
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss if sys.platform == "darwin" else rss * 1024), "ru_maxrss"
import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
if len(sys.argv) > 1:
    it = Interpreter(model_path=sys.argv[1], num_threads=int(sys.argv[2]),
                     experimental_op_resolver_type=OpResolverType[sys.argv[3]])
    for d in it.get_input_details():
        sig = d.get("shape_signature", d["shape"])
        if len(sig) and sig[0] == -1 and d["shape"][0] != 1:
            it.resize_tensor_input(d["index"], [1, *d["shape"][1:]])
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    it.invoke()
    it.invoke()
rss, how = peak()
print(json.dumps({"peak_rss": rss, "how": how}))
"""


def _child_peak(args: Sequence[str]) -> tuple[int | None, str]:
    try:
        done = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, *args], capture_output=True, text=True,
                              timeout=_MEMORY_TIMEOUT_S, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"the measuring child process failed to run ({type(error).__name__}: {error})"
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"the measuring child process exited with {done.returncode} ({tail})"
    result = json.loads(lines[-1])
    return int(result["peak_rss"]), result["how"]


@functools.cache
def _baseline_peak() -> tuple[int | None, str]:
    return _child_peak([])


def measure_peak_memory(model: str | Path | bytes, *, threads: int = 1, kernels: str = "xnnpack"
                        ) -> tuple[int | None, str]:
    """Extra peak RSS (bytes) of loading, allocating and invoking `model` at batch 1, and how it was measured.

    Returns `(None, reason)` where it cannot be measured (no child process, no RSS high-water mark, or a
    difference below the measurement's resolution). Raises `TFLiteFileError` for a non-TFLite file.
    """
    _check_settings(threads=[threads], runs=1, warmup=0, kernels=kernels)
    content, where = _load(model)
    with tempfile.TemporaryDirectory(prefix="tflite-bench-") as folder:
        if isinstance(model, (bytes, bytearray)):
            path = Path(folder) / "model.tflite"
            path.write_bytes(content)
        else:
            path = Path(model)
        loaded, how = _child_peak([str(path), str(threads), OP_RESOLVERS[kernels].name])
    base, base_how = _baseline_peak()
    if loaded is None or base is None:
        return None, f"not measured: {how if loaded is None else base_how}"
    if loaded <= base:
        return None, (f"not measured: the child that ran {where!r} peaked at {loaded:,} bytes, not above the "
                      f"import-only child's {base:,} ({how} cannot resolve the difference)")
    note = (f"{how} of a child process that loads, allocates and invokes the model ({threads} thread, batch 1) "
            "minus that of one that only imports LiteRT")
    return loaded - base, note


def _precision(info: Any, model: schema.ModelT) -> str:
    if info.is_full_integer:
        return "int16x8" if any(t.dtype == "int16" for t in info.inputs) else "int8"
    graph = model.subgraphs[0]
    constant = {t.type for t in graph.tensors
                if 0 < t.buffer < len(model.buffers) and model.buffers[t.buffer].data is not None
                and len(model.buffers[t.buffer].data)}
    T = schema.TensorType
    constant -= {T.INT32, T.INT64}  # shapes, axes
    if constant == {T.FLOAT32}:
        return "float32"
    if T.FLOAT16 in constant and not constant & {T.INT8, T.UINT8, T.INT4}:
        return "float16"
    if constant & {T.INT8, T.INT4} and info.float_ops:
        return "dynamic"  # int8 weights, float compute (dynamic-range quantization)
    return "mixed"


def _names(paths: Sequence[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    return [p.stem if stems.count(p.stem) == 1 else f"{p.parent.name}/{p.stem}" for p in paths]


def bench_models(paths: Sequence[str | Path], *, threads: Sequence[int] = (1, 2, 4), runs: int = 50,
                 warmup: int = 5, kernels: str = "xnnpack", memory: bool = True,
                 log: Callable[[str], None] = print) -> list[ModelBenchmark]:
    """Size, MACs, batch-1 latency at each thread count and peak memory of each `.tflite`, side by side.

    Every file is read and checked before anything is timed. Per thread count, each model's `runs`
    are split into rounds interleaved across the models. Raises `TFLiteFileError` for a file that is
    not a usable `.tflite` and `RecipeError` for bad settings.
    """
    _check_settings(threads=list(threads), runs=runs, warmup=warmup, kernels=kernels)
    if not paths:
        raise RecipeError("Received no model files; pass one or more .tflite paths.")
    files = [Path(p) for p in paths]
    names = _names(files)
    loaded = []
    for file in files:
        content, model = read_flatbuffer(file)
        info = inspect_tflite(content)
        loaded.append((content, info, model))
        _Runner(content, str(file), threads=1, kernels=kernels)  # fail now, not after minutes of timing
    latencies: dict[int, list[LatencyResult]] = {i: [] for i in range(len(files))}
    rounds = [len(part) for part in np.array_split(np.arange(runs), min(_ROUNDS, runs))]
    for count in threads:
        log(f"  timing {len(files)} model(s) at {count} thread(s): {warmup} warm-up + {runs} runs each")
        runners = [_Runner(content, str(file), threads=count, kernels=kernels)
                   for file, (content, _, _) in zip(files, loaded, strict=True)]
        for runner in runners:
            runner.time(warmup)
        times: list[list[int]] = [[] for _ in runners]
        for n in rounds:
            for i, runner in enumerate(runners):
                times[i] += runner.time(n)
        for i, (file, runner) in enumerate(zip(files, runners, strict=True)):
            latencies[i].append(LatencyResult.from_times(str(file), times[i], threads=count, warmup=warmup,
                                                         batch=runner.batch, kernels=kernels))
        del runners
    out = []
    for i, (file, (content, info, model)) in enumerate(zip(files, loaded, strict=True)):
        if memory:
            log(f"  peak memory of {file.name} (child process)")
            peak, note = measure_peak_memory(file, kernels=kernels)
        else:
            peak, note = None, "not measured (--no-memory)"
        out.append(ModelBenchmark(name=names[i], file=str(file), precision=_precision(info, model),
                                  size_bytes=len(content), gzip_bytes=gzip_size(content),
                                  parameters=info.num_parameters, macs=info.macs, input_dtype=info.inputs[0].dtype,
                                  latencies=tuple(latencies[i]), peak_memory_bytes=peak, memory_note=note))
    return out


def speed_ratios(benchmarks: Sequence[ModelBenchmark]) -> list[dict[str, Any]]:
    """Median latency of each int8 model over the first float32 model's, per thread count both were timed at."""
    reference = next((b for b in benchmarks if b.precision == "float32"), None)
    if reference is None:
        return []
    out = []
    for bench in benchmarks:
        if bench.precision not in ("int8", "int16x8"):
            continue
        for result in bench.latencies:
            base = reference.latency(result.threads)
            if base is not None and base.median_ms > 0:
                out.append({"int8": bench.name, "float32": reference.name, "threads": result.threads,
                            "ratio": result.median_ms / base.median_ms, "precision": bench.precision})
    return out


def ratio_sentence(ratio: float, isa: str, precision: str = "int8") -> str:
    """'int8 is 1.42× slower than float32 here (ISA ...)' for ratio = int8 time / float32 time."""
    if round(ratio, 2) == 1.0:
        return f"{precision} is as fast as float32 here (1.00×; ISA {isa})"
    if ratio > 1:
        return f"{precision} is {ratio:.2f}× slower than float32 here (ISA {isa})"
    return f"{precision} is {1 / ratio:.2f}× faster than float32 here (ISA {isa})"


def _bytes(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB" if n >= 2**20 else f"{n / 1024:,.1f} KiB"


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.1f}"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} G" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n:,}"


def format_table(benchmarks: Sequence[ModelBenchmark], cpu: dict[str, Any]) -> str:
    """A Markdown table (one row per model, one latency column per thread count), the CPU/ISA it ran on,
    the int8/float32 ratios measured in this run, and notes on oversubscription and memory."""
    counts = sorted({r.threads for b in benchmarks for r in b.latencies})
    first = next((r for b in benchmarks for r in b.latencies), None)
    cpus = cpu.get("logical_cpus") or os.cpu_count() or 1
    lines = [f"CPU: {cpu.get('model', 'unknown')} — {cpu.get('summary', 'ISA unknown')}; os.cpu_count() = {cpus}"
             + (f" ({cpu['usable_cpus']} usable by this process)" if cpu.get("usable_cpus") not in (None, cpus) else "")
             + "."]
    if first is not None:
        lines.append(f"LiteRT {first.kernels} kernels, batch {first.batch}, {first.warmup} warm-up + {first.runs} "
                     "timed invokes per model and thread count; latency = median (p90) ms.")
    lines += ["", "| model | precision | input | size | gzip | parameters | MACs | "
              + " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in counts) + " | peak memory |",
              "|---|---|---|---:|---:|---:|---:|" + "---:|" * len(counts) + "---:|"]
    for b in benchmarks:
        cells = []
        for t in counts:
            r = b.latency(t)
            cells.append("" if r is None else f"{_ms(r.median_ms)} ({_ms(r.p90_ms)})")
        memory = "n/a" if b.peak_memory_bytes is None else _bytes(b.peak_memory_bytes)
        lines.append(f"| {b.name} | {b.precision} | {b.input_dtype} | {_bytes(b.size_bytes)} | {_bytes(b.gzip_bytes)} "
                     f"| {_count(b.parameters)} | {_count(b.macs)} | " + " | ".join(cells) + f" | {memory} |")
    ratios = speed_ratios(benchmarks)
    if ratios:
        lines += ["", "Integer vs float32, measured side by side in this run (median latency):"]
        lines += [f"- {r['threads']} thread{'s' if r['threads'] > 1 else ''}: {r['int8']} vs {r['float32']}: "
                  + ratio_sentence(r["ratio"], cpu.get("summary", "unknown"), r["precision"]) for r in ratios]
    notes = []
    over = [t for t in counts if t > cpus]
    if over:
        notes.append(f"{' and '.join(map(str, over))} threads on a machine with os.cpu_count() = {cpus} "
                     "oversubscribe the cores: those columns measure contention, not scaling.")
    features = set(cpu.get("features") or ())
    if any(b.precision == "int8" for b in benchmarks) and features and not features & _INT8_DOT_FEATURES:
        notes.append("This CPU has no int8 dot-product instructions (VNNI / dotprod), so int8 kernels have no "
                     "arithmetic advantage over float here; phones with dotprod behave differently.")
    measured = [b for b in benchmarks if b.peak_memory_bytes is not None]
    unmeasured = [b for b in benchmarks if b.peak_memory_bytes is None]
    if measured:
        notes.append(f"Peak memory: {measured[0].memory_note}.")
    for b in unmeasured:
        notes.append(f"Peak memory of {b.name}: {b.memory_note}.")
    if notes:
        lines += [""] + [f"Note: {note}" for note in notes]
    return "\n".join(lines)


def bench_report(benchmarks: Sequence[ModelBenchmark], cpu: dict[str, Any]) -> dict[str, Any]:
    """The JSON form: the CPU, every model's numbers and the int8/float32 ratios."""
    return {"cpu": cpu, "models": [b.to_dict() for b in benchmarks], "int8_vs_float32": speed_ratios(benchmarks)}
