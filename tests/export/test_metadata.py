"""TFLite metadata: written and read back here and by MediaPipe, unchanged outputs, the pixels variant, Tasks-readiness.

The fast tests use graphs without operators (metadata only needs the I/O tensors); the rest read the tiny run, whose
float32, int8 and pixels models carry metadata, and MediaPipe's own Python (`.venv-mediapipe`) where it exists.
"""

from __future__ import annotations

import json
import os
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from conftest import REPO, run_cli

import tflite_pipeline as tp
from tflite_pipeline.data.folders import ImageFolder
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.errors import ConversionError, DataError, TFLiteFileError
from tflite_pipeline.export.metadata import (
    LABELS_FILE,
    METADATA_NAME,
    ClassifierMetadata,
    associated_files,
    embed_metadata,
    identical_outputs,
    input_spec,
    read_metadata,
    spec_from_normalization,
    tasks_problems,
)
from tflite_pipeline.tflite.flatbuffer import inspect_tflite, pack_model, read_flatbuffer

FIXTURE = REPO / "android_demo" / "app" / "src" / "test" / "resources" / "metadata_only.tflite"


def graph_only_model(shape=(1, 4, 4, 3), classes: int = 3, dtype: str = "uint8") -> bytes:
    """A `.tflite` with an input and an output tensor and no operators (quantized uint8: scale 1, zero point 0 in)."""
    kind = {"uint8": schema.TensorType.UINT8, "int8": schema.TensorType.INT8, "float32": schema.TensorType.FLOAT32}

    def tensor(name: bytes, dims, scale: float) -> schema.TensorT:
        t = schema.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(dims), kind[dtype], 0
        if dtype != "float32":
            t.quantization = schema.QuantizationParametersT()
            t.quantization.scale, t.quantization.zeroPoint = [scale], [0]
        return t

    graph = schema.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = \
        [tensor(b"pixels", shape, 1.0), tensor(b"scores", (1, classes), 1 / 256)], [0], [1], []
    model = schema.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [], [graph], [schema.BufferT()]
    return pack_model(model)


def fixture_model() -> bytes:
    """What android_demo's JVM tests read (app/src/test/resources/metadata_only.tflite)."""
    meta = ClassifierMetadata.for_classifier(PreprocessSpec(4, 4, 3, "minus_one_to_one"), ["cat", "dog", "bird"],
                                             name="fixture", description="A graph without operators: metadata only.",
                                             outputs_are_probabilities=True, version="1")
    return embed_metadata(graph_only_model(), meta)


def _meta(spec: PreprocessSpec, labels=("cat", "dog", "bird"), **kwargs) -> ClassifierMetadata:
    return ClassifierMetadata.for_classifier(spec, labels, name=kwargs.pop("name", "m"), description="d",
                                             outputs_are_probabilities=kwargs.pop("probabilities", True), **kwargs)


@pytest.mark.fast
@pytest.mark.parametrize("spec", [PreprocessSpec(4, 4, 3, "minus_one_to_one"), PreprocessSpec(4, 4, 3, "zero_to_one"),
                                  PreprocessSpec(4, 4, 3, "raw"),
                                  PreprocessSpec(4, 4, 3, "mean_std", mean=(0.485, 0.456, 0.406),
                                                 std=(0.229, 0.224, 0.225))],
                         ids=lambda spec: spec.normalization)
def test_metadata_round_trip_gives_back_labels_normalization_and_names(spec):
    written = _meta(spec, name="mobilenet_v2_int8", version="0.3.0", probabilities=False)
    back = read_metadata(embed_metadata(graph_only_model(), written))
    assert back.labels == ("cat", "dog", "bird") and back.name == "mobilenet_v2_int8" and back.version == "0.3.0"
    assert (back.height, back.width, back.channels) == (4, 4, 3) and not back.outputs_are_probabilities
    np.testing.assert_allclose(back.mean, written.mean, rtol=1e-6)
    np.testing.assert_allclose(back.std, written.std, rtol=1e-6)
    again = back.spec()
    assert again.normalization == spec.normalization
    np.testing.assert_allclose(again.normalize(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)),
                               spec.normalize(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)), rtol=1e-5, atol=1e-6)
    assert spec.formula() in back.format()


@pytest.mark.fast
def test_embedding_again_replaces_the_metadata_and_its_labels():
    first = embed_metadata(graph_only_model(), _meta(PreprocessSpec(4, 4, 3)))
    second = embed_metadata(first, _meta(PreprocessSpec(4, 4, 3, "raw"), labels=("a", "b", "c")))
    _, model = read_flatbuffer(second)
    assert [m.name for m in model.metadata] == [METADATA_NAME]
    assert associated_files(second) == {LABELS_FILE: b"a\nb\nc\n"}
    assert read_metadata(second).spec().normalization == "raw"
    assert read_metadata(graph_only_model()) is None


@pytest.mark.fast
def test_repacked_weights_stay_16_byte_aligned():
    graph = graph_only_model()
    _, model = read_flatbuffer(graph)
    weights = schema.BufferT()
    weights.data = np.arange(37, dtype=np.uint8)
    model.buffers.append(weights)
    data = pack_model(model)
    position = data.find(bytes(range(37)))
    assert position > 0 and position % 16 == 0


@pytest.mark.fast
def test_the_android_fixture_is_what_the_writer_makes():
    assert FIXTURE.read_bytes() == fixture_model(), "regenerate: FIXTURE.write_bytes(fixture_model())"


@pytest.mark.fast
def test_labels_that_do_not_fit_the_model_are_refused_before_anything_is_written():
    with pytest.raises(DataError, match="Received 2 labels for a model with 3 outputs"):
        embed_metadata(graph_only_model(), _meta(PreprocessSpec(4, 4, 3), labels=("a", "b")))
    with pytest.raises(DataError, match="metadata for a 8x8x3 image"):
        embed_metadata(graph_only_model(), _meta(PreprocessSpec(8, 8, 3)))
    with pytest.raises(DataError, match="single-line"):
        _meta(PreprocessSpec(4, 4, 3), labels=("a", "b\nc", "d"))


@pytest.mark.fast
def test_damaged_metadata_is_a_typed_error():
    data = bytearray(embed_metadata(graph_only_model(), _meta(PreprocessSpec(4, 4, 3))))
    _, model = read_flatbuffer(bytes(data))
    raw = bytes(model.buffers[model.metadata[0].buffer].data)
    start = bytes(data).find(raw)
    data[start + 4:start + 8] = b"XXXX"    # the file identifier
    with pytest.raises(TFLiteFileError, match="M001"):
        read_metadata(bytes(data))


@pytest.mark.fast
def test_tasks_readiness_names_what_mediapipe_refuses():
    meta = _meta(PreprocessSpec(4, 4, 3))
    ready = inspect_tflite(embed_metadata(graph_only_model(), meta))
    assert tasks_problems(ready, read_metadata(embed_metadata(graph_only_model(), meta))) == []
    int8 = inspect_tflite(graph_only_model(dtype="int8"))
    assert any("input is int8" in p for p in tasks_problems(int8, meta))
    assert any("no TFLite metadata" in p for p in tasks_problems(ready, None))
    gray = inspect_tflite(graph_only_model(shape=(1, 4, 4, 1)))
    assert any("RGB" in p for p in tasks_problems(gray, meta))


@pytest.mark.fast
def test_a_model_takes_its_metadata_normalization_only_when_it_differs_from_the_run():
    run = PreprocessSpec(4, 4, 3, "minus_one_to_one")
    assert input_spec(run, None) is run
    assert input_spec(run, _meta(run)) is run
    assert input_spec(run, _meta(run.folded())).normalization == "raw"
    assert spec_from_normalization(4, 4, 3, (127.5,), (127.5,), source="x").normalization == "minus_one_to_one"


# --------------------------------------------------------------------------------------------- the tiny run

def _tflites(run_dir: Path) -> dict[str, Path]:
    return {p.stem.removeprefix("mobilenet_v2_"): p for p in sorted(run_dir.glob("*.tflite"))}


def test_every_model_of_a_run_carries_metadata_proven_on_every_validation_image(tiny_run):
    report = json.loads((tiny_run.run_dir / "report.json").read_text())
    labels = (tiny_run.run_dir / "labels.txt").read_text().split()
    records = {r["variant"]: r for r in report["metadata"]}
    assert set(records) == {a["variant"] for a in report["artifacts"]} >= {"float32", "int8", "pixels"}
    for artifact in report["artifacts"]:
        path = tiny_run.run_dir / artifact["file"]
        meta = read_metadata(path)
        assert meta.labels == tuple(labels) and artifact["size_bytes"] == path.stat().st_size
        assert records[artifact["variant"]]["identical_images"] == report["parity"]["num_images"]
    assert records["pixels"]["tasks_ready"] and records["float32"]["tasks_ready"]
    assert not records["int8"]["tasks_ready"]
    assert "## TFLite metadata" in (tiny_run.run_dir / "report.md").read_text()


def test_the_pixels_variant_takes_pixel_bytes_as_they_are(tiny_run):
    info = inspect_tflite(_tflites(tiny_run.run_dir)["pixels"])
    assert (info.inputs[0].dtype, info.inputs[0].scale, info.inputs[0].zero_point) == ("uint8", 1.0, 0)
    assert info.outputs[0].dtype == "uint8" and info.is_full_integer
    assert read_metadata(_tflites(tiny_run.run_dir)["pixels"]).spec().normalization == "raw"
    row = next(r for r in json.loads((tiny_run.run_dir / "report.json").read_text())["parity"]["rows"]
               if r["variant"] == "pixels")
    assert row["source_agreement"] >= 0.9   # the same model as int8, quantized from pixels instead


def test_a_difference_in_outputs_fails_the_proof(tiny_run, tiny_data):
    models = _tflites(tiny_run.run_dir)
    spec = PreprocessSpec.read_json(tiny_run.run_dir / "preprocessing.json")
    folder = ImageFolder.scan(tiny_data / "validation")
    same = models["int8"].read_bytes()
    assert identical_outputs({"int8": (same, same, spec)}, folder) == len(folder)
    with pytest.raises(ConversionError, match="other outputs"):
        identical_outputs({"int8": (same, models["float32"].read_bytes(), spec)}, folder)


def test_models_with_metadata_pass_verify_and_load_in_litert_and_tflite_2_14(tiny_run):
    from tflite_pipeline.export.compatibility import find_legacy_python

    assert tp.verify(tiny_run.run_dir, log=lambda _: None).passed
    done = run_cli(["check-runtime", *map(str, _tflites(tiny_run.run_dir).values())])
    if find_legacy_python() is None and not os.environ.get("CI"):
        pytest.skip("the TFLite 2.14 venv is missing; `make setup` makes it")
    rows = [line for line in done.stdout.splitlines() if line.startswith("| mobilenet_v2_")]
    assert len(rows) == 3 and all("| ok |" in r for r in rows), done.stdout
    assert "TFLite 2.14.0" in done.stdout.splitlines()[0]


def test_inspect_shows_the_metadata_and_tasks_readiness(tiny_run):
    done = run_cli(["inspect", str(_tflites(tiny_run.run_dir)["pixels"])])
    assert "10 labels (tshirt_top" in done.stdout and "x = pixel" in done.stdout
    assert "MediaPipe Tasks: ready" in done.stdout
    as_json = json.loads(run_cli(["inspect", "--json", str(_tflites(tiny_run.run_dir)["int8"])]).stdout)
    assert len(as_json["metadata"]["labels"]) == 10 and as_json["tasks_problems"]


def _mediapipe() -> Path:
    from tflite_pipeline.export.tasks import DEFAULT_MEDIAPIPE_PYTHON

    if not DEFAULT_MEDIAPIPE_PYTHON.is_file():
        message = "the MediaPipe venv (.venv-mediapipe) is missing; `make setup` makes it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return DEFAULT_MEDIAPIPE_PYTHON


def test_mediapipe_reads_our_metadata_and_runs_what_the_check_calls_ready(tiny_run):
    from tflite_pipeline.export.tasks import check_tasks

    _mediapipe()
    checks = {Path(c.model).stem.removeprefix("mobilenet_v2_"): c for c in check_tasks(tiny_run.run_dir, log=str)}
    assert all(check.ok for check in checks.values()), checks
    assert checks["int8"].error and "INT8" in checks["int8"].error   # MediaPipe's own refusal
    for name in ("float32", "pixels"):
        assert checks[name].error is None and checks[name].names_match and checks[name].agreement >= 0.995
        assert checks[name].metadata_labels == 10
    assert checks["float32"].metadata_mean_std == ((127.5,), (127.5,))
    assert checks["pixels"].metadata_mean_std == ((0.0,), (1.0,))


def test_a_failing_metadata_step_keeps_the_verified_models(tiny_recipe, tmp_path, monkeypatch):
    from tflite_pipeline.export import metadata

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(metadata, "embed_metadata", broken)
    recipe = tiny_recipe.with_overrides({"train.epochs": 0, "convert.variants": ["int8"], "bench.enabled": False})
    result = tp.run(recipe, output_dir=tmp_path, run_name="broken", log=lambda _: None)
    assert result.passed and [f.step for f in result.report.failed_steps] == ["metadata"]
    assert read_metadata(result.tflite_path("int8")) is None   # the verified model, as converted
    assert zipfile.is_zipfile(BytesIO(result.tflite_path("int8").read_bytes())) is False
