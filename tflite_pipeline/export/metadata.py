"""TFLite metadata: what an image classifier `.tflite` says about itself to MediaPipe Tasks and LiteRT's support
library, embedded in the file so the `.tflite` alone is enough.

    ClassifierMetadata ─► metadata flatbuffer (schema `metadata_schema.fbs`, identifier "M001")
                       ─► Model.metadata["TFLITE_METADATA"] -> one more buffer; the rest of the model repacked as is
                       ─► labels.txt appended as a zip archive (the "associated file" Tasks reads the names from)

The writer builds the schema's tables with `flatbuffers` directly: the maintained writers (MediaPipe's
`metadata_writers`, tflite-support) cannot be installed beside tfmot. Written and read here, and read back by
MediaPipe itself in the tests. `embed_metadata` proves the model's operator codes, subgraphs and weight buffers
are the same objects after repacking; `identical_outputs` proves it by running both.

Normalization is stated on the 0-255 pixel scale, `x = (pixel - mean) / std`, as the schema defines it: quantized
models carry their float model's normalization and their own input quantization on top.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema
from flatbuffers import number_types
from flatbuffers.table import Table

from tflite_pipeline.data.folders import ImageFolder
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.errors import ConversionError, DataError, TFLiteFileError
from tflite_pipeline.tflite.flatbuffer import TFLiteInfo, pack_model, read_flatbuffer

METADATA_NAME = b"TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
MIN_PARSER_VERSION = "1.0.0"          # the fields written here are all in schema 1.0.0
LABELS_FILE = "labels.txt"
_TENSOR_AXIS_LABELS = 2               # AssociatedFileType
_RGB, _GRAYSCALE = 1, 2               # ColorSpaceType
_IMAGE_PROPERTIES = 2                 # ContentProperties union
_NORMALIZATION_OPTIONS = 1            # ProcessUnitOptions union
_FEATURE_PROPERTIES = 1
TASKS_INPUT_TYPES = ("uint8", "float32")    # what MediaPipe Tasks' ImageClassifier takes
TASKS_OUTPUT_TYPES = ("uint8", "float32")


@dataclass(frozen=True)
class ClassifierMetadata:
    """What an image classifier's metadata says: names, the input image and its normalization, the labels.

    `mean` / `std` are per channel (or one value for all) on the pixel scale: `x = (pixel - mean) / std`."""

    name: str
    description: str
    height: int
    width: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: tuple[str, ...]          # empty when read from a file whose labels.txt was lost (a repacked model)
    outputs_are_probabilities: bool = True
    version: str = ""
    author: str = "tflite_pipeline"
    input_name: str = "image"
    output_name: str = "scores"
    associated_files: tuple[str, ...] = (LABELS_FILE,)
    min_parser_version: str = MIN_PARSER_VERSION

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise DataError(f"Received channels={self.channels}; image metadata needs 1 (grayscale) or 3 (RGB).")
        if not self.mean or len(self.mean) != len(self.std) or len(self.mean) not in (1, self.channels):
            raise DataError(f"Received mean={self.mean}, std={self.std}; expected one value each, or one per "
                            f"channel ({self.channels}).")
        if any(s == 0 for s in self.std):
            raise DataError(f"Received std={self.std}; a normalization std of 0 divides by zero.")
        bad = [label for label in self.labels if not label or "\n" in label or "\r" in label]
        if bad:
            raise DataError(f"Received labels {list(self.labels)[:5]}...; expected one non-empty, single-line "
                            "name per class.")

    @classmethod
    def for_classifier(cls, spec: PreprocessSpec, labels: Sequence[str], *, name: str, description: str,
                       outputs_are_probabilities: bool, version: str = "") -> ClassifierMetadata:
        """The metadata of a model whose input is `spec`'s (its size, channels and normalization)."""
        mean, std = spec.pixel_mean_std()
        return cls(name=name, description=description, height=spec.height, width=spec.width,
                   channels=spec.channels, mean=mean, std=std, labels=tuple(labels),
                   outputs_are_probabilities=outputs_are_probabilities, version=version)

    def spec(self) -> PreprocessSpec:
        """The `PreprocessSpec` this metadata describes (`normalization` named when it is one of ours)."""
        return spec_from_normalization(self.height, self.width, self.channels, self.mean, self.std,
                                       source="the model's TFLite metadata")

    def format(self) -> str:
        """Lines for `tflite-pipeline inspect`."""
        color = "RGB" if self.channels == 3 else "grayscale"
        mean = ", ".join(f"{m:g}" for m in self.mean)
        std = ", ".join(f"{s:g}" for s in self.std)
        shown = ", ".join(self.labels[:5]) + (", ..." if len(self.labels) > 5 else "")
        return "\n".join([
            f"metadata: {self.name!r} (min parser {self.min_parser_version}), by {self.author or '?'}"
            + (f", version {self.version}" if self.version else ""),
            f"  description: {self.description}",
            f"  input  {self.input_name}: {self.width}x{self.height} {color} image, normalization "
            f"(pixel - [{mean}]) / [{std}]  ({self.spec().formula()})",
            f"  output {self.output_name}: {len(self.labels)} labels ({shown}); "
            + ("probabilities" if self.outputs_are_probabilities else "logits (softmax gives probabilities)"),
            f"  associated files: {', '.join(self.associated_files) or 'none'}"])


def spec_from_normalization(height: int, width: int, channels: int, mean: Sequence[float], std: Sequence[float], *,
                            source: str) -> PreprocessSpec:
    """The inverse of `PreprocessSpec.pixel_mean_std`."""
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    named = {((127.5,), (127.5,)): "minus_one_to_one", ((0.0,), (255.0,)): "zero_to_one", ((0.0,), (1.0,)): "raw"}
    uniform = (mean[:1], std[:1]) if len(set(mean)) == 1 and len(set(std)) == 1 else None
    normalization = named.get(uniform) if uniform else None
    if normalization is not None:
        return PreprocessSpec(height, width, channels, normalization, source=source)
    return PreprocessSpec(height, width, channels, "mean_std", mean=tuple(m / 255.0 for m in mean),
                          std=tuple(s / 255.0 for s in std), source=source)


# ------------------------------------------------------------------------------------------------ writing

def _metadata_flatbuffer(meta: ClassifierMetadata) -> bytes:
    """The ModelMetadata table tree (field slots as numbered in metadata_schema.fbs)."""
    b = flatbuffers.Builder(1024)

    def table(slots: dict[int, tuple[str, int]]) -> int:
        b.StartObject(max(slots) + 1 if slots else 0)
        for slot, (kind, value) in sorted(slots.items()):
            if kind == "offset":
                b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "byte":
                b.PrependInt8Slot(slot, value, 0)
            else:
                b.PrependUint32Slot(slot, value, 0)
        return b.EndObject()

    def tables(offsets: Sequence[int]) -> int:
        b.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            b.PrependUOffsetTRelative(offset)
        return b.EndVector()

    def floats(values: Sequence[float]) -> int:
        return b.CreateNumpyVector(np.asarray(values, dtype=np.float32))

    def text(value: str) -> tuple[str, int]:
        return ("offset", b.CreateString(value))

    labels_file = table({0: text(LABELS_FILE), 1: text("Class names, one per line, in output order."),
                         2: ("byte", _TENSOR_AXIS_LABELS)})
    size = table({0: ("uint", meta.width), 1: ("uint", meta.height)})
    image = table({0: ("byte", _RGB if meta.channels == 3 else _GRAYSCALE), 1: ("offset", size)})
    input_content = table({0: ("byte", _IMAGE_PROPERTIES), 1: ("offset", image)})
    normalization = table({0: ("offset", floats(meta.mean)), 1: ("offset", floats(meta.std))})
    unit = table({0: ("byte", _NORMALIZATION_OPTIONS), 1: ("offset", normalization)})
    pixel_range = table({0: ("offset", floats([255.0])), 1: ("offset", floats([0.0]))})
    color = "RGB" if meta.channels == 3 else "grayscale"
    input_tensor = table({0: text(meta.input_name),
                          1: text(f"{meta.width}x{meta.height} {color} image, resized by stretching (bilinear)."),
                          3: ("offset", input_content), 4: ("offset", tables([unit])), 5: ("offset", pixel_range)})
    output_content = table({0: ("byte", _FEATURE_PROPERTIES), 1: ("offset", table({}))})
    output_slots = {0: text(meta.output_name), 3: ("offset", output_content),
                    6: ("offset", tables([labels_file]))}
    if meta.outputs_are_probabilities:
        output_slots[1] = text("Probability of each class (softmax).")
        output_slots[5] = ("offset", table({0: ("offset", floats([1.0])), 1: ("offset", floats([0.0]))}))
    else:
        output_slots[1] = text("Score (logit) of each class; a softmax turns them into probabilities.")
    output_tensor = table(output_slots)
    subgraph = table({0: text(meta.name), 2: ("offset", tables([input_tensor])),
                      3: ("offset", tables([output_tensor]))})
    root = {0: text(meta.name), 1: text(meta.description), 3: ("offset", tables([subgraph])),
            4: text(meta.author), 7: text(meta.min_parser_version)}
    if meta.version:
        root[2] = text(meta.version)
    b.Finish(table(root), file_identifier=METADATA_IDENTIFIER)
    return bytes(b.Output())


def embed_metadata(flatbuffer: bytes, meta: ClassifierMetadata) -> bytes:
    """`flatbuffer` with `meta` embedded (replacing metadata it had) and `labels.txt` appended as a zip.

    Raises `DataError` when the labels do not match the model's output or the image size its input;
    `ConversionError` if the repacked model's operators, tensors or weights differ from the original's."""
    _, model = read_flatbuffer(flatbuffer)
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise DataError(f"Image classifier metadata needs one input and one output; the model has "
                        f"{len(graph.inputs)} and {len(graph.outputs)}.")
    shape = [int(d) for d in graph.tensors[graph.inputs[0]].shape]
    classes = int(graph.tensors[graph.outputs[0]].shape[-1])
    if shape[1:] != [meta.height, meta.width, meta.channels]:
        raise DataError(f"Received metadata for a {meta.height}x{meta.width}x{meta.channels} image; the model's "
                        f"input is {shape}.")
    if not meta.labels:
        raise DataError("Received no labels; image classifier metadata names every class (labels.txt).")
    if classes != len(meta.labels):
        raise DataError(f"Received {len(meta.labels)} labels for a model with {classes} outputs; labels.txt must "
                        "name every class in output order.")
    if any(b.offset > 1 for b in model.buffers or ()):
        raise DataError("The model keeps its weights outside the flatbuffer (a model over 2 GB); metadata cannot "
                        "be embedded in it here.")
    kept = [(i, m) for i, m in enumerate(model.metadata or []) if m.name != METADATA_NAME]
    previous = next((m.buffer for m in model.metadata or [] if m.name == METADATA_NAME), None)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(_metadata_flatbuffer(meta), dtype=np.uint8)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    if previous is not None:
        model.buffers[previous] = buffer
        entry.buffer = previous
    else:
        model.buffers = [*(model.buffers or []), buffer]
        entry.buffer = len(model.buffers) - 1
    model.metadata = [m for _, m in kept] + [entry]
    packed = pack_model(model)
    _check_same_graph(flatbuffer, packed)
    archive = io.BytesIO()
    archive.write(packed)
    with zipfile.ZipFile(archive, "a") as files:   # offsets from the start of the file, as the populators write
        entry = zipfile.ZipInfo(LABELS_FILE, date_time=(1980, 1, 1, 0, 0, 0))  # same labels, same bytes
        files.writestr(entry, "\n".join(meta.labels) + "\n", compress_type=zipfile.ZIP_STORED)
    return archive.getvalue()


def _check_same_graph(before: bytes, after: bytes) -> None:
    """Operator codes, subgraphs, signatures and every buffer a tensor uses: equal in both models."""
    _, a = read_flatbuffer(before)
    _, b = read_flatbuffer(after)
    used = {t.buffer for g in a.subgraphs for t in g.tensors or ()}
    parts = [("operator codes", a.operatorCodes, b.operatorCodes), ("subgraphs", a.subgraphs, b.subgraphs),
             ("signatures", a.signatureDefs, b.signatureDefs),
             ("weights", [a.buffers[i] for i in sorted(used)], [b.buffers[i] for i in sorted(used)])]
    for what, left, right in parts:
        if not _same(left, right):
            raise ConversionError(f"Embedding metadata changed the model's {what}; nothing was written. This is a "
                                  "bug: please report it with the model.")


def _same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if hasattr(a, "__dict__") and type(a) is type(b):
        return a.__dict__.keys() == b.__dict__.keys() and all(_same(v, b.__dict__[k]) for k, v in vars(a).items())
    return a == b


# ------------------------------------------------------------------------------------------------ reading

class _Reader:
    """Field access on one table of a flatbuffer (slots numbered as in the schema)."""

    def __init__(self, data: bytes, position: int) -> None:
        self.table = Table(bytearray(data), position)

    def _offset(self, slot: int) -> int:
        return self.table.Offset(4 + 2 * slot)

    def text(self, slot: int) -> str:
        o = self._offset(slot)
        return self.table.String(o + self.table.Pos).decode("utf-8", errors="replace") if o else ""

    def byte(self, slot: int) -> int:
        o = self._offset(slot)
        return self.table.Get(number_types.Int8Flags, o + self.table.Pos) if o else 0

    def uint(self, slot: int) -> int:
        o = self._offset(slot)
        return self.table.Get(number_types.Uint32Flags, o + self.table.Pos) if o else 0

    def child(self, slot: int) -> _Reader | None:
        o = self._offset(slot)
        if not o:
            return None
        return self._at(self.table.Indirect(o + self.table.Pos))

    def children(self, slot: int) -> list[_Reader]:
        o = self._offset(slot)
        if not o:
            return []
        start = self.table.Vector(o)
        return [self._at(self.table.Indirect(start + 4 * i)) for i in range(self.table.VectorLen(o))]

    def floats(self, slot: int) -> tuple[float, ...]:
        o = self._offset(slot)
        if not o:
            return ()
        vector = self.table.GetVectorAsNumpy(number_types.Float32Flags, o)
        return tuple(float(v) for v in vector)

    def _at(self, position: int) -> _Reader:
        reader = _Reader.__new__(_Reader)
        reader.table = Table(self.table.Bytes, position)
        return reader


def metadata_bytes(source: str | Path | bytes) -> bytes | None:
    """The raw metadata flatbuffer a `.tflite` carries, or None."""
    _, model = read_flatbuffer(source)
    index = next((m.buffer for m in model.metadata or [] if m.name == METADATA_NAME), None)
    if index is None or not 0 <= index < len(model.buffers) or model.buffers[index].data is None:
        return None
    return bytes(model.buffers[index].data)


def associated_files(source: str | Path | bytes) -> dict[str, bytes]:
    """The files zipped onto a `.tflite` (empty when there is no archive)."""
    data = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as files:
            return {name: files.read(name) for name in files.namelist()}
    except zipfile.BadZipFile:
        return {}


def read_metadata(source: str | Path | bytes) -> ClassifierMetadata | None:
    """The image classifier metadata of a `.tflite` (ours or another writer's), or None when it has none.

    Raises `TFLiteFileError` for metadata that is damaged or does not describe an image classifier."""
    data = source if isinstance(source, (bytes, bytearray)) else None
    where = "<bytes>" if data is not None else str(source)
    raw = metadata_bytes(source)
    if raw is None:
        return None
    if raw[4:8] != METADATA_IDENTIFIER:
        raise TFLiteFileError(f"{where!r} has a TFLITE_METADATA buffer without the 'M001' identifier.")
    try:
        root = _Reader(raw, int.from_bytes(raw[:4], "little"))
        subgraph = root.children(3)[0]
        image_tensor, score_tensor = subgraph.children(2)[0], subgraph.children(3)[0]
        content = image_tensor.child(3)
        image = content.child(1) if content is not None and content.byte(0) == _IMAGE_PROPERTIES else None
        size = image.child(1) if image is not None else None
        mean = std = ()
        for unit in image_tensor.children(4):
            options = unit.child(1)
            if unit.byte(0) == _NORMALIZATION_OPTIONS and options is not None:
                mean, std = options.floats(0), options.floats(1)
        label_names = [f.text(0) for f in score_tensor.children(6) if f.byte(2) == _TENSOR_AXIS_LABELS]
        stats = score_tensor.child(5)
    except (IndexError, AttributeError, ValueError, TypeError) as error:
        raise TFLiteFileError(f"{where!r} has damaged TFLite metadata ({type(error).__name__}: {error}).") from None
    files = associated_files(data if data is not None else Path(source))
    labels: tuple[str, ...] = ()
    if label_names and label_names[0] in files:
        labels = tuple(line for line in files[label_names[0]].decode("utf-8").splitlines() if line)
    _, model = read_flatbuffer(source)
    graph = model.subgraphs[0]
    shape = [int(d) for d in graph.tensors[graph.inputs[0]].shape]
    height = size.uint(1) if size is not None and size.uint(1) else shape[1]
    width = size.uint(0) if size is not None and size.uint(0) else shape[2]
    channels = 1 if image is not None and image.byte(0) == _GRAYSCALE else shape[-1]
    try:
        return ClassifierMetadata(
            name=root.text(0), description=root.text(1), version=root.text(2), author=root.text(4),
            min_parser_version=root.text(7), height=height, width=width, channels=channels,
            mean=mean or (0.0,), std=std or (1.0,), labels=labels or (), input_name=image_tensor.text(0),
            output_name=score_tensor.text(0), associated_files=tuple(sorted(files)),
            outputs_are_probabilities=stats is not None and stats.floats(0) == (1.0,))
    except DataError as error:
        raise TFLiteFileError(f"{where!r} has TFLite metadata this tool cannot use: {error}") from None


# ----------------------------------------------------------------------------------- what Tasks can take

def tasks_problems(info: TFLiteInfo, meta: ClassifierMetadata | None) -> list[str]:
    """Why MediaPipe Tasks' ImageClassifier would refuse the model or return nameless results (empty: ready)."""
    problems = []
    if info.inputs and (len(info.inputs[0].shape) != 4 or info.inputs[0].shape[-1] != 3):
        problems.append(f"input shape is {list(info.inputs[0].shape)}; Tasks takes RGB images (1, height, width, 3)")
    if meta is None:
        problems.append("no TFLite metadata (labels and normalization)")
    elif not meta.labels:
        problems.append("its metadata has no labels file")
    if len(info.inputs) != 1 or info.inputs[0].dtype not in TASKS_INPUT_TYPES:
        got = ", ".join(t.dtype for t in info.inputs)
        problems.append(f"input is {got}; Tasks takes {' or '.join(TASKS_INPUT_TYPES)} (use the pixels variant, "
                        "uint8 pixels in)")
    if any(t.dtype not in TASKS_OUTPUT_TYPES for t in info.outputs):
        problems.append(f"output is {info.outputs[0].dtype}; Tasks reads {' or '.join(TASKS_OUTPUT_TYPES)}")
    return problems


def identical_outputs(pairs: Mapping[str, tuple[bytes, bytes, PreprocessSpec]], folder: ImageFolder,
                      batch_size: int = 64) -> int:
    """Run each `(before, after, input spec)` pair over every image of `folder`; raise `ConversionError` at the
    first output that differs by a bit. Returns the number of images compared (per model)."""
    from tflite_pipeline.tflite.interpreter import LiteRTClassifier

    runners = {name: (LiteRTClassifier(before, batch_size=batch_size), LiteRTClassifier(after, batch_size=batch_size),
                      spec) for name, (before, after, spec) in pairs.items()}
    if not runners:
        return 0
    any_spec = next(iter(pairs.values()))[2]
    count = 0
    for pixels, _ in folder.batches(replace(any_spec, normalization="raw"), batch_size):
        for name, (first, second, spec) in runners.items():
            images = spec.normalize(pixels)
            if first.predict(images).tobytes() != second.predict(images).tobytes():
                raise ConversionError(f"{name}: the model with metadata gives other outputs than without it (images "
                                      f"{count}-{count + len(pixels)}); nothing was written. This is a bug: please "
                                      "report it with the model.")
        count += len(pixels)
    return count


@dataclass(frozen=True)
class MetadataRecord:
    """The metadata embedded in one `.tflite` of a run, the proof its outputs did not change, and what MediaPipe
    Tasks would say of it."""

    variant: str
    file: str
    labels: int
    normalization: str          # the input's preprocessing formula
    bytes_added: int
    identical_images: int       # validation images on which the outputs were bit-identical before and after
    tasks_problems: tuple[str, ...] = ()

    @property
    def tasks_ready(self) -> bool:
        return not self.tasks_problems

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "tasks_ready": self.tasks_ready}


def format_metadata_table(records: Sequence[MetadataRecord]) -> str:
    """A Markdown table: one row per `.tflite` with metadata."""
    lines = ["| model | labels | input | bytes added | identical outputs | MediaPipe Tasks |",
             "|---|---:|---|---:|---:|---|"]
    for r in records:
        tasks = "ready" if r.tasks_ready else "no: " + "; ".join(r.tasks_problems)
        lines.append(f"| {r.variant} | {r.labels} | `{r.normalization}` | {r.bytes_added:,} | "
                     f"{r.identical_images} images | {tasks} |")
    return "\n".join(lines)


def input_spec(run_spec: PreprocessSpec, meta: ClassifierMetadata | None) -> PreprocessSpec:
    """The preprocessing a `.tflite` of a run takes: what its metadata says when that is another normalization than
    the run's (the pixels variant), else the run's own spec."""
    if meta is None:
        return run_spec
    described = meta.spec()
    return run_spec if described.normalization == run_spec.normalization else described
