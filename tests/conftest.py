"""Shared fixtures: a tiny real dataset (cut from representative_data/) and one tiny seeded run.

The tiny model is MobileNetV2 alpha 0.35 at 32x32 with `weights=None`. Conversion is the slow
part (~10-20 s each), so the run is made once per session and tests read its folder.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

import tflite_pipeline as tp
from tflite_pipeline.model.load import load_model

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("tflite-pipeline"))
BUNDLED = REPO / "representative_data"
PER_CLASS = {"train": 30, "validation": 5, "calibration": 3}
REFERENCE_MODEL = REPO / "tests" / "reference" / "reference_cnn.keras"   # make_reference.py trains it
REFERENCE_METRICS = REPO / "tests" / "reference" / "metrics.json"


def copy_tiny_dataset(target: Path, per_class: dict[str, int] = PER_CLASS) -> Path:
    """The first N images per class of each bundled split, plus labels.txt."""
    labels = (BUNDLED / "labels.txt").read_text().split()
    for split, count in per_class.items():
        for name in labels:
            (target / split / name).mkdir(parents=True)
            for image in sorted((BUNDLED / split / name).glob("*.png"))[:count]:
                shutil.copy(image, target / split / name / image.name)
    shutil.copy(BUNDLED / "labels.txt", target / "labels.txt")
    return target


def save_small_cnn(path: Path, classes: int = 10, size: int = 32) -> Path:
    """A seeded two-convolution CNN of a user (BN, ReLU, pooling, softmax), saved to `path`: converts in seconds."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    x = inputs
    for filters in (16, 32):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    outputs = keras.layers.Dense(classes, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inputs, outputs, name="cnn").save(path)
    return path


def data_and_cnn(root: Path, per_class: dict[str, int]) -> Path:
    """`root/data` (the first N bundled images per class and split) and `root/cnn.keras` (`save_small_cnn`)."""
    copy_tiny_dataset(root / "data", per_class)
    save_small_cnn(root / "cnn.keras")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return copy_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


def tiny_overrides(data: Path) -> dict:
    return {"model.input_size": 32, "model.alpha": 0.35, "data.root": str(data), "train.epochs": 2,
            "train.batch_size": 16, "convert.calibration_samples": 30,
            # a 2-epoch model on 300 images is weak (often at chance): the gate is open here; tflite/test_gate.py checks
            # the gate at its default thresholds on the reference CNN
            "verify.max_top1_drop": 100.0, "verify.min_agreement": 0.0}


@pytest.fixture(scope="session")
def tiny_recipe(tiny_data) -> tp.Recipe:
    return tp.load_recipe("default").with_overrides(tiny_overrides(tiny_data))


def built_once(tmp_path_factory, name: str, build):
    """A session fixture's value built once for the whole `make test`, not once per xdist worker: the first worker
    to ask builds it into a folder both workers share (`build(folder)`), under a lock, and pickles it; the other
    loads the pickle. The value must not hold Keras models (load those from the folder). Without xdist: built."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent  # pytest-N/, the parent of every worker's popen-gwK/
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = shared / f"{name}.pickle"
        if done.is_file():
            return pickle.loads(done.read_bytes())
        value = build(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=shared)))
        done.write_bytes(pickle.dumps(value))
        return value


def _tiny_run(recipe: tp.Recipe, folder: Path) -> tp.RunResult:
    return tp.run(recipe, output_dir=folder, run_name="tiny", log=lambda _: None)


@pytest.fixture(scope="session")
def tiny_run(tiny_recipe, tmp_path_factory) -> tp.RunResult:
    """One full run (train 2 epochs -> float32 + int8 -> LiteRT parity) shared by the session (and both workers:
    read it, never change it)."""
    return built_once(tmp_path_factory, "tiny-run", functools.partial(_tiny_run, tiny_recipe))


@pytest.fixture(scope="session")
def tiny_model(tiny_run):
    return load_model(tiny_run.run_dir / "mobilenet_v2_float.keras")


@pytest.fixture(scope="session")
def small_model():
    """The reference CNN (stem, an inverted-residual block with its skip, depthwise and pointwise convolutions, BN,
    ReLU6, softmax): MobileNetV2's layer types in 20 layers, so tfmot's wrappers build in seconds."""
    return load_model(REFERENCE_MODEL)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Path:
    """The reference CNN converted by the CLI with its defaults (float32 + int8, default gate) on the bundled data."""
    return built_once(tmp_path_factory, "reference-run", _reference_run)


def _reference_run(out: Path) -> Path:
    from tflite_pipeline.cli import main

    assert main(["convert", str(REFERENCE_MODEL), "--data", str(BUNDLED), "--output-dir", str(out),
                 "--run-name", "ref"]) == 0
    return out / "ref"


@pytest.fixture(scope="session")
def pqat_run(tiny_recipe, tmp_path_factory) -> SimpleNamespace:
    """Prune 80% with distillation -> PQAT -> int8 from the reference CNN (its stem dense, as the recipe keeps
    MobileNetV2's). `.run_dir`, `.report` (report.json)."""
    recipe = tp.load_recipe("prune-pqat-kd").with_overrides({
        "data.root": tiny_recipe.data.root, "model.source": str(REFERENCE_MODEL), "prune.exclude": ["^stem$"],
        "model.name": "tiny", "train.epochs": 0, "train.batch_size": 16, "prune.epochs": 2, "qat.epochs": 1,
        "convert.variants": [], "convert.calibration_samples": 30, "verify.max_top1_drop": 100.0,
        "verify.min_agreement": 0.0})
    result = tp.run(recipe, output_dir=tmp_path_factory.mktemp("pqat"), run_name="pqat", log=lambda _: None)
    return SimpleNamespace(run_dir=result.run_dir, report=json.loads((result.run_dir / "report.json").read_text()))


def run_cli(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    """`tflite-pipeline ARGS` in a child process (device layout, op determinism and SIGKILL are process-wide);
    fails the test with the end of its log unless it exits 0."""
    done = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


# The slowest modules first (measured with --durations=0): `make test` runs two xdist workers with a module's tests
# kept together (--dist loadscope --no-loadscope-reorder, so this order is the one they are handed out in). The
# first worker builds `tiny_run` inside test_channels while the second starts with test_bad_input, which does not
# need it; started first, the long modules do not leave one worker finishing alone at the end.
SLOWEST_FIRST = ("test_channels", "test_bad_input", "test_user_models", "test_diagnose", "test_stages", "test_cache",
                 "test_pipeline", "test_distribute", "test_interrupt", "test_android", "test_gate", "test_progress",
                 "test_fidelity", "test_env", "test_notebook", "test_load", "test_parity", "test_convert")


def pytest_collection_modifyitems(items) -> None:
    for item in items:  # the tiers: fast (no model), integration (the rest of `make test`), slow (`make test-slow`)
        if not any(item.get_closest_marker(tier) for tier in ("fast", "slow")):
            item.add_marker(pytest.mark.integration)
    rank = {name: position for position, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: each module keeps its order


def app_copy(target: Path) -> Path:
    """The Android app's sources without any exported assets, as a fresh clone has them."""
    from tflite_pipeline.export.android import DEFAULT_APP_DIR

    return Path(shutil.copytree(DEFAULT_APP_DIR, target, ignore=shutil.ignore_patterns("assets", "build", ".gradle")))
