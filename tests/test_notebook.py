"""examples/bring_your_own_model.ipynb: a valid, cleared notebook whose code cells run top to bottom.

The notebook is executed here without Jupyter: its code cells run in order in one namespace, with the parameters
of its first code cell replaced by a tiny dataset and paths in `tmp_path` (as papermill injects parameters). A
failing cell fails the test naming the cell's index in the notebook.
"""

from __future__ import annotations

import ast
import json
from typing import Any

import pytest
from conftest import REPO, copy_tiny_dataset, save_small_cnn

import tflite_pipeline as tp

NOTEBOOK = REPO / "examples" / "bring_your_own_model.ipynb"
PARAMETERS = ("MODEL_PATH", "DATA_DIR", "OUTPUT_DIR", "EPOCHS")   # the first code cell must set at least these
TINY = {"train": 20, "validation": 5, "calibration": 3}            # 200 / 50 / 30 images of 10 classes


def read_notebook() -> dict[str, Any]:
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    try:
        import nbformat
    except ImportError:
        pass
    else:
        nbformat.validate(nbformat.from_dict(notebook))
    return notebook


def source(cell: dict[str, Any]) -> str:
    text = cell["source"]
    return text if isinstance(text, str) else "".join(text)


def code_cells(notebook: dict[str, Any]) -> list[tuple[int, str]]:
    """(index of the cell in the notebook, its source) of every code cell, in order."""
    return [(index, source(cell)) for index, cell in enumerate(notebook["cells"]) if cell["cell_type"] == "code"]


def assigned_names(code: str) -> list[str]:
    return [node.targets[0].id for node in ast.parse(code).body if isinstance(node, ast.Assign)]


def run_cell(index: int, code: str, namespace: dict[str, Any]) -> None:
    try:
        exec(compile(code, f"<{NOTEBOOK.name} cell {index}>", "exec"), namespace)
    except Exception as error:
        raise AssertionError(f"{NOTEBOOK.name}: cell {index} raised {type(error).__name__}: {error}") from error


@pytest.mark.fast
def test_notebook_is_valid_cleared_and_starts_with_plain_parameters():
    notebook = read_notebook()
    assert notebook["nbformat"] == 4 and notebook["nbformat_minor"] >= 5  # 4.5: every cell has an id
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    ids = [cell["id"] for cell in notebook["cells"]]
    assert len(set(ids)) == len(ids)
    for cell in notebook["cells"]:  # the fields nbformat's schema requires (checked here when it is not installed)
        assert {"id", "cell_type", "metadata", "source"} <= set(cell) and cell["cell_type"] in ("markdown", "code")
    assert notebook["cells"][0]["cell_type"] == "markdown"
    cells = code_cells(notebook)
    assert 5 <= len(cells) <= 10, len(cells)
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"outputs left in: {source(cell)[:80]}"
    for index, code in cells:
        compile(code, f"<{NOTEBOOK.name} cell {index}>", "exec")  # a syntax error names its cell
        assert "get_file" not in code and "imagenet" not in code, f"cell {index} downloads"  # no downloads

    index, first = cells[0]
    for statement in ast.parse(first).body:  # NAME = literal, one per line: a user edits them, papermill can tag them
        assert isinstance(statement, ast.Assign) and len(statement.targets) == 1, (
            f"cell {index}: not a plain assignment: {ast.unparse(statement)}")
        assert isinstance(statement.targets[0], ast.Name), f"cell {index}: {ast.unparse(statement)}"
        ast.literal_eval(statement.value)  # a constant, not an expression that computes something
    names = assigned_names(first)
    assert set(PARAMETERS) <= set(names), f"cell {index} sets {names}"
    assert len(names) == len(set(names))


def execute_notebook(parameters: dict[str, Any]) -> dict[str, Any]:
    """Run the code cells in order in one namespace, `parameters` replacing the first cell's; the namespace."""
    cells = code_cells(read_notebook())
    namespace: dict[str, Any] = {"__name__": "__main__"}
    first_index, first = cells[0]
    run_cell(first_index, first, namespace)
    missing = set(parameters) - set(assigned_names(first))
    assert not missing, f"cell {first_index} no longer sets {sorted(missing)}"
    namespace.update(parameters)  # as papermill's injected-parameters cell would
    for index, code in cells[1:]:
        run_cell(index, code, namespace)
    return namespace


@pytest.mark.parametrize("model", ["trained_here", "users_file"])
def test_notebook_converts_and_verifies_on_tiny_data(model, tmp_path, monkeypatch):
    """`trained_here`: no file at MODEL_PATH, the notebook trains its Keras 3 CNN and saves it there.
    `users_file`: MODEL_PATH is a tf_keras CNN of another input (32x32 RGB), used as it is."""
    data = copy_tiny_dataset(tmp_path / "data", TINY)
    model_path = tmp_path / "user" / "cnn.keras"
    if model == "users_file":
        model_path.parent.mkdir()
        save_small_cnn(model_path)
    saved = model_path.stat().st_mtime_ns if model_path.exists() else None
    monkeypatch.chdir(tmp_path)  # a relative path the notebook writes lands here, not in the repository
    namespace = execute_notebook({
        "MODEL_PATH": str(model_path), "DATA_DIR": str(data), "OUTPUT_DIR": str(tmp_path / "models"),
        "RUN_NAME": "notebook", "EPOCHS": 2, "BATCH_SIZE": 32, "CALIBRATION_SAMPLES": 30})

    assert model_path.is_file()
    if saved is not None:
        assert model_path.stat().st_mtime_ns == saved  # the user's file was used, not replaced
    result = namespace["result"]
    assert isinstance(result, tp.RunResult)
    assert result.run_dir == tmp_path / "models" / "notebook" and result.run_dir.is_dir()
    assert result.report.model["keras"] == ("Keras 3" if model == "trained_here" else "tf_keras")
    int8 = result.tflite_path("int8")
    assert int8.is_file() and int8.parent == result.run_dir
    info = tp.inspect_tflite(int8)
    assert info.inputs[0].dtype == "int8" and info.outputs[0].dtype == "int8" and info.is_full_integer
    parity = result.report.parity
    assert {row.variant for row in parity.rows} == {"float32", "int8"}
    assert parity.num_images == 50
    assert isinstance(result.passed, bool)
    ci = namespace["ci"]  # tp.verify(result.run_dir), as the notebook's CI cell ran it
    assert isinstance(ci, tp.ParityReport)
    assert sorted(row.variant for row in ci.rows) == ["cnn_float32", "cnn_int8"] and ci.num_images == 50
