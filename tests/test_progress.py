"""A newcomer's first run is quiet and shows progress (issue 19).

Quiet: no TensorFlow / absl / C++ start-up lines, no Python warnings from TF, Keras, tfmot, no Keras progress bars,
unless `--verbose` (TFLITE_PIPELINE_VERBOSE=1); a TensorFlow that fails to import still says why. Progress: each
long step shows counts and the time left (one redrawn line on a terminal, a few plain lines elsewhere) and a
one-line summary.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLI, data_and_cnn
from PIL import Image

from tflite_pipeline import env, progress
from tflite_pipeline.errors import DataError

# what TensorFlow and its libraries print that our output never should (unless verbose)
CHATTER = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|cuda|cuInit|fully_quantize|XNNPACK|Warning:|"
                     r"WARNING:(tensorflow|absl)|^Epoch \d+/|ms/step", re.MULTILINE)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _child_env(**extra: str) -> dict[str, str]:
    """This environment without the switches a test decides (the test process's env.py set the log level)."""
    out = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", env.VERBOSE_VARIABLE)}
    return {**out, **extra}


@pytest.fixture(autouse=True)
def _quiet_and_fresh(monkeypatch):
    monkeypatch.delenv(env.VERBOSE_VARIABLE, raising=False)
    progress.reset()
    yield
    progress.reset()


# --- the renderers


@pytest.mark.fast
def test_plain_lines_are_few_and_carry_counts_and_an_eta():
    clock, lines = FakeClock(), []
    with progress.bar("verify", 1000, "images", log=lines.append, clock=clock) as bar:
        for _ in range(1000):  # 100 s in steps of 0.1 s
            clock.now += 0.1
            bar.advance()
        bar.finish(f"[verify] {bar.done} images in {progress.duration(bar.elapsed)}")
    assert lines[0] == "[verify] 0/1000 images"
    assert lines[-1] == "[verify] 1000 images in 1:40"
    middle = lines[1:-1]
    assert len(middle) == 9, lines  # one per 10% (and per 10 s): 100 s at 10 images/s
    assert all(re.fullmatch(r"\[verify\] \d+/1000 images  eta \d+:\d\d", line) for line in middle), lines
    assert re.fullmatch(r"\[verify\] 10[01]/1000 images  eta 1:30", middle[0]), middle
    assert not any("\r" in line for line in lines)


@pytest.mark.fast
def test_a_fast_step_prints_its_start_and_its_summary_only():
    clock, lines = FakeClock(), []
    with progress.bar("data", 500, "images", what="checking", log=lines.append, clock=clock) as bar:
        for _ in range(500):
            clock.now += 0.004
            bar.advance()
    assert lines == ["[data] checking 0/500 images", "[data] checking 500 images in 2.0 s"]


@pytest.mark.fast
def test_a_long_step_shows_a_line_every_10_seconds_at_most_even_past_10_percent():
    clock, lines = FakeClock(), []
    with progress.bar("train", 20, "batches", log=lines.append, clock=clock) as bar:
        for _ in range(20):  # 5% per batch, 3 s per batch: 10% comes every 6 s, 10 s every 4 batches
            clock.now += 3
            bar.advance()
    times = [int(re.search(r" (\d+)/20", line).group(1)) for line in lines[1:-1]]
    assert times == [4, 8, 12, 16], lines


@pytest.mark.fast
def test_the_terminal_bar_redraws_one_line_with_cr_at_most_every_0_2_s(monkeypatch):
    terminal, clock = FakeTerminal(), FakeClock()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress.bar("verify", 100, "images", clock=clock)
    for done in range(1, 101):  # 5 s in steps of 0.05 s
        clock.now += 0.05
        bar.advance()
        if done == 50:
            progress.log("warning: something to say mid-step")
    bar.finish("[verify] 100 images in 5.0 s")
    out = terminal.getvalue()
    draws = out.count("\r[verify] ")
    assert 20 <= draws <= 5 / progress.REDRAW_SECONDS + 3, out
    assert out.startswith("\r[verify] 0/100 images\r[verify] ")
    assert re.search(r"\r\[verify\] 4\d/100 images  eta 0:03", out), out
    before_warning, after_warning = out.split("warning: something to say mid-step\n")
    assert "\n" not in before_warning  # one line, redrawn in place, until a log line clears it
    assert re.search(r"\r +\r$", before_warning)  # cleared first
    assert after_warning.startswith("\r[verify] 50/100 images")  # redrawn right after the log line
    assert out.endswith("\r[verify] 100 images in 5.0 s\n") and out.count("\n") == 2


@pytest.mark.fast
def test_a_callers_log_gets_plain_lines_even_on_a_terminal(monkeypatch):
    terminal, clock, lines = FakeTerminal(), FakeClock(), []
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress.bar("verify", 10, "images", log=lines.append, clock=clock) as bar:
        for _ in range(10):
            clock.now += 0.5
            bar.advance()
    assert terminal.getvalue() == ""
    assert lines == ["[verify] 0/10 images", "[verify] 10 images in 5.0 s"]


@pytest.mark.fast
def test_a_stopped_terminal_bar_ends_its_line_without_a_summary(monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with pytest.raises(KeyboardInterrupt), progress.bar("convert", 5, "images", what="calibration") as bar:
        bar.advance(2)
        raise KeyboardInterrupt
    out = terminal.getvalue()
    assert out.endswith("\n") and out.count("\n") == 1
    assert out.rstrip("\n").split("\r")[-1].startswith("[convert] calibration 2/5 images  eta ")  # no summary


@pytest.mark.fast
def test_bars_take_the_current_step_and_keep_it_for_interrupt_messages(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    progress.log("[prune] 4 layers, magnitude polynomial")
    with progress.bar("train", 4, "batches", inherit_step=True) as bar:
        bar.advance(4)
    assert bar.step == "prune" and progress.current_step() == "prune"
    lines = []
    with progress.bar("train", 4, "batches", inherit_step=True, log=lines.append) as bar:  # a caller's own log
        bar.advance(4)
    assert lines[0] == "[train] 0/4 batches"
    assert sys.stderr.getvalue().splitlines()[-1] == "[prune] 4 batches in 0.0 s"


@pytest.mark.fast
def test_durations_sizes_and_etas_read_as_written():
    assert progress.duration(18.24) == "18.2 s" and progress.duration(65) == "1:05"
    assert progress.clock_time(41) == "0:41" and progress.clock_time(3723) == "1:02:03"
    assert progress.size(612 * 1024) == "612.0 KiB" and progress.size(3 * 2**20) == "3.00 MiB"


# --- the steps


def _png_folder(root: Path, classes: int = 2, per_class: int = 3) -> Path:
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (40 * c, 10 * i, 0)).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.mark.fast
def test_listing_counts_the_images_it_opens(tmp_path):
    from tflite_pipeline.data.folders import ImageFolder, open_splits

    lines = []
    folder = ImageFolder.scan(_png_folder(tmp_path / "flat"), log=lines.append)
    assert len(folder) == 6
    assert lines[0] == "[data] checking 0/6 images" and re.fullmatch(r"\[data\] checked 6 images in \d\.\d s",
                                                                         lines[-1])
    for split in ("validation", "calibration"):
        _png_folder(tmp_path / "splits" / split)
    lines.clear()
    splits = open_splits(tmp_path / "splits", need_train=False, log=lines.append)
    assert splits.counts() == {"validation": 6, "calibration": 6}
    assert lines[0] == "[data] checking validation: 0/12 images"  # one bar over every split, naming the current
    assert re.fullmatch(r"\[data\] checked 12 images \(validation 6, calibration 6\) in \d\.\d s", lines[1]), lines
    assert len(lines) == 2


@pytest.mark.fast
def test_a_bad_image_still_fails_the_listing_with_its_error(tmp_path):
    from tflite_pipeline.data.folders import ImageFolder

    root = _png_folder(tmp_path / "data")
    (root / "class1" / "broken.png").write_bytes(b"not a png")
    lines = []
    with pytest.raises(DataError, match=r"broken\.png"):
        ImageFolder.scan(root, log=lines.append)
    assert not any("checked" in line for line in lines)


@pytest.mark.fast
def test_calibration_counts_the_samples_the_converter_pulls():
    import numpy as np

    from tflite_pipeline.tflite.convert import counted_calibration

    def representative():
        for _ in range(5):
            yield [np.zeros((1, 4, 4, 3), np.float32)]

    representative.num_samples = 5
    lines = []
    generate = counted_calibration(representative, lines.append)
    assert generate.num_samples == 5
    assert len(list(generate())) == 5
    assert lines[0] == "[convert] calibration 0/5 images"
    assert re.fullmatch(r"\[convert\] calibrated on 5 images in \d+\.\d s", lines[-1]), lines


def test_training_shows_epochs_and_batches_not_keras_progress_bars(tmp_path, capfd):
    import tf_keras as keras

    from tflite_pipeline.data.folders import ImageFolder
    from tflite_pipeline.data.preprocess import PreprocessSpec
    from tflite_pipeline.model.train import fit

    folder = ImageFolder.scan(_png_folder(tmp_path / "train", per_class=4), log=lambda _: None)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    lines = []
    fit(model, folder, PreprocessSpec(8, 8), epochs=2, learning_rate=0.01, batch_size=4, log=lines.append)
    out, err = capfd.readouterr()
    assert "Epoch 1/2" not in out + err and "ms/step" not in out + err  # Keras' own progress is off
    assert lines[0].startswith("  8 images, 2 epochs of 2 steps")
    assert lines[1] == "[train] epoch 1/2  batch 0/2"
    assert re.fullmatch(r"\[train\] epoch 1/2: loss \d\.\d{4}, accuracy \d+\.\d\d% \(\d+\.\d s\)", lines[2]), lines
    assert lines[3].startswith("[train] epoch 2/2: loss ")
    assert re.fullmatch(r"\[train\] trained 2 epochs in \d+\.\d s: loss .*", lines[-1]), lines


# --- quiet by default


@pytest.mark.fast
def test_native_output_is_hidden_but_replayed_after_a_real_error(capfd):
    with env.hidden_native_output():
        os.write(2, b"I0000 chatter.cc:1] nothing to worry about\n")
        print("[step] our own line", file=env.stderr(), flush=True)
    assert capfd.readouterr().err == "[step] our own line\n"
    with pytest.raises(RuntimeError, match="boom"), env.hidden_native_output():
        os.write(2, b"E0000 native.cc:1] what went wrong\n")
        raise RuntimeError("boom")
    assert "E0000 native.cc:1] what went wrong" in capfd.readouterr().err
    with pytest.raises(DataError), env.hidden_native_output():  # our errors say themselves what went wrong
        os.write(2, b"I0000 chatter.cc:1] more chatter\n")
        raise DataError("a bad image")
    assert capfd.readouterr().err == ""


@pytest.mark.fast
def test_verbose_shows_native_output(monkeypatch, capfd):
    monkeypatch.setenv(env.VERBOSE_VARIABLE, "1")
    with env.hidden_native_output():
        os.write(2, b"I0000 chatter.cc:1] shown when verbose\n")
    assert "shown when verbose" in capfd.readouterr().err


@pytest.mark.fast
def test_importing_tensorflow_is_quiet_unless_verbose():
    code = "import tflite_pipeline, tensorflow as tf; print(float(tf.constant(1.0) + 1))"
    quiet = subprocess.Popen([sys.executable, "-c", code], env=_child_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    verbose = subprocess.Popen([sys.executable, "-c", code], env=_child_env(**{env.VERBOSE_VARIABLE: "1"}),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = quiet.communicate(timeout=300)
    assert quiet.returncode == 0 and out == "2.0\n"
    assert err == "", err
    out, err = verbose.communicate(timeout=300)
    assert verbose.returncode == 0 and out == "2.0\n"
    if not err.strip():
        pytest.skip("this machine's TensorFlow prints nothing at start-up even when verbose")
    assert CHATTER.search(err), err


BROKEN_IMPORT = """import os
os.write(2, b"E0000 dso_loader.cc:1] Could not load dynamic library 'libtensorflow_framework.so.2'\\n")
raise ImportError("simulated: this TensorFlow is broken")
"""
ABORTED_IMPORT = """import os
os.write(2, b"F0000 cpu_feature_guard.cc:1] The TensorFlow library was compiled to use AVX instructions\\n")
os.abort()
"""


@pytest.mark.fast
@pytest.mark.parametrize("init, shown", [(BROKEN_IMPORT, ("Could not load dynamic library", "Traceback",
                                                          "ImportError: simulated: this TensorFlow is broken")),
                                         (ABORTED_IMPORT, ("The TensorFlow library was compiled to use AVX",))],
                         ids=["exception", "abort"])
def test_a_failing_tensorflow_import_still_says_why(tmp_path, init, shown):
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text(init)
    done = subprocess.run([sys.executable, "-c", "import tflite_pipeline; import tensorflow"], capture_output=True,
                          text=True, timeout=120, env=_child_env(PYTHONPATH=str(tmp_path)), check=False)
    assert done.returncode != 0
    if init is ABORTED_IMPORT:
        assert done.returncode == -signal.SIGABRT
    for text in shown:
        assert text in done.stderr, done.stderr


def _tiny_tflite(path: Path) -> Path:
    """A float ADD of two [1, 4] tensors, written with the flatbuffer schema (no TensorFlow, no model built)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    tensors = []
    for index, name in enumerate((b"a", b"b", b"sum")):
        tensor = schema.TensorT()
        tensor.name, tensor.shape, tensor.type, tensor.buffer = name, [1, 4], schema.TensorType.FLOAT32, index + 1
        tensors.append(tensor)
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1], [2]
    graph = schema.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = tensors, [0, 1], [2], [op]
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.ADD
    code.version = 1
    model = schema.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [graph]
    model.buffers = [schema.BufferT() for _ in range(4)]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


@pytest.mark.fast
@pytest.mark.parametrize("where", ["before", "after"])
def test_inspect_prints_no_tensorflow_chatter(tmp_path, where):
    model = str(_tiny_tflite(tmp_path / "add.tflite"))
    args = ["--verbose", "inspect", model] if where == "before" else ["inspect", model, "--verbose"]
    for argv in (["inspect", model], args):  # --verbose is accepted before and after the command
        done = subprocess.run([CLI, *argv], capture_output=True, text=True, timeout=120, env=_child_env(), check=False)
        assert done.returncode == 0, done.stderr
        assert "ADD" in done.stdout
        assert not CHATTER.search(done.stderr) and "Traceback" not in done.stderr, done.stderr


def test_a_convert_run_is_quiet_and_shows_each_steps_progress(tmp_path):
    root = data_and_cnn(tmp_path, {"validation": 4, "calibration": 3})
    done = subprocess.run([CLI, "convert", str(root / "cnn.keras"), "--data", str(root / "data"), "--output-dir",
                           str(tmp_path / "out"), "--max-top1-drop", "100", "--min-agreement", "0"],
                          capture_output=True, text=True, timeout=900, env=_child_env(), check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    err = done.stderr
    assert not CHATTER.search(err) and "Traceback" not in err, err
    for expected in (r"\[data\] listing ", r"\[data\] checking validation: 0/70 images",
                     r"\[data\] checked 70 images \(validation 40, calibration 30\) in ",
                     r"\[convert\] float32: \d+\.\d KiB in \d+\.\d s", r"\[convert\] calibration 0/30 images",
                     r"\[convert\] calibrated on 30 images in ", r"\[convert\] int8: \d+\.\d KiB in \d+\.\d s",
                     r"\[verify\] float32, int8, pixels vs float Keras on 40 validation images",
                     r"\[verify\] 40 images through 4 models in \d+\.\d s"):
        assert re.search(expected, err), f"{expected!r} not in:\n{err}"
    assert len(err.splitlines()) <= 24, err
