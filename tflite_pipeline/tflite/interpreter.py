"""A `.tflite` classifier in the LiteRT interpreter (`ai_edge_litert.interpreter`).

It runs on the same float batches the Keras model sees, so preprocessing cannot differ: integer inputs are
quantized and outputs dequantized with each tensor's own scale and zero point (`quantize`, `dequantize`, the
formula the Android app implements too). `OP_RESOLVERS` names the kernels: xnnpack, builtin, reference.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tflite_pipeline import env
from tflite_pipeline.errors import ModelError, TFLiteFileError
from tflite_pipeline.tflite.flatbuffer import read_flatbuffer

_INTEGER_RANGES = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255), np.dtype(np.int16): (-32768, 32767)}


QUANTIZATION_FORMULA = ("q = clamp(floor((x - (low - zero_point) * scale) * levels / (scale * levels) + 0.5) + low), "
                        "levels = high - low, in float32")


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype, *,
             out: np.ndarray | None = None) -> np.ndarray:
    """Float input -> integer tensor values: `round_half_up(x / scale) + zero_point`, saturated.

    Computed in float32 the way TensorFlow's fake quantization computes it (`QUANTIZATION_FORMULA`: shift
    by the range's low end, multiply by levels / range), not as `x / scale`: under MobileNetV2's
    `x = p / 127.5 - 1` every pixel is an exact tie of the input scale 2/255, and `x / scale` lands just
    below the tie for a tenth of them, so a QAT model and its `.tflite` would see different input integers.
    The Android app repeats these float32 steps (`Preprocessing.quantize`). With `out` (e.g. an
    interpreter's input tensor) the values are written there, with one temporary array instead of seven."""
    low, high = _INTEGER_RANGES[np.dtype(dtype)]
    scale, levels = np.float32(scale), np.float32(high - low)
    per_step = levels / (scale * levels)  # 1 / scale, recovered exactly for a range such as [-1, 1]
    steps = np.subtract(np.asarray(x, np.float32), np.float32(low - zero_point) * scale)  # minus the nudged low
    steps *= per_step
    steps += np.float32(0.5)
    np.floor(steps, out=steps)
    steps += np.float32(low)
    np.clip(steps, low, high, out=steps)
    if out is None:
        return steps.astype(dtype)
    np.copyto(out, steps, casting="unsafe")
    return out


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer tensor values -> float: `(q - zero_point) * scale`."""
    return (q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)


OP_RESOLVERS = {"xnnpack": OpResolverType.AUTO, "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                 "reference": OpResolverType.BUILTIN_REF}


@contextlib.contextmanager
def _runtime_errors(step: str):
    """LiteRT refusing a model (a kernel's Prepare or Eval failing) -> `TFLiteFileError` in its own words."""
    try:
        yield
    except (ValueError, RuntimeError) as error:
        words = " ".join(str(error).split())[:600]
        raise TFLiteFileError(f"LiteRT cannot {step} the model: {words}. A file the converter wrote loads; this one "
                              "is damaged or was edited by hand.") from None


class LiteRTClassifier:
    """A `.tflite` classifier in the LiteRT interpreter that takes and returns float arrays.

    Runs `num_threads` single-threaded interpreters side by side, each on its own chunk of up to
    `batch_size` images (through a dynamic batch dimension when the model has one, else the model's
    own batch). Measured on 2 shared cores (`benchmarks/verify_throughput.py`), this is as fast as one
    interpreter with `num_threads` threads when the CPU is idle and much faster when it is busy, because
    no thread waits for a preempted one at every op. Integer inputs are quantized with `quantize` straight
    into each interpreter's input tensor. For batch-1 latency use `bench`.
    """

    def __init__(self, model: str | Path | bytes, *, num_threads: int = 2, batch_size: int = 64,
                 kernels: str = "xnnpack") -> None:
        content, _ = read_flatbuffer(model)
        with _runtime_errors("load"):
            self._interpreters = [Interpreter(model_content=content, num_threads=1,
                                              experimental_op_resolver_type=OP_RESOLVERS[kernels])
                                  for _ in range(max(1, num_threads))]
        self._input = self._interpreters[0].get_input_details()[0]
        self._output = self._interpreters[0].get_output_details()[0]
        signature = self._input.get("shape_signature", self._input["shape"])
        self._dynamic = bool(len(signature) and signature[0] == -1)
        self.max_batch = max(1, batch_size) if self._dynamic else int(self._input["shape"][0])
        with _runtime_errors("prepare"), env.hidden_native_output(once="litert-delegate"):
            for interpreter in self._interpreters:  # here, not in predict's threads: LiteRT's "Created ... delegate"
                interpreter.allocate_tensors()      # line is printed once, by whichever thread prepares first
        self._allocated = [int(self._input["shape"][0])] * len(self._interpreters)
        self.input_shape = tuple(int(d) for d in self._input["shape"][1:])
        self.num_classes = int(self._output["shape"][-1])

    @property
    def input_range(self) -> tuple[float, float] | None:
        """The real values an integer input tensor can represent (its scale and zero point), else None."""
        dtype = np.dtype(self._input["dtype"])
        if dtype not in _INTEGER_RANGES:
            return None
        scale, zero_point = self._input["quantization"]
        low, high = _INTEGER_RANGES[dtype]
        return (low - zero_point) * scale, (high - zero_point) * scale

    def _ensure_batch(self, worker: int, n: int) -> None:
        if n != self._allocated[worker]:
            interpreter = self._interpreters[worker]
            with _runtime_errors("prepare"):
                interpreter.resize_tensor_input(self._input["index"], [n, *self.input_shape])
                interpreter.allocate_tensors()
            self._allocated[worker] = n

    def _set_input(self, worker: int, chunk: np.ndarray) -> None:
        """Write `chunk` into the input tensor, quantized with its scale and zero point if integer."""
        in_dtype = np.dtype(self._input["dtype"])
        view = self._interpreters[worker].tensor(self._input["index"])()
        if in_dtype in _INTEGER_RANGES:
            quantize(chunk, *self._input["quantization"], in_dtype, out=view)
        else:
            np.copyto(view, chunk, casting="unsafe")
        del view  # the interpreter refuses to run while a view of its buffers is alive

    def _run(self, worker: int, images: np.ndarray) -> np.ndarray:
        """Float scores of `images` on one interpreter, in steps of the model's batch when it is fixed."""
        interpreter = self._interpreters[worker]
        out_scale, out_zero = self._output["quantization"]
        step = len(images) if self._dynamic else self.max_batch
        scores = []
        for start in range(0, len(images), step):
            chunk = images[start:start + step]
            self._ensure_batch(worker, len(chunk))
            self._set_input(worker, chunk)
            with _runtime_errors("run"):
                interpreter.invoke()
            out = interpreter.get_tensor(self._output["index"])
            scores.append(dequantize(out, out_scale, out_zero) if out.dtype in _INTEGER_RANGES else
                          out.astype(np.float32))
        return np.concatenate(scores)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Float scores `[N, num_classes]` for preprocessed float images `[N, H, W, C]`."""
        import queue
        from concurrent.futures import ThreadPoolExecutor

        if tuple(images.shape[1:]) != self.input_shape:
            raise ModelError(f"Received images of shape {tuple(images.shape[1:])}; this .tflite expects "
                             f"{self.input_shape}.")
        workers = len(self._interpreters)
        size = self.max_batch
        if self._dynamic and len(images) < workers * size:  # a short call still uses every interpreter
            size = max(1, -(-len(images) // workers))
        spans = [(start, min(start + size, len(images))) for start in range(0, len(images), size)]
        if not spans:
            return np.zeros((0, self.num_classes), np.float32)
        if workers == 1 or len(spans) == 1:
            return np.concatenate([self._run(0, images[a:b]) for a, b in spans])
        free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for worker in range(workers):
            free.put(worker)

        def task(span: tuple[int, int]) -> np.ndarray:  # the next free interpreter takes the next chunk
            worker = free.get()
            try:
                return self._run(worker, images[span[0]:span[1]])
            finally:
                free.put(worker)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="litert") as pool:
            return np.concatenate(list(pool.map(task, spans)))


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best classes, best first; ties go to the lower class index (like argmax)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


_PROBABILITY_FLOOR = 1e-6  # int8 softmax outputs are often exactly 0: KL needs a floor


def probabilities(scores: np.ndarray, are_probabilities: bool) -> np.ndarray:
    """Rows that sum to 1: softmax of logits, or probabilities floored at 1e-6 and renormalized."""
    if are_probabilities:
        p = np.maximum(scores.astype(np.float64), _PROBABILITY_FLOOR)
    else:
        z = scores.astype(np.float64) - scores.max(axis=1, keepdims=True)
        p = np.maximum(np.exp(z), _PROBABILITY_FLOOR)
    return p / p.sum(axis=1, keepdims=True)
