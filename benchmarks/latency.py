"""Batch-1 latency of MobileNetV2 as float32 and full-integer int8 .tflite, side by side on this CPU.

    .venv/bin/python benchmarks/latency.py                            # width 1.0, 224x224, 1000 classes
    .venv/bin/python benchmarks/latency.py --alpha 0.35 --size 96 --threads 1 2
    .venv/bin/python benchmarks/latency.py --int16x8 --threads 1 2     # int16 activations too (builtin kernels)

The model has random weights (`weights=None`; nothing is downloaded) and the int8 model is calibrated
on ~20 seeded random images: kernel speed does not depend on weight values, so this measures latency,
not accuracy. Converted files are cached in OUT/ (reused unless --rebuild). Both models are timed in
one run, interleaved, at each thread count (`tflite_pipeline.tflite.bench`), and the printed table states
the CPU/ISA and the int8/float32 latency ratio per thread count. Writes OUT/<model>_bench.{json,md}; with
--figures also docs/figures/latency-<model>.md (+ .json), which docs/benchmarks.md links.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from figures import write_figure

import tflite_pipeline as tp
from tflite_pipeline.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from tflite_pipeline.tflite.bench import bench_models, bench_report, cpu_description, format_table


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def random_representative(size: int, count: int, seed: int = 0):
    """Converter-ready generator factory: `count` seeded random images in [-1, 1] (MobileNetV2's range)."""
    def generate():
        rng = np.random.default_rng(seed)
        for _ in range(count):
            yield [rng.uniform(-1.0, 1.0, (1, size, size, 3)).astype(np.float32)]
    return generate


def batchnorm_from_data(model, size: int) -> None:
    """Set every BatchNormalization's moving statistics from one batch of random images, as training would.

    A fresh model's mean 0 / variance 1 leaves some depthwise outputs nearly constant; int16x8's kernels then
    refuse to prepare (a requantization multiplier overflows). Latency does not depend on the values."""
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.momentum = 0.0
    model(next(iter(random_representative(size, 1)()))[0].repeat(16, axis=0), training=True)


def convert_models(out: Path, *, alpha: float, size: int, classes: int, calibration: int, rebuild: bool,
                   int16x8: bool = False) -> list[Path]:
    """The cached float32, int8 (and int16x8) .tflite files of MobileNetV2 `alpha` at `size`x`size`, converting
    what is missing."""
    stem = f"mobilenet_v2_{alpha:g}_{size}_{classes}"
    variants = ("float32", "int8", "int16x8") if int16x8 else ("float32", "int8")
    paths = [out / f"{stem}_{variant}.tflite" for variant in variants]
    missing = [(v, p) for v, p in zip(variants, paths, strict=True) if rebuild or not p.is_file()]
    if not missing:
        _log(f"[latency] reusing {', '.join(map(str, paths))} (pass --rebuild to convert again)")
        return paths
    from tflite_pipeline.model.build import build_mobilenet_v2
    from tflite_pipeline.tflite.convert import convert_variant

    started = time.perf_counter()
    model = build_mobilenet_v2(classes, size, alpha=alpha, weights=None, seed=0)
    if int16x8:
        batchnorm_from_data(model, size)
    _log(f"[latency] built {model.name}: {model.count_params():,} parameters (calibration: {calibration} random "
         "images)")
    for variant, path in missing:
        representative = random_representative(size, calibration)
        atomic_write_bytes(path, convert_variant(model, variant, representative=representative, log=_log))
    _log(f"[latency] converted in {time.perf_counter() - started:.0f} s")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width multiplier (default 1.0)")
    parser.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument("--classes", type=int, default=1000, help="output classes (default 1000)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4], help="thread counts (default 1 2 4)")
    parser.add_argument("--runs", type=int, default=50, help="timed invokes per model and thread count")
    parser.add_argument("--warmup", type=int, default=5, help="untimed invokes first")
    parser.add_argument("--kernels", default="xnnpack", choices=("xnnpack", "builtin", "reference"))
    parser.add_argument("--calibration", type=int, default=20, help="random calibration images (default 20)")
    parser.add_argument("--out", default="benchmarks/results/latency", help="cache and output folder")
    parser.add_argument("--rebuild", action="store_true", help="convert again even if cached files exist")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--int16x8", action="store_true", help="also time the int16x8 model (int16 activations)")
    parser.add_argument("--figures", action="store_true", help="also write docs/figures/latency-<model>.md (+ .json)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        paths = convert_models(out, alpha=args.alpha, size=args.size, classes=args.classes,
                               calibration=args.calibration, rebuild=args.rebuild, int16x8=args.int16x8)
        cpu = cpu_description()
        _log(f"[latency] timing on {cpu['model']} ({cpu['summary']}, os.cpu_count() = {cpu['logical_cpus']})")
        benchmarks = bench_models(paths, threads=args.threads, runs=args.runs, warmup=args.warmup,
                                  kernels=args.kernels, memory=not args.no_memory, log=_log)
    except tp.PipelineError as error:
        print(f"error ({type(error).__name__}): {error}", file=sys.stderr)
        return error.exit_code
    table = format_table(benchmarks, cpu)
    title = (f"# MobileNetV2 {args.alpha:g} at {args.size}x{args.size}, {args.classes} classes: batch-1 latency "
             "in LiteRT\n\n")
    print(table)
    stem = paths[0].name.removesuffix("_float32.tflite") + ("_int16x8" if args.int16x8 else "")
    atomic_write_text(out / f"{stem}_bench.md", title + table + "\n")
    atomic_write_json(out / f"{stem}_bench.json", bench_report(benchmarks, cpu))
    if args.figures:
        path = write_figure(f"latency-{stem}", title.strip("# \n"), table.splitlines(), bench_report(benchmarks, cpu))
        _log(f"[latency] wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
