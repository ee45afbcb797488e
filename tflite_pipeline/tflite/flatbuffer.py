"""Reading a `.tflite` flatbuffer: I/O tensors and their quantization, ops and versions, float leftovers.

Needs only LiteRT's flatbuffer schema and numpy (no TensorFlow import), so `tflite-pipeline inspect`
answers in well under a second.
"""

from __future__ import annotations

import gzip
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from tflite_pipeline.errors import TFLiteFileError

_TENSOR_TYPES = {value: name.lower() for name, value in vars(schema.TensorType).items() if not name.startswith("_")}
_OP_NAMES = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
_FLOAT_TYPES = {"float32", "float16", "float64"}
_BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}


@dataclass(frozen=True)
class TensorInfo:
    """One input or output tensor: shape (-1 = dynamic), dtype and affine quantization."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None


@dataclass(frozen=True)
class OpInfo:
    name: str
    version: int
    count: int


@dataclass(frozen=True)
class WeightInfo:
    """A constant weight tensor of a CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED op."""

    name: str
    op: str
    size: int
    sparsity: float          # fraction of exact zeros (int8 weights are symmetric: zero stays 0)
    max_unique: int          # most distinct values in one output channel (<= clusters after clustering)
    macs: int = 0            # multiply-accumulates per image: output elements x weights per output channel


@dataclass(frozen=True)
class TFLiteInfo:
    """What `inspect_tflite` reads off a model file."""

    size_bytes: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    ops: tuple[OpInfo, ...]
    float_ops: tuple[str, ...]        # "CONV_2D #3 (output name)" for ops that compute in float
    num_parameters: int               # elements of constant tensors (weights and biases)
    weights: tuple[WeightInfo, ...] = ()

    @property
    def weight_sparsity(self) -> float:
        """Zeros over all conv / fully-connected weights."""
        total = sum(w.size for w in self.weights)
        return sum(w.sparsity * w.size for w in self.weights) / total if total else 0.0

    @property
    def macs(self) -> int:
        """Multiply-accumulates per image of the conv and fully-connected ops (the rest is comparatively free)."""
        return sum(w.macs for w in self.weights)

    @property
    def is_full_integer(self) -> bool:
        return not self.float_ops and all(t.dtype in ("int8", "uint8", "int16") for t in self.inputs + self.outputs)

    def layer_sparsity(self, layer_names: list[str]) -> dict[str, float]:
        """Sparsity of the weight tensor each Keras layer became (matched by name, QAT `quant_` prefix too)."""
        out = {}
        for layer in layer_names:
            pattern = re.compile(rf"(^|/)(quant_)?{re.escape(layer)}/")
            match = next((w for w in self.weights if pattern.search(w.name)), None)
            if match is not None:
                out[layer] = match.sparsity
        return out

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["is_full_integer"] = self.is_full_integer
        out["weight_sparsity"] = self.weight_sparsity
        out["macs"] = self.macs
        return out

    def format(self) -> str:
        """Human-readable summary, as printed by `tflite-pipeline inspect`."""
        def tensor_line(kind: str, t: TensorInfo) -> str:
            quant = f"scale={t.scale:.6g} zero_point={t.zero_point}" if t.scale is not None else "not quantized"
            return f"  {kind:<6} {t.name:<28} shape={list(t.shape)} {t.dtype:<7} {quant}"

        lines = [f"size: {self.size_bytes:,} bytes, parameters: {self.num_parameters:,}, MACs: {self.macs:,}, "
                 f"weight sparsity: {self.weight_sparsity:.1%}",
                 f"full-integer: {'yes' if self.is_full_integer else 'no'}"]
        lines += [tensor_line("input", t) for t in self.inputs] + [tensor_line("output", t) for t in self.outputs]
        lines.append("ops (name, version, count):")
        lines += [f"  {op.name:<24} v{op.version:<3} x{op.count}" for op in self.ops]
        if self.float_ops:
            lines.append(f"ops computing in float: {len(self.float_ops)}")
            lines += [f"  {name}" for name in self.float_ops[:20]]
            if len(self.float_ops) > 20:
                lines.append(f"  ... and {len(self.float_ops) - 20} more")
        return "\n".join(lines)


def gzip_size(data: bytes) -> int:
    """Bytes after gzip -9: what a pruned or clustered model costs in an APK or a download."""
    return len(gzip.compress(data, compresslevel=9, mtime=0))


class _AlignedBuffer(schema.BufferT):
    """A `BufferT` whose data packs 16-byte aligned, as the converter writes it (the generated `Pack` aligns to 1:
    kernels that map weights in place, such as XNNPACK's, then have to copy them)."""

    ALIGNMENT = 16

    def Pack(self, builder: flatbuffers.Builder) -> int:
        data = None
        if self.data is not None and len(self.data):
            payload = np.asarray(self.data, dtype=np.uint8).tobytes()
            builder.StartVector(1, len(payload), self.ALIGNMENT)
            builder.head -= len(payload)
            builder.Bytes[builder.head:builder.head + len(payload)] = payload
            data = builder.EndVector()
        schema.BufferStart(builder)
        if data is not None:
            schema.BufferAddData(builder, data)
        schema.BufferAddOffset(builder, self.offset)
        schema.BufferAddSize(builder, self.size)
        return schema.BufferEnd(builder)


def pack_model(model: schema.ModelT) -> bytes:
    """Serialize a (modified) model object tree back to `.tflite` bytes, weight buffers 16-byte aligned."""
    for buffer in model.buffers or ():
        buffer.__class__ = _AlignedBuffer
    builder = flatbuffers.Builder(1024)
    try:
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    finally:
        for buffer in model.buffers or ():
            buffer.__class__ = schema.BufferT
    return bytes(builder.Output())


def read_flatbuffer(source: str | Path | bytes) -> tuple[bytes, schema.ModelT]:
    """The bytes and parsed object tree of a `.tflite`, or `TFLiteFileError` saying what is wrong."""
    if isinstance(source, (bytes, bytearray)):
        data, where = bytes(source), "<bytes>"
    else:
        where = str(source)
        try:
            data = Path(source).read_bytes()
        except OSError as error:
            raise TFLiteFileError(f"Cannot read {where!r}: {error.strerror}.") from None
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise TFLiteFileError(f"{where!r} is not a TFLite model (no 'TFL3' identifier in its header); expected a "
                              ".tflite flatbuffer written by the TFLite converter.")
    try:
        model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    except Exception as error:
        raise TFLiteFileError(f"{where!r} has a TFLite header but cannot be parsed ({type(error).__name__}: "
                              f"{error}); the file is probably truncated or damaged.") from None
    if not model.subgraphs:
        raise TFLiteFileError(f"{where!r} holds no subgraph; it is not a usable model.")
    problem = structure_problem(model, len(data))
    if problem:
        raise TFLiteFileError(f"{where!r} is damaged: {problem}. Re-export or re-download the file.")
    return data, model


# bytes per element of the tensor types whose constant data has a fixed size (packed and string types excluded)
_ITEM_SIZES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1, "uint8": 1, "int16": 2,
               "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8, "bool": 1, "complex64": 8,
               "complex128": 16}
_MAX_ELEMENTS = 2**31 - 1


def structure_problem(model: schema.ModelT, file_size: int) -> str:
    """What makes a parsed model inconsistent (an index out of range, a shape that does not match its data,
    a quantization scale that is not a positive number), or "" when none is found. A flatbuffer with flipped
    bytes often still parses; these are what then crash or mislead an interpreter, so they are refused first."""
    buffers, codes = model.buffers or [], model.operatorCodes or []
    for g, graph in enumerate(model.subgraphs):
        tensors = graph.tensors or []
        for i, tensor in enumerate(tensors):
            problem = _tensor_problem(tensor, buffers, file_size)
            if problem:
                return f"subgraph {g} tensor {i} ({(tensor.name or b'').decode(errors='replace')!r}) {problem}"
        for kind, indices in (("input", graph.inputs), ("output", graph.outputs)):
            bad = [int(t) for t in (indices if indices is not None else ()) if not 0 <= t < len(tensors)]
            if bad:
                return f"subgraph {g} names {kind} tensor {bad[0]} of {len(tensors)}"
        for o, op in enumerate(graph.operators or ()):
            if not 0 <= op.opcodeIndex < len(codes):
                return f"subgraph {g} op {o} uses operator code {op.opcodeIndex} of {len(codes)}"
            for kind, indices in (("input", op.inputs), ("output", op.outputs), ("intermediate", op.intermediates)):
                lowest = -1 if kind == "input" else 0   # -1 marks an omitted optional input
                bad = [int(t) for t in (indices if indices is not None else ()) if not lowest <= t < len(tensors)]
                if bad:
                    return f"subgraph {g} op {o} ({op_name(codes[op.opcodeIndex])}) names {kind} tensor {bad[0]} " \
                           f"of {len(tensors)}"
    return ""


def _tensor_problem(tensor: schema.TensorT, buffers: list, file_size: int) -> str:
    shape = [int(d) for d in (tensor.shape if tensor.shape is not None else ())]
    if any(d < 0 for d in shape):
        return f"has shape {shape}"
    elements = int(np.prod(shape, dtype=np.float64)) if shape else 1
    if elements > _MAX_ELEMENTS:
        return f"has shape {shape} ({elements:,} elements)"
    if not 0 <= tensor.buffer < max(1, len(buffers)):
        return f"uses buffer {tensor.buffer} of {len(buffers)}"
    buffer = buffers[tensor.buffer] if buffers else None
    if buffer is not None:
        if buffer.offset > 1 and buffer.offset + buffer.size > file_size:
            return f"has data at bytes {buffer.offset}-{buffer.offset + buffer.size} of a {file_size}-byte file"
        stored = len(buffer.data) if buffer.data is not None else 0
        item = _ITEM_SIZES.get(_TENSOR_TYPES.get(tensor.type, ""))
        if stored and item and tensor.sparsity is None and stored != elements * item:
            return f"has {stored} bytes of data for shape {shape} of {_TENSOR_TYPES[tensor.type]}"
    quant = tensor.quantization
    if quant is not None and quant.scale is not None and len(quant.scale):
        scale = np.asarray(quant.scale, np.float64)
        zero = quant.zeroPoint if quant.zeroPoint is not None else ()
        constant = buffer is not None and buffer.data is not None and len(buffer.data) > 0
        if not np.all(np.isfinite(scale)) or np.any(scale < 0) or (not constant and np.any(scale == 0)):
            return f"has quantization scale {scale[:4].tolist()}"
        if len(zero) != len(scale):
            return f"has {len(scale)} quantization scales but {len(zero)} zero points"
        if len(scale) > 1 and not (0 <= quant.quantizedDimension < len(shape) and
                                   shape[quant.quantizedDimension] == len(scale)):
            return f"has {len(scale)} per-channel scales on dimension {quant.quantizedDimension} of shape {shape}"
    return ""


def _tensor_info(tensor: schema.TensorT) -> TensorInfo:
    quant = tensor.quantization
    scale = zero_point = None
    if quant is not None and quant.scale is not None and len(quant.scale) > 0:
        scale, zero_point = float(quant.scale[0]), int(quant.zeroPoint[0])
    shape = tensor.shapeSignature if tensor.shapeSignature is not None and len(tensor.shapeSignature) else tensor.shape
    return TensorInfo(name=(tensor.name or b"").decode(errors="replace"),
                      shape=tuple(int(d) for d in (shape if shape is not None else ())),
                      dtype=_TENSOR_TYPES.get(tensor.type, str(tensor.type)), scale=scale, zero_point=zero_point)


def op_name(code: schema.OperatorCodeT) -> str:
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        return f"CUSTOM:{(code.customCode or b'').decode(errors='replace')}"
    return _OP_NAMES.get(builtin, f"BUILTIN_{builtin}")


def inspect_tflite(source: str | Path | bytes) -> TFLiteInfo:
    """Read a `.tflite` file (or its bytes). Raises `TFLiteFileError` for anything that is not one."""
    data, model = read_flatbuffer(source)
    graph = model.subgraphs[0]
    tensors = graph.tensors
    names = [op_name(code) for code in model.operatorCodes]
    counts: Counter[tuple[str, int]] = Counter()
    float_ops: list[str] = []
    graph_inputs = {int(i) for i in graph.inputs}
    graph_outputs = {int(i) for i in graph.outputs}
    for index, op in enumerate(graph.operators or ()):
        name = names[op.opcodeIndex]
        counts[(name, int(model.operatorCodes[op.opcodeIndex].version))] += 1
        inputs = [int(i) for i in (op.inputs if op.inputs is not None else ()) if i >= 0]
        outputs = [int(i) for i in (op.outputs if op.outputs is not None else ()) if i >= 0]
        if name in _BOUNDARY_OPS and (set(inputs) <= graph_inputs or set(outputs) <= graph_outputs):
            continue  # float I/O wrapped around an integer model
        touched = [tensors[i] for i in inputs + outputs]
        if any(_TENSOR_TYPES.get(t.type) in _FLOAT_TYPES for t in touched):
            out_name = (tensors[outputs[0]].name or b"").decode(errors="replace") if outputs else ""
            float_ops.append(f"{name} #{index} ({out_name})")
    weights = _weights(model, graph, names)
    num_parameters = 0
    for tensor in tensors:
        buffer = model.buffers[tensor.buffer] if 0 < tensor.buffer < len(model.buffers) else None
        if buffer is not None and buffer.data is not None and len(buffer.data) and tensor.shape is not None:
            num_parameters += int(np.prod(tensor.shape)) if len(tensor.shape) else 1
    return TFLiteInfo(
        size_bytes=len(data),
        inputs=tuple(_tensor_info(tensors[i]) for i in graph.inputs),
        outputs=tuple(_tensor_info(tensors[i]) for i in graph.outputs),
        ops=tuple(OpInfo(name, version, count) for (name, version), count in sorted(counts.items())),
        float_ops=tuple(float_ops),
        num_parameters=num_parameters,
        weights=weights,
    )


_WEIGHT_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
_NUMPY_TYPES = {"int8": np.int8, "uint8": np.uint8, "float32": np.float32, "float16": np.float16, "int4": np.int8}


def _weights(model: schema.ModelT, graph: schema.SubGraphT, op_names: list[str]) -> tuple[WeightInfo, ...]:
    out = []
    for op in graph.operators or ():
        name = op_names[op.opcodeIndex]
        if name not in _WEIGHT_OPS or op.inputs is None or len(op.inputs) < 2:
            continue
        tensor = graph.tensors[op.inputs[1]]
        buffer = model.buffers[tensor.buffer] if 0 < tensor.buffer < len(model.buffers) else None
        dtype = _NUMPY_TYPES.get(_TENSOR_TYPES.get(tensor.type, ""))
        if buffer is None or buffer.data is None or dtype is None or not len(buffer.data):
            continue
        values = np.frombuffer(bytes(buffer.data), dtype=dtype)
        channels = values.reshape(int(tensor.shape[0]), -1) if name != "DEPTHWISE_CONV_2D" else \
            values.reshape(-1, int(tensor.shape[-1])).T
        output_shape = graph.tensors[op.outputs[0]].shape  # batch 1 where the signature says -1
        out.append(WeightInfo(name=(tensor.name or b"").decode(errors="replace"), op=name, size=int(values.size),
                              sparsity=float(np.mean(values == 0)),
                              max_unique=max(int(np.unique(row).size) for row in channels),
                              macs=int(np.prod(output_shape[1:])) * (values.size // len(channels))))
    return tuple(out)
