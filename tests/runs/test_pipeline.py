"""The run folder and the CLI, in process (`main(argv) -> exit code`)."""

import json
import os

import pytest
from conftest import save_small_cnn

import tflite_pipeline as tp
from tflite_pipeline.cli import main
from tflite_pipeline.files import atomic_write_bytes

EXPECTED_FILES = {"mobilenet_v2_float32.tflite", "mobilenet_v2_int8.tflite", "mobilenet_v2_pixels.tflite",
                  "mobilenet_v2_float.keras", "labels.txt", "preprocessing.json", "report.json", "manifest.json",
                  "report.md", "report.html", "report_accuracy_vs_size.png", "report_accuracy_vs_latency.png",
                  "report_stages.png", "report_per_class.png"}


def test_run_folder_holds_every_artifact(tiny_run):
    assert {p.name for p in tiny_run.run_dir.iterdir()} == EXPECTED_FILES
    assert (tiny_run.run_dir / "labels.txt").read_text().split()[0] == "tshirt_top"
    assert not list(tiny_run.run_dir.parent.glob(".tiny.*"))  # no staging left (.cache holds finished stages)


def test_preprocessing_json_is_what_the_app_needs(tiny_run):
    spec = json.loads((tiny_run.run_dir / "preprocessing.json").read_text())
    assert spec["height"] == spec["width"] == 32 and spec["channels"] == 3
    assert spec["normalization"] == "minus_one_to_one" and spec["formula"] == "x = pixel / 127.5 - 1"
    assert spec["channel_order"] == "RGB" and spec["layout"] == "NHWC"


def test_report_json_and_markdown_agree(tiny_run):
    report = json.loads((tiny_run.run_dir / "report.json").read_text())
    assert report["data"]["train"] == 300  # the tiny model's gate is open (conftest): `passed` is not asserted here
    assert report["passed"] == all(not row["failures"] for row in report["parity"]["rows"])
    assert {a["variant"] for a in report["artifacts"]} == {"float32", "int8", "pixels"}
    int8 = next(a for a in report["artifacts"] if a["variant"] == "int8")
    assert int8["info"]["is_full_integer"] and 0 < int8["gzip_bytes"] < int8["size_bytes"]
    assert report["versions"]["tensorflow"].startswith("2.21") and report["recipe"]["train"]["epochs"] == 2
    markdown = (tiny_run.run_dir / "report.md").read_text()
    assert "| int8 .tflite |" in markdown and ("parity gate PASSED" in markdown) == report["passed"]


def test_the_manifest_records_versions_inputs_and_the_hash_of_every_output(tiny_run, tiny_data):
    from tflite_pipeline.files import sha256_file

    manifest = json.loads((tiny_run.run_dir / "manifest.json").read_text())
    written = sorted(p.name for p in tiny_run.run_dir.iterdir() if p.name != "manifest.json")
    assert sorted(manifest["outputs"]) == written
    assert all(manifest["outputs"][name] == sha256_file(tiny_run.run_dir / name) for name in written)
    assert manifest["versions"]["tensorflow"].startswith("2.21") and manifest["recipe"]["train"]["epochs"] == 2
    assert manifest["data"]["train"]["images"] == 300 and len(manifest["data"]["validation"]["listing_sha256"]) == 64
    assert manifest["model"] == {"source": "mobilenet_v2", "sha256": None}  # built here, not read from a file


def test_existing_run_folder_is_not_overwritten(tiny_recipe, tiny_run):
    before = (tiny_run.run_dir / "report.json").read_bytes()
    with pytest.raises(tp.OutputError, match=r"exists already; choose another --run-name or pass --overwrite"):
        tp.run(tiny_recipe, output_dir=tiny_run.run_dir.parent, run_name="tiny", log=lambda _: None)
    assert (tiny_run.run_dir / "report.json").read_bytes() == before


def test_failed_run_leaves_nothing_behind(tiny_recipe, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise tp.ConversionError("simulated converter crash")
    monkeypatch.setattr("tflite_pipeline.runs.pipeline.convert_variant", broken)
    with pytest.raises(tp.ConversionError, match="simulated"):
        tp.run(tiny_recipe.with_overrides({"train.epochs": 0}), output_dir=tmp_path, run_name="broken",
               log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = atomic_write_bytes(tmp_path / "m.tflite", b"old")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new and longer")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["m.tflite"]


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "x" * 200])
def test_unsafe_run_names_are_rejected(tmp_path, name):
    with pytest.raises(tp.OutputError, match="run name"):
        tp.run(tp.Recipe(), output_dir=tmp_path, run_name=name, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_cli_inspect_prints_io_and_ops(tiny_run, capsys):
    assert main(["inspect", str(tiny_run.tflite_path("int8"))]) == 0
    out = capsys.readouterr().out
    assert "full-integer: yes" in out and "input" in out and "CONV_2D" in out and "scale=" in out
    assert main(["inspect", "--json", str(tiny_run.tflite_path("int8"))]) == 0
    assert json.loads(capsys.readouterr().out)["is_full_integer"] is True


def test_cli_inspect_of_a_non_tflite_file_exits_with_its_code(tmp_path, capsys):
    (tmp_path / "x.tflite").write_text("hello")
    assert main(["inspect", str(tmp_path / "x.tflite")]) == tp.TFLiteFileError.exit_code
    assert "not a TFLite model" in capsys.readouterr().err


def test_cli_verify_a_run_folder_is_a_ci_gate(tiny_run, capsys, tmp_path):
    assert main(["verify", str(tiny_run.run_dir), "--max-top1-drop", "100", "--min-agreement", "0",
                 "--json", str(tmp_path / "parity.json")]) == 0
    assert "| mobilenet_v2_float32 .tflite |" in capsys.readouterr().out
    assert json.loads((tmp_path / "parity.json").read_text())["num_images"] == 50
    # the float32 model must agree on every image: a 100% gate passes for it alone
    float_only = str(tiny_run.tflite_path("float32"))
    assert main(["verify", float_only, "--keras", str(tiny_run.run_dir / "mobilenet_v2_float.keras"),
                 "--data", str(tiny_run.report.parity.data), "--min-agreement", "1.0", "--max-top1-drop", "0",
                 "--preprocessing", str(tiny_run.run_dir / "preprocessing.json")]) == 0


def test_cli_verify_runs_on_the_kernels_asked_for(tiny_run, tmp_path, capsys):
    assert main(["verify", str(tiny_run.tflite_path("float32")), "--keras",
                 str(tiny_run.run_dir / "mobilenet_v2_float.keras"), "--data", str(tiny_run.report.parity.data),
                 "--kernels", "reference", "--min-agreement", "1.0", "--json", str(tmp_path / "parity.json")]) == 0
    assert json.loads((tmp_path / "parity.json").read_text())["kernels"] == "reference"
    assert "LiteRT reference kernels" in capsys.readouterr().out


def test_cli_convert_users_model_with_uint8_io(tiny_run, tiny_data, tmp_path, capsys):
    model = tiny_run.run_dir / "mobilenet_v2_float.keras"
    user_model = tmp_path / "my classifier.keras"
    user_model.write_bytes(model.read_bytes())
    code = main(["convert", str(user_model), "--data", str(tiny_data), "--variants", "int8",
                 "--io-dtype", "uint8", "--calibration-samples", "20", "--max-top1-drop", "100",
                 "--min-agreement", "0", "--output-dir", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    run_dir = tmp_path / "out" / "my_classifier"
    info = tp.inspect_tflite(run_dir / "my_classifier_int8.tflite")
    assert info.inputs[0].dtype == "uint8" and info.is_full_integer
    assert (run_dir / "labels.txt").read_text().split() == (tiny_data / "labels.txt").read_text().split()


def test_cli_recipes_lists_default(capsys):
    assert main(["recipes"]) == 0
    assert "default" in capsys.readouterr().out


def test_the_ptq_path_is_reproducible_byte_for_byte(tiny_recipe, tmp_path):
    """Same recipe, seed and inputs: identical .tflite bytes, reports (but for timings) and manifest hashes of the
    models; converting in a child process (`convert.isolate`, bounded memory) changes nothing either."""
    recipe = tiny_recipe.with_overrides({"model.source": str(save_small_cnn(tmp_path / "cnn.keras")),
                                         "model.name": "again", "train.epochs": 0, "bench.enabled": False})
    first = tp.run(recipe, output_dir=tmp_path, run_name="a", log=lambda _: None)
    second = tp.run(recipe.with_overrides({"convert.isolate": True}), output_dir=tmp_path, run_name="b",
                    log=lambda _: None)
    for variant in ("float32", "int8", "pixels"):
        assert first.tflite_path(variant).read_bytes() == second.tflite_path(variant).read_bytes()
    reports = [json.loads((r.run_dir / "report.json").read_text()) for r in (first, second)]
    for report in reports:
        del report["seconds"], report["run_name"], report["recipe"]["convert"]["isolate"]
    assert reports[0] == reports[1]
    hashes = [json.loads((r.run_dir / "manifest.json").read_text())["outputs"] for r in (first, second)]
    assert {k: v for k, v in hashes[0].items() if k.endswith(".tflite")} == \
        {k: v for k, v in hashes[1].items() if k.endswith(".tflite")}


def test_cli_verify_of_a_run_folder_uses_the_gate_the_run_was_checked_with(tiny_run, capsys):
    """A `*-kd` recipe gates at 1 point: `verify RUN_DIR` afterwards must not judge it by the 0.5 default."""
    recorded = tiny_run.report.recipe["verify"]
    assert main(["verify", str(tiny_run.run_dir)]) == 0
    assert f"<= {recorded['max_top1_drop']:g} pts" in capsys.readouterr().out
    main(["verify", str(tiny_run.run_dir), "--max-top1-drop", "0.25"])  # a flag still wins
    assert "<= 0.25 pts" in capsys.readouterr().out


def test_every_file_of_a_run_folder_has_the_usual_permissions(tiny_run):
    """Run folders are shared, served and copied into images: files get what open() gives under the process umask
    (typically 0644) and folders 0755, not the 0600 / 0700 of the temporary files they are staged in."""
    import os

    umask = os.umask(0o022)
    os.umask(umask)
    modes = {str(p.relative_to(tiny_run.run_dir)): p.stat().st_mode & 0o777 for p in tiny_run.run_dir.rglob("*")}
    expected = {name: (0o777 if (tiny_run.run_dir / name).is_dir() else 0o666) & ~umask for name in modes}
    assert len(modes) > 8 and modes == expected
    assert tiny_run.run_dir.stat().st_mode & 0o777 == 0o777 & ~umask
