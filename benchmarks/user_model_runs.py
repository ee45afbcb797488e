"""Users' models through the CLI as a new user would: convert, three tfmot recipes, then verify each run folder.

    .venv/bin/python benchmarks/user_models.py                 # trains the two guide-shaped models first
    .venv/bin/python benchmarks/user_model_runs.py             # -> docs/figures/user-models.md (+ .json)
    .venv/bin/python benchmarks/user_model_runs.py --only guide_keras3.keras --jobs qat   # one model, one job
    .venv/bin/python benchmarks/user_model_runs.py --refresh   # re-read and re-verify the run folders only

For each model of `benchmarks/user_models.py` (tf_keras `.h5` with preprocess_input and a nested base; Keras 3
`.keras` with a Rescaling layer): `tflite-pipeline convert MODEL --data representative_data` (only `--data`: the
normalization is detected), then `run --recipe R --set model.source=MODEL --set train.epochs=0` for each recipe,
then `verify RUN_DIR` on every run folder; and the 80% recipe again at 70% sparsity for 8 epochs (what the
report's next steps suggest when a stage loses accuracy in Keras). The bundled data's validation split
(2,000 images of the Fashion-MNIST test set) is held out from the models' training; calibration (500 images) is
separate from it. Every figure in the output is read from the run folders' report.json files.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("tflite-pipeline"))
MODELS = ("guide_tf_keras.h5", "guide_keras3.keras")
RECIPES = ("prune-pqat-kd", "qat", "channels-qat-kd")
TUNED = "prune-pqat-kd, sparsity 0.7, 8 epochs"   # what the report's next steps suggest when 80% loses too much
JOBS = ("convert", *RECIPES, TUNED)
JOB_RUN_NAMES = {"convert": "convert", **{r: r for r in RECIPES}, TUNED: "prune-pqat-kd-70"}


def job_command(job: str, model: Path, data: str, run_dir: Path) -> list[str]:
    """The CLI arguments a new user would type for `job` (only --data; the normalization is detected)."""
    out = ["--output-dir", str(run_dir.parent), "--run-name", run_dir.name, "--overwrite"]
    if job == "convert":
        return ["convert", str(model), "--data", data, *out]
    recipe = "prune-pqat-kd" if job == TUNED else job
    tuned = ["--set", "prune.target_sparsity=0.7", "--set", "prune.epochs=8"] if job == TUNED else []
    return ["run", "--recipe", recipe, "--set", f"model.source={model}", "--set", "train.epochs=0", "--data", data,
            *tuned, *out]


def cli(*args: str) -> tuple[int, float, str]:
    started = time.perf_counter()
    done = subprocess.run([CLI, *args], capture_output=True, text=True, check=False)
    return done.returncode, time.perf_counter() - started, done.stderr[-3000:]


def summarize(run_dir: Path) -> dict:
    report = json.loads((run_dir / "report.json").read_text())
    int8 = [row for row in report["parity"]["rows"] if row["variant"].endswith("int8")][-1]
    artifact = next(a for a in report["artifacts"] if a["variant"] == int8["variant"])
    rebuild = report["model"].get("rebuild")
    return {"float_top1": report["parity"]["keras_top1"], "int8_variant": int8["variant"], "int8_top1": int8["top1"],
            "top1_drop_pts": int8["top1_drop"], "agreement": int8["agreement"],
            "source_agreement": int8.get("source_agreement"), "passed": report["passed"],
            "input": artifact["info"]["inputs"][0], "int8_kib": artifact["size_bytes"] / 1024,
            "int8_gzip_kib": artifact["gzip_bytes"] / 1024,
            "normalization": report["preprocessing"]["normalization"],
            "normalization_source": report["preprocessing"].get("source"),
            "rebuild_max_abs_diff": rebuild["max_abs_diff"] if rebuild else None,
            "rebuild_images": rebuild["images"] if rebuild else None,
            "rebuild_max_abs_output": rebuild.get("max_abs_output") if rebuild else None,
            "failed_steps": report.get("failed_steps", []), "stages": [s["name"] for s in report["stages"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="benchmarks/results/user_models", help="folder with the trained models")
    parser.add_argument("--out", default="benchmarks/results/user_model_runs", help="run folders")
    parser.add_argument("--figures", default="docs/figures/user-models.md")
    parser.add_argument("--jobs", nargs="+", choices=JOBS, default=list(JOBS))
    parser.add_argument("--only", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--merge", nargs="*", default=[], metavar="RESULTS_JSON",
                        help="add the results of other invocations (their OUT/results.json) before writing")
    parser.add_argument("--figures-only", action="store_true", help="only write the figures from OUT/results.json")
    parser.add_argument("--refresh", action="store_true",
                        help="run nothing: read the run folders in OUT again, verify them again, write the figures")
    args = parser.parse_args()

    from tflite_pipeline.env import run_versions
    from tflite_pipeline.tflite.bench import cpu_description

    data = str(REPO / "representative_data")
    store = Path(args.out) / "results.json"   # results accumulate over invocations (e.g. one model at a time)
    done = json.loads(store.read_text()) if store.is_file() else {}
    for other in args.merge:
        done.update(json.loads(Path(other).read_text()))
    for file in [] if args.figures_only else args.only:
        model = Path(args.models) / file
        stem = model.name.split(".")[0]
        for job in args.jobs:
            run_dir = Path(args.out) / f"{stem}-{JOB_RUN_NAMES[job]}"
            if args.refresh:   # run nothing: read the run folders again and verify them again
                if not (run_dir / "report.json").is_file():
                    continue
                row = {**done.get(f"{file} {job}", {"exit_code": None, "seconds": None}), "model": file, "job": job}
            else:
                print(f"[{stem}] {job} ...", flush=True)
                code, seconds, stderr = cli(*job_command(job, model, data, run_dir))
                row = {"model": file, "job": job, "exit_code": code, "seconds": round(seconds, 1)}
                if not (run_dir / "report.json").is_file():
                    row["stderr"] = stderr
            if (run_dir / "report.json").is_file():
                row.update(summarize(run_dir))
                row["verify_exit_code"] = cli("verify", str(run_dir))[0]
                if row["exit_code"] is None:   # a run made outside this script: what its CLI returned, per report
                    report = json.loads((run_dir / "report.json").read_text())
                    failed = report.get("failed_steps") or []
                    row["exit_code"] = 9 if not report["passed"] else failed[0]["exit_code"] if failed else 0
                    row["seconds"] = report["seconds"]["total"]
            done[f"{file} {job}"] = row
            store.parent.mkdir(parents=True, exist_ok=True)
            store.write_text(json.dumps(done, indent=2) + "\n")
            if "int8_top1" in row:
                print(f"  exit {row['exit_code']}; float {row['float_top1']:.2%} int8 {row['int8_top1']:.2%} "
                      f"agreement {row['agreement']:.2%}; verify exit {row['verify_exit_code']}", flush=True)
            else:
                print(f"  exit {row['exit_code']}: {row.get('stderr', '')[-500:]}", flush=True)

    results = [done[key] for key in sorted(done, key=lambda k: (MODELS.index(done[k]["model"]),
                                                                JOBS.index(done[k]["job"])))]
    cpu = cpu_description()
    meta = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "versions": run_versions(), "machine": cpu, "command": " ".join(sys.argv)}
    models_summary = Path(args.models) / "summary.json"
    trained = json.loads(models_summary.read_text()) if models_summary.is_file() else {}
    lines = ["# Users' models through the CLI (issue 17)", "",
             f"Measured {meta['date']} on {cpu.get('model')} ({cpu.get('summary')}); "
             + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".", "",
             "Written by `.venv/bin/python benchmarks/user_model_runs.py` after `benchmarks/user_models.py` "
             "trained the models on the 60,000 Fashion-MNIST training images (32x32 RGB, from scratch):", ""]
    for file, info in trained.items():
        lines.append(f"- `{file}`: {info['parameters']:,} parameters, {info['epochs']} epochs, "
                     f"test top-1 {info['test_top1']:.2%} (10,000 test images)")
    lines += ["", "Validation: the bundled 2,000 images (Fashion-MNIST test set); calibration: the bundled 500 "
              "(training set, disjoint). Only `--data` given; recipes with `model.source` and `train.epochs=0`.", "",
              "| model | command | exit | float top-1 | int8 variant | int8 top-1 | drop (pts) | agreement | "
              "agreement with its Keras source (gated) | input scale / zp | rebuild max abs diff | int8 KiB (gzip) | "
              "verify exit | time |", "|---|---|---:|---:|---|---:|---:|---:|---:|---|---:|---|---:|---:|"]
    for r in results:
        if "int8_top1" not in r:
            lines.append(f"| `{r['model']}` | {r['job']} | {r['exit_code']} |" + " |" * 11 + f" {r['seconds']:.0f} s |")
            continue
        diff = "" if r["rebuild_max_abs_diff"] is None else f"{r['rebuild_max_abs_diff']:.2g}"
        if r.get("rebuild_max_abs_output"):
            diff += f" (outputs to {r['rebuild_max_abs_output']:.3g})"
        lines.append(f"| `{r['model']}` | {r['job']} | {r['exit_code']} | {r['float_top1']:.2%} | "
                     f"{r['int8_variant']} | {r['int8_top1']:.2%} | {r['top1_drop_pts']:+.2f} | {r['agreement']:.2%} | "
                     f"{r['source_agreement']:.2%} | "
                     f"{r['input']['scale']:g} / {r['input']['zero_point']} | {diff} | "
                     f"{r['int8_kib']:.0f} ({r['int8_gzip_kib']:.0f}) | {r['verify_exit_code']} | "
                     f"{r['seconds']:.0f} s |")
    lines += ["", "Drop: float top-1 minus int8 top-1, negative when int8 scores higher (the gate allows 0.5 pts for "
              "`convert` and `qat`, 1.0 for the `*-kd` recipes); agreement: same top-1 as the user's float model; the "
              "gate checks agreement with the Keras model the `.tflite` was converted from (>= 98%). Rebuild max abs "
              "diff: the largest output "
              "difference between the user's model and the flat tf_keras rebuild the stages trained from, on the "
              "calibration images.", ""]
    figures = Path(args.figures)
    figures.parent.mkdir(parents=True, exist_ok=True)
    figures.write_text("\n".join(lines))
    figures.with_suffix(".json").write_text(json.dumps({**meta, "trained": trained, "results": results}, indent=2)
                                            + "\n")
    print(f"wrote {figures}")


if __name__ == "__main__":
    main()
