"""Post-training int8 fidelity, side by side: plain PTQ vs each `[ptq]` technique alone vs their combination vs
int16x8, on trained models, judged on held-out images (the calibration images are a separate split).

    make demo                                                   # trains the bundled baseline (models/demo/)
    .venv/bin/python benchmarks/user_models.py --only keras3      # a user model of another shape (optional)
    .venv/bin/python benchmarks/ptq_fidelity.py --model models/demo/mobilenet_v2_float.keras \\
        --model benchmarks/results/user_models/guide_keras3.keras --figures

For every model: top-1 on the validation split, its drop vs the float Keras model, top-1 agreement with it, the
conversion time and the file size; then batch-1 latency of float32, plain int8, the combination and int16x8 on
this CPU (LiteRT, 1 thread, interleaved). Preprocessing is what the pipeline infers (`auto`). Writes
OUT/ptq_fidelity.{md,json}; with --figures also docs/figures/ptq-fidelity.md (+ .json).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from figures import write_figure

import tflite_pipeline as tp
from tflite_pipeline.config.sections import PreprocessConfig, PTQConfig
from tflite_pipeline.data.folders import ImageFolder, bundled_data_root, read_labels
from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.files import atomic_write_json, atomic_write_text
from tflite_pipeline.model.load import load_model
from tflite_pipeline.model.properties import image_input_shape
from tflite_pipeline.model.rebuild import input_preprocessing
from tflite_pipeline.tflite.bench import bench_models, cpu_description, format_table
from tflite_pipeline.tflite.convert import convert_variant, representative_dataset
from tflite_pipeline.tflite.interpreter import LiteRTClassifier

# (row label, variant, [ptq] settings)
SETTINGS = (
    ("plain PTQ (converter)", "int8", {}),
    ("percentile ranges", "int8", {"ranges": "percentile"}),
    ("mse ranges", "int8", {"ranges": "mse"}),
    ("bias correction", "int8", {"bias_correction": True}),
    ("adaround", "int8", {"adaround": True}),
    ("adaround + bias correction", "int8", {"adaround": True, "bias_correction": True}),
    ("all: percentile + adaround + bias", "int8", {"ranges": "percentile", "adaround": True, "bias_correction": True}),
    ("int16x8", "int16x8", {}),
)
TIMED = ("float32", "plain PTQ (converter)", "all: percentile + adaround + bias", "int16x8")


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def measure(model_path: Path, data: Path, calibration_samples: int, out: Path) -> dict:
    model = load_model(model_path)
    spec = PreprocessSpec.from_config(PreprocessConfig(), image_input_shape(model),
                                      model_normalizes=input_preprocessing(model))
    labels = read_labels(data / "labels.txt")
    representative = representative_dataset(ImageFolder.scan(data / "calibration", labels), spec, calibration_samples)
    batches = list(ImageFolder.scan(data / "validation", labels).batches(spec, 256))
    images, truth = np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])
    reference = np.asarray(model.predict(images, verbose=0)).argmax(1)
    float_top1 = float(np.mean(reference == truth))
    _log(f"[ptq] {model_path.name}: {len(images)} held-out images, {representative.num_samples} calibration images, "
         f"float top-1 {100 * float_top1:.2f}%, input {spec.formula()}")
    rows, files = [], {}
    files["float32"] = out / f"{model_path.stem}_float32.tflite"
    files["float32"].write_bytes(convert_variant(model, "float32", log=_log))
    for label, variant, settings in SETTINGS:
        started = time.perf_counter()
        data_bytes = convert_variant(model, variant, representative=representative, ptq=PTQConfig(**settings),
                                     log=_log, label=label)
        seconds = time.perf_counter() - started
        predicted = LiteRTClassifier(data_bytes).predict(images).argmax(1)
        top1 = float(np.mean(predicted == truth))
        rows.append({"setting": label, "variant": variant, "ptq": settings, "top1": top1,
                     "drop_points": 100 * (float_top1 - top1), "agreement": float(np.mean(predicted == reference)),
                     "convert_seconds": round(seconds, 1), "size_bytes": len(data_bytes)})
        files[label] = out / f"{model_path.stem}_{label.split(':')[0].replace(' ', '_').replace('+', '')}.tflite"
        files[label].write_bytes(data_bytes)
        _log(f"[ptq]   {label}: top-1 {100 * top1:.2f}%, agreement {100 * rows[-1]['agreement']:.2f}%")
    timed = bench_models([files[name] for name in TIMED], threads=(1,), runs=30, warmup=5, memory=False, log=_log)
    return {"model": model_path.name, "float_top1": float_top1, "held_out": len(images),
            "calibration": representative.num_samples, "rows": rows,
            "latency_table": format_table(timed, cpu_description()).splitlines(),
            "latency_ms": {name: b.latencies[0].median_ms for name, b in zip(TIMED, timed, strict=True)}}


def table(result: dict) -> list[str]:
    lines = [f"## {result['model']}: float top-1 {100 * result['float_top1']:.2f}% on {result['held_out']} held-out "
             f"images ({result['calibration']} calibration images apart)", "",
             "| setting | top-1 | drop (points) | agreement with float | conversion | size |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append(f"| {row['setting']} | {100 * row['top1']:.2f}% | {row['drop_points']:+.2f} | "
                     f"{100 * row['agreement']:.2f}% | {row['convert_seconds']:.1f} s | "
                     f"{row['size_bytes'] / 1024:.0f} KiB |")
    lines += ["", "Batch-1 latency (LiteRT, 1 thread; files in the order float32, plain int8, all techniques, "
              "int16x8):", "", *result["latency_table"], ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="a trained Keras model file (repeatable)")
    parser.add_argument("--data", default=None, help="data root with validation/ and calibration/ (default: bundled)")
    parser.add_argument("--calibration", type=int, default=300, help="calibration images (default 300)")
    parser.add_argument("--out", default="benchmarks/results/ptq", help="output folder")
    parser.add_argument("--figures", action="store_true", help="also write docs/figures/ptq-fidelity.md (+ .json)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else bundled_data_root()
    try:
        results = [measure(Path(path), data, args.calibration, out) for path in args.model]
    except tp.PipelineError as error:
        print(f"error ({type(error).__name__}): {error}", file=sys.stderr)
        return error.exit_code
    cpu = cpu_description()
    lines = [f"CPU: {cpu['model']} ({cpu['summary']})", ""] + [line for r in results for line in table(r)]
    print("\n".join(lines))
    atomic_write_text(out / "ptq_fidelity.md", "\n".join(lines) + "\n")
    atomic_write_json(out / "ptq_fidelity.json", {"cpu": cpu, "results": results})
    if args.figures:
        path = write_figure("ptq-fidelity", "Post-training int8 fidelity: techniques side by side", lines,
                            {"cpu": cpu, "results": results})
        _log(f"[ptq] wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
