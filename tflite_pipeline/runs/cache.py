"""The stage cache: each finished training stage is kept under a key over everything it was made from, so a
run killed in the middle of a stage resumes from the last finished one, and a changed setting retrains
exactly the stages downstream of it.

    inputs   = H(Python and library versions, architecture + weights of the initial model,
                 data manifest (class names; per split: paths and sizes), [preprocess])
    baseline = H(H(inputs, [train]), "baseline")          the trained float model
    stage    = H(previous key, its section, [distill])   thinned, pruned / clustered, qat / pqat / cqat in turn

(`pipeline.stage_keys` builds the chain.)
An entry is a folder `<cache>/<stage>-<key>/` with the Keras model and `stage.json` (what the stage measured,
and the model file's sha256, checked on load). It is staged under a temporary name and renamed into place
when complete, so an entry that exists is whole; a killed process leaves at most a temporary folder, which
is never read and is removed by the next run. Deleting the cache is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tf_keras as keras

from tflite_pipeline import env
from tflite_pipeline.data.folders import DatasetSplits
from tflite_pipeline.errors import OutputError
from tflite_pipeline.files import atomic_write_json, remove_stale, sha256_file, temporary_dir
from tflite_pipeline.model.files import load_model_file, save_model_file

CACHE_FORMAT = 1
_TEMPORARY = ".tmp-"


def fingerprint(*parts: Any) -> str:
    """sha256 of JSON-encoded parts (dict keys sorted): the same settings always give the same key."""
    text = json.dumps([CACHE_FORMAT, *parts], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def weights_fingerprint(model: keras.Model) -> str:
    """sha256 over a model's architecture (its JSON config) and every weight's name, dtype, shape and bytes."""
    digest = hashlib.sha256(model.to_json().encode())
    for weight in model.weights:
        value = weight.numpy()
        digest.update(f"{weight.name}|{value.dtype}|{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def inputs_key(model: keras.Model, splits: DatasetSplits, sections: Mapping[str, Any]) -> str:
    """The key every stage chains from: versions, the initial model, the data (class names and each split's
    listing of paths and sizes) and the shared recipe sections."""
    data = {"class_names": list(splits.class_names), **splits.listings}
    return fingerprint("inputs", env.run_versions(), weights_fingerprint(model), data, dict(sections))


def stage_key(previous: str, label: str, *sections: Any) -> str:
    """The key of a stage made from the stage keyed `previous` with these settings (recipe section dicts)."""
    return fingerprint(previous, label, *sections)


@dataclass(frozen=True)
class CachedStage:
    """A stage read back from the cache: its model and what it recorded (`stage.json`'s `info`)."""

    model: keras.Model
    info: dict[str, Any]


class StageCache:
    """Finished stages on disk under `root` (None: no cache; every stage runs)."""

    def __init__(self, root: str | Path | None, *, log: Callable[[str], None] = print) -> None:
        self.root = Path(root) if root is not None else None
        self.log = log
        self.reused: list[str] = []   # labels of the stages `get` found, in order
        if self.root is not None:
            for path in remove_stale(self.root, _TEMPORARY):
                log(f"[cache] removed {path.name}, left by a process that was stopped while writing it")

    def entry(self, label: str, key: str) -> Path:
        assert self.root is not None
        return self.root / f"{label}-{key[:24]}"

    def get(self, label: str, key: str) -> CachedStage | None:
        """The stage stored under `key` (its label then joins `reused`), or None. An entry whose model file does
        not match its recorded hash is reported and ignored (the stage runs again and replaces it)."""
        if self.root is None:
            return None
        folder = self.entry(label, key)
        try:
            meta = json.loads((folder / "stage.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        model_path = folder / meta["model_file"]
        if meta.get("key") != key or not model_path.is_file() or sha256_file(model_path) != meta["model_sha256"]:
            self.log(f"[cache] ignoring {folder}: its model file does not match stage.json")
            return None
        self.reused.append(label)
        return CachedStage(load_model_file(model_path), meta["info"])

    def put(self, label: str, key: str, model: keras.Model, info: Mapping[str, Any]) -> None:
        """Store a finished stage: written in a temporary folder, renamed into place when complete."""
        if self.root is None:
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            staging = temporary_dir(self.root, _TEMPORARY)
        except OSError as error:
            self.log(f"warning: cannot store the {label} stage in {str(self.root)!r} ({error.strerror}); a re-run "
                     "will train it again")
            return
        try:
            model_file = save_model_file(model, staging).name  # .h5 for QAT: tfmot's wrappers reload from it only
            atomic_write_json(staging / "stage.json", {
                "label": label, "key": key, "model_file": model_file,
                "model_sha256": sha256_file(staging / model_file), "info": dict(info)})
            final = self.entry(label, key)
            if final.exists():  # an earlier run stored the same stage: identical inputs, keep it
                shutil.rmtree(staging)
            else:
                os.replace(staging, final)
        except (OSError, OutputError) as error:  # a full disk loses the cache entry, not the run
            shutil.rmtree(staging, ignore_errors=True)
            self.log(f"warning: cannot store the {label} stage in {str(self.root)!r} ({error}); a re-run will train "
                     "it again")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
