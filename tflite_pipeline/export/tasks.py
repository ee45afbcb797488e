"""Proof in the consumer: a run's `.tflite`s in MediaPipe Tasks' `ImageClassifier`, against LiteRT on the same images.

    run folder ─► MediaPipe's Python (`.venv-mediapipe`, `tasks_probe.py` as a child process): each model's metadata
                  read back by MediaPipe's schema, and its top-1 with its names on every image (MediaPipe resizes
                  the image file itself)
               ─► LiteRT here on the same files (our preprocessing: Pillow bilinear resize, the model's own input
                  spec) ─► agreement per model

A model the static check (`metadata.tasks_problems`) says Tasks cannot take must be refused by Tasks too, and a model
it says Tasks can take must run there with its labels and agree with LiteRT.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from tflite_pipeline.data.folders import ImageFolder, read_labels
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.errors import DataError, DependencyError
from tflite_pipeline.export.android import run_images, run_models
from tflite_pipeline.export.metadata import input_spec, read_metadata, tasks_problems
from tflite_pipeline.tflite.flatbuffer import inspect_tflite

MEDIAPIPE_PYTHON_ENV = "TFLITE_PIPELINE_MEDIAPIPE_PYTHON"
DEFAULT_MEDIAPIPE_PYTHON = Path(__file__).resolve().parents[2] / ".venv-mediapipe" / "bin" / "python"
MIN_AGREEMENT = 0.995
_PROBE = Path(__file__).with_name("tasks_probe.py")
_SETUP = (f"create it with `make setup` (.venv-mediapipe with mediapipe==1.2.2), or point {MEDIAPIPE_PYTHON_ENV} / "
          "--mediapipe-python at a Python that has mediapipe")


@dataclass(frozen=True)
class TasksCheck:
    """One model in MediaPipe Tasks: refused (`error`) or its agreement with LiteRT on `images` images."""

    model: str
    expected_ready: bool                  # what the static check said (metadata, uint8/float32 RGB input)
    problems: tuple[str, ...]             # ... and why not
    error: str | None                     # MediaPipe's own refusal
    images: int = 0
    agreement: float | None = None        # same top-1 as LiteRT, on the same resized pixels (gated)
    file_agreement: float | None = None   # ... on the image files, which MediaPipe resizes itself (reported)
    tasks_top1: float | None = None       # against the folder's labels
    litert_top1: float | None = None
    names_match: bool | None = None       # MediaPipe's category names are labels.txt's
    metadata_labels: int | None = None    # labels MediaPipe's schema read back from the file
    metadata_mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def ok(self) -> bool:
        """Tasks did what the static check predicted; a ready model agrees and names its classes."""
        if not self.expected_ready:
            return self.error is not None
        return (self.error is None and self.names_match is True and self.agreement is not None
                and self.agreement >= MIN_AGREEMENT)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}


def format_tasks_table(checks: Sequence[TasksCheck]) -> str:
    lines = ["| model | Tasks-ready (static) | MediaPipe ImageClassifier | images | agreement with LiteRT, same "
             "pixels | ... image files (MediaPipe resizes) | top-1 Tasks (files) / LiteRT | labels read back | "
             "verdict |", "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for c in checks:
        ran = f"refused: {c.error}" if c.error else "ran" + (", names = labels.txt" if c.names_match else
                                                               ", names differ from labels.txt")
        stats = (f"{c.agreement:.2%}", f"{c.file_agreement:.2%}", f"{c.tasks_top1:.2%} / {c.litert_top1:.2%}") \
            if c.agreement is not None else ("", "", "")
        ready = "yes" if c.expected_ready else "no: " + "; ".join(c.problems)
        lines.append(f"| {Path(c.model).name} | {ready} | {ran} | {c.images or ''} | {' | '.join(stats)} | "
                     f"{c.metadata_labels if c.metadata_labels is not None else 'none'} | "
                     f"{'ok' if c.ok else 'FAIL'} |")
    lines.append(f"\nA Tasks-ready model must run in MediaPipe with its labels and agree with LiteRT on >= "
                 f"{MIN_AGREEMENT:.1%} of the images given as the same resized pixels; one that is not must be "
                 "refused. "
                 "Given the image files, MediaPipe resizes them with its own sampling (not Pillow's bilinear, which "
                 "training and our checks use): that column shows what the resize alone costs.")
    return "\n".join(lines)


def find_mediapipe_python(explicit: str | Path | None = None) -> Path:
    """`explicit`, else $TFLITE_PIPELINE_MEDIAPIPE_PYTHON, else the project's `.venv-mediapipe`; `DependencyError`
    when none exists."""
    for candidate in (explicit, os.environ.get(MEDIAPIPE_PYTHON_ENV), DEFAULT_MEDIAPIPE_PYTHON):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
        if candidate and candidate is not DEFAULT_MEDIAPIPE_PYTHON:
            raise DependencyError(f"Received MediaPipe Python {str(candidate)!r}, which does not exist; {_SETUP}.")
    raise DependencyError(f"No Python with MediaPipe found; {_SETUP}.")


def check_tasks(run_dir: str | Path, *, models: Sequence[str] | None = None, images: str | Path | None = None,
                python: str | Path | None = None, log=print) -> tuple[TasksCheck, ...]:
    """Run a run folder's `.tflite`s (or `models` of it) in MediaPipe Tasks' ImageClassifier on `images` (default:
    the run's validation split) and compare each top-1 with LiteRT's on the same files. Raises `DependencyError`
    without MediaPipe, `DataError` for a folder that is not a run."""
    from tflite_pipeline.tflite.interpreter import LiteRTClassifier

    run_dir = Path(run_dir)
    mediapipe = find_mediapipe_python(python)
    spec = PreprocessSpec.read_json(run_dir / "preprocessing.json")
    labels = read_labels(run_dir / "labels.txt")
    folder: ImageFolder = run_images(run_dir, images, labels)
    paths = run_models(run_dir, models)
    log(f"[tasks] {len(paths)} model(s) in MediaPipe ImageClassifier ({mediapipe}) on {len(folder)} images")
    rgb = np.stack([spec.load_rgb(f) for f in folder.files])   # what our checks feed, before normalization
    with tempfile.TemporaryDirectory(prefix="tflite-tasks-") as work:
        np.save(Path(work) / "pixels.npy", rgb)
        answer = _probe(mediapipe, {"models": [str(p.resolve()) for p in paths],  # the probe runs in `work`
                                    "images": [str(Path(f).resolve()) for f in folder.files],
                                    "pixels": str(Path(work) / "pixels.npy")}, Path(work))
    truth = np.asarray(folder.labels)
    checks = []
    for path, result in zip(paths, answer["models"], strict=True):
        meta = read_metadata(path)
        problems = tuple(tasks_problems(inspect_tflite(path), meta))
        read_back = result.get("metadata")
        common = {"model": str(path), "expected_ready": not problems, "problems": problems, "error": result["error"],
                  "metadata_labels": len(read_back["labels"]) if read_back else None,
                  "metadata_mean_std": (tuple(read_back["mean"] or ()), tuple(read_back["std"] or ()))
                  if read_back else None}
        if result["error"]:
            checks.append(TasksCheck(**common))
            continue
        model_spec = input_spec(spec, meta)
        runner = LiteRTClassifier(path)
        litert = np.concatenate([np.argmax(runner.predict(model_spec.normalize(pixels)), axis=1)
                                 for pixels, _ in folder.batches(replace(model_spec, normalization="raw"), 64)])
        tasks = np.asarray(result["top1"])
        names = [labels[i] for i in tasks]
        same_pixels = np.asarray(result["top1_pixels"])
        checks.append(TasksCheck(**common, images=len(tasks), agreement=float(np.mean(same_pixels == litert)),
                                 file_agreement=float(np.mean(tasks == litert)),
                                 tasks_top1=float(np.mean(tasks == truth)), litert_top1=float(np.mean(litert == truth)),
                                 names_match=names == result["names"]))
    return tuple(checks)


def _probe(python: Path, request: dict, work: Path) -> dict:
    try:
        done = subprocess.run([str(python), str(_PROBE)], input=json.dumps(request), capture_output=True,
                              text=True, timeout=3600, check=False, cwd=work)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DependencyError(f"Cannot run MediaPipe with {str(python)!r}: {error}.") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise DependencyError(f"The MediaPipe probe failed in {str(python)!r} (exit {done.returncode}):\n{tail}\n"
                              f"{_SETUP}.")
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise DataError(f"The MediaPipe probe printed no answer: {done.stdout[-500:]!r}") from None
