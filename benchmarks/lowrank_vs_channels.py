"""Low-rank factorization vs channel pruning at the same MAC budget: int8 latency of MobileNetV2 1.0 @ 224 (random
weights: kernel speed does not depend on the values), timed side by side with the unpruned model, and top-1 of
trained runs of both on the bundled data (their report.json).

    .venv/bin/python benchmarks/lowrank_vs_channels.py --runs models/explore/candidates/channels70-qat \
        models/explore/candidates/lowrank70-qat --figures

Both compressions target `--mac-budget` (default 0.5) of the model's MACs: channel pruning by removing whole
expanded channels (`[channels]`, L1 criterion here: no data), low-rank by factoring the 1x1 convolutions at the
one retained energy that meets the budget (`[lowrank]`). Writes benchmarks/results/lowrank/; with --figures
docs/figures/lowrank-vs-channels.md (+ .json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from figures import REPO, write_figure
from latency import batchnorm_from_data, random_representative

from tflite_pipeline.files import atomic_write_bytes
from tflite_pipeline.tflite.bench import bench_models, bench_report, cpu_description, format_table

OUT = REPO / "benchmarks" / "results" / "lowrank"


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def convert_three(size: int, budget: float, calibration: int) -> tuple[list[Path], dict[str, dict]]:
    """MobileNetV2 1.0 as it is, channel-pruned and factored to `budget` of its MACs, each as int8."""
    from tflite_pipeline.config.sections import ChannelsConfig, LowRankConfig
    from tflite_pipeline.model.build import build_mobilenet_v2
    from tflite_pipeline.optimize.channels import model_macs, prune_channels
    from tflite_pipeline.optimize.lowrank import factorize, plan_ranks
    from tflite_pipeline.tflite.convert import convert_variant

    model = build_mobilenet_v2(1000, size, alpha=1.0, weights=None, seed=0)
    batchnorm_from_data(model, size)
    thinned, _ = prune_channels(model, ChannelsConfig(mac_budget=budget, criterion="l1"))
    plan = plan_ranks(model, LowRankConfig(mac_budget=budget))
    factored = factorize(model, plan.ranks)
    _log(f"[lowrank] low-rank: {len(plan.ranks)} of {len(plan.layers)} 1x1 layers factored at "
         f"{plan.energy:.1%} energy")
    OUT.mkdir(parents=True, exist_ok=True)
    paths, facts = [], {}
    for name, net in (("mobilenet_v2_1.0", model), ("channels", thinned), ("lowrank", factored)):
        path = OUT / f"{name}_{size}_int8.tflite"
        atomic_write_bytes(path, convert_variant(net, "int8", representative=random_representative(size, calibration),
                                                 log=_log))
        facts[path.name] = {"macs": model_macs(net), "parameters": int(net.count_params())}
        paths.append(path)
    return paths, facts


def accuracy_rows(runs: list[Path]) -> list[str]:
    rows = ["| run | stage | int8 top-1 | Δ vs float Keras (pts) | MACs (Keras stage) | vs baseline MACs | int8 gzip |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for run in runs:
        report = json.loads((run / "report.json").read_text())
        stages = report["stages"]
        base, shaped = stages[0], next(s for s in stages if s["name"] in ("thinned", "factored"))
        artifact = [a for a in report["artifacts"] if a["info"]["is_full_integer"]][-1]
        row = next(r for r in report["parity"]["rows"] if r["variant"] == artifact["variant"])
        rows.append(f"| {run.name} | {shaped['name']} | {row['top1']:.2%} | {0.0 - row['top1_drop']:+.2f} | "
                    f"{shaped['macs']:,} | {shaped['macs'] / base['macs']:.1%} | "
                    f"{artifact['gzip_bytes'] / 1024:,.1f} KB |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--mac-budget", type=float, default=0.5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs-per-model", type=int, default=30)
    parser.add_argument("--calibration", type=int, default=10)
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="trained run folders to take top-1 from")
    parser.add_argument("--figures", action="store_true")
    args = parser.parse_args(argv)
    paths, facts = convert_three(args.size, args.mac_budget, args.calibration)
    cpu = cpu_description()
    benchmarks = bench_models(paths, threads=args.threads, runs=args.runs_per_model, memory=False, log=_log)
    table = format_table(benchmarks, cpu)
    macs = ["| model | MACs | parameters |", "|---|---:|---:|"] + [
        f"| {name} | {f['macs']:,} | {f['parameters']:,} |" for name, f in facts.items()]
    lines = [f"MobileNetV2 1.0 @ {args.size}, 1000 classes, random weights; channel pruning and low-rank "
             f"factorization both to {args.mac_budget:.0%} of the MACs; int8, LiteRT XNNPACK, batch 1, the three "
             "timed side by side (medians).", "", *macs, "", table]
    if args.runs:
        lines += ["", "Top-1 of trained runs on the bundled data (each run's report.json):", "",
                  *accuracy_rows(args.runs)]
    print("\n".join(lines))
    if args.figures:
        data = {"facts": facts, "bench": bench_report(benchmarks, cpu), "runs": [str(r) for r in args.runs]}
        path = write_figure("lowrank-vs-channels", "Low-rank factorization vs channel pruning", lines, data)
        _log(f"[lowrank] wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
