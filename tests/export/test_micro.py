"""Microcontroller export: the C++ files hold the model and its ops exactly, the arena TFLM measures is what the
model needs, TFLM agrees with LiteRT, budgets and models TFLM cannot run are refused, and the model array
cross-compiles for a Cortex-M4 to read-only data of the model's size.

The ARM cross compiler comes from `make setup` (Debian's gcc-arm-none-eabi); missing, it skips locally and
fails in CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import save_small_cnn

from tflite_pipeline.cli import main
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.errors import BudgetError, CompatibilityError, RecipeError
from tflite_pipeline.export.boards import BOARDS, micro_budget
from tflite_pipeline.export.micro import arena_with_margin, export_micro, micro_problems, run_in_tflm
from tflite_pipeline.export.micro_sources import c_identifier, labels_h, pixel_table
from tflite_pipeline.export.tflm_ops import RESOLVER_METHODS
from tflite_pipeline.tflite.flatbuffer import TensorInfo, inspect_tflite, op_name, read_flatbuffer
from tflite_pipeline.tflite.interpreter import quantize

IMAGES = 20


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """The tiny run's int8 model exported for the Nano 33 BLE Sense budget, proven on 20 validation images."""
    out = tmp_path_factory.mktemp("micro")
    (export,) = export_micro(tiny_run.run_dir, out, board="nano33ble", max_images=IMAGES, log=lambda _: None)
    return export


@pytest.fixture(scope="module")
def model_file(tiny_run) -> Path:
    return tiny_run.run_dir / "mobilenet_v2_int8.tflite"


def test_model_array_holds_the_flatbuffer_byte_for_byte_16_byte_aligned(exported, model_file):
    folder = Path(exported.folder)
    source = (folder / "model_data.cc").read_text()
    symbol = c_identifier("mobilenet_v2_int8")
    match = re.search(rf"alignas\(16\) const unsigned char {symbol}\[\] = \{{(.*?)\}};", source, re.S)
    assert match, source[:400]
    array = bytes(int(value, 16) for value in re.findall(r"0x([0-9a-f]{2})", match.group(1)))
    assert array == model_file.read_bytes()
    assert f"const unsigned int {symbol}_len = {len(array)};" in source
    header = (folder / "model_data.h").read_text()
    assert f"kModelDataSize = {len(array)};" in header
    assert f"kTensorArenaSize = {exported.arena_bytes};" in header


def test_op_resolver_registers_exactly_the_models_operator_codes(exported, model_file):
    header = (Path(exported.folder) / "model_ops.h").read_text()
    calls = re.findall(r"resolver\.(Add\w+)\(\)", header)
    by_method = {method: op for op, method in RESOLVER_METHODS.items()}
    _, model = read_flatbuffer(model_file.read_bytes())
    assert sorted(by_method[call] for call in calls) == sorted({op_name(code) for code in model.operatorCodes})
    assert "MicroMutableOpResolver<kNumModelOps>" in header
    assert f"kNumModelOps = {len(calls)};" in header


def test_measured_arena_runs_the_model_and_much_less_does_not(exported, model_file):
    assert 0 < exported.arena_measured <= exported.arena_bytes
    tensor = inspect_tflite(model_file).inputs[0]
    inputs = np.random.default_rng(0).integers(-128, 128, (3, 1, *tensor.shape[1:]), dtype=np.int8)
    enough = run_in_tflm(model_file, exported.arena_measured, inputs)
    assert enough.allocated and enough.outputs.shape[0] == 3
    assert enough.arena_used == exported.arena_in_use < exported.arena_measured  # planning scratch is given back
    for smaller in (exported.arena_measured - 16, int(exported.arena_measured * 0.9)):
        assert not run_in_tflm(model_file, smaller, inputs).allocated, smaller


def test_tflm_gives_litert_reference_kernels_outputs(exported):
    parity = exported.parity
    assert parity.images == IMAGES and parity.litert_kernels == "reference"
    assert parity.agreement == 1.0 and parity.max_output_steps == 0  # the same integer arithmetic
    assert parity.tflm_top1 == parity.litert_top1


def test_input_table_and_sample_image_are_what_the_parity_check_fed(exported, model_file, tiny_run):
    folder = Path(exported.folder)
    spec = PreprocessSpec.read_json(tiny_run.run_dir / "preprocessing.json")
    tensor = inspect_tflite(model_file).inputs[0]
    table = pixel_table(spec, tensor)
    settings = (folder / "model_settings.h").read_text()
    body = settings[settings.index("kPixelToInput[kInputChannels][256] = {"):]
    written = [int(v) for v in re.findall(r"-?\d+", body[body.index("{"):body.index("};")])]
    assert written == table.reshape(-1).tolist()
    sample = (folder / "sample_image.h").read_text()
    pixels = np.array([int(v, 16) for v in re.findall(r"0x([0-9a-f]{2})", sample)], np.uint8).reshape(spec.input_shape)
    through_table = table[np.arange(spec.channels), pixels]             # what Classify() writes into the input
    direct = quantize(spec.normalize(pixels), tensor.scale, tensor.zero_point, np.int8)
    np.testing.assert_array_equal(through_table, direct)
    expected = int(re.search(r"kSampleExpected = (\d+);", sample).group(1))
    outputs = run_in_tflm(model_file, exported.arena_bytes, direct[None, None]).outputs
    assert int(outputs.reshape(-1).argmax()) == expected


def test_export_folder_is_a_sketch_with_a_report(exported, model_file):
    folder = Path(exported.folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(exported.files) == sorted([
        "model_data.cc", "model_data.h", "model_ops.h", "model_settings.h", "labels.h", "sample_image.h",
        "classify.cc", "classify.h", f"{folder.name}.ino", "micro_report.json"])
    report = json.loads((folder / "micro_report.json").read_text())
    assert report["flash_bytes"] == len(model_file.read_bytes()) and report["arena_bytes"] == exported.arena_bytes
    assert report["budget"]["name"] == "nano33ble" and 0 < report["headroom"]["ram"] < 1


def test_over_budget_model_is_refused_with_its_measured_numbers_and_nothing_written(tiny_run, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(BudgetError, match=r"arena needs .* over the 4 KB of RAM .*input_size") as caught:
        export_micro(tiny_run.run_dir, out, ram_kb=4, max_images=2, log=lambda _: None)
    assert caught.value.report["arena_measured"] > 4096 and caught.value.report["flash_bytes"] > 0
    assert not out.exists()
    code = main(["export-micro", str(tiny_run.run_dir), "--output", str(out), "--flash-kb", "10", "--max-images", "2"])
    assert code == BudgetError.exit_code == 13
    assert "over the 10 KB of flash" in capsys.readouterr().err and not out.exists()


@pytest.fixture(scope="module")
def gelu_model(tmp_path_factory) -> Path:
    """A small int8 CNN with a GELU activation: LiteRT has an int8 GELU kernel, TFLM none."""
    import tf_keras as keras

    from tflite_pipeline.tflite.convert import convert_int8

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="gelu")(inputs)
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    rng = np.random.default_rng(0)
    data = convert_int8(keras.Model(inputs, outputs),
                        lambda: ([rng.uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)] for _ in range(10)),
                        log=lambda _: None)
    path = tmp_path_factory.mktemp("gelu") / "gelu_int8.tflite"
    path.write_bytes(data)
    return path


def test_op_without_a_tflm_kernel_is_named(gelu_model, tiny_run, tiny_data, tmp_path, capsys):
    assert micro_problems(inspect_tflite(gelu_model)) == ["uses GELU, which TFLM has no kernel for"]
    assert run_in_tflm(gelu_model, 1 << 20).failing_ops() == ["GELU (no TFLM kernel)"]  # TFLM's own verdict
    shutil.copy(tiny_run.run_dir / "preprocessing.json", gelu_model.parent)
    code = main(["export-micro", str(gelu_model), "--images", str(tiny_data), "--output",
                 str(tmp_path / "out")])
    assert code == CompatibilityError.exit_code
    assert "GELU, which TFLM has no kernel for" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_float_model_is_refused_naming_its_float_ops(tiny_run, tmp_path):
    with pytest.raises(CompatibilityError, match=r"input is float32.*compute in float \(CONV_2D #0"):
        export_micro(tiny_run.run_dir, tmp_path / "out", models=["mobilenet_v2_float32.tflite"], log=lambda _: None)
    assert not (tmp_path / "out").exists()


def _require(tool: str) -> str:
    found = shutil.which(tool)
    if not found:
        message = f"{tool} is missing; `make setup` installs Debian's gcc-arm-none-eabi (and g++ comes with Debian)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_model_array_cross_compiles_to_aligned_read_only_data_of_the_model_size(exported, model_file, tmp_path):
    compiler, size = _require("arm-none-eabi-g++"), _require("arm-none-eabi-size")
    folder, obj = Path(exported.folder), tmp_path / "model_data.o"
    subprocess.run([compiler, "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-std=c++11",
                    "-Os", "-fdata-sections", "-Wall", "-Werror", "-c", str(folder / "model_data.cc"), "-o",
                    str(obj)], check=True, capture_output=True, text=True)
    sections = dict(re.findall(r"^(\S+)\s+(\d+)\s+\d+$", subprocess.run(
        [size, "-A", str(obj)], check=True, capture_output=True, text=True).stdout, re.M))
    symbol = c_identifier("mobilenet_v2_int8")
    assert int(sections[f".rodata.{symbol}"]) == len(model_file.read_bytes())
    headers = subprocess.run([compiler.replace("g++", "objdump"), "-h", str(obj)], check=True, capture_output=True,
                             text=True).stdout
    assert re.search(rf"\.rodata\.{symbol}\s.*\s2\*\*4\n", headers), headers


@pytest.mark.fast
def test_board_budgets_keep_the_firmwares_share():
    nano = micro_budget("nano33ble")
    board = BOARDS["nano33ble"]
    assert nano.flash_bytes == (board.flash_kb - board.firmware_flash_kb) * 1024
    assert nano.ram_bytes == (board.ram_kb - board.firmware_ram_kb) * 1024
    assert micro_budget("nano33ble", ram_kb=100).ram_bytes == 100 * 1024      # an explicit limit wins
    assert micro_budget(flash_kb=300).ram_bytes is None and micro_budget() is None
    assert nano.problems(nano.flash_bytes, nano.ram_bytes) == []
    assert len(nano.problems(nano.flash_bytes + 1, nano.ram_bytes + 1)) == 2


@pytest.mark.fast
@pytest.mark.parametrize(("kwargs", "message"), [({"board": "uno"}, r"board='uno'; expected one of"),
                                                 ({"flash_kb": 0}, r"flash_kb=0; expected a size"),
                                                 ({"ram_kb": -1}, r"ram_kb=-1; expected a size")])
def test_bad_budget_settings_are_named(kwargs, message):
    with pytest.raises(RecipeError, match=message):
        micro_budget(**kwargs)


@pytest.mark.fast
def test_generated_names_and_labels_are_valid_c_that_prints_the_labels_back(tmp_path):
    assert c_identifier("demo-v2.int8 (1)") == "g_demo_v2_int8_1_model_data"
    assert arena_with_margin(1000, 0.10) == 1104 and arena_with_margin(1600, 0.0) == 1600
    labels = ['say "hi"', "back\\slash", "trigraph??=", "café", "shoe 👟", "靴"]
    (tmp_path / "labels.h").write_text(labels_h(labels, "m.tflite"), encoding="ascii")
    (tmp_path / "main.cc").write_text('#include <cstdio>\n#include "labels.h"\n'
                                      'int main() { for (auto l : kLabels) std::printf("%s\\n", l); }\n')
    compiler = _require("g++")
    subprocess.run([compiler, "-std=c++11", "-Wall", "-Werror", "-trigraphs", str(tmp_path / "main.cc"), "-o",
                    str(tmp_path / "labels")], check=True, capture_output=True)
    printed = subprocess.run([str(tmp_path / "labels")], check=True, capture_output=True).stdout.decode("utf-8")
    assert printed.splitlines() == labels


@pytest.mark.fast
def test_run_folder_without_int8_models_is_refused(tmp_path):
    from tflite_pipeline.errors import DataError

    with pytest.raises(DataError, match=r"holds no int8 \.tflite"):
        export_micro(tmp_path, log=lambda _: None)


def test_gray_input_table_maps_each_gray_value():
    spec = PreprocessSpec(8, 8, channels=1, normalization="zero_to_one")
    table = pixel_table(spec, TensorInfo("input", (1, 8, 8, 1), "int8", 1 / 255, -128))
    assert table.shape == (1, 256) and table[0].tolist() == list(range(-128, 128))


@pytest.mark.parametrize("ram_kb, exit_code", [(0, 0), (1, 13)], ids=["fits", "over-budget"])
def test_a_run_with_micro_exports_its_int8_model_and_a_budget_miss_keeps_the_verified_run(ram_kb, exit_code,
                                                                                           tiny_data, tmp_path):
    model = save_small_cnn(tmp_path / "cnn.keras")
    code = main(["convert", str(model), "--data", str(tiny_data), "--calibration-samples", "20",
                 "--output-dir", str(tmp_path / "out"), "--max-top1-drop", "100", "--min-agreement", "0",
                 "--set", "micro.enabled=true", "--set", "micro.board=nano33ble", "--set", f"micro.ram_kb={ram_kb}",
                 "--set", "micro.max_images=10"])
    assert code == exit_code
    run_dir = tmp_path / "out" / "cnn"
    report = json.loads((run_dir / "report.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())["outputs"]
    assert (run_dir / "cnn_int8.tflite").is_file() and main(["verify", str(run_dir), "--max-top1-drop", "100",
                                                            "--min-agreement", "0"]) == 0
    if exit_code:
        assert [(f["step"], f["exit_code"]) for f in report["failed_steps"]] == [("micro", 13)]
        assert "over the 1 KB of RAM" in report["failed_steps"][0]["message"]
        assert report["micro"] == [] and not (run_dir / "micro").exists()
    else:
        (micro,) = report["micro"]
        assert micro["folder"] == "micro/cnn_int8" and micro["parity"]["agreement"] == 1.0
        assert micro["arena_bytes"] <= micro["budget"]["ram_bytes"]
        assert json.loads((run_dir / "micro" / "cnn_int8" / "micro_report.json").read_text())["model"] == \
            "cnn_int8.tflite"
        assert "micro/cnn_int8/model_data.cc" in manifest
        assert "## Microcontroller (TensorFlow Lite Micro)" in (run_dir / "report.md").read_text()
