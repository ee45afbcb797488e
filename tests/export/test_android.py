"""The Android drop-in: export, runtime compatibility, the app's Gradle files, and its Kotlin logic on the JVM.

There is no Android SDK here, so the app itself is checked by parsing its build files and by compiling and
running its pure-Kotlin pre/post-processing (with its JUnit tests) against the golden vectors the export
writes. The older runtime (TFLite 2.14) and the Kotlin tools come from `make setup`; a missing one skips
locally and fails in CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import app_copy

from tflite_pipeline.cli import main
from tflite_pipeline.errors import CompatibilityError
from tflite_pipeline.export.android import ASSETS_DIR, GOLDEN_DIR, export_android
from tflite_pipeline.export.android import DEFAULT_APP_DIR as APP
from tflite_pipeline.export.compatibility import check_compatibility, contract_problems, find_legacy_python
from tflite_pipeline.tflite.flatbuffer import TensorInfo, TFLiteInfo, pack_model, read_flatbuffer

KOTLIN = APP / "app" / "src"
CORE = KOTLIN / "main" / "java" / "dev" / "tflitepipeline" / "demo" / "core"


def _require(found, what: str):
    if not found:
        message = f"{what} is missing; `make setup` installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def legacy_python():
    return _require(find_legacy_python(), "the TFLite 2.14 runtime venv (.venv-tflite2.14)")


@pytest.fixture(scope="module")
def run_dir(tiny_run, tiny_model, tiny_data, tmp_path_factory) -> Path:
    """The tiny run's folder plus an int16x8 model of its Keras model (int16 activations and I/O, int8 weights), so
    the export, the runtime checks and the Kotlin golden test cover int16 tensors too."""
    from tflite_pipeline.data.folders import ImageFolder, read_labels
    from tflite_pipeline.data.preprocess import PreprocessSpec
    from tflite_pipeline.tflite.convert import convert_int16x8, representative_dataset

    run = Path(shutil.copytree(tiny_run.run_dir, tmp_path_factory.mktemp("run") / tiny_run.run_dir.name))
    spec = PreprocessSpec.read_json(run / "preprocessing.json")
    calibration = ImageFolder.scan(tiny_data / "calibration", read_labels(run / "labels.txt"))
    data = convert_int16x8(tiny_model, representative_dataset(calibration, spec, 30))
    (run / "mobilenet_v2_int16x8.tflite").write_bytes(data)
    return run


@pytest.fixture(scope="module")
def exported(run_dir, legacy_python, tmp_path_factory):
    app = app_copy(tmp_path_factory.mktemp("android") / "android_demo")
    return export_android(run_dir, app, legacy_python=legacy_python, log=lambda _: None)


# ------------------------------------------------------------------------------------------------ export

def test_export_writes_models_labels_config_and_golden_vectors(exported, run_dir):
    assets = exported.app_dir / ASSETS_DIR
    run_models = sorted(p.name for p in run_dir.glob("*.tflite"))
    assert sorted(p.name for p in (assets / "models").iterdir()) == run_models
    config = json.loads((assets / "model_config.json").read_text())
    assert config["format"] == "tflite_pipeline.model_config/1"
    assert config["num_classes"] == len((assets / "labels.txt").read_text().split()) == 10
    assert config["preprocessing"]["normalization"] == "minus_one_to_one"
    int8 = next(m for m in config["models"] if m["file"].endswith("_int8.tflite"))
    assert int8["input"]["dtype"] == "int8" and int8["input"]["scale"] > 0 and int8["outputs_are_probabilities"]
    int16 = next(m for m in config["models"] if m["file"].endswith("_int16x8.tflite"))
    assert int16["input"]["dtype"] == int16["output"]["dtype"] == "int16" and int16["outputs_are_probabilities"]
    assert int16["input"]["zero_point"] == int16["output"]["zero_point"] == 0  # int16 is symmetric
    assert int16["input"]["scale"] == pytest.approx(1 / 32767) and int16["output"]["scale"] > 0  # [-1, 1] input
    golden = json.loads((exported.golden / "golden.json").read_text())
    assert len(golden["cases"]) == 3 * len(config["models"])
    for case in golden["cases"]:
        entry = next(m for m in config["models"] if m["file"].endswith(case["model"]))
        bytes_per = {"float32": 4, "int16": 2}.get(entry["input"]["dtype"], 1)
        assert (exported.golden / case["input"]).stat().st_size == 32 * 32 * 3 * bytes_per
        assert (exported.golden / case["pixels"]).stat().st_size == 32 * 32 * 3
        assert len(case["top3"]) == 3 and case["top3_labels"][0] in config_labels(assets)


def config_labels(assets: Path) -> list[str]:
    return (assets / "labels.txt").read_text().split()


def test_every_exported_model_loads_and_runs_in_litert_and_tflite_2_14(exported):
    for report in exported.compatibility:
        assert report.ok, report
        runtimes = [check.runtime for check in report.checks]
        assert runtimes[0].startswith("LiteRT ") and runtimes[1] == "TFLite 2.14.0"
        assert all(check.same_top1 for check in report.checks)
        assert report.min_runtime_version  # the converter's own claim, reported beside the proof
    assert "TFLite 2.14.0" in exported.format()


def test_kotlin_logic_matches_the_python_golden_vectors_on_the_jvm(exported):
    _require(shutil.which("kotlinc"), "kotlinc (Debian package kotlin)")
    done = subprocess.run([str(APP / "jvm-test.sh"), str(exported.golden), str(exported.app_dir / ASSETS_DIR)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    tests_run = int(re.search(r"OK \((\d+) tests\)", done.stdout).group(1))
    assert tests_run >= 20
    cases, from_metadata = map(int, re.search(r"golden vectors: (\d+) cases, \d+ of the pixels variant, (\d+) read "
                                              r"from metadata", done.stdout).groups())
    config = json.loads((exported.app_dir / ASSETS_DIR / "model_config.json").read_text())
    with_metadata = {m["file"].split("/")[-1] for m in config["models"] if m["has_metadata"]}  # not the added int16x8
    golden = json.loads((exported.golden / "golden.json").read_text())["cases"]
    assert len(golden) == cases and with_metadata
    assert from_metadata == sum(case["model"] in with_metadata for case in golden)  # same bytes from the file alone


def test_reexport_removes_models_the_previous_export_wrote(exported, run_dir, legacy_python):
    int8 = next(p.name for p in run_dir.glob("*_int8.tflite"))
    export_android(run_dir, exported.app_dir, models=[int8], legacy_python=legacy_python, log=lambda _: None)
    assert [p.name for p in (exported.app_dir / ASSETS_DIR / "models").iterdir()] == [int8]
    config = json.loads((exported.app_dir / ASSETS_DIR / "model_config.json").read_text())
    assert [m["file"] for m in config["models"]] == [f"models/{int8}"]
    export_android(run_dir, exported.app_dir, legacy_python=legacy_python, log=lambda _: None)  # restore


def _int16x8_info(float_ops: tuple[str, ...] = ()) -> TFLiteInfo:
    """What `inspect_tflite` reads off an int16x8 classifier of 32x32 RGB images into 10 classes."""
    return TFLiteInfo(size_bytes=1, inputs=(TensorInfo("input", (-1, 32, 32, 3), "int16", 1 / 32767, 0),),
                      outputs=(TensorInfo("output", (-1, 10), "int16", 2**-15, 0),), ops=(), float_ops=float_ops,
                      num_parameters=0)


@pytest.mark.fast
def test_int16_io_is_in_the_contract_for_integer_only_models():
    from tflite_pipeline.data.preprocess import PreprocessSpec
    from tflite_pipeline.export.android import model_input, scores

    spec = PreprocessSpec(height=32, width=32, channels=3, normalization="minus_one_to_one")
    assert contract_problems(_int16x8_info(), spec, 10) == []
    (problem,) = contract_problems(_int16x8_info(("CONV_2D #3 (conv)",)), spec, 10)
    assert problem.startswith("has int16 I/O but 1 op(s) compute in float (CONV_2D #3 (conv))")

    info = _int16x8_info()
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[0, 0] = (0, 255, 128)
    x = model_input(pixels, spec, info.inputs[0])
    assert x.dtype == np.int16 and x.shape == (1, 32, 32, 3)
    assert x[0, 0, 0].tolist() == [-32767, 32767, 129]   # what the Kotlin PreprocessingTest expects too
    np.testing.assert_array_equal(scores(np.array([[-32768, 0, 16384]], np.int16), info.outputs[0]), [-1, 0, 0.5])


# --------------------------------------------------------------------------------- compatibility failures

def _with_op_version(source: Path, target: Path, op: str, version: int) -> Path:
    """A copy of `source` whose `op` operator code claims `version` (what a newer converter would emit)."""
    from ai_edge_litert import schema_py_generated as schema

    _, model = read_flatbuffer(source)
    code = getattr(schema.BuiltinOperator, op)
    for entry in model.operatorCodes:
        if max(entry.builtinCode, entry.deprecatedBuiltinCode) == code:
            entry.version = version
    target.write_bytes(pack_model(model))
    return target


def test_a_model_needing_a_newer_runtime_is_reported_with_the_op_and_version(tiny_run, legacy_python, tmp_path):
    int8 = next(tiny_run.run_dir.glob("*_int8.tflite"))
    newer = _with_op_version(int8, tmp_path / "newer_int8.tflite", "FULLY_CONNECTED", 12)
    (report,) = check_compatibility([newer], legacy_python=legacy_python)
    litert, legacy = report.checks
    assert litert.ok and litert.runtime.startswith("LiteRT")
    assert not legacy.ok and not legacy.loaded
    assert [entry.split(":")[0] for entry in legacy.missing_ops] == ["FULLY_CONNECTED v12"]
    assert "Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'" in legacy.missing_ops[0]
    assert not report.ok
    assert main(["check-runtime", str(newer), "--legacy-python", str(legacy_python)]) == CompatibilityError.exit_code


def test_export_refuses_an_incompatible_model_and_writes_nothing(tiny_run, legacy_python, tmp_path):
    run = Path(shutil.copytree(tiny_run.run_dir, tmp_path / "run"))
    int8 = next(run.glob("*_int8.tflite"))
    _with_op_version(int8, int8, "FULLY_CONNECTED", 12)
    app = app_copy(tmp_path / "app")
    with pytest.raises(CompatibilityError, match=r"FULLY_CONNECTED v12"):
        export_android(run, app, legacy_python=legacy_python, log=lambda _: None)
    assert not (app / ASSETS_DIR).exists() and not (app / GOLDEN_DIR).exists()


def test_labels_that_do_not_match_the_model_output_are_refused_before_anything_is_written(tiny_run, tmp_path):
    run = Path(shutil.copytree(tiny_run.run_dir, tmp_path / "run"))
    labels = (run / "labels.txt").read_text().split()
    (run / "labels.txt").write_text("\n".join(labels[:9]) + "\n")
    app = app_copy(tmp_path / "app")
    with pytest.raises(CompatibilityError, match=r"gives 10 scores but labels.txt has 9 names"):
        export_android(run, app, legacy_python=False, log=lambda _: None)
    assert not (app / ASSETS_DIR).exists()
    assert main(["export-android", str(run), "--app", str(app), "--no-legacy-check"]) == CompatibilityError.exit_code


def test_export_of_a_folder_without_models_is_a_data_error(tmp_path):
    assert main(["export-android", str(tmp_path), "--app", str(APP)]) == 5


# ------------------------------------------------------------------------------- the app's build, by reading

CATALOG = tomllib.loads((APP / "gradle" / "libs.versions.toml").read_text())
APP_GRADLE = (APP / "app" / "build.gradle.kts").read_text()
GRADLE_TEXT = re.sub(r"(//|#).*", "", "\n".join(p.read_text() for p in [*APP.rglob("*.kts"),
                                                                          APP / "gradle" / "libs.versions.toml"]))


def test_sdk_levels_and_plugin_versions_come_from_the_version_catalog():
    versions = CATALOG["versions"]
    assert int(versions["minSdk"]) == 24
    assert int(versions["compileSdk"]) >= 35 and int(versions["targetSdk"]) >= 35
    assert int(versions["agp"].split(".")[0]) >= 9 and int(versions["kotlin"].split(".")[0]) >= 2
    assert "libs.versions.minSdk" in APP_GRADLE and "libs.versions.targetSdk" in APP_GRADLE
    assert not re.search(r"(minSdk|targetSdk|compileSdk)\s*=\s*\d", APP_GRADLE)


def test_tflite_assets_are_not_compressed():
    match = re.search(r"noCompress\s*\+=\s*listOf\(([^)]*)\)", APP_GRADLE)
    assert match and '"tflite"' in match.group(1)


def test_the_only_ml_runtime_is_litert_2():
    libraries = CATALOG["libraries"]
    used = re.findall(r"(?<!test)(?<!androidTest)[iI]mplementation\(libs\.([\w.]+)\)", APP_GRADLE)
    runtime = [libraries[name.replace(".", "-")] for name in used]
    ml = [lib for lib in runtime if "litert" in lib["group"] or "tensorflow" in lib["group"]]
    assert [(lib["group"], lib["name"]) for lib in ml] == [("com.google.ai.edge.litert", "litert")]
    assert CATALOG["versions"]["litert"].startswith("2.")
    for banned in ("org.tensorflow", "tensorflow-lite", "litert-support", "litert-metadata", "tasks-vision"):
        assert banned not in GRADLE_TEXT


def test_manifest_declares_an_exported_launcher_activity_and_no_permissions():
    root = ET.parse(APP / "app" / "src" / "main" / "AndroidManifest.xml").getroot()
    android = "{http://schemas.android.com/apk/res/android}"
    (activity,) = root.iter("activity")
    assert activity.get(f"{android}name") == ".MainActivity" and activity.get(f"{android}exported") == "true"
    assert [a.get(f"{android}name") for a in activity.iter("action")] == ["android.intent.action.MAIN"]
    assert not list(root.iter("uses-permission"))


def test_pure_kotlin_core_has_no_android_imports():
    files = list(CORE.glob("*.kt"))
    assert len(files) >= 4
    for path in files:
        imports = re.findall(r"^import\s+([\w.]+)", path.read_text(), flags=re.M)
        assert not [i for i in imports if i.startswith(("android.", "androidx."))], path


def test_no_input_size_is_hard_coded_in_the_app():
    for path in (KOTLIN / "main").rglob("*.kt"):  # input sizes MobileNet users pick; -128 is int8's minimum
        assert not re.search(r"(?<!-)\b(32|64|96|128|160|192|224|256)\b", path.read_text()), path


def test_every_asset_name_the_kotlin_code_uses_is_exported(exported):
    code = "\n".join(p.read_text() for folder in ("main", "androidTest") for p in (KOTLIN / folder).rglob("*.kt"))
    text = re.sub(r"/\*.*?\*/|//[^\n]*", "", code, flags=re.S)  # names in comments are examples
    names = set(re.findall(r'"((?:golden/)?[\w.-]+\.(?:json|txt|tflite|png|bin))"', text))
    names |= set(re.findall(r'const val \w+_DIR = "([\w/]+)"', text))
    assert {"model_config.json", "models", "golden/golden.json"} <= names
    roots = [exported.app_dir / ASSETS_DIR, exported.golden.parent]
    for name in names:
        assert any((root / name).exists() for root in roots), f"{name!r} is used by the app but not exported"


def test_golden_pixels_are_the_pixels_the_parity_gate_evaluated(exported, tiny_run):
    """Same decode and resize as verification, so the app's golden check covers the verified path."""
    from tflite_pipeline.data.preprocess import PreprocessSpec

    spec = PreprocessSpec.read_json(tiny_run.run_dir / "preprocessing.json")
    root = Path(json.loads((tiny_run.run_dir / "report.json").read_text())["data"]["root"]) / "validation"
    for case in json.loads((exported.golden / "golden.json").read_text())["cases"]:
        rgb = np.frombuffer((exported.golden / case["pixels"]).read_bytes(), np.uint8).reshape(32, 32, 3)
        np.testing.assert_array_equal(rgb, spec.load_pixels(root / case["label"] / case["source"]))


def test_the_dynamic_range_variant_loads_in_tflite_2_14(tiny_model, legacy_python, tmp_path):
    """TF 2.21's default dynamic-range output (per-channel FULLY_CONNECTED v12) needs TFLite 2.17."""
    from tflite_pipeline.tflite.convert import convert_dynamic_range
    from tflite_pipeline.tflite.flatbuffer import inspect_tflite

    path = tmp_path / "tiny_dynamic.tflite"
    path.write_bytes(convert_dynamic_range(tiny_model))
    assert max(op.version for op in inspect_tflite(path).ops if op.name == "FULLY_CONNECTED") <= 10
    (report,) = check_compatibility([path], legacy_python=legacy_python)
    assert report.ok, report
