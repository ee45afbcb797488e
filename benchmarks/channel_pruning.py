"""Channel pruning before/after: MACs, parameters, size, LiteRT latency and accuracy, measured in one run.

    .venv/bin/python benchmarks/channel_pruning.py --baseline models/demo/mobilenet_v2_float.keras
    .venv/bin/python benchmarks/channel_pruning.py                 # trains the baseline first (default recipe)
    .venv/bin/python benchmarks/channel_pruning.py --no-accuracy   # only the 1.0 @ 224 latency part

1. Latency where phones run MobileNetV2: width 1.0 at 224x224, 1000 classes, random weights (nothing is
   downloaded; kernel speed does not depend on weight values). Channels are scored by the activation
   criterion on bundled calibration images resized to 224 and removed down to `--mac-budget` of the MACs.
   The unpruned and the thinned model, each as float32 and int8 (calibrated on the same images), are timed
   side by side in one `bench_models` call (interleaved rounds) at 1 and 2 threads; the table gives the
   speed-up of the thinned model over its unpruned counterpart per precision and thread count.
2. Accuracy on the bundled dataset: the `channels-qat-kd` recipe (channels down to half the MACs with the
   float baseline distilling, QAT with distillation, full-integer int8) from one float baseline, against
   that baseline's float top-1. Latencies there are at the recipe's resolution (64x64), 1 thread.

Writes OUT/summary.json and OUT/summary.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import tflite_pipeline as tp
from tflite_pipeline.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from tflite_pipeline.tflite.bench import bench_models, cpu_description


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _calibration_batches(spec: tp.PreprocessSpec, count: int, batch: int = 16):
    """The first `count` bundled calibration images (seeded subset) preprocessed for `spec`, in batches."""
    from tflite_pipeline.data.folders import bundled_data_root, open_splits

    folder = open_splits(bundled_data_root()).calibration.subset(count, seed=0)
    return folder, [images for images, _ in folder.batches(spec, batch)]


def phone_size_latency(out: Path, *, mac_budget: float, runs: int, calibration: int) -> dict:
    """Part 1: MobileNetV2 1.0 @ 224 unpruned vs thinned, float32 and int8, timed side by side."""
    from tflite_pipeline.config.sections import ChannelsConfig
    from tflite_pipeline.model.build import build_mobilenet_v2
    from tflite_pipeline.optimize.channels import describe, prune_channels
    from tflite_pipeline.tflite.convert import IsolatedConverter, representative_dataset

    spec = tp.PreprocessSpec(224, 224)
    folder, batches = _calibration_batches(spec, calibration)
    model = build_mobilenet_v2(1000, 224, alpha=1.0, weights=None, seed=0)
    started = time.perf_counter()
    thin, plan = prune_channels(model, ChannelsConfig(mac_budget=mac_budget, criterion="activation"), batches)
    _log(f"[channels] {describe(plan)} ({time.perf_counter() - started:.0f} s)")
    representative = representative_dataset(folder, spec, calibration)
    files = {}
    with IsolatedConverter() as converter:  # 1.0 @ 224 conversions: their memory goes back with the child
        for name, keras_model in (("unpruned", model), ("thinned", thin)):
            for precision in ("float32", "int8"):
                path = out / f"mobilenet_v2_1.0_224_{name}_{precision}.tflite"
                _log(f"[convert] {path.name}")
                atomic_write_bytes(path, converter.convert(keras_model, precision, representative=representative))
                files[(name, precision)] = path
    _log(f"[bench] 4 models interleaved, {runs} runs each at 1 and 2 threads")
    timed = dict(zip(files, bench_models(list(files.values()), threads=(1, 2), runs=runs, memory=False, log=_log),
                     strict=True))
    rows = []
    for (name, precision), b in timed.items():
        unpruned = timed[("unpruned", precision)]
        rows.append({"model": name, "precision": precision, "file": str(files[(name, precision)]),
                     "macs": b.macs, "parameters": b.parameters, "size": b.size_bytes, "gzip": b.gzip_bytes,
                     "median_ms": {r.threads: r.median_ms for r in b.latencies},
                     "speedup": {r.threads: unpruned.latency(r.threads).median_ms / r.median_ms
                                 for r in b.latencies}})
    return {"mac_budget": mac_budget, "plan": plan.to_dict(), "rows": rows, "calibration_images": len(folder)}


def bundled_accuracy(out: Path, baseline: str | None, reuse: bool) -> dict:
    """Part 2: the channels-qat-kd recipe on the bundled dataset, from one float baseline."""
    if baseline is None:
        result = tp.run(tp.load_recipe("default"), output_dir=out, run_name="baseline", overwrite=True)
        baseline = str(result.run_dir / "mobilenet_v2_float.keras")
    run_dir = out / "channels-qat-kd"
    if not (reuse and (run_dir / "report.json").is_file()):
        recipe = tp.load_recipe("channels-qat-kd").with_overrides({
            "model.source": baseline, "model.name": "mobilenet_v2", "train.epochs": 0})
        tp.run(recipe, output_dir=out, run_name="channels-qat-kd", overwrite=True)
    report = json.loads((run_dir / "report.json").read_text())
    rows = {r["variant"]: r for r in report["parity"]["rows"]}
    artifacts = {a["variant"]: a for a in report["artifacts"]}
    return {"baseline": baseline, "run_dir": str(run_dir), "keras_top1": report["parity"]["keras_top1"],
            "stages": report["stages"], "channels": report["channels"], "images": report["parity"]["num_images"],
            "files": {v: {"top1": rows[v]["top1"], "agreement": rows[v]["agreement"],
                          "source": rows[v]["source"], "source_agreement": rows[v]["source_agreement"],
                          "macs": a["info"]["macs"], "parameters": a["info"]["num_parameters"],
                          "size": a["size_bytes"], "gzip": a["gzip_bytes"],
                          "median_ms": (a["latency"] or {}).get("median_ms")}
                      for v, a in artifacts.items()}}


def format_latency(part: dict, cpu: dict, runs: int) -> str:
    lines = [f"## MobileNetV2 1.0 @ 224x224, 1000 classes: unpruned vs channel-pruned (MAC budget "
             f"{part['mac_budget']:.0%})", "",
             "| model | precision | MACs | parameters | size | gzip | 1 thread (ms) | speed-up | 2 threads (ms) "
             "| speed-up |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in part["rows"]:
        lines.append(f"| {r['model']} | {r['precision']} | {r['macs'] / 1e6:,.1f} M | {r['parameters'] / 1e6:.2f} M | "
                     f"{r['size'] / 2**20:.2f} MiB | {r['gzip'] / 2**20:.2f} MiB | {r['median_ms'][1]:.2f} | "
                     f"{r['speedup'][1]:.2f}x | {r['median_ms'][2]:.2f} | {r['speedup'][2]:.2f}x |")
    plan = part["plan"]
    lines += ["", f"MACs {plan['macs_before']:,} -> {plan['macs_after']:,} "
              f"({1 - plan['macs_after'] / plan['macs_before']:.1%} fewer; uniform ratio {plan['ratio']:.3f} solved "
              f"for the budget, channel counts multiples of 8). Latency: LiteRT XNNPACK, batch 1, median of {runs} "
              f"invokes, the four models interleaved in one run on {cpu['summary']} ({cpu['model']}); speed-up = "
              "unpruned median / thinned median at the same precision and threads."]
    return "\n".join(lines)


def format_accuracy(part: dict) -> str:
    base = part["keras_top1"]
    lines = [f"## Bundled Fashion-MNIST ({part['images']} validation images): recipe `channels-qat-kd`", "",
             "| stage (Keras) | top-1 | Δ vs float baseline (pts) | parameters | MACs |", "|---|---:|---:|---:|---:|"]
    for s in part["stages"]:
        lines.append(f"| {s['name']} | {s['keras_top1']:.2%} | {(s['keras_top1'] - base) * 100:+.2f} | "
                     f"{s['parameters']:,} | {s['macs']:,} |")
    lines += ["", "| .tflite | top-1 | Δ vs float baseline (pts) | agreement w/ baseline | agreement w/ its source | "
              "MACs | gzip | latency 1 thread (ms) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for variant, f in part["files"].items():
        latency = "n/a" if f["median_ms"] is None else f"{f['median_ms']:.3f}"
        lines.append(f"| {variant} | {f['top1']:.2%} | {(f['top1'] - base) * 100:+.2f} | {f['agreement']:.2%} | "
                     f"{f['source_agreement']:.2%} ({f['source']}) | {f['macs']:,} | {f['gzip'] / 1024:,.0f} KiB | "
                     f"{latency} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="float Keras baseline (.keras) for part 2; default: train one (default)")
    parser.add_argument("--out", default="benchmarks/results/channels", help="output folder")
    parser.add_argument("--mac-budget", type=float, default=0.5, help="fraction of MACs kept at 1.0 @ 224 (0.5)")
    parser.add_argument("--runs", type=int, default=50, help="timed invokes per model and thread count")
    parser.add_argument("--calibration", type=int, default=64, help="bundled images scoring channels at 224 / "
                        "calibrating int8 (64)")
    parser.add_argument("--no-accuracy", action="store_true", help="skip part 2 (the bundled-data run)")
    parser.add_argument("--reuse", action="store_true", help="keep part 2's run folder if it has a report.json")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cpu = cpu_description()
    try:
        summary = {"machine": cpu, "latency": phone_size_latency(out, mac_budget=args.mac_budget, runs=args.runs,
                                                                 calibration=args.calibration)}
        text = [format_latency(summary["latency"], cpu, args.runs)]
        if not args.no_accuracy:
            summary["accuracy"] = bundled_accuracy(out, args.baseline, args.reuse)
            text.append(format_accuracy(summary["accuracy"]))
    except tp.PipelineError as error:
        print(f"error ({type(error).__name__}): {error}", file=sys.stderr)
        return error.exit_code
    markdown = "\n\n".join(text) + "\n"
    print(markdown)
    atomic_write_text(out / "summary.md", markdown)
    atomic_write_json(out / "summary.json", summary)
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    raise SystemExit(main())
