"""Train the reference model the parity-gate tests convert, and measure its reference metrics.

    .venv/bin/python tests/reference/make_reference.py            # train, convert, measure, write both files
    .venv/bin/python tests/reference/make_reference.py --measure  # keep the model, re-measure metrics.json

A small MobileNet-like CNN (28x28 gray input, one inverted-residual block with a skip, depthwise
convolutions, softmax) trained with the pipeline's own data loading on the bundled Fashion-MNIST
training split, seeded and with TensorFlow's deterministic ops. It scores well above chance, so the
default gate (0.5 points of top-1, 98% agreement) means something in `make test`; it converts in
seconds. `metrics.json` records what each variant scores on the bundled validation split through the
pipeline (`tflite-pipeline convert`, default settings), with tolerances, the way NNCF keeps reference
metrics for its conformance tests: `tests/tflite/test_gate.py` checks a fresh conversion against it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODEL = HERE / "reference_cnn.keras"
METRICS = HERE / "metrics.json"
EPOCHS = 6
SEED = 0
# The tolerances a fresh conversion must meet, in top-1 fraction on the 2,000 validation images. Keras
# is deterministic on one machine; the converted models move by a few images between CPUs (XNNPACK's
# kernels differ per ISA) and calibration orders, hence 0.5 points (10 images) for them.
TOLERANCE = {"keras": 0.002, "float32": 0.002, "int8": 0.005}
MIN_AGREEMENT_INT8 = 0.98


def build(keras):
    """28x28x1 -> 10 classes: stem conv, an inverted-residual block with a skip, a strided one, GAP, softmax."""
    def conv_bn(x, filters, kernel=1, strides=1, relu=True, name=""):
        x = keras.layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=name)(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        return keras.layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x

    def depthwise_bn(x, strides, name):
        x = keras.layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False, name=name)(x)
        return keras.layers.ReLU(6.0, name=f"{name}_relu")(keras.layers.BatchNormalization(name=f"{name}_bn")(x))

    inputs = keras.Input((28, 28, 1), name="image")
    x = conv_bn(inputs, 24, 3, strides=2, name="stem")                    # 14x14x24
    y = depthwise_bn(conv_bn(x, 72, name="b1_expand"), 1, "b1_dw")
    x = keras.layers.Add(name="b1_add")([x, conv_bn(y, 24, relu=False, name="b1_project")])
    y = depthwise_bn(conv_bn(x, 96, name="b2_expand"), 2, "b2_dw")        # 7x7
    x = conv_bn(y, 48, relu=False, name="b2_project")
    x = conv_bn(x, 128, name="head")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name="reference_cnn")


def train() -> None:
    import tensorflow as tf
    import tf_keras as keras

    from tflite_pipeline.config.sections import TrainConfig
    from tflite_pipeline.data.folders import open_splits
    from tflite_pipeline.data.preprocess import PreprocessSpec
    from tflite_pipeline.files import atomic_write_bytes
    from tflite_pipeline.model.train import train_classifier

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    splits = open_splits(REPO / "representative_data")
    model = build(keras)
    spec = PreprocessSpec(height=28, width=28, channels=1, normalization="minus_one_to_one")
    config = TrainConfig(epochs=EPOCHS, learning_rate=3e-3, batch_size=64, seed=SEED, deterministic=True)
    trained = train_classifier(model, splits.train, spec, config, validation=splits.validation, deterministic=True)
    with tempfile.TemporaryDirectory() as work:
        trained.save(Path(work) / MODEL.name)
        atomic_write_bytes(MODEL, (Path(work) / MODEL.name).read_bytes())
    print(f"wrote {MODEL} ({MODEL.stat().st_size:,} bytes)")


def measure() -> dict:
    """Convert the committed model with the CLI's defaults and read what the run measured."""
    cli = Path(sys.executable).with_name("tflite-pipeline")
    with tempfile.TemporaryDirectory() as out:
        command = [str(cli), "convert", str(MODEL), "--data", str(REPO / "representative_data"),
                   "--output-dir", out, "--run-name", "reference"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        print(done.stdout)
        if done.returncode != 0:
            raise SystemExit(f"conversion failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        report = json.loads((Path(out) / "reference" / "report.json").read_text())
    rows = {row["variant"]: row for row in report["parity"]["rows"]}
    variants = {"keras": {"top1": report["parity"]["keras_top1"], "tolerance": TOLERANCE["keras"]}}
    for name, row in rows.items():
        variants[name] = {"top1": row["top1"], "agreement": row["agreement"], "tolerance": TOLERANCE[name]}
    return {"model": MODEL.name, "validation": "representative_data/validation", "images": report["data"]["validation"],
            "measured": {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "versions": report["versions"],
                         "machine": report["machine"]},
            "min_agreement": {"int8": MIN_AGREEMENT_INT8}, "variants": variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="keep the committed model; only re-measure")
    args = parser.parse_args()
    if not args.measure:
        train()
    metrics = measure()
    from tflite_pipeline.files import atomic_write_json

    atomic_write_json(METRICS, metrics)
    print(json.dumps(metrics["variants"], indent=2))


if __name__ == "__main__":
    main()
