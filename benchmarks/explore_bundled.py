"""`explore` on the bundled baseline with a size and accuracy budget, published as a figure.

    .venv/bin/python benchmarks/explore_bundled.py --max-gzip-kb 250 --max-top1-drop 1.0 \
        --candidates ptq,prune80-pqat,prune80-cluster16-pcqat,channels50-prune80-cluster16-pcqat,channels50-qat,\
channels70-qat,lowrank70-qat --figures

Runs (or, for candidates an earlier explore of models/explore/ finished, reads back) the candidates over the
default recipe's baseline, as `tflite-pipeline explore` does, then prints the table; with --figures writes
docs/figures/explore-bundled.md (+ .json, + the Pareto plots as PNG) from what the explore measured.
"""

from __future__ import annotations

import argparse
import shutil
import sys

from figures import FIGURES, REPO, write_figure

import tflite_pipeline as tp
from tflite_pipeline.runs.explore import ExploreBudget, candidates_named


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-gzip-kb", type=float, default=250.0)
    parser.add_argument("--max-top1-drop", type=float, default=1.0)
    parser.add_argument("--candidates", default="ptq,prune80-pqat,prune80-cluster16-pcqat,"
                                                "channels50-prune80-cluster16-pcqat,channels50-qat,channels70-qat,"
                                                "lowrank70-qat")
    parser.add_argument("--time-budget-min", type=float, default=120.0)
    parser.add_argument("--figures", action="store_true")
    args = parser.parse_args(argv)
    budget = ExploreBudget(max_gzip_kb=args.max_gzip_kb, max_top1_drop=args.max_top1_drop,
                           time_budget_min=args.time_budget_min)
    root = REPO / "models" / "explore"
    try:
        report = tp.explore(tp.load_recipe("default"), budget, candidates=candidates_named(args.candidates.split(",")),
                            output_dir=REPO / "models")
    except tp.BudgetError as error:
        report = error.report
    plots = sorted(p.name for p in root.glob("explore_*.png"))
    lines = [report.to_markdown(plots).split("\n", 2)[2].replace("explore_", "explore-bundled_")]
    print(lines[0])
    if args.figures:
        for png in sorted(root.glob("explore_*.png")):
            shutil.copyfile(png, FIGURES / png.name.replace("explore_", "explore-bundled_"))
        path = write_figure("explore-bundled", "explore on the bundled baseline", lines, report.to_dict())
        print(f"[explore] wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
