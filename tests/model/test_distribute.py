"""tf.distribute for the training stages, without a GPU: MirroredStrategy over two logical CPU devices (pruning,
QAT and distillation on the tiny MobileNetV2), and MultiWorkerMirroredStrategy with two worker processes on
localhost ports. Each runs the CLI in child processes (device layout and collectives are process-wide).
Parallel verification must equal serial verification."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import CLI, copy_tiny_dataset, run_cli, save_small_cnn

from tflite_pipeline.config.sections import VerifyConfig
from tflite_pipeline.data.folders import ImageFolder
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.tflite.interpreter import LiteRTClassifier
from tflite_pipeline.tflite.parity import measure_parity

SMALL = {"train": 8, "validation": 3, "calibration": 2}
QUIET = ["--set", "bench.enabled=false", "--set", "diagnose.mode='off'", "--set", "verify.max_top1_drop=100.0",
         "--set", "verify.min_agreement=0.0", "--set", "convert.calibration_samples=20", "--no-cache"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    return copy_tiny_dataset(tmp_path_factory.mktemp("dist") / "data", SMALL)


def mirrored_run(data: Path, output: Path, *extra: str) -> tuple[dict, str]:
    """prune-pqat-kd (pruning, then PQAT, the float baseline distilling into both) under MirroredStrategy over two
    logical CPU devices, by the CLI in a child process; returns report.json and the log."""
    done = run_cli(["run", "--recipe", "prune-pqat-kd", "--data", str(data), "--output-dir", str(output), "--run-name",
                "mirrored", "--strategy", "mirrored", "--set", "distribute.cpu_devices=2", "--set", "train.epochs=0",
                "--set", "train.batch_size=16", "--set", "prune.epochs=1", "--set", "qat.epochs=1",
                "--set", "convert.variants=[]", *QUIET, *extra])
    assert "[distribute] mirrored over 2 replicas: /device:CPU:0, /device:CPU:1" in done.stderr
    assert done.stderr.count("distilling (T=4, alpha=0.3)") == 2  # pruning and PQAT
    report = json.loads((output / "mirrored" / "report.json").read_text())
    assert report["recipe"]["distribute"] == {"strategy": "mirrored", "cpu_devices": 2, "tpu": ""}
    assert [s["name"] for s in report["stages"]] == ["baseline", "pruned", "pqat"]
    (artifact,) = report["artifacts"]
    assert artifact["variant"] == "pqat_int8" and artifact["info"]["is_full_integer"]
    assert all(abs(s - 0.8) <= 0.02 for s in artifact["layer_sparsity"].values()), artifact["layer_sparsity"]
    return report, done.stderr


def test_mirrored_over_two_cpu_devices_prunes_quantizes_and_distills(small_data, tmp_path):
    """On a small CNN: MobileNetV2 under MirroredStrategy takes ~3.5 min here (replicated graphs to trace), see
    the slow test below."""
    model = save_small_cnn(tmp_path / "cnn.keras")
    report, _ = mirrored_run(small_data, tmp_path, "--set", f"model.source='{model}'", "--set", "prune.exclude=[]")
    assert len(report["artifacts"][0]["layer_sparsity"]) == 3  # both convolutions and the classifier


@pytest.mark.slow
def test_mirrored_strategy_on_the_tiny_mobilenet_v2(tiny_run, tiny_data, tmp_path):
    model = tiny_run.run_dir / "mobilenet_v2_float.keras"
    report, _ = mirrored_run(tiny_data, tmp_path, "--set", f"model.source='{model}'", "--set", "model.name='tiny'")
    assert len(report["artifacts"][0]["layer_sparsity"]) > 20


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_on_localhost_train_together_and_only_the_chief_writes(small_data, tmp_path):
    model = save_small_cnn(tmp_path / "cnn.keras")
    workers = [f"localhost:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        args = [CLI, "run", "--data", str(small_data), "--output-dir", str(tmp_path / f"out{index}"), "--run-name",
                "multi", "--strategy", "multi-worker", "--set", f"model.source='{model}'", "--set",
                "train.epochs=1", "--set", "train.batch_size=16", "--set", "qat.enabled=true", "--set",
                "qat.epochs=1", "--set", "convert.variants=['float32']", *QUIET]
        processes.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          env={**os.environ, "TF_CONFIG": json.dumps(tf_config)}))
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=600))
    finally:
        for process in processes:
            process.kill()
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-4000:]
        assert "[distribute] multi-worker: 2 replicas over 2 workers" in err
    assert "(chief)" in outputs[0][1] and "(chief)" not in outputs[1][1]
    chief = tmp_path / "out0" / "multi"
    assert sorted(p.name for p in chief.glob("*.tflite")) == ["cnn_float32.tflite", "cnn_qat_int8.tflite"]
    assert not (tmp_path / "out1").exists()  # the other worker wrote nothing outside its temporary folder


def test_parallel_verification_equals_serial(tiny_run, tiny_model, tiny_data):
    folder = ImageFolder.scan(tiny_data / "validation")
    spec = PreprocessSpec(32, 32)
    images = np.concatenate([x for x, _ in folder.batches(spec, 64)])
    for variant in ("float32", "int8"):
        serial = LiteRTClassifier(tiny_run.tflite_path(variant), num_threads=1, batch_size=8).predict(images)
        parallel = LiteRTClassifier(tiny_run.tflite_path(variant), num_threads=2, batch_size=8).predict(images)
        np.testing.assert_array_equal(serial, parallel)
    files = {v: tiny_run.tflite_path(v) for v in ("float32", "int8")}
    reports = [measure_parity(tiny_model, files, folder, spec, VerifyConfig(num_threads=threads, batch_size=8),
                              log=lambda _: None).to_dict() for threads in (1, 2)]
    assert reports[0] == reports[1]


def test_a_tf_config_in_the_environment_does_not_silence_a_single_device_run(small_data, tmp_path, monkeypatch):
    """Only `distribute.strategy = "multi-worker"` makes a non-chief task write nothing."""
    from tflite_pipeline.cli import main

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                "task": {"type": "worker", "index": 1}}))
    model = save_small_cnn(tmp_path / "cnn.keras")
    assert main(["convert", str(model), "--data", str(small_data), "--variants", "float32", "--output-dir",
                 str(tmp_path / "out"), "--run-name", "single", "--max-top1-drop", "100", "--min-agreement", "0"]) == 0
    assert (tmp_path / "out" / "single" / "cnn_float32.tflite").is_file()
