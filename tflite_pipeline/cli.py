"""`tflite-pipeline`: a thin CLI over the Python API. `main(argv) -> exit code`, in process.

Exit codes: 0 success, 2 usage, and one per error family (see `errors.py`): 3 dependencies,
4 recipe, 5 data, 6 model, 7 conversion, 8 not a TFLite file, 9 parity gate failed, 10 output folder,
11 a model the Android app or a target runtime cannot run, 12 an optional step failed after verification (the
verified models are kept), 13 a model over a microcontroller's flash or RAM budget or no `explore` candidate within
its budget, 130 / 143 stopped by Ctrl-C / SIGTERM. docs/cli.md has the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from tflite_pipeline import __version__, env, progress
from tflite_pipeline.config.recipe import load_recipe, parse_override
from tflite_pipeline.config.sections import AUTO_NORMALIZATION, KERNELS, NORMALIZATIONS, STRATEGIES, VARIANTS
from tflite_pipeline.errors import INTERNAL_ERROR_EXIT, Interrupted, PipelineError


def _add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-name", help="run folder name (default: the recipe's name, or the model file's stem)")
    p.add_argument("--output-dir", default="models", help="parent of the run folder (default: models)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder of that name")


def _add_gate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-top1-drop", type=float, help="max top-1 loss vs Keras, percentage points (default 0.5)")
    p.add_argument("--min-agreement", type=float, help="min fraction of same top-1 as Keras (default 0.98)")
    p.add_argument("--kernels", choices=KERNELS,
                   help="LiteRT kernels to verify with: xnnpack (default; what phones run), builtin, or reference "
                        "(plain integer arithmetic, slow; what the QAT simulation models most closely)")


def _add_unsafe_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--unsafe-load", action="store_true",
                   help="DANGEROUS: load model files that contain Lambda layers. A Lambda stores Python code that "
                        "runs while the file loads, so a file from someone else can do anything your account can. "
                        "Only for files you made or trust; without it such files are refused (exit 6)")


def _add_skip_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip files in the data folders that are not decodable images (each is fully decoded while "
                        "listing) and count them in the report, instead of failing on the first (exit 5)")


def _add_preprocess_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--normalization", choices=(AUTO_NORMALIZATION, *NORMALIZATIONS),
                   help="model input range: auto (default: raw when the model has a Rescaling, Normalization or "
                        "preprocess_input op at its input, else minus_one_to_one), minus_one_to_one (MobileNetV2), "
                        "zero_to_one, raw (0-255, the model normalizes itself) or mean_std (with --mean/--std on the "
                        "[0, 1] scale)")
    p.add_argument("--mean", type=float, nargs="+", help="per-channel means for mean_std")
    p.add_argument("--std", type=float, nargs="+", help="per-channel stds for mean_std")


_VERBOSE_HELP = ("show TensorFlow's own logs and warnings (start-up lines, converter output; hidden by default; "
                 "the Python API reads TFLITE_PIPELINE_VERBOSE=1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tflite-pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("run", help="train/convert/verify per a recipe; writes models/<run-name>/")
    p.add_argument("--recipe", default="default", help="bundled recipe name or path to a .toml (default: default)")
    p.add_argument("--data", help="dataset root with train/ validation/ calibration/ (overrides data.root)")
    _add_set_option(p)
    p.add_argument("--cache-dir", help="where finished training stages are kept so a stopped run resumes "
                                       "(default: OUTPUT_DIR/.cache)")
    p.add_argument("--no-cache", action="store_true", help="train every stage; neither read nor write the cache")
    p.add_argument("--strategy", choices=STRATEGIES,
                   help="tf.distribute strategy of the training stages: default (one device), mirrored (all local "
                        "GPUs), multi-worker (every machine runs this command with its own TF_CONFIG) or tpu; "
                        "train.batch_size is the global batch (sets distribute.strategy)")
    _add_skip_option(p)
    _add_unsafe_option(p)
    _add_output_options(p)

    p = commands.add_parser("explore", help="run candidate recipes and pick the most accurate model within a budget; "
                                            "writes models/explore/")
    p.add_argument("--recipe", default="default", help="the base recipe: model, data, training (default: default)")
    p.add_argument("--model", help="your trained Keras model as the baseline (sets model.source, no training)")
    p.add_argument("--data", help="dataset root with train/ validation/ calibration/ (overrides data.root)")
    p.add_argument("--max-gzip-kb", type=float, help="the int8 file's gzip size at most this, KB")
    p.add_argument("--max-size-kb", type=float, help="the int8 file's size at most this, KB")
    p.add_argument("--max-latency-ms", type=float, help="LiteRT median latency on this machine at most this, ms")
    p.add_argument("--threads", type=int, default=1, help="threads the latency is measured at (default 1)")
    p.add_argument("--max-top1-drop", type=float, default=1.0,
                   help="top-1 at most this many points below the float baseline (default 1.0)")
    p.add_argument("--max-convert-s", type=float, help="the candidate's conversion at most this, seconds")
    p.add_argument("--time-budget-min", type=float, help="start no candidate after this many minutes")
    p.add_argument("--from-scratch-epochs", type=int, metavar="N",
                   help="also try other MobileNetV2 widths and resolutions, each trained from scratch for N epochs")
    p.add_argument("--candidates", help="comma-separated candidates to try, in order (default: all; "
                                        "docs/explore.md lists them)")
    _add_set_option(p, example="--set prune.epochs=3")
    p.add_argument("--cache-dir", help="where finished training stages are kept (default: OUTPUT_DIR/.cache)")
    p.add_argument("--no-cache", action="store_true", help="train every stage; neither read nor write the cache")
    p.add_argument("--run-name", default="explore", help="explore folder name (default: explore)")
    p.add_argument("--output-dir", default="models", help="parent of the explore folder (default: models)")
    p.add_argument("--overwrite", action="store_true", help="discard earlier candidates of that folder and start over "
                                                            "(default: finished candidates are read back)")

    p = commands.add_parser("convert", help="convert your Keras model to float32 + int8 .tflite and verify them")
    p.add_argument("model", help=".keras / .h5 file or SavedModel folder (tf_keras or Keras 3; flat or nested)")
    p.add_argument("--data", required=True,
                   help="image folder: either DIR/<class>/* or DIR/{validation,calibration}/<class>/*; "
                        "DIR/labels.txt gives the class order (else sorted folder names)")
    p.add_argument("--labels", help="labels.txt giving the class order (default: DIR/labels.txt, else sorted "
                                    "folder names, which must then match the model's training order)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated, from float32,int8 (default) and float16,dynamic,int16x8 (dynamic-range; "
                        "int16 activations with int8 weights)")
    p.add_argument("--io-dtype", choices=("int8", "uint8"), default="int8", help="int8 model input/output dtype")
    p.add_argument("--calibration-samples", type=int, default=300, help="representative images (default 300)")
    _add_skip_option(p)
    _add_unsafe_option(p)
    _add_preprocess_options(p)
    _add_gate_options(p)
    _add_set_option(p, example="--set ptq.ranges=percentile")
    _add_output_options(p)

    p = commands.add_parser("verify", help="check .tflite files against a Keras model in LiteRT (CI gate)")
    p.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_TFLITE",
                   help="a run folder (uses its models, labels, preprocessing and the gate it ran with) or .tflite "
                        "files")
    p.add_argument("--keras", help="the float Keras model (taken from the run folder when omitted)")
    p.add_argument("--data", help="image folder (DIR/<class>/* or DIR/validation/<class>/*); default: the "
                                  "validation folder recorded in the run folder's report")
    p.add_argument("--labels", help="labels.txt giving the class order (default: the run folder's, else "
                                    "DATA/labels.txt, else sorted folder names)")
    p.add_argument("--preprocessing", help="preprocessing.json written by a run")
    p.add_argument("--reference", metavar="METRICS.json",
                   help="reference metrics the float model and each .tflite must reproduce within their tolerance "
                        '({"variants": {"keras": {"top1": 0.87, "tolerance": 0.005}, "int8": {...}}}); a run '
                        "folder verified on its own validation data is held to the float top-1 it measured")
    p.add_argument("--json", dest="json_out", help="also write the parity report to this JSON file")
    _add_unsafe_option(p)
    _add_preprocess_options(p)
    _add_gate_options(p)

    p = commands.add_parser("inspect", help="show a .tflite's I/O, quantization, ops and float leftovers")
    p.add_argument("file", help="a .tflite file")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = commands.add_parser("bench", help="batch-1 latency, size and peak memory of .tflite files on this CPU")
    p.add_argument("files", nargs="+", metavar="FILE.tflite", help=".tflite files, timed side by side")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4], help="thread counts (default: 1 2 4)")
    p.add_argument("--runs", type=int, default=50, help="timed invokes per model and thread count (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed invokes first (default 5)")
    p.add_argument("--kernels", choices=KERNELS, default="xnnpack", help="LiteRT kernels (default: xnnpack)")
    p.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")

    p = commands.add_parser("export-android", help="check a run's models in LiteRT and TFLite 2.14, then copy "
                                                   "them, labels, model_config.json and golden vectors into the app")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, e.g. models/demo")
    p.add_argument("--app", help="the Android project (default: android_demo/ of this checkout)")
    p.add_argument("--models", nargs="+", metavar="NAME.tflite", help="which of the run's models (default: all)")
    p.add_argument("--images", help="image folder DIR/<class>/* for the golden vectors (default: the run's "
                                    "validation data)")
    p.add_argument("--golden", type=int, default=3, help="golden images, one per class (default 3)")
    _add_runtime_options(p)
    p.add_argument("--json", dest="json_out", help="also write the compatibility verdicts to this JSON file")

    p = commands.add_parser("export-micro", help="C++ sources for TensorFlow Lite for Microcontrollers: the model "
                                                 "array, op resolver, input constants; arena measured and outputs "
                                                 "proven in TFLM")
    p.add_argument("source", metavar="RUN_DIR_OR_TFLITE",
                   help="a run folder (its int8 models) or one full-integer .tflite")
    p.add_argument("--output", help="where each model's folder goes (default: RUN_DIR/micro, or micro/ beside the "
                                    ".tflite)")
    p.add_argument("--models", nargs="+", metavar="NAME.tflite", help="which of the run's models (default: int8 ones)")
    add_micro_budget_options(p)
    p.add_argument("--margin", type=float, default=0.10,
                   help="added to the measured tensor arena (default 0.10 = 10%%)")
    p.add_argument("--images", help="image folder DIR/<class>/* (or DIR/validation/<class>/*) to prove TFLM against "
                                    "LiteRT on (default: the run's validation images)")
    p.add_argument("--max-images", type=int, help="prove on at most this many of them (default: all)")
    p.add_argument("--labels", help="labels.txt (default: beside the model, else DIR/labels.txt)")
    p.add_argument("--preprocessing", help="preprocessing.json (default: beside the model)")
    p.add_argument("--kernels", choices=KERNELS, default="reference",
                   help="LiteRT kernels to compare TFLM with (default: reference, the arithmetic of TFLM's kernels)")
    p.add_argument("--json", dest="json_out", help="also write the micro reports to this JSON file")

    p = commands.add_parser("check-runtime", help="load every op and run .tflite files in LiteRT and TFLite 2.14")
    p.add_argument("files", nargs="+", metavar="FILE.tflite")
    _add_runtime_options(p)
    p.add_argument("--json", dest="json_out", help="also write the verdicts to this JSON file")

    p = commands.add_parser("check-tasks", help="run a run's models in MediaPipe Tasks' ImageClassifier and compare "
                                                "its top-1 with LiteRT's on the validation images")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, e.g. models/demo")
    p.add_argument("--models", nargs="+", metavar="NAME.tflite", help="which of the run's models (default: all)")
    p.add_argument("--images", help="image folder DIR/<class>/* (default: the run's validation data)")
    p.add_argument("--mediapipe-python", help="a Python with mediapipe (default: .venv-mediapipe, made by make setup)")
    p.add_argument("--json", dest="json_out", help="also write the checks to this JSON file")

    commands.add_parser("recipes", help="list the bundled recipes")
    for sub in commands.choices.values():  # --verbose before or after the command (SUPPRESS: keep the first's)
        sub.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP)
    return parser


def add_micro_budget_options(p: argparse.ArgumentParser) -> None:
    from tflite_pipeline.export.boards import BOARDS

    p.add_argument("--board", choices=sorted(BOARDS),
                   help="budget of a board: its flash and RAM less what its firmware keeps (docs/micro.md: "
                        + "; ".join(f"{name} = {board.title}" for name, board in sorted(BOARDS.items())) + ")")
    p.add_argument("--flash-kb", type=float, help="flash the model may take, KB (overrides the board's)")
    p.add_argument("--ram-kb", type=float, help="RAM the tensor arena may take, KB (overrides the board's)")


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--legacy-python", help="a Python with tflite-runtime 2.14 (default: "
                                           "$TFLITE_PIPELINE_LEGACY_PYTHON, else .venv-tflite2.14 from `make setup`)")
    p.add_argument("--no-legacy-check", action="store_true", help="check in LiteRT only (not recommended: apps on "
                                                                   "TFLite 2.14-2.16 may fail to load the model)")


def _add_set_option(p: argparse.ArgumentParser, example: str = "--set train.epochs=2") -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help=f"override a recipe value, e.g. {example} (repeatable)")


def _gate_overrides(args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {}
    if args.max_top1_drop is not None:
        out["verify.max_top1_drop"] = args.max_top1_drop
    if args.min_agreement is not None:
        out["verify.min_agreement"] = args.min_agreement
    if args.kernels is not None:
        out["verify.kernels"] = args.kernels
    return out


def _preprocess_overrides(args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {}
    if args.normalization:
        out["preprocess.normalization"] = args.normalization
    if args.mean:
        out["preprocess.mean"] = args.mean
    if args.std:
        out["preprocess.std"] = args.std
    return out


def _finish_run(result) -> int:
    report = result.report
    print(report.parity.format_table())
    print(f"\nrun folder: {result.run_dir}")
    if report.next_steps():
        print("\nnext steps:\n" + "\n".join(f"- {step}" for step in report.next_steps()))
    report.parity.check()
    for failure in report.failed_steps:
        print(f"error (optional step {failure.step!r}, {failure.error}): {failure.message}; the verified models are "
              "in the run folder", file=sys.stderr)
    return report.exit_code


def _cmd_run(args: argparse.Namespace) -> int:
    from tflite_pipeline.runs.pipeline import run

    recipe = load_recipe(args.recipe)
    overrides = dict(parse_override(item) for item in args.overrides)
    if args.data:
        overrides["data.root"] = args.data
    if args.unsafe_load:
        overrides["model.safe_mode"] = False
    if args.skip_bad_images:
        overrides["data.skip_bad_images"] = True
    if args.strategy:
        overrides["distribute.strategy"] = args.strategy
    recipe = recipe.with_overrides(overrides)
    return _finish_run(run(recipe, output_dir=args.output_dir, run_name=args.run_name, overwrite=args.overwrite,
                           cache_dir=args.cache_dir, use_cache=not args.no_cache))


def _cmd_explore(args: argparse.Namespace) -> int:
    from tflite_pipeline.runs.explore import ExploreBudget, candidates_named, explore

    overrides = dict(parse_override(item) for item in args.overrides)
    base = {"data.root": args.data} if args.data else {}
    if args.model:
        base.update({"model.source": args.model, "train.epochs": 0})
    budget = ExploreBudget(max_gzip_kb=args.max_gzip_kb, max_size_kb=args.max_size_kb,
                           max_latency_ms=args.max_latency_ms, threads=args.threads, max_top1_drop=args.max_top1_drop,
                           max_convert_s=args.max_convert_s, time_budget_min=args.time_budget_min)
    names = [n.strip() for n in args.candidates.split(",") if n.strip()] if args.candidates else None
    report = explore(load_recipe(args.recipe).with_overrides(base), budget,
                     candidates=candidates_named(names) if names else None, overrides=overrides,
                     output_dir=args.output_dir, run_name=args.run_name, overwrite=args.overwrite,
                     cache_dir=args.cache_dir, use_cache=not args.no_cache, scratch_epochs=args.from_scratch_epochs,
                     log=progress.log)
    print(report.format_table())
    print(f"\nrecommended: {report.recommended} -> {Path(args.output_dir) / args.run_name / report.recommended_file}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from tflite_pipeline.runs.pipeline import convert

    return _finish_run(convert(args.model, args.data, variants=tuple(v.strip() for v in args.variants.split(",")
                                                                     if v.strip()),
                               io_dtype=args.io_dtype, calibration_samples=args.calibration_samples,
                               labels=args.labels, overrides={**_preprocess_overrides(args), **_gate_overrides(args),
                                                              **dict(parse_override(item) for item in args.overrides)},
                               output_dir=args.output_dir, run_name=args.run_name, overwrite=args.overwrite,
                               safe_mode=not args.unsafe_load, skip_bad_images=args.skip_bad_images))


def _cmd_verify(args: argparse.Namespace) -> int:
    from tflite_pipeline.files import atomic_write_json
    from tflite_pipeline.runs.verify import verify

    if (args.keras is None or args.data is None) and not any(Path(p).is_dir() for p in args.paths):
        print("tflite-pipeline verify: error: --keras and --data are required unless a run folder is given",
              file=sys.stderr)
        return 2
    overrides = {**_preprocess_overrides(args), **_gate_overrides(args)}
    report = verify(*args.paths, data=args.data, keras_model=args.keras, labels=args.labels,
                    preprocessing=args.preprocessing, overrides=overrides, reference=args.reference,
                    safe_mode=not args.unsafe_load)
    print(report.format_table())
    if args.json_out:
        atomic_write_json(args.json_out, report.to_dict())
    report.check()
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from tflite_pipeline.export.metadata import read_metadata, tasks_problems
    from tflite_pipeline.tflite.flatbuffer import inspect_tflite

    info, meta = inspect_tflite(args.file), read_metadata(args.file)
    tasks = tasks_problems(info, meta)
    if args.json:
        print(json.dumps({**info.to_dict(), "metadata": asdict(meta) if meta else None,
                          "tasks_problems": tasks}, indent=2))
    else:
        print(info.format())
        print(meta.format() if meta else "metadata: none (no labels or normalization in the file)")
        print("MediaPipe Tasks: " + ("ready" if not tasks else "no: " + "; ".join(tasks)))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from tflite_pipeline.files import atomic_write_json
    from tflite_pipeline.tflite.bench import bench_models, bench_report, cpu_description, format_table

    cpu = cpu_description()
    print(f"bench on {cpu['model']} ({cpu['summary']}, os.cpu_count() = {cpu['logical_cpus']})", file=sys.stderr)
    benchmarks = bench_models(args.files, threads=args.threads, runs=args.runs, warmup=args.warmup,
                              kernels=args.kernels, memory=not args.no_memory,
                              log=lambda line: print(line, file=sys.stderr))
    print(format_table(benchmarks, cpu))
    if args.json_out:
        atomic_write_json(args.json_out, bench_report(benchmarks, cpu))
    return 0


def _legacy(args: argparse.Namespace):
    return False if args.no_legacy_check else args.legacy_python


def _cmd_export_android(args: argparse.Namespace) -> int:
    from tflite_pipeline.export.android import export_android
    from tflite_pipeline.files import atomic_write_json

    result = export_android(args.run_dir, args.app, models=args.models, images=args.images, golden_count=args.golden,
                            legacy_python=_legacy(args), log=progress.log)
    print(result.format())
    if args.json_out:
        atomic_write_json(args.json_out, [report.to_dict() for report in result.compatibility])
    return 0


def _cmd_export_micro(args: argparse.Namespace) -> int:
    from tflite_pipeline.export.micro import export_micro
    from tflite_pipeline.files import atomic_write_json

    exports = export_micro(args.source, args.output, models=args.models, board=args.board, flash_kb=args.flash_kb,
                           ram_kb=args.ram_kb, images=args.images, labels=args.labels,
                           preprocessing=args.preprocessing, max_images=args.max_images, margin=args.margin,
                           kernels=args.kernels, log=progress.log)
    for export in exports:
        print(export.format() + "\n")
    if args.json_out:
        atomic_write_json(args.json_out, [export.to_dict() for export in exports])
    return 0


def _cmd_check_runtime(args: argparse.Namespace) -> int:
    from tflite_pipeline.errors import CompatibilityError
    from tflite_pipeline.export.compatibility import check_compatibility, format_compatibility
    from tflite_pipeline.files import atomic_write_json

    reports = check_compatibility(args.files, legacy_python=_legacy(args))
    print(format_compatibility(reports))
    if args.json_out:
        atomic_write_json(args.json_out, [report.to_dict() for report in reports])
    failed = [Path(report.model).name for report in reports if not report.ok]
    if failed:
        raise CompatibilityError(f"{failed} cannot run in every target runtime (table above).")
    return 0


def _cmd_check_tasks(args: argparse.Namespace) -> int:
    from tflite_pipeline.errors import CompatibilityError
    from tflite_pipeline.export.tasks import check_tasks, format_tasks_table
    from tflite_pipeline.files import atomic_write_json

    checks = check_tasks(args.run_dir, models=args.models, images=args.images, python=args.mediapipe_python,
                         log=progress.log)
    print(format_tasks_table(checks))
    if args.json_out:
        atomic_write_json(args.json_out, [check.to_dict() for check in checks])
    failed = [Path(check.model).name for check in checks if not check.ok]
    if failed:
        raise CompatibilityError(f"{failed} did not behave in MediaPipe Tasks as the metadata check predicts "
                                 "(table above).")
    return 0


def _cmd_recipes(args: argparse.Namespace) -> int:
    from tflite_pipeline.config.recipe import bundled_recipes

    for name in bundled_recipes():
        print(f"{name:<16} {load_recipe(name).description}")
    return 0


_COMMANDS = {"run": _cmd_run, "explore": _cmd_explore, "convert": _cmd_convert, "verify": _cmd_verify,
             "inspect": _cmd_inspect, "bench": _cmd_bench, "export-android": _cmd_export_android,
             "export-micro": _cmd_export_micro, "check-runtime": _cmd_check_runtime, "check-tasks": _cmd_check_tasks,
             "recipes": _cmd_recipes}


_RESUME = {"run": "run the same command again: finished training stages are loaded from the cache",
           "convert": "run the same command again",
           "explore": "run the same command again: finished candidates are read back, finished stages loaded from "
           "the cache", "export-micro": "run the export again; each model's folder is "
           "swapped in whole", "export-android": "run the export again; the app keeps the "
           "models of the last complete export"}


def _stop_on_sigterm(signal_number: int, frame: object) -> None:
    raise Interrupted(signal_number, "SIGTERM")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code instead of exiting (testable in process).

    Ctrl-C (SIGINT) and SIGTERM stop the command through the same cleanup (nothing partial is left: run
    folders, the stage cache and the app's assets are staged and renamed), print one line saying what was
    stopped and how to resume, and return 130 / 143."""
    args = build_parser().parse_args(argv)
    progress.reset()
    previous = _install(signal.SIGTERM, _stop_on_sigterm)
    try:
        with env.verbosity(True) if args.verbose else contextlib.nullcontext():
            return _COMMANDS[args.command](args)
    except PipelineError as error:
        print(f"error ({type(error).__name__}): {error}", file=sys.stderr)
        return error.exit_code
    except Exception as error:  # the last guard: a bug of ours still ends in one line and an exit code
        if args.verbose:
            traceback.print_exc()
        step = progress.current_step()
        print(f"error (unexpected {type(error).__name__}{f' during [{step}]' if step else ''}): {error}\n"
              f"This is a bug in tflite_pipeline {__version__}, not in your input: please report it with the output of "
              f"the same command run with --verbose (it prints the traceback). Nothing partial was written; "
              f"finished training stages stay in the stage cache.", file=sys.stderr)
        return INTERNAL_ERROR_EXIT
    except KeyboardInterrupt as stop:
        name, code = (stop.name, stop.exit_code) if isinstance(stop, Interrupted) else ("Ctrl-C (SIGINT)", 130)
        step = progress.current_step()
        print(f"stopped by {name} during {f'[{step}]' if step else args.command}; nothing partial was written. To "
              f"resume, {_RESUME.get(args.command, 'run the command again')}.", file=sys.stderr)
        return code
    finally:
        if previous is not None:
            _install(signal.SIGTERM, previous)


def _install(signal_number: int, handler):
    """Set a signal handler; None (nothing set) outside the main thread, where Python cannot."""
    try:
        return signal.signal(signal_number, handler)
    except ValueError:
        return None


def entry_point() -> None:
    raise SystemExit(main())
