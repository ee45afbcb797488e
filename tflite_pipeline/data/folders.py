"""Image-folder datasets and THE preprocessing spec.

One `PreprocessSpec` turns a file into model input for training, calibration, evaluation and
(through `preprocessing.json`) the Android app:

    decode with Pillow -> EXIF orientation -> RGB (or L) -> bilinear resize to the model input
    -> normalize: minus_one_to_one  x = p / 127.5 - 1
                  zero_to_one       x = p / 255
                  raw               x = p            (the model normalizes inside itself)
                  mean_std          x = (p / 255 - mean) / std   (per channel)

Datasets stream from disk through tf.data; nothing holds a whole split in memory.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from tflite_pipeline import progress
from tflite_pipeline.data.preprocess import DECODE_ERROR_TAG, DECODE_ERRORS, PreprocessSpec, data_errors, decode_error
from tflite_pipeline.errors import DataError
from tflite_pipeline.files import listing_sha256
from tflite_pipeline.progress import Log

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def read_labels(path: str | Path) -> tuple[str, ...]:
    """Class names, one per line, in output-index order. Blank lines and spaces around names are ignored, and so
    are what other editors add: a UTF-8 byte-order mark and Windows (CRLF) line ends."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except OSError as error:
        raise DataError(f"Cannot read labels file {str(path)!r}: {error.strerror}.") from None
    except UnicodeDecodeError as error:
        raise DataError(f"Labels file {str(path)!r} is not UTF-8 text (byte {error.start}: "
                        f"{error.object[error.start:error.start + 1]!r}); save it as UTF-8.") from None
    names = tuple(line.strip() for line in lines if line.strip())
    if not names:
        raise DataError(f"Labels file {str(path)!r} is empty; expected one class name per line.")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"Labels file {str(path)!r} repeats {duplicates}; class names must be unique.")
    return names


@dataclass(frozen=True)
class ImageFolder:
    """A classification split on disk: `root/<class name>/<image>`; labels index `class_names`.
    `skipped` lists the files left out by `scan(..., skip_bad=True)`."""

    root: Path
    class_names: tuple[str, ...]
    files: tuple[str, ...] = field(repr=False)
    labels: tuple[int, ...] = field(repr=False)
    skipped: tuple[str, ...] = field(default=(), repr=False)

    def __len__(self) -> int:
        return len(self.files)

    @classmethod
    def scan(cls, root: str | Path, class_names: Sequence[str] | None = None, *, check_images: bool = True,
             skip_bad: bool = False, log: Log | None = None) -> ImageFolder:
        """List a folder. Class order: `class_names` (e.g. from labels.txt) else sorted folder names.

        Raises `DataError` for a missing or empty folder, a class folder with no images, a file that
        is not an image, and (with `check_images`) a file Pillow cannot identify. With `skip_bad`, files
        that are not images or do not fully decode are left out and listed in `skipped` instead.
        Opening every image shows progress (`progress.bar`, to `log` when given).
        """
        return _scan_all([(Path(root), class_names)], check_images=check_images, skip_bad=skip_bad, log=log)[0]

    def subset(self, count: int, seed: int = 0) -> ImageFolder:
        """A deterministic random subset of `count` files (all of them when there are fewer)."""
        if count >= len(self):
            return self
        order = np.sort(np.random.default_rng(seed).choice(len(self), size=count, replace=False))
        return replace(self, files=tuple(self.files[i] for i in order), labels=tuple(self.labels[i] for i in order))

    def dataset(self, spec: PreprocessSpec, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                augment: bool = False, deterministic: bool = True):
        """A `tf.data.Dataset` of `(float32 images [N, H, W, C], int32 labels [N])`, streamed from disk: files
        decoded in parallel and prefetched, never a whole split in memory. `deterministic=False` lets a fast
        image overtake a slow one (file order, or the seeded shuffle, is then not kept exactly)."""
        import tensorflow as tf

        def load(path: bytes) -> np.ndarray:
            try:
                return spec.load(os.fsdecode(path))
            except DataError as error:  # crosses tf.numpy_function as a string; see `data_errors`
                raise ValueError(DECODE_ERROR_TAG + str(error)) from None

        def load_tensor(path, label):
            image = tf.numpy_function(load, [path], tf.float32, stateful=False)
            image.set_shape(spec.input_shape)
            if augment:
                image = tf.image.random_flip_left_right(image, seed=seed)
            return image, label

        paths = [os.fsencode(file) for file in self.files]  # bytes: file names need not be valid UTF-8
        ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(self.labels, np.int32)))
        if shuffle:
            ds = ds.shuffle(len(self), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(load_tensor, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
        options = tf.data.Options()  # multi-worker: each worker takes every N-th batch (a file list cannot shard)
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(options)

    def batches(self, spec: PreprocessSpec, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Numpy `(images, labels)` batches in file order; decoding errors raise `DataError`."""
        with data_errors():
            for images, labels in self.dataset(spec, batch_size):
                yield images.numpy(), labels.numpy()


@dataclass
class _Listed:
    """A folder walked but not yet checked: its class names and, per class, the images and the other files."""

    root: Path
    class_names: tuple[str, ...]
    images: list[list[Path]]
    skipped: list[str]


def _walk(root: Path, class_names: Sequence[str] | None, skip_bad: bool) -> _Listed:
    """The cheap part of `ImageFolder.scan`: the layout, the labels and every file name (no image opened)."""
    if not root.is_dir():
        raise DataError(f"Data folder {str(root)!r} does not exist; expected a folder with one "
                        "sub-folder of images per class.")
    folders = class_folders(root)
    if not folders:
        raise DataError(f"Data folder {str(root)!r} has no class sub-folders; expected "
                        f"{root}/<class name>/<images>.")
    if class_names is None:
        class_names = folders
    else:
        class_names = tuple(class_names)
        missing = [name for name in class_names if name not in folders]
        extra = [name for name in folders if name not in class_names]
        if missing or extra:
            raise DataError(f"Class folders in {str(root)!r} do not match the labels: "
                            f"missing folders {missing}, folders not in the labels {extra}.")
    images: list[list[Path]] = []
    skipped: list[str] = []
    for name in class_names:
        entries, unreadable = _walk_class_folder(root / name, skip_bad)
        skipped.extend(str(p) for p in unreadable)
        not_images = [p for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES]
        if not_images and not skip_bad:
            raise DataError(f"{str(root / name)!r} holds files that are not images: "
                            f"{[p.name for p in not_images[:5]]}; expected only {', '.join(IMAGE_SUFFIXES)} "
                            "files. Move them out (or set data.skip_bad_images = true to skip and count them).")
        skipped.extend(str(p) for p in not_images)
        images.append([p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES])
    return _Listed(root, tuple(class_names), images, skipped)


def _scan_all(folders: Sequence[tuple[Path, Sequence[str] | None]], *, check_images: bool = True,
              skip_bad: bool = False, log: Log | None = None) -> list[ImageFolder]:
    """`ImageFolder.scan` of several folders: every layout first (its errors come before any image is opened),
    then every image opened (identified, or with `skip_bad` fully decoded) under one progress bar."""
    listed = [_walk(root, names, skip_bad) for root, names in folders]
    opening = skip_bad or check_images
    total = sum(len(images) for folder in listed for images in folder.images)
    named = len(listed) > 1  # the splits of a dataset: the line names the one being checked
    meter = progress.bar("data", total, "images", what=f"checking {listed[0].root.name}:" if named else "checking",
                         log=log, inherit_step=True) if opening and total else None
    out = []
    try:
        for folder in listed:
            if meter is not None and named:
                meter.what = f"checking {folder.root.name}:"
            files: list[str] = []
            labels: list[int] = []
            skipped = list(folder.skipped)
            for index, (name, images) in enumerate(zip(folder.class_names, folder.images, strict=True)):
                if skip_bad:
                    decodes = [_decodes(p) for p in _counted(images, meter)]
                    skipped.extend(str(p) for p, ok in zip(images, decodes, strict=True) if not ok)
                    images = [p for p, ok in zip(images, decodes, strict=True) if ok]
                elif check_images:
                    for path in _counted(images, meter):
                        _check_identifiable(path)
                if not images:
                    raise DataError(f"Class folder {str(folder.root / name)!r} has no " +
                                    ("usable " if skip_bad else "") +
                                    "images; add images or remove the class (and its line in labels.txt).")
                files.extend(str(p) for p in images)
                labels.extend([index] * len(images))
            out.append(ImageFolder(root=folder.root, class_names=folder.class_names, files=tuple(files),
                                   labels=tuple(labels), skipped=tuple(sorted(skipped))))
    except BaseException:
        if meter is not None:
            meter.close()
        raise
    if meter is not None:
        opened = [f"{folder.root.name} {sum(len(images) for images in folder.images)}" for folder in listed]
        counts = f" ({', '.join(opened)})" if named else ""
        meter.finish(f"[{meter.step}] checked {total} images{counts} in {progress.duration(meter.elapsed)}")
    return out


def _counted(paths: Sequence[Path], meter: progress.Progress | None) -> Iterator[Path]:
    for path in paths:
        yield path
        if meter is not None:
            meter.advance()


def class_folders(root: Path) -> tuple[str, ...]:
    """The sorted class sub-folder names of `root` (hidden ones skipped). Raises `DataError` for a name that is
    not valid UTF-8: class names go into labels.txt, report.json and the app."""
    try:
        names = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    except OSError as error:
        raise DataError(f"Cannot list {str(root)!r}: {error.strerror}.") from None
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(f"Class folder {os.fsencode(root / name)!r} has a name that is not valid UTF-8; rename "
                            "it (class names go into labels.txt, the report and the app).") from None
    return tuple(names)


def _walk_class_folder(folder: Path, skip_bad: bool) -> tuple[list[Path], list[Path]]:
    """The files under a class folder, in sub-folders too (as Keras' `image_dataset_from_directory` reads them),
    symbolic links followed wherever they lead; hidden entries skipped. Returns `(files, unusable)`: an entry
    that is neither a file nor a folder (a dangling link, a link loop, a FIFO that would block the read, a
    device) raises `DataError`, or with `skip_bad` is returned as unusable. Iterative: any depth."""
    files: list[Path] = []
    unusable: list[Path] = []
    pending, seen = [folder], set()
    while pending:
        current = pending.pop()
        try:
            status = current.stat()
            if (status.st_dev, status.st_ino) in seen:
                raise DataError(f"{str(current)!r} leads back into a folder already read (a symbolic link loop or a "
                                "second link to the same folder); remove the link.")
            seen.add((status.st_dev, status.st_ino))
            with os.scandir(current) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as error:
            raise DataError(f"Cannot list {str(current)!r}: {error.strerror}.") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                kind = "folder" if entry.is_dir() else "file" if entry.is_file() else "other"
            except OSError:  # a link loop (ELOOP) and the like
                kind = "other"
            if kind == "folder":
                pending.append(path)
            elif kind == "file":
                files.append(path)
            elif skip_bad:
                unusable.append(path)
            else:
                raise DataError(f"{str(path)!r} is {_not_a_file(path)}; data folders hold only images and folders. "
                                "Remove it (or set data.skip_bad_images = true to skip and count it).")
    return sorted(files), unusable


def _not_a_file(path: Path) -> str:
    import stat

    try:
        mode = path.stat().st_mode
    except OSError as error:
        if path.is_symlink():
            return f"a symbolic link that cannot be followed ({error.strerror}: {os.readlink(path)!r})"
        return f"unreadable ({error.strerror})"
    kinds = {stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a device",
             stat.S_ISBLK: "a device"}
    return next((kind for test, kind in kinds.items() if test(mode)), "not a regular file")


def _check_identifiable(path: Path) -> None:
    try:
        with Image.open(path) as image:
            image.verify()
    except DECODE_ERRORS as error:
        raise decode_error(path, error) from None


def _decodes(path: Path) -> bool:
    """Whether Pillow decodes the whole file (a truncated file passes `verify` but fails here)."""
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except DECODE_ERRORS:
        return False


@dataclass(frozen=True)
class DatasetSplits:
    """The splits of a dataset root plus its class names (from labels.txt or the train folders)."""

    root: Path
    class_names: tuple[str, ...]
    train: ImageFolder | None
    validation: ImageFolder
    calibration: ImageFolder

    def named(self) -> dict[str, ImageFolder]:
        """The splits there are, by name (no `train` when it was not opened)."""
        return {name: split for name in ("train", "validation", "calibration")
                if (split := getattr(self, name)) is not None}

    def counts(self) -> dict[str, int]:
        return {name: len(split) for name, split in self.named().items()}

    def skipped(self) -> dict[str, list[str]]:
        """Files each split left out (`skip_bad_images`); empty when nothing was skipped."""
        return {name: list(split.skipped) for name, split in self.named().items() if split.skipped}

    def skipped_files(self) -> list[str]:
        """Every skipped file once (validation and calibration may share a folder), sorted."""
        return sorted({file for files in self.skipped().values() for file in files})

    @functools.cached_property
    def listings(self) -> dict[str, str]:
        """sha256 of each split's listing (paths and sizes, `listing_sha256`): stats every file once per run,
        for both the stage-cache key and the manifest."""
        return {name: listing_sha256(split.files) for name, split in self.named().items()}


def open_splits(root: str | Path, *, train: str = "train", validation: str = "validation",
                calibration: str = "calibration", labels: str = "labels.txt", need_train: bool = True,
                skip_bad_images: bool = False, log: Log | None = None) -> DatasetSplits:
    """Open `root/{train,validation,calibration}`. A root that is itself a class folder layout (no
    split sub-folders) serves as both validation and calibration data (no training possible).
    `skip_bad_images`: leave out (and list) files that are not decodable images instead of failing.
    Every split is listed before any image is opened; opening them shows one progress bar (to `log` if given)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Data folder {str(root)!r} does not exist.")
    labels_path = root / labels
    class_names = read_labels(labels_path) if labels and labels_path.is_file() else None
    has_splits = (root / validation).is_dir() or (root / calibration).is_dir()
    if not has_splits:
        if need_train:
            raise DataError(f"Data folder {str(root)!r} has no `{train}/`, `{validation}/` and "
                            f"`{calibration}/` splits; training needs them.")
        folder = ImageFolder.scan(root, class_names, skip_bad=skip_bad_images, log=log)
        return DatasetSplits(root, folder.class_names, None, folder, folder)
    for name in (validation, calibration) + ((train,) if need_train else ()):
        if not (root / name).is_dir():
            raise DataError(f"Data folder {str(root)!r} lacks the `{name}/` split.")
    if class_names is None:
        first = root / (train if need_train else validation)
        class_names = class_folders(first)
    splits = ((train,) if need_train else ()) + (validation, calibration)
    scanned = dict(zip(splits, _scan_all([(root / split, class_names) for split in splits],
                                         skip_bad=skip_bad_images, log=log), strict=True))
    return DatasetSplits(root, tuple(class_names), scanned[train] if need_train else None, scanned[validation],
                         scanned[calibration])


def bundled_data_root() -> Path:
    """`representative_data/` of this repository (present in a source checkout)."""
    root = Path(os.environ.get("TFLITE_PIPELINE_DATA", Path(__file__).resolve().parents[2] / "representative_data"))
    if not (root / "train").is_dir():
        raise DataError(f"The bundled dataset is not at {str(root)!r}; it ships with the source checkout. "
                        "Pass your own with --data DIR (or set data.root in the recipe).")
    return root
