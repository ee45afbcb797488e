"""The bad-input matrix: every row is one thing a user can get wrong, run through the CLI in process.

Each must give the typed error of its family (and so that family's exit code), a message that says what
was received and what to do, and leave every file in the workspace as it was: nothing written, nothing
changed. `python tests/test_bad_input.py` prints the matrix as a table.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import data_and_cnn, save_small_cnn

import tflite_pipeline as tp
from tflite_pipeline import cli
from tflite_pipeline.cli import main
from tflite_pipeline.errors import INTERNAL_ERROR_EXIT
from tflite_pipeline.model.load import load_model


@dataclass
class Workspace:
    """A model, a small good dataset (10 classes; train/validation/calibration) and an output folder."""

    root: Path
    model: Path
    data: Path

    @property
    def out(self) -> Path:
        return self.root / "out"

    def convert(self, *extra: str, model: Path | None = None, data: Path | None = None) -> list[str]:
        return ["convert", str(model or self.model), "--data", str(data or self.data), "--output-dir", str(self.out),
                "--run-name", "run", *extra]

    def run(self, *overrides: str) -> list[str]:
        sets = [arg for item in overrides for arg in ("--set", item)]
        return ["run", "--data", str(self.data), "--output-dir", str(self.out), "--run-name", "run",
                "--set", "model.input_size=32", "--set", f"model.source={self.model}", *sets]

    def keras_model(self, name: str, build: Callable) -> Path:
        import tf_keras as keras

        path = self.root / name
        build(keras).save(path)
        return path

    def first_image(self, class_index: int = 0) -> Path:
        folder = sorted((self.data / "validation").iterdir())[class_index]
        return sorted(folder.iterdir())[0]


@dataclass(frozen=True)
class Case:
    input: str                                     # what the user gave: the matrix's first column
    error: type[tp.PipelineError]
    message: str                                   # regular expression the message must match
    make: Callable[[Workspace], list[str]]         # builds the bad input; returns the CLI arguments
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


# --- builders for the rows ---------------------------------------------------------------------------------

def _empty_class(ws: Workspace) -> list[str]:
    folder = ws.first_image().parent
    for image in folder.iterdir():
        image.unlink()
    return ws.convert()


def _drop_file(name: str, content: bytes) -> Callable[[Workspace], list[str]]:
    def make(ws: Workspace) -> list[str]:
        (ws.first_image().parent / name).write_bytes(content)
        return ws.convert()
    return make


def _truncated_png(ws: Workspace) -> list[str]:
    image = ws.first_image(1)
    image.write_bytes(image.read_bytes()[:120])
    return ws.convert()


def _labels_not_matching_folders(ws: Workspace) -> list[str]:
    labels = (ws.data / "labels.txt").read_text().split("\n")
    (ws.data / "labels.txt").write_text("\n".join(["jacket" if line == "coat" else line for line in labels]))
    return ws.convert()


def _three_classes(ws: Workspace) -> list[str]:
    keep = (ws.data / "labels.txt").read_text().split()[:3]
    for split in ("validation", "calibration"):
        for folder in (ws.data / split).iterdir():
            if folder.name not in keep:
                shutil.rmtree(folder)
    (ws.data / "labels.txt").write_text("\n".join(keep) + "\n")
    return ws.convert()


def _three_class_calibration(ws: Workspace) -> list[str]:
    """3 classes with one calibration image each, and a model of 3 classes: 3 representative images."""
    _three_classes(ws)
    ws.model = save_small_cnn(ws.root / "cnn3.keras", classes=3)
    return ws.convert()


def _tabular(keras):
    inputs = keras.Input((20,))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(inputs))


def _keras3_without_twin(ws: Workspace) -> list[str]:
    """A Keras 3 model with a layer tf_keras does not have (RMSNormalization), through a tfmot stage."""
    import keras as keras3

    path = ws.root / "k3.keras"
    keras3.Sequential([keras3.Input((32, 32, 3)), keras3.layers.Conv2D(8, 3), keras3.layers.RMSNormalization(
        name="rms"), keras3.layers.GlobalAveragePooling2D(), keras3.layers.Dense(10, activation="softmax")]).save(path)
    ws.model = path
    return ws.run("qat.enabled=true", "train.epochs=0")


def _lambda(keras):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0, name="doubler")(inputs)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))


def _nested(keras):
    backbone = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(8, 3)], name="backbone")
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def _layer_norm(keras):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.LayerNormalization(name="norm")(keras.layers.Conv2D(8, 3)(inputs))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))


def _nan_weights(keras):
    model = _conv_classifier(keras)
    kernel, bias = model.layers[1].get_weights()
    kernel[0, 0, 0, 0] = np.nan
    model.layers[1].set_weights([kernel, bias])
    return model


def _overflowing(keras):
    """Finite weights whose activations overflow float32 on real images (27 products of ~1e38)."""
    model = _conv_classifier(keras)
    kernel, bias = model.layers[1].get_weights()
    model.layers[1].set_weights([np.full_like(kernel, 3e38), bias])
    return model


def _conv_classifier(keras):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))


def _with_model(build: Callable, command: str = "convert", *overrides: str) -> Callable[[Workspace], list[str]]:
    def make(ws: Workspace) -> list[str]:
        path = ws.keras_model(f"{build.__name__.strip('_')}.h5", build)
        if command == "convert":
            return ws.convert(model=path)
        ws.model = path
        return ws.run(*overrides)
    return make


def _tflite(content: Callable[[Workspace], bytes]) -> Callable[[Workspace], list[str]]:
    def make(ws: Workspace) -> list[str]:
        path = ws.root / "model.tflite"
        path.write_bytes(content(ws))
        return ["inspect", str(path)]
    return make


def _existing_run(ws: Workspace) -> list[str]:
    (ws.out / "run").mkdir(parents=True)
    (ws.out / "run" / "report.json").write_text("{}")
    return ws.convert()


def _output_dir_is_a_file(ws: Workspace) -> list[str]:
    (ws.root / "taken").write_text("a file where the output folder should go")
    return [*ws.convert()[:-4], "--output-dir", str(ws.root / "taken" / "models"), "--run-name", "run"]


def _disk_full_over_an_earlier_run(ws: Workspace) -> list[str]:
    (ws.out / "run").mkdir(parents=True)
    (ws.out / "run" / "cnn_float32.tflite").write_bytes(b"the earlier run's model")
    return ws.convert("--variants", "float32", "--overwrite")


def _no_space(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr("tflite_pipeline.files.os.fsync", full)


def _tiny_tflite(ws: Workspace) -> bytes:
    from tflite_pipeline.tflite.convert import convert_float32

    return convert_float32(load_model(ws.model))


# --- inputs from other systems and hostile sources ----------------------------------------------------------

def _bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A 100-byte PNG whose header declares 10 gigapixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def _rename_class_not_utf8(ws: Workspace) -> list[str]:
    """A class folder named in Latin-1 bytes (as an old system writes 'café'), and no labels.txt to name it."""
    for split in ("train", "validation", "calibration"):
        os.rename(ws.data / split / "coat", os.fsencode(ws.data / split) + b"/caf\xe9")
    (ws.data / "labels.txt").unlink()
    return ws.convert()


def _labels_not_utf8(ws: Workspace) -> list[str]:
    text = (ws.data / "labels.txt").read_text().replace("coat", "caf\u00e9")
    (ws.data / "labels.txt").write_bytes(text.encode("latin-1"))
    return ws.convert()


def _link(target: str | Path, name: str) -> Callable[[Workspace], list[str]]:
    def make(ws: Workspace) -> list[str]:
        os.symlink(target, ws.first_image().parent / name)
        return ws.convert()
    return make


def _fifo(ws: Workspace) -> list[str]:
    os.mkfifo(ws.first_image().parent / "camera.png")
    return ws.convert()


def _wide(ws: Workspace) -> list[str]:
    """1,000 class folders (one image each) for a 10-class model."""
    image = ws.first_image().read_bytes()
    root = ws.root / "wide"
    for number in range(1000):
        (root / f"class{number:04d}").mkdir(parents=True)
        (root / f"class{number:04d}" / "a.png").write_bytes(image)
    return ws.convert(data=root)


def _damaged_archive(edit: Callable[[bytes], bytes]) -> Callable[[Workspace], list[str]]:
    """The model's .keras zip, valid as an archive, with its config.json edited."""
    def make(ws: Workspace) -> list[str]:
        import zipfile

        damaged = ws.root / "damaged.keras"
        with zipfile.ZipFile(ws.model) as source, zipfile.ZipFile(damaged, "w") as target:
            for item in source.infolist():
                data = source.read(item.filename)
                target.writestr(item, edit(data) if item.filename == "config.json" else data)
        return ws.convert(model=damaged)
    return make


CASES = {
    # data: exit 5
    "missing-data-folder": Case("data folder that does not exist", tp.DataError, r"'.*/nowhere' does not exist",
                                lambda ws: ws.convert(data=ws.root / "nowhere")),
    "empty-data-folder": Case("empty data folder", tp.DataError, r"has no class sub-folders",
                              lambda ws: (ws.root / "empty").mkdir() or ws.convert(data=ws.root / "empty")),
    "class-folder-without-images": Case("class folder with no images", tp.DataError,
                                        r"Class folder '.*' has no images; add images or remove the class",
                                        _empty_class),
    "non-image-file": Case("a file that is not an image (notes.txt)", tp.DataError,
                           r"not images: \['notes.txt'\].*skip_bad_images", _drop_file("notes.txt", b"hello")),
    "text-named-png": Case("a text file named .png", tp.DataError, r"Cannot decode image '.*fake.png'.*remove or "
                           r"replace", _drop_file("fake.png", b"not a png")),
    "truncated-image": Case("a truncated PNG", tp.DataError, r"Cannot decode image '.*\.png'", _truncated_png),
    "labels-not-matching-folders": Case("labels.txt naming a class with no folder", tp.DataError,
                                        r"missing folders \['jacket'\], folders not in the labels \['coat'\]",
                                        _labels_not_matching_folders),
    "too-few-calibration-images": Case("3 calibration images", tp.DataError,
                                       r"has 3 images; full-integer calibration needs at least 10",
                                       _three_class_calibration),
    "decompression-bomb": Case("a PNG declaring 100,000 x 100,000 pixels (decompression bomb)", tp.DataError,
                               r"Cannot decode image '.*bomb.png' \(DecompressionBombError: Image size "
                               r"\(10000000000 pixels\) exceeds limit", _drop_file("bomb.png", _bomb_png())),
    "class-folder-not-utf8": Case("a class folder named in Latin-1 (caf\\xe9)", tp.DataError,
                                  r"Class folder b'.*caf\\xe9' has a name that is not valid UTF-8; rename it",
                                  _rename_class_not_utf8),
    "labels-not-utf8": Case("labels.txt saved as Latin-1", tp.DataError,
                            r"Labels file '.*labels.txt' is not UTF-8 text \(byte \d+: b'\\xe9'\); save it as UTF-8",
                            _labels_not_utf8),
    "folder-link-loop": Case("a link to its own folder (symlink loop)", tp.DataError,
                             r"'.*/loop' leads back into a folder already read \(a symbolic link loop",
                             _link(".", "loop")),
    "file-link-loop": Case("a file link pointing at itself", tp.DataError,
                           r"'.*self.png' is a symbolic link that cannot be followed \(Too many levels of symbolic "
                           r"links", _link("self.png", "self.png")),
    "dangling-link": Case("a link to a file that does not exist", tp.DataError,
                          r"'.*gone.png' is a symbolic link that cannot be followed \(No such file or directory: "
                          r"'/nonexistent/gone.png'\).*Remove it", _link("/nonexistent/gone.png", "gone.png")),
    "fifo-named-png": Case("a FIFO named camera.png (would block a read)", tp.DataError,
                           r"'.*camera.png' is a FIFO \(named pipe\); data folders hold only images and folders",
                           _fifo),
    # models: exit 6
    "very-wide-tree": Case("1,000 class folders for a 10-class model", tp.ModelError,
                           r"outputs 10 classes but the labels of .* lists 1000; use the labels.txt", _wide),
    "archive-with-truncated-config": Case("a .keras archive whose config.json is cut short", tp.ModelError,
                                          r"Cannot load Keras model '.*damaged.keras' \(JSONDecodeError: .*\): the "
                                          r"file is damaged", _damaged_archive(lambda data: data[:len(data) // 2])),
    "archive-with-garbled-config": Case("a .keras archive whose config names an unknown layer class", tp.ModelError,
                                        r"Cannot load Keras model '.*damaged.keras' \(TypeError: .*\): the file is "
                                        r"damaged", _damaged_archive(lambda data: data.replace(b'"Conv2D"',
                                                                                               b'"Conv9D"'))),
    "missing-model-file": Case("model file that does not exist", tp.ModelError, r"does not exist; expected a .keras",
                               lambda ws: ws.convert(model=ws.root / "none.keras")),
    "labels-vs-model-outputs": Case("3 classes for a 10-output model", tp.ModelError,
                                    r"outputs 10 classes but the labels of .* lists 3; use the labels.txt",
                                    _three_classes),
    "input-not-an-image": Case("model whose input is not an image", tp.ModelError,
                               r"takes input of shape \(None, 20\); expected an image batch", _with_model(_tabular)),
    "keras3-layer-without-twin": Case("a Keras 3 model with a layer tf_keras lacks, QAT on", tp.ModelError,
                                      r"'rms' \(keras.*RMSNormalization\).*no tf_keras twin.*post-training",
                                      _keras3_without_twin),
    "lambda-layer": Case("a model with a Lambda layer (safe mode)", tp.ModelError,
                         r"Lambda layers \['doubler'\].*--unsafe-load", _with_model(_lambda)),
    "layer-tfmot-cannot-quantize": Case("QAT on a LayerNormalization", tp.ModelError,
                                        r"tfmot cannot quantize .*norm", _with_model(_layer_norm, "run",
                                                                                     "qat.enabled=true")),
    "nan-weights": Case("NaN in the weights", tp.ModelError, r"NaN or Inf weights in \['conv \(kernel:0\)'\]",
                        _with_model(_nan_weights)),
    "inf-activations": Case("activations overflowing to Inf during calibration", tp.ModelError,
                            r"NaN or Inf activations on the calibration images, first in layer 'conv'",
                            _with_model(_overflowing)),
    # recipes: exit 4
    "unknown-recipe-field": Case("--set train.epoch=2 (typo)", tp.RecipeError,
                                 r"Unknown key `train.epoch`; known keys in \[train\]",
                                 lambda ws: ws.run("train.epoch=2")),
    "out-of-range-field": Case("--set prune.target_sparsity=1.0", tp.RecipeError,
                               r"`prune.target_sparsity=1.0`; expected a value in \[0, 1\)",
                               lambda ws: ws.run("prune.enabled=true", "prune.target_sparsity=1.0")),
    "more-clusters-than-weights": Case("256 clusters for a 216-weight kernel", tp.RecipeError,
                                       r"`cluster.clusters=256` but layer 'conv' has only 216 weights",
                                       _with_model(_conv_classifier, "run", "cluster.enabled=true",
                                                   "cluster.clusters=256", "cluster.exclude=[]")),
    "too-few-calibration-samples": Case("--calibration-samples 5", tp.RecipeError,
                                        r"`convert.calibration_samples=5`; expected an integer >= 10",
                                        lambda ws: ws.convert("--calibration-samples", "5")),
    "unknown-recipe": Case("--recipe nope", tp.RecipeError, r"Unknown recipe 'nope'; bundled recipes: .*default",
                           lambda ws: ["run", "--recipe", "nope", "--output-dir", str(ws.out)]),
    # .tflite files: exit 8
    "truncated-tflite": Case("a truncated .tflite", tp.TFLiteFileError, r"truncated or damaged",
                             _tflite(lambda ws: _tiny_tflite(ws)[:2000])),
    "not-a-tflite": Case("a PNG named .tflite", tp.TFLiteFileError, r"not a TFLite model",
                         _tflite(lambda ws: ws.first_image().read_bytes())),
    # outputs: exit 10
    "existing-run-folder": Case("a run folder that exists", tp.OutputError,
                                r"exists already; choose another --run-name or pass --overwrite", _existing_run),
    "output-dir-not-writable": Case("--output-dir under a file", tp.OutputError, r"is a file, not a folder",
                                    _output_dir_is_a_file),
    "run-name-escaping": Case("--run-name ../elsewhere", tp.OutputError, r"Received run name '../elsewhere'",
                              lambda ws: [*ws.convert()[:-2], "--run-name", "../elsewhere"]),
    "disk-full": Case("disk full while writing over an earlier run (simulated ENOSPC)", tp.OutputError,
                      r"Cannot write '.*cnn_float32.tflite': No space left on device",
                      _disk_full_over_an_earlier_run, patch=_no_space),
}


@pytest.fixture(scope="module")
def good_inputs(tmp_path_factory) -> Path:
    return data_and_cnn(tmp_path_factory.mktemp("good"), {"train": 2, "validation": 2, "calibration": 1})


@pytest.fixture
def workspace(good_inputs, tmp_path) -> Workspace:
    shutil.copytree(good_inputs / "data", tmp_path / "data")
    shutil.copy(good_inputs / "cnn.keras", tmp_path / "cnn.keras")
    return Workspace(tmp_path, tmp_path / "cnn.keras", tmp_path / "data")


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root` with its content hash: "nothing written or changed" is equality."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gets_its_typed_error_and_exit_code_and_writes_nothing(name, workspace, monkeypatch, capsys):
    case = CASES[name]
    argv = case.make(workspace)
    before = snapshot(workspace.root)
    if case.patch:
        case.patch(monkeypatch)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == case.error.exit_code, err[-2000:]
    assert f"error ({case.error.__name__}):" in err
    assert __import__("re").search(case.message, err), err[-2000:]
    assert snapshot(workspace.root) == before


@pytest.mark.fast
def test_exit_codes_are_distinct_per_error_family():
    families = [tp.DependencyError, tp.RecipeError, tp.DataError, tp.ModelError, tp.ConversionError,
                tp.TFLiteFileError, tp.ParityError, tp.OutputError, tp.CompatibilityError, tp.OptionalStepError]
    codes = [family.exit_code for family in families] + [INTERNAL_ERROR_EXIT]
    assert len(set(codes)) == len(codes) and 0 not in codes and 2 not in codes  # 2 is argparse's usage error


@pytest.mark.fast
@pytest.mark.parametrize("verbose", [False, True])
def test_a_bug_of_ours_ends_in_one_line_and_its_exit_code_with_the_traceback_only_when_verbose(
        verbose, monkeypatch, capsys):
    def broken(args):
        raise ValueError("Expected num_to_sample <= points.rows(). 8 vs 7.")

    monkeypatch.setitem(cli._COMMANDS, "recipes", broken)
    assert main(["recipes", *(["--verbose"] if verbose else [])]) == INTERNAL_ERROR_EXIT
    err = capsys.readouterr().err
    assert "error (unexpected ValueError): Expected num_to_sample <= points.rows(). 8 vs 7." in err
    assert "bug in tflite_pipeline" in err and "--verbose" in err
    assert ("Traceback (most recent call last)" in err) is verbose


def test_skipped_bad_images_are_counted_and_named_in_the_report(workspace, capsys):
    _drop_file("notes.txt", b"hello")(workspace)
    _drop_file("fake.png", b"not a png")(workspace)
    _truncated_png(workspace)
    assert main(workspace.convert("--variants", "float32", "--skip-bad-images")) == 0
    report = __import__("json").loads((workspace.out / "run" / "report.json").read_text())
    assert report["data"]["skipped_files"] == 3
    assert sorted(Path(f).name for files in report["data"]["skipped"].values() for f in files) == \
        sorted(["notes.txt", "fake.png", workspace.first_image(1).name])
    assert "> warning: skipped 3 files that are not decodable images" in \
        (workspace.out / "run" / "report.md").read_text()


def test_a_nested_model_with_qat_is_flattened_not_rejected(workspace, capsys):
    """Nested models were refused for QAT (exit 6, "Rebuild it functionally"); they are rebuilt flat now."""
    workspace.model = workspace.keras_model("nested.keras", _nested)
    argv = workspace.run("qat.enabled=true", "qat.epochs=1", "train.epochs=0", "convert.variants=[]",
                         "convert.calibration_samples=10", "verify.max_top1_drop=100", "verify.min_agreement=0")
    assert main(argv) == 0, capsys.readouterr().err[-2000:]
    report = __import__("json").loads((workspace.out / "run" / "report.json").read_text())
    assert report["model"]["rebuild"]["nested"] == ["backbone"] and report["model"]["rebuild"]["max_abs_diff"] < 1e-5


def test_images_of_odd_modes_are_converted_not_rejected(workspace, capsys):
    """Palette, 16-bit grayscale, CMYK and RGBA files in the data: decoded to the model's RGB, the run passes."""
    from PIL import Image

    folders = sorted((workspace.data / "validation").iterdir())
    for folder, mode in zip(folders, ("P", "I;16", "CMYK", "RGBA"), strict=False):
        image_path = sorted(folder.iterdir())[0]
        with Image.open(image_path) as image:
            gray = np.asarray(image.convert("L"))
        if mode == "I;16":
            odd = Image.frombytes("I;16", gray.shape[::-1], (gray.astype("<u2") * 257).tobytes())
        else:
            odd = Image.fromarray(gray, "L").convert("RGB").convert(mode)
        image_path.unlink()
        odd.save(image_path.with_suffix(".jpg" if mode == "CMYK" else ".png"))
    assert main(workspace.convert("--variants", "float32")) == 0, capsys.readouterr().err[-2000:]
    report = __import__("json").loads((workspace.out / "run" / "report.json").read_text())
    assert report["data"]["validation"] == 20 and report["data"]["skipped_files"] == 0
    assert report["parity"]["rows"][0]["agreement"] == 1.0


# --- legitimate inputs from other systems: accepted ----------------------------------------------------------

def _labels_from_another_editor(ws: Workspace) -> list[str]:
    """A byte-order mark, CRLF line ends, spaces after names and blank lines at the end (Notepad, Excel exports)."""
    names = (ws.data / "labels.txt").read_text().split()
    (ws.data / "labels.txt").write_bytes(("\ufeff" + "".join(f"{name}  \r\n" for name in names) + "\r\n \r\n")
                                         .encode("utf-8"))
    return ws.convert()


def _file_name_not_utf8(ws: Workspace) -> list[str]:
    image = ws.first_image()
    os.rename(image, os.fsencode(image.parent) + b"/photo-\xff\xfe.png")
    return ws.convert()


def _lying_extensions(ws: Workspace) -> list[str]:
    """A PNG saved as .jpg and a JPEG saved as .png: Pillow reads the content, not the name."""
    from PIL import Image

    png, other = ws.first_image(0), ws.first_image(1)
    png.rename(png.with_suffix(".jpg"))
    with Image.open(other) as image:
        image.convert("RGB").save(other, format="JPEG")
    return ws.convert()


def _linked_from_outside(ws: Workspace) -> list[str]:
    """An image linked from outside the data folder, and a class folder that is a link to another disk."""
    image = ws.first_image()
    (ws.root / "elsewhere").mkdir()
    image.rename(ws.root / "elsewhere" / image.name)
    os.symlink(ws.root / "elsewhere" / image.name, image)
    folder = ws.first_image(1).parent
    shutil.move(folder, ws.root / "other-disk")
    os.symlink(ws.root / "other-disk", folder)
    return ws.convert()


def _deep_tree(ws: Workspace) -> list[str]:
    """A class folder's images 60 sub-folders down (sub-folders count, as in Keras' image_dataset_from_directory)."""
    image = ws.first_image()
    deep = image.parent.joinpath(*(f"level{n:02d}" for n in range(60)))
    deep.mkdir(parents=True)
    image.rename(deep / image.name)
    return ws.convert()


def _wide_folder(ws: Workspace) -> list[str]:
    """2,000 images in one class folder (hard links of one file)."""
    image = ws.first_image()
    for number in range(2000):
        os.link(image, image.parent / f"copy{number:04d}.png")
    return ws.convert()


ACCEPTED = {
    # row: (what the user gave, builder, validation images the run must count)
    "labels-from-another-editor": ("labels.txt with a BOM, CRLF, trailing spaces and blank lines",
                                   _labels_from_another_editor, 20),
    "file-name-not-utf8": ("an image whose file name is not valid UTF-8", _file_name_not_utf8, 20),
    "lying-extensions": ("a PNG named .jpg and a JPEG named .png", _lying_extensions, 20),
    "links-leading-outside": ("an image and a class folder linked from outside the data folder",
                              _linked_from_outside, 20),
    "deep-tree": ("an image 60 folders deep in its class folder", _deep_tree, 20),
    "wide-folder": ("2,000 images in one class folder", _wide_folder, 2020),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_legitimate_input_from_other_systems_is_accepted(name, workspace, capsys):
    _, make, validation = ACCEPTED[name]
    argv = make(workspace)
    assert main([*argv, "--variants", "float32"]) == 0, capsys.readouterr().err[-2000:]
    report = __import__("json").loads((workspace.out / "run" / "report.json").read_text())
    assert report["data"]["validation"] == validation and report["data"]["skipped_files"] == 0
    assert (workspace.out / "run" / "labels.txt").read_text().split() == \
        (workspace.data / "labels.txt").read_text(encoding="utf-8-sig").split()


FLIP_CHILD = """
import json, sys
from pathlib import Path
import numpy as np
from tflite_pipeline.cli import main

source, keras, data, copies = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
original, rng, codes = Path(source).read_bytes(), np.random.default_rng(0), []
for number in range(copies):
    damaged = bytearray(original)
    for position in rng.integers(0, len(damaged), size=int(rng.integers(1, 9))):
        damaged[position] ^= int(rng.integers(1, 256))
    path = Path(sys.argv[5]) / f"copy{number}.tflite"
    path.write_bytes(bytes(damaged))
    codes.append([main(["inspect", str(path)]), main(["verify", str(path), "--keras", keras, "--data", data])]
                 + ([main(["check-runtime", str(path), "--no-legacy-check"])] if number < 8 else []))
print("CODES " + json.dumps(codes))
"""


def test_a_tflite_with_flipped_bytes_never_crashes_or_hangs(reference_run, workspace, tmp_path):
    """40 seeded copies of the int8 reference model, 1-8 random bytes flipped anywhere, through inspect, verify and
    (8 of them) check-runtime in one child process: each ends in success or a typed error, none in a crash (a
    signal), a traceback or a hang. `benchmarks/fuzz_tflite.py` runs 200 copies, each command in its own process."""
    import json
    import subprocess

    done = subprocess.run([sys.executable, "-c", FLIP_CHILD, str(reference_run / "reference_cnn_int8.tflite"),
                           str(reference_run / "reference_cnn_float.keras"), str(workspace.data), "40",
                           str(tmp_path)], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    codes = json.loads(done.stdout.rsplit("CODES ", 1)[1])
    typed = {0, tp.ModelError.exit_code, tp.TFLiteFileError.exit_code, tp.ParityError.exit_code,
             tp.CompatibilityError.exit_code}  # ModelError: a damaged .tflite whose class count no longer fits
    assert all(code in typed for row in codes for code in row), [row for row in codes if set(row) - typed]
    assert sum(row[0] == tp.TFLiteFileError.exit_code for row in codes) >= 5  # damage is caught, not ignored


def matrix_table() -> str:
    lines = ["| # | input | error | exit code | message says |", "|---:|---|---|---:|---|"]
    for number, case in enumerate(CASES.values(), 1):
        lines.append(f"| {number} | {case.input} | {case.error.__name__} | {case.error.exit_code} | "
                     f"`{case.message}` |")
    start = len(CASES) + 1
    lines.append(f"| {start} | a .tflite with 1-8 random bytes flipped (40 copies; inspect, verify, check-runtime) | "
                 "success or TFLiteFileError / ModelError / ParityError / CompatibilityError | 0 / 8 / 6 / 9 / 11 | "
                 "never a crash, "
                 "a traceback or a hang |")
    for number, (description, _, _) in enumerate(ACCEPTED.values(), start + 1):
        lines.append(f"| {number} | {description} | accepted | 0 | the run counts every image |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(matrix_table())
