"""Runs that survive SIGKILL: finished training stages are cached under a key over their inputs, a re-run
resumes from the last finished stage, and (with op determinism on) ends byte-identical to a run that was
never interrupted.

The CLI runs in child processes on a small CNN of a user (a `.keras` file) to keep the three runs short:
baseline training -> pruning -> prune-preserving QAT -> strict int8.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import CLI, copy_tiny_dataset, run_cli, save_small_cnn

from tflite_pipeline.runs.cache import StageCache
from tflite_pipeline.runs.pipeline import stage_keys

RECIPE = """
[model]
source = "{model}"
name = "cnn"
[data]
root = "{data}"
[train]
epochs = 1
batch_size = 16
deterministic = true
[prune]
enabled = true
epochs = 1
initial_sparsity = 0.25
target_sparsity = 0.5
exclude = []
[qat]
enabled = true
epochs = 3
[convert]
variants = ["float32"]
calibration_samples = 20
[verify]
max_top1_drop = 100.0
min_agreement = 0.0
[bench]
enabled = false
[diagnose]
mode = "off"
"""
# what changes between the uninterrupted and the resumed run's reports (everything else must be equal)
RUN_SPECIFIC = {"run_name", "seconds", "reused_stages"}


def command(workdir: Path, output: str, *extra: str) -> list[str]:
    return ["run", "--recipe", str(workdir / "recipe.toml"), "--output-dir", str(workdir / output),
            "--run-name", "run", *extra]


def kill_when(args: list[str], markers: list[str], delay: float) -> list[str]:
    """Start the CLI, SIGKILL it `delay` seconds after stderr lines starting with each of `markers` in turn;
    returns its stderr lines."""
    process = subprocess.Popen([CLI, *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines, waiting = [], list(markers)
    for line in process.stderr:
        lines.append(line)
        if line.startswith(waiting[0]):
            waiting.pop(0)
            if not waiting:
                time.sleep(delay)
                break
    assert process.poll() is None, "the run ended before it could be killed:\n" + "".join(lines[-20:])
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    return lines


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run without cache; a run killed mid-QAT, its state, and its re-run; a run with the
    pruning target changed."""
    workdir = tmp_path_factory.mktemp("resume")
    data = copy_tiny_dataset(workdir / "data", {"train": 8, "validation": 3, "calibration": 2})
    model = save_small_cnn(workdir / "cnn.keras")
    (workdir / "recipe.toml").write_text(RECIPE.format(model=model, data=data))
    uninterrupted = run_cli(command(workdir, "a", "--no-cache"), timeout=600)
    # in the QAT stage's training: after its "80 images, 3 epochs" line, while Keras traces and runs the steps
    killed_log = kill_when(command(workdir, "b"), ["[pqat] quantization-aware", "  80 images"], delay=0.5)
    after_kill = sorted(str(p.relative_to(workdir / "b")) for p in (workdir / "b").rglob("*"))
    resumed = run_cli(command(workdir, "b"), timeout=600)
    changed = run_cli(command(workdir, "b", "--run-name", "changed", "--set", "prune.target_sparsity=0.6",
                              "--set", "verify.min_agreement=0.01"), timeout=600)
    return {"workdir": workdir, "uninterrupted": uninterrupted, "killed_log": killed_log, "after_kill": after_kill,
            "resumed": resumed, "changed": changed}


def report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def test_a_killed_run_publishes_nothing_and_caches_only_its_finished_stages(runs):
    assert any(line.startswith("[prune]") for line in runs["killed_log"])
    names = runs["after_kill"]
    assert not any(name.endswith((".tflite", "report.json", "report.md")) for name in names)  # nothing half-done
    assert not any(name == "run" or name.startswith((".run", "run/")) for name in names)    # no run folder
    entries = sorted(name.split("-")[0] for name in names if name.startswith(".cache/") and name.count("/") == 1)
    assert entries == [".cache/baseline", ".cache/pruned"]  # the QAT stage was killed: not in the cache
    finished = [name for name in names if name.endswith("stage.json")]
    assert len(finished) == 2


def test_the_rerun_resumes_from_the_last_finished_stage(runs):
    log = runs["resumed"].stderr
    assert "[train] finished by an earlier run with the same inputs" in log
    assert "[pruned] finished by an earlier run with the same inputs" in log
    assert "[pqat] quantization-aware fine-tune" in log and "[prune] " not in log
    assert report(runs["workdir"] / "b" / "run")["reused_stages"] == ["baseline", "pruned"]


def test_resumed_and_uninterrupted_runs_are_byte_identical_under_op_determinism(runs):
    """Training in three processes (baseline and pruning in the killed one, QAT in the re-run) gives exactly
    what one uninterrupted process gives: TensorFlow op determinism, seeded, makes training reproducible."""
    a, b = runs["workdir"] / "a" / "run", runs["workdir"] / "b" / "run"
    tflites = sorted(p.name for p in a.glob("*.tflite"))
    assert tflites == ["cnn_float32.tflite", "cnn_pqat_int8.tflite"]
    for name in tflites:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    same = {k: v for k, v in report(a).items() if k not in RUN_SPECIFIC}
    assert same == {k: v for k, v in report(b).items() if k not in RUN_SPECIFIC}
    assert "[determinism] TensorFlow op determinism on" in runs["uninterrupted"].stderr


def test_a_changed_setting_retrains_exactly_the_stages_after_it(runs):
    log = runs["changed"].stderr
    assert "[train] finished by an earlier run" in log        # the baseline does not depend on [prune]
    assert "[prune] " in log and "[pqat] quantization-aware fine-tune" in log   # pruning and what follows it
    assert report(runs["workdir"] / "b" / "changed")["reused_stages"] == ["baseline"]


def test_stage_keys_change_from_the_changed_stage_onwards(tiny_recipe):
    recipe = tiny_recipe.with_overrides({"prune.enabled": True, "qat.enabled": True})
    keys = stage_keys(recipe, "inputs")
    assert list(keys) == ["baseline", "pruned", "pqat"]

    def changed(overrides: dict, inputs: str = "inputs") -> list[str]:
        other = stage_keys(recipe.with_overrides(overrides), inputs)
        return [label for label in keys if other[label] != keys[label]]

    assert changed({"qat.epochs": 3}) == ["pqat"]
    assert changed({"prune.target_sparsity": 0.6}) == ["pruned", "pqat"]
    assert changed({"distill.enabled": True}) == ["pruned", "pqat"]
    assert changed({"train.learning_rate": 0.01}) == ["baseline", "pruned", "pqat"]
    assert changed({}, inputs="other data or weights") == ["baseline", "pruned", "pqat"]
    assert changed({"verify.min_agreement": 0.5, "bench.runs": 3, "diagnose.mode": "off"}) == []


def test_a_cache_entry_whose_model_file_changed_is_not_trusted(tmp_path, tiny_model):
    logs = []
    cache = StageCache(tmp_path, log=logs.append)
    cache.put("pruned", "k" * 64, tiny_model, {"x": 1})
    assert cache.get("pruned", "k" * 64).info == {"x": 1}
    with open(cache.entry("pruned", "k" * 64) / "model.keras", "ab") as file:
        file.write(b"corrupt")
    assert cache.get("pruned", "k" * 64) is None and "does not match stage.json" in logs[-1]
