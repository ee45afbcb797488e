"""Regenerate the bundled image-folder dataset from Debian's `dataset-fashion-mnist` package.

    apt-get install dataset-fashion-mnist
    python representative_data/make_fashion_mnist.py            # rewrites train/ validation/ calibration/

The selection is deterministic (the first N images of each class, in the package's order), and PNGs
are written without timestamps, so running this twice produces byte-identical folders.

Splits:
  train        first TRAIN_PER_CLASS images per class of the 60k training set
  calibration  the next CALIBRATION_PER_CLASS images per class of the training set (disjoint from train)
  validation   first VALIDATION_PER_CLASS images per class of the 10k test set
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE_DIR = Path("/usr/share/datasets/fashion-mnist")
# Folder-safe class names in Fashion-MNIST's label order (0..9); labels.txt lists them in this order.
CLASS_NAMES = (
    "tshirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
TRAIN_PER_CLASS = 1200
CALIBRATION_PER_CLASS = 50
VALIDATION_PER_CLASS = 200


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (ubyte) into an array of its declared shape."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (header {data[:4]!r})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_split(out: Path, images: np.ndarray, labels: np.ndarray, per_class: int, skip: int = 0) -> None:
    for class_index, name in enumerate(CLASS_NAMES):
        (out / name).mkdir(parents=True, exist_ok=True)
        indices = np.flatnonzero(labels == class_index)[skip : skip + per_class]
        if len(indices) < per_class:
            raise ValueError(f"class {name}: only {len(indices)} images available, {per_class} requested")
        for index in indices:
            Image.fromarray(images[index], mode="L").save(out / name / f"{index:05d}.png", optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SOURCE_DIR, help="folder with the IDX .gz files")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)

    missing = [n for n in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz") if not (args.source / n).exists()]
    if missing:
        print(f"error: {args.source} lacks {missing}; install it with `apt-get install dataset-fashion-mnist`",
              file=sys.stderr)
        return 2

    train_x = read_idx(args.source / "train-images-idx3-ubyte.gz")
    train_y = read_idx(args.source / "train-labels-idx1-ubyte.gz")
    test_x = read_idx(args.source / "t10k-images-idx3-ubyte.gz")
    test_y = read_idx(args.source / "t10k-labels-idx1-ubyte.gz")

    for split in ("train", "validation", "calibration"):
        shutil.rmtree(args.out / split, ignore_errors=True)
    write_split(args.out / "train", train_x, train_y, TRAIN_PER_CLASS)
    write_split(args.out / "calibration", train_x, train_y, CALIBRATION_PER_CLASS, skip=TRAIN_PER_CLASS)
    write_split(args.out / "validation", test_x, test_y, VALIDATION_PER_CLASS)
    (args.out / "labels.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    print(f"wrote {len(CLASS_NAMES)} classes x ({TRAIN_PER_CLASS} train, {VALIDATION_PER_CLASS} validation, "
          f"{CALIBRATION_PER_CLASS} calibration) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
