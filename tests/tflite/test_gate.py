"""The parity gate at its default thresholds, on a model good enough for them to mean something.

`tests/reference/reference_cnn.keras` (trained by `tests/reference/make_reference.py`, 87% top-1 on the
bundled validation split) is converted once with the CLI's defaults. It must pass the default gate and
reproduce `tests/reference/metrics.json`; models that are wrong in the ways users get them wrong must fail
the gate with exit 9 and a report that says why.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import BUNDLED as DATA
from conftest import REFERENCE_METRICS as METRICS
from conftest import REFERENCE_MODEL as MODEL

from tflite_pipeline.cli import main
from tflite_pipeline.config.sections import VerifyConfig
from tflite_pipeline.tflite.flatbuffer import pack_model, read_flatbuffer


def test_the_reference_model_passes_the_default_gate_and_reproduces_its_reference_metrics(reference_run):
    report = json.loads((reference_run / "report.json").read_text())
    reference = json.loads(METRICS.read_text())["variants"]
    default = VerifyConfig()
    assert report["recipe"]["verify"]["max_top1_drop"] == default.max_top1_drop == 0.5
    assert report["recipe"]["verify"]["min_agreement"] == default.min_agreement == 0.98
    assert report["passed"] is True and report["data"]["validation"] == 2000
    keras = reference["keras"]
    assert report["parity"]["keras_top1"] == pytest.approx(keras["top1"], abs=keras["tolerance"])
    assert report["parity"]["keras_top1"] >= 0.80  # far above the 10% of chance: the gate's thresholds bind
    assert 100_000 < MODEL.stat().st_size < 2_000_000  # small enough to commit
    assert {"float32", "int8"} <= {row["variant"] for row in report["parity"]["rows"]}
    for row in report["parity"]["rows"]:
        expected = reference.get(row["variant"])   # the pixels variant has no stored figure: the gate holds it
        if expected is not None:
            assert row["top1"] == pytest.approx(expected["top1"], abs=expected["tolerance"]), row["variant"]
        assert row["agreement"] >= 0.98 and row["failures"] == []


def test_verify_against_the_reference_metrics_file_passes(reference_run, capsys):
    assert main(["verify", str(reference_run), "--reference", str(METRICS)]) == 0, capsys.readouterr().err[-3000:]


def _edited(run: Path, tmp_path: Path, edit) -> Path:
    """A copy of the run's int8 model with `edit(model)` applied to its object tree."""
    _, model = read_flatbuffer(run / "reference_cnn_int8.tflite")
    edit(model)
    path = tmp_path / "edited_int8.tflite"
    path.write_bytes(pack_model(model))
    return path


def _shift_input_zero_point(model) -> None:
    graph = model.subgraphs[0]
    graph.tensors[graph.inputs[0]].quantization.zeroPoint[0] += 64


def _perturb_weights(model) -> None:
    rng = np.random.default_rng(0)
    graph = model.subgraphs[0]
    codes = [code.builtinCode for code in model.operatorCodes]
    for op in graph.operators:
        if codes[op.opcodeIndex] in (3, 4):  # CONV_2D, DEPTHWISE_CONV_2D: int8 weights are input 1
            buffer = model.buffers[graph.tensors[op.inputs[1]].buffer]
            weights = np.frombuffer(bytes(buffer.data), np.int8).astype(np.int32)
            buffer.data = np.clip(weights + rng.integers(-40, 41, weights.shape), -127, 127).astype(np.int8)


def _file_args(run: Path, tmp_path: Path, edit) -> list[str]:
    return ["verify", str(_edited(run, tmp_path, edit)), "--keras", str(run / "reference_cnn_float.keras"),
            "--data", str(DATA), "--preprocessing", str(run / "preprocessing.json")]


def _shuffled_labels(run: Path, tmp_path: Path) -> list[str]:
    names = (run / "labels.txt").read_text().split()
    rotated = names[1:] + names[:1]  # every class one place on: what a hand-edited labels.txt looks like
    (tmp_path / "labels.txt").write_text("\n".join(rotated) + "\n")
    return ["verify", str(run), "--labels", str(tmp_path / "labels.txt")]


WRONG = {
    "input-zero-point-shifted": (lambda run, tmp: _file_args(run, tmp, _shift_input_zero_point),
                                 r"agreement \d+\.\d+% < 98\.00%.*integer input represents \[.*\] but the "
                                 r"preprocessed images span \[-1, 1\]"),
    "weights-perturbed": (lambda run, tmp: _file_args(run, tmp, _perturb_weights),
                          r"edited_int8: top-1 drop \d+\.\d+ pts > 0\.5; agreement \d+\.\d+% < 98\.00%"),
    "class-order-not-the-labels": (_shuffled_labels,
                                   r"float Keras: its top-1 \d+\.\d+% is not the 87\.\d+% ± 0\.5 pts of the run.*"
                                   r"the class order looks wrong: images of 10 classes are mostly predicted as "
                                   r"another class"),
    "float-model-with-the-wrong-normalization": (
        lambda run, tmp: ["verify", str(run), "--normalization", "zero_to_one"],
        r"float Keras: its top-1 \d+\.\d+% is not the 87\.\d+% ± 0\.5 pts of the run \(report.json\): the images "
        r"reach it with another preprocessing \(here `x = pixel / 255`\)"),
}


@pytest.mark.parametrize("name", list(WRONG))
def test_a_wrong_model_fails_the_default_gate_with_exit_9_saying_why(name, reference_run, tmp_path, capsys):
    make, why = WRONG[name]
    code = main(make(reference_run, tmp_path))
    err = capsys.readouterr().err
    assert code == 9, err[-3000:]
    assert "error (ParityError): Parity gate failed for" in err
    assert re.search(why, err, re.DOTALL), err[-3000:]
    if "class-order" not in name:  # DATA/labels.txt gives the order: the float model itself is right here
        assert ("class order looks wrong" in err) is False, err[-3000:]


def test_the_reference_file_catches_a_model_that_agrees_with_a_wrong_float_model(reference_run, tmp_path, capsys):
    """Both the float model and the .tflite fed the wrong normalization agree with each other: only the
    reference's expected top-1 shows they are wrong."""
    args = ["verify", str(reference_run / "reference_cnn_int8.tflite"), "--keras",
            str(reference_run / "reference_cnn_float.keras"), "--data", str(DATA), "--normalization", "zero_to_one"]
    assert main([*args, "--max-top1-drop", "100", "--min-agreement", "0"]) == 0  # the pair alone looks fine
    capsys.readouterr()
    assert main([*args, "--reference", str(METRICS)]) == 9
    assert re.search(r"float Keras: its top-1 .* is not the 87\.\d+% ± 0\.2 pts of reference", capsys.readouterr().err)


@pytest.mark.fast
def test_a_collapsed_model_is_not_mistaken_for_a_wrong_class_order():
    from tflite_pipeline.tflite.parity import class_order_problem

    collapsed = np.zeros((10, 10), int)
    collapsed[:, 3] = 100                        # every image predicted as class 3
    rotated = np.roll(np.eye(10, dtype=int) * 100, 1, axis=1)
    assert class_order_problem(collapsed, [str(i) for i in range(10)]) == ""
    assert "class order looks wrong" in class_order_problem(rotated, [str(i) for i in range(10)])
    assert class_order_problem(np.eye(10, dtype=int) * 100, []) == ""

