"""Users' models as they really come, trained on the full Fashion-MNIST: the Keras transfer-learning guide's shape.

    .venv/bin/python benchmarks/user_models.py --out benchmarks/results/user_models      # both, 6 epochs each
    .venv/bin/python benchmarks/user_models.py --only keras3 --epochs 2

(a) `guide_tf_keras.h5`: tf_keras, raw [0, 255] pixels in, `mobilenet_v2.preprocess_input` as op layers
    (TFOpLambda), a MobileNetV2 base (`include_top=False`) called as a nested model, pooling, dropout and a Dense
    logits head, saved as `.h5`.
(b) `guide_keras3.keras`: the same built with Keras 3 (`import keras`), a `Rescaling` layer inside instead of
    `preprocess_input`, saved as `.keras`.

Both train from random weights (ImageNet weights cannot be fetched on this machine) on the 60,000 training images
of Debian's `dataset-fashion-mnist`, gray replicated to RGB and resized to `--size` exactly as the pipeline's
preprocessing does (Pillow, RGB first, then bilinear). The bundled `representative_data/validation` comes from the
10k test set, so it is held out from this training. The builders are imported by the tests (tiny versions).
"""

from __future__ import annotations

import argparse
import gzip
import json
import struct
import time
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE_DIR = Path("/usr/share/datasets/fashion-mnist")


def with_momentum(base, momentum: float | None):
    """Set the base's BatchNormalization momentum (Keras' 0.999 leaves a model trained from scratch for a few
    epochs at chance in inference mode; a user fine-tuning ImageNet weights keeps it)."""
    if momentum is not None:
        for layer in base.layers:
            if type(layer).__name__ == "BatchNormalization":
                layer.momentum = momentum
    return base


def build_tf_keras_guide_model(num_classes: int = 10, size: int = 32, *, alpha: float = 0.35, sequential: bool = False,
                               seed: int = 0, bn_momentum: float | None = None):
    """tf_keras: raw pixels -> preprocess_input (op layers) -> nested MobileNetV2 base -> pooling -> logits.

    `sequential=True` gives `Sequential([Rescaling, base, pooling, dropout, head])` instead (a Sequential cannot
    hold the op layers)."""
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    base = with_momentum(keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha, include_top=False,
                                                        weights=None), bn_momentum)
    if sequential:
        return keras.Sequential([keras.Input((size, size, 3)), keras.layers.Rescaling(1 / 127.5, offset=-1), base,
                                 keras.layers.GlobalAveragePooling2D(), keras.layers.Dropout(0.2),
                                 keras.layers.Dense(num_classes)], name="guide_sequential")
    inputs = keras.Input((size, size, 3))
    x = keras.applications.mobilenet_v2.preprocess_input(inputs)
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name="guide_tf_keras")


def build_keras3_guide_model(num_classes: int = 10, size: int = 32, *, alpha: float = 0.35, seed: int = 0,
                             bn_momentum: float | None = None):
    """Keras 3: raw pixels -> Rescaling -> nested MobileNetV2 base -> pooling -> logits."""
    import keras

    keras.utils.set_random_seed(seed)
    base = with_momentum(keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha, include_top=False,
                                                        weights=None), bn_momentum)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name="guide_keras3")


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        _, _, dims = struct.unpack(">HBB", f.read(4))
        shape = struct.unpack(">" + "I" * dims, f.read(4 * dims))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(shape)


def load_fashion_mnist(split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, size, size, 3) images and their labels, resized the way the pipeline resizes."""
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(SOURCE_DIR / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(SOURCE_DIR / f"{prefix}-labels-idx1-ubyte.gz")
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, gray in enumerate(images):
        rgb = Image.fromarray(gray, "L").convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(rgb)
    return out, labels.astype(np.int64)


def train(model, flavour: str, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *,
          epochs: int, batch_size: int) -> dict[str, float]:
    """Adam, sparse categorical cross-entropy on logits; returns the test accuracy in inference mode."""
    if flavour == "keras3":
        import keras
    else:
        import tf_keras as keras
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    started = time.perf_counter()
    model.fit(x.astype(np.float32), y, batch_size=batch_size, epochs=epochs, verbose=2, shuffle=True)
    seconds = time.perf_counter() - started
    logits = model.predict(x_test.astype(np.float32), batch_size=256, verbose=0)
    return {"test_top1": float(np.mean(np.argmax(logits, axis=1) == y_test)), "train_seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/user_models")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--only", choices=("tf_keras", "keras3"))
    parser.add_argument("--bn-momentum", type=float, default=0.9,
                        help="BatchNormalization momentum of the base (Keras' 0.999 leaves 6 epochs from scratch at "
                             "chance in inference mode: measured, 10.00%% test top-1)")
    args = parser.parse_args()

    import tflite_pipeline  # noqa: F401  - sets TF_USE_LEGACY_KERAS before TensorFlow loads

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x, y = load_fashion_mnist("train", args.size)
    x_test, y_test = load_fashion_mnist("test", args.size)
    summary = {}
    for flavour, build, file in (("tf_keras", build_tf_keras_guide_model, "guide_tf_keras.h5"),
                                 ("keras3", build_keras3_guide_model, "guide_keras3.keras")):
        if args.only and flavour != args.only:
            continue
        model = build(10, args.size, bn_momentum=args.bn_momentum)
        result = train(model, flavour, x, y, x_test, y_test, epochs=args.epochs, batch_size=args.batch_size)
        model.save(out / file)
        summary[file] = {**result, "epochs": args.epochs, "size": args.size, "parameters": int(model.count_params())}
        print(f"{file}: test top-1 {result['test_top1']:.2%} after {args.epochs} epochs "
              f"({result['train_seconds']:.0f} s)", flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
