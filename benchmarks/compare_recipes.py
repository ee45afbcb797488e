"""Compare this pipeline's recipes with the plain tfmot tutorial recipes on ONE float baseline.

    .venv/bin/python benchmarks/compare_recipes.py --baseline models/demo/mobilenet_v2_float.keras
    .venv/bin/python benchmarks/compare_recipes.py                      # trains the baseline first (default recipe)

Tutorial recipes (as a new user would write them from the tfmot guides):
  tutorial-ptq        post-training int8 only
  tutorial-qat        quantize_model + fine-tune: activation ranges start at tfmot's [-6, 6]
  tutorial-prune-ptq  polynomial 50% -> 80% pruning over the whole fine-tune (lr 1e-3, no distillation), then PTQ
Ours (tflite_pipeline/config/recipes/): qat (activation ranges calibrated first), prune-pqat, prune-pqat-kd,
cluster-cqat, and thin (MobileNetV2 width 0.2 trained from scratch like the baseline: no agreement with
the baseline, its drop is against the baseline's top-1). Every QAT stage here fake-quantizes depthwise
kernels per channel, as TFLite stores them.

Each recipe runs through `tflite_pipeline.run` into OUT/<recipe>/ (`--reuse` keeps finished run
folders instead of re-running them) and the script prints one Markdown table (and writes
OUT/summary.json): int8 top-1, drop vs the float baseline, agreement with the baseline and with the
model it was converted from, sparsity of the pruned layers read from the flatbuffer, gzip size relative
to the baseline's PTQ int8, and LiteRT latency of every recipe's model measured side by side in one
`bench_models` call (interleaved rounds, 1 thread). Then the same for MobileNetV2 1.0 at 224x224
(random weights; `benchmarks/latency.py`), the size phones run, where int8 vs float matters.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import tflite_pipeline as tp
from tflite_pipeline.tflite.bench import bench_models, cpu_description

sys.path.insert(0, str(Path(__file__).resolve().parent))
import latency as phone_size

OURS = ("qat", "prune-pqat", "prune-pqat-kd", "cluster-cqat")
FROM_SCRATCH = ("thin",)  # a thinner network trained like the baseline, instead of a pruned one
TUTORIAL = {
    "tutorial-ptq": ("ptq", {}),
    "tutorial-qat": ("qat", {"qat.calibrate_ranges": False}),
    "tutorial-prune-ptq": ("prune-pqat-kd", {"qat.enabled": False, "distill.enabled": False,
                                             "prune.end_fraction": 1.0, "prune.learning_rate": 0.001,
                                             "prune.epochs": 8}),  # same budget as prune-pqat-kd: 6 + 2 epochs
}


def _row(name: str, run_dir: Path, reference: dict | None) -> dict:
    """One table row from a run folder's report.json; `reference` is the tutorial-ptq row (the baseline's
    float top-1 and PTQ gzip size)."""
    report = json.loads((run_dir / "report.json").read_text())
    artifact = next(a for a in reversed(report["artifacts"]) if not a["variant"].endswith("_fallback"))
    parity = next(r for r in report["parity"]["rows"] if r["variant"] == artifact["variant"])
    pruned = artifact["layer_sparsity"]
    from_baseline = name not in FROM_SCRATCH
    keras_top1 = report["parity"]["keras_top1"]
    baseline_top1 = keras_top1 if from_baseline else (reference or {}).get("keras_top1")
    return {"recipe": name, "file": str(run_dir / artifact["file"]), "keras_top1": keras_top1,
            "top1": parity["top1"],
            "drop_pts": None if baseline_top1 is None else (baseline_top1 - parity["top1"]) * 100,
            "agreement_baseline": parity["agreement"] if from_baseline else None,
            "agreement_source": parity["source_agreement"],
            "pruned_sparsity": sum(pruned.values()) / len(pruned) if pruned else None,
            "parameters": artifact["info"]["num_parameters"], "size": artifact["size_bytes"],
            "gzip": artifact["gzip_bytes"],
            "gzip_ratio": artifact["gzip_bytes"] / reference["gzip"] if reference else None,
            "seconds": report["seconds"].get("total")}


def _cell(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="float Keras baseline (.keras); default: train one with `default`")
    parser.add_argument("--out", default="benchmarks/results/recipes", help="output folder (replaced)")
    parser.add_argument("--only", nargs="*", help="run only these recipe names (tutorial-ptq gives the references)")
    parser.add_argument("--reuse", action="store_true", help="keep run folders that already have a report.json")
    parser.add_argument("--runs", type=int, default=100, help="timed invokes per model for the latency columns")
    parser.add_argument("--no-phone-size", action="store_true", help="skip MobileNetV2 1.0 @ 224 latency")
    args = parser.parse_args(argv)
    out = Path(args.out)
    baseline = args.baseline
    if baseline is None:
        result = tp.run(tp.load_recipe("default"), output_dir=out, run_name="baseline", overwrite=True)
        baseline = str(result.run_dir / "mobilenet_v2_float.keras")
    runs = {**TUTORIAL, **{name: (name, {}) for name in OURS + FROM_SCRATCH}}
    rows, reference = [], None
    for name, (recipe_name, overrides) in runs.items():
        if args.only and name not in args.only and name != "tutorial-ptq":
            continue
        recipe = tp.load_recipe(recipe_name).with_overrides({"convert.isolate": True})  # flat memory over the runs
        if name not in FROM_SCRATCH:
            recipe = recipe.with_overrides({"model.source": baseline, "model.name": "mobilenet_v2",
                                            "train.epochs": 0, **overrides})
            if recipe.optimizes:  # only the optimized model's .tflite; tutorial-ptq has the baseline's
                recipe = recipe.with_overrides({"convert.variants": []})
        started = time.perf_counter()
        if not (args.reuse and (out / name / "report.json").is_file()):
            tp.run(recipe, output_dir=out, run_name=name, overwrite=True)
        row = _row(name, out / name, reference)
        if name == "tutorial-ptq":
            reference = row
            row["gzip_ratio"] = 1.0
        rows.append(row)
        print(f"[bench] {name}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    cpu = cpu_description()
    print(f"[bench] latency of {len(rows)} models side by side ({args.runs} runs, 1 thread)", file=sys.stderr)
    timed = bench_models([r["file"] for r in rows], threads=(1,), runs=args.runs, memory=False,
                         log=lambda line: print(line, file=sys.stderr))
    for r, b in zip(rows, timed, strict=True):
        r["latency_ms"] = b.latencies[0].median_ms
        r["latency_ratio"] = r["latency_ms"] / timed[0].latencies[0].median_ms
    print("| recipe | float Keras | int8 top-1 | drop vs baseline (pts) | agree w/ baseline | agree w/ source | "
          "pruned sparsity | parameters | gzip | gzip vs PTQ (x) | latency (ms) | latency vs PTQ (x) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['recipe']} | {r['keras_top1']:.2%} | {r['top1']:.2%} | {_cell(r['drop_pts'], '+.2f')} | "
              f"{_cell(r['agreement_baseline'], '.2%')} | {r['agreement_source']:.2%} | "
              f"{_cell(r['pruned_sparsity'], '.1%')} | {r['parameters']:,} | {r['gzip'] / 1024:,.0f} KiB | "
              f"{_cell(r['gzip_ratio'], '.2f')} | {r['latency_ms']:.3f} | {r['latency_ratio']:.2f} |")
    print(f"\nLatency: LiteRT XNNPACK, batch 1, 1 thread, median of {args.runs} invokes, all models interleaved in one "
          f"run on {cpu['summary']} ({cpu['model']}).")
    (out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    if not args.no_phone_size:
        print("\n## MobileNetV2 1.0 @ 224x224 (random weights), float32 vs int8\n")
        sys.stdout.flush()
        phone_size.main(["--out", str(out / "mobilenet_v2_1.0_224"), "--threads", "1", "2", "--runs", "50"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
