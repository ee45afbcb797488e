"""Classify images with MediaPipe Tasks' `ImageClassifier`; run as a script in MediaPipe's Python.

    python tasks_probe.py < request.json > answer.json

Standalone on purpose (mediapipe, numpy and Pillow only, no tflite_pipeline import): MediaPipe needs
`absl-py~=2.3`, which tfmot's environment cannot hold, so it lives in `.venv-mediapipe` (`make setup`).
`tasks.check_tasks` writes the request and reads the answer. Besides classifying, it reads each model's
metadata back with MediaPipe's own generated schema (an independent reader of what `metadata.py` wrote).

Request: {"models": [str], "images": [str], "pixels": npy path of uint8 RGB (N, h, w, 3) at the model's size}
Answer:  {"mediapipe": "1.2.2", "models": [{"path", "error", "top1": [int], "names": [str], "top1_pixels": [int],
          "metadata": {"name", "labels_file", "mean", "std", "labels"} | null}]}
`top1` is for the image files (MediaPipe resizes them), `top1_pixels` for the already resized pixels (the same
bytes our LiteRT check feeds).
"""

from __future__ import annotations

import io
import json
import sys
import zipfile


def _message(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _metadata(path: str) -> dict | None:
    """The model's metadata as MediaPipe's generated schema reads it."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as meta_schema
    from mediapipe.tasks.metadata import schema_py_generated as schema

    with open(path, "rb") as file:
        data = file.read()
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    index = next((m.buffer for m in model.metadata or [] if m.name == b"TFLITE_METADATA"), None)
    if index is None:
        return None
    raw = bytes(model.buffers[index].data)
    meta = meta_schema.ModelMetadataT.InitFromPackedBuf(bytearray(raw), 0)
    tensor_in = meta.subgraphMetadata[0].inputTensorMetadata[0]
    tensor_out = meta.subgraphMetadata[0].outputTensorMetadata[0]
    options = tensor_in.processUnits[0].options if tensor_in.processUnits else None
    labels_file = tensor_out.associatedFiles[0].name.decode() if tensor_out.associatedFiles else None
    labels = []
    if labels_file:
        with zipfile.ZipFile(io.BytesIO(data)) as files:
            labels = files.read(labels_file).decode("utf-8").splitlines()
    return {"name": (meta.name or b"").decode(), "labels_file": labels_file, "labels": labels,
            "mean": [float(v) for v in options.mean] if options is not None else None,
            "std": [float(v) for v in options.std] if options is not None else None}


def _classify(path: str, images: list[str], pixels) -> dict:
    import mediapipe as mp
    import numpy as np
    from mediapipe.tasks import python as tasks
    from mediapipe.tasks.python import vision
    from PIL import Image

    entry: dict = {"path": path, "error": None, "top1": [], "names": [], "top1_pixels": []}
    try:
        entry["metadata"] = _metadata(path)
    except Exception as error:  # reported, not fatal: the classifier may still run
        entry["metadata"] = None
        entry["metadata_error"] = _message(error)
    options = vision.ImageClassifierOptions(base_options=tasks.BaseOptions(model_asset_path=path), max_results=1)
    try:
        classifier = vision.ImageClassifier.create_from_options(options)
    except Exception as error:  # MediaPipe raises ValueError / RuntimeError for a model it refuses
        entry["error"] = _message(error)
        return entry
    with classifier:
        for image_path in images:
            with Image.open(image_path) as image:
                rgb = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
            best = result.classifications[0].categories[0]
            entry["top1"].append(int(best.index))
            entry["names"].append(best.category_name or "")
        for rgb in pixels:
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb)))
            entry["top1_pixels"].append(int(result.classifications[0].categories[0].index))
    return entry


def main() -> int:
    from importlib import metadata

    import numpy as np

    request = json.load(sys.stdin)
    pixels = np.load(request["pixels"]) if request.get("pixels") else []
    answer = {"mediapipe": metadata.version("mediapipe"),
              "models": [_classify(path, request["images"], pixels) for path in request["models"]]}
    json.dump(answer, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
