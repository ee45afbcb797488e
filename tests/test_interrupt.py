"""Stopping a command is safe at every stage: Ctrl-C (SIGINT) or SIGTERM leaves no partial file, prints one
line saying what was stopped and how to resume, and exits 130 / 143.

Signals during data listing, training, conversion and verification go to a real CLI process when its
progress line for that step appears; report writing and the Android export are stopped in process at a
known point (their windows are too short to hit from outside).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CLI, app_copy, data_and_cnn

from tflite_pipeline.cli import main
from tflite_pipeline.errors import Interrupted

STOPPED = r"stopped by {name} during \[{step}\]; nothing partial was written\. To resume, "


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return data_and_cnn(tmp_path_factory.mktemp("interrupt"), {"train": 20, "validation": 5, "calibration": 3})


# the steps too quick to hit 0.3 s in with the tiny data, and how many extra validation images make them last
WIDE = {"listing": 20_000, "verification": 3_000}


def _wide_copy(inputs: Path, target: Path, extra: int) -> Path:
    """The data with `extra` more validation images (hard links) in one class folder: listing 20,000 takes
    seconds; verifying 3,000 takes seconds too (50 images took 0.2 s, over before the signal came)."""
    shutil.copytree(inputs / "data", target)
    folder = sorted((target / "validation").iterdir())[0]
    image = sorted(folder.iterdir())[0]
    for number in range(extra):
        os.link(image, folder / f"extra{number:05d}.png")
    return target


def _stop_when(command: list[str], trigger: str, signal_number: int) -> tuple[int, str]:
    """Start `command`, send the signal when a stderr line starts with `trigger`; returns (exit code, stderr)."""
    # SIGINT as a terminal gives it: a shell starting pytest in the background (`cmd &`) leaves SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler in the child; exec keeps the default set here
    command = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
               "os.execv(sys.argv[1], sys.argv[1:])", *command]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines = []
    deadline = time.monotonic() + 300
    for line in process.stderr:
        lines.append(line)
        if line.startswith(trigger):
            time.sleep(0.3)  # into the step, not at its first instruction
            process.send_signal(signal_number)
            break
        assert time.monotonic() < deadline, "".join(lines[-20:])
    rest = process.communicate(timeout=300)[1]
    return process.returncode, "".join(lines) + rest


CASES = {
    # name: (command builder, trigger line, signal, step named, signal name)
    "listing-sigint": (lambda root, data, out: ["convert", str(root / "cnn.keras"), "--data", str(data),
                                                "--output-dir", str(out), "--variants", "float32"],
                       "[data] listing", signal.SIGINT, "data", r"Ctrl-C \(SIGINT\)"),
    "training-sigint": (lambda root, data, out: ["run", "--data", str(data), "--output-dir", str(out),
                                                 "--run-name", "run", "--set", f"model.source={root / 'cnn.keras'}",
                                                 "--set", "model.input_size=32", "--set", "train.epochs=50",
                                                 "--set", "train.batch_size=8"],
                        "  200 images, 50 epochs", signal.SIGINT, "train", r"Ctrl-C \(SIGINT\)"),
    "conversion-sigterm": (lambda root, data, out: ["convert", str(root / "cnn.keras"), "--data", str(data),
                                                    "--output-dir", str(out)],
                           "[convert] int8", signal.SIGTERM, "convert", "SIGTERM"),
    "verification-sigterm": (lambda root, data, out: ["convert", str(root / "cnn.keras"), "--data", str(data),
                                                      "--output-dir", str(out), "--variants", "float32"],
                             "[verify]", signal.SIGTERM, "verify", "SIGTERM"),
}


def _leftovers(out: Path) -> list[str]:
    """Files and folders in the output folder other than finished cache entries."""
    if not out.exists():
        return []
    cache = out / ".cache"
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if not (p == cache or (cache in p.parents and not p.relative_to(cache).parts[0].startswith("."))))


@pytest.mark.parametrize("name", list(CASES))
def test_a_signal_at_each_stage_exits_with_its_code_and_leaves_nothing_partial(name, inputs, tmp_path):
    import re

    build, trigger, signal_number, step, signal_name = CASES[name]
    extra = WIDE.get(name.split("-")[0])
    data = _wide_copy(inputs, tmp_path / "data", extra) if extra else inputs / "data"
    out = tmp_path / "out"
    code, err = _stop_when([CLI, *build(inputs, data, out)], trigger, signal_number)
    assert code == 128 + signal_number, err[-3000:]
    stopped = [line for line in err.splitlines() if line.startswith("stopped by")]
    assert len(stopped) == 1 and re.match(STOPPED.format(name=signal_name, step=step), stopped[0]), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert _leftovers(out) == []


def test_a_stop_while_writing_the_report_publishes_nothing(inputs, tmp_path, monkeypatch, capsys):
    def stop(self):
        raise KeyboardInterrupt

    monkeypatch.setattr("tflite_pipeline.runs.report.RunReport.to_markdown", stop)
    out = tmp_path / "out"
    code = main(["convert", str(inputs / "cnn.keras"), "--data", str(inputs / "data"), "--output-dir", str(out),
                 "--variants", "float32"])
    assert code == 130
    assert "stopped by Ctrl-C (SIGINT) during [" in capsys.readouterr().err
    assert _leftovers(out) == []


def test_a_stop_during_the_android_export_leaves_the_app_as_it_was(tiny_run, tmp_path, monkeypatch, capsys):
    app = app_copy(tmp_path / "app")
    before = sorted(str(p.relative_to(app)) for p in app.rglob("*"))
    written = []

    def stop_at_golden(path, data):
        written.append(path)
        raise Interrupted(signal.SIGTERM, "SIGTERM")

    monkeypatch.setattr("tflite_pipeline.export.android.atomic_write_json", stop_at_golden)
    code = main(["export-android", str(tiny_run.run_dir), "--app", str(app), "--no-legacy-check"])
    assert code == 143 and written, capsys.readouterr().err[-2000:]
    assert "stopped by SIGTERM during [android]" in capsys.readouterr().err
    assert sorted(str(p.relative_to(app)) for p in app.rglob("*")) == before
