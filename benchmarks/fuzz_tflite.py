"""Byte-flip fuzzing of the commands that read a `.tflite`: damaged files must end in a typed error or a
success, never a crash (a signal, a traceback) or a hang.

    .venv/bin/python benchmarks/fuzz_tflite.py MODEL.tflite --keras MODEL.keras --data DIR [--copies 200]

Each copy of MODEL flips 1-8 random bytes anywhere in the file (seeded); every copy goes through
`inspect`, `verify` and `check-runtime` as separate CLI processes with a timeout. Prints the counts per
command and outcome, and writes them to benchmarks/results/fuzz_tflite.json and docs/figures/fuzz-tflite.md
(with date, versions and CPU). `--figures-only` rewrites the Markdown from the JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

CLI = str(Path(sys.executable).with_name("tflite-pipeline"))
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "fuzz_tflite.json"
FIGURES = REPO / "docs" / "figures" / "fuzz-tflite.md"
TYPED = {0: "success", 8: "TFLiteFileError", 9: "ParityError", 11: "CompatibilityError", 6: "ModelError"}


def flipped(data: bytes, rng: np.random.Generator) -> bytes:
    damaged = bytearray(data)
    for position in rng.integers(0, len(data), size=int(rng.integers(1, 9))):
        damaged[position] ^= int(rng.integers(1, 256))
    return bytes(damaged)


def outcome(command: list[str], timeout: float) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return "HANG"
    if done.returncode < 0:
        return f"CRASH (signal {-done.returncode})"
    if "Traceback (most recent call last)" in done.stderr:
        return f"TRACEBACK (exit {done.returncode})"
    name = TYPED.get(done.returncode)
    if name is None or (done.returncode and f"error ({name})" not in done.stderr):
        return f"UNTYPED (exit {done.returncode})"
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--keras")
    parser.add_argument("--data")
    parser.add_argument("--figures-only", action="store_true", help="only rewrite the Markdown from the JSON")
    parser.add_argument("--recheck", action="store_true",
                        help="run each bad copy (kept in benchmarks/results/fuzz/) through its command once more and "
                             "record the outcome beside the first one (e.g. a timeout of a process that was suspended)")
    parser.add_argument("--copies", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    if args.figures_only or args.recheck:
        result = json.loads(RESULTS.read_text())
        if args.recheck:
            result["rechecked"] = [recheck(entry, args) for entry in result["bad"]]
            RESULTS.write_text(json.dumps(result, indent=2))
        if "cpu" not in result:  # written by an earlier version of this script, in this session on this machine
            from tflite_pipeline.env import run_versions
            from tflite_pipeline.tflite.bench import cpu_description

            result.update(cpu=cpu_description(), versions=run_versions())
        print(write_figures(result))
        return
    if not (args.model and args.keras and args.data):
        parser.error("MODEL, --keras and --data are required")
    rng = np.random.default_rng(args.seed)
    data = Path(args.model).read_bytes()
    counts: dict[str, Counter] = {"inspect": Counter(), "verify": Counter(), "check-runtime": Counter()}
    bad: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fuzz-") as work:
        for number in range(args.copies):
            path = Path(work) / f"copy{number}.tflite"
            path.write_bytes(flipped(data, rng))
            commands = {"inspect": [CLI, "inspect", str(path)],
                        "verify": [CLI, "verify", str(path), "--keras", args.keras, "--data", args.data],
                        "check-runtime": [CLI, "check-runtime", str(path), "--no-legacy-check"]}
            for name, command in commands.items():
                result = outcome(command, args.timeout)
                counts[name][result] += 1
                if result.startswith(("CRASH", "HANG", "TRACEBACK", "UNTYPED")):
                    bad.append({"copy": number, "command": name, "result": result})
                    (RESULTS.parent / "fuzz").mkdir(parents=True, exist_ok=True)
                    (RESULTS.parent / "fuzz" / path.name).write_bytes(path.read_bytes())
            if (number + 1) % 20 == 0:
                print(f"{number + 1}/{args.copies} copies: " + "; ".join(
                    f"{k} {dict(v)}" for k, v in counts.items()), file=sys.stderr, flush=True)
    from tflite_pipeline.env import run_versions
    from tflite_pipeline.tflite.bench import cpu_description

    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "model": Path(args.model).name,
              "size_bytes": len(data), "copies": args.copies, "seed": args.seed,
              "counts": {k: dict(v) for k, v in counts.items()}, "bad": bad, "versions": run_versions(),
              "cpu": cpu_description()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(write_figures(result))


def recheck(entry: dict, args: argparse.Namespace) -> dict:
    path = RESULTS.parent / "fuzz" / f"copy{entry['copy']}.tflite"
    command = {"inspect": [CLI, "inspect", str(path)],
               "verify": [CLI, "verify", str(path), "--keras", str(args.keras), "--data", str(args.data)],
               "check-runtime": [CLI, "check-runtime", str(path), "--no-legacy-check"]}[entry["command"]]
    started = time.perf_counter()
    again = outcome(command, args.timeout)
    return {**entry, "again": again, "seconds": round(time.perf_counter() - started, 1)}


def write_figures(result: dict) -> str:
    lines = [f"# Byte-flip fuzzing of `.tflite` readers ({result['date'][:10]})", "",
             f"{result['copies']} copies of `{Path(result['model']).name}`, each with 1-8 random bytes flipped (seed "
             f"{result['seed']}), through each command in its own process. CPU: {result['cpu']['summary']}; "
             f"LiteRT {result['versions']['ai_edge_litert']}, TensorFlow {result['versions']['tensorflow']}.",
             "", "| command | outcome | copies |", "|---|---|---:|"]
    for name, counter in result["counts"].items():
        lines += [f"| {name} | {outcome} | {n} |" for outcome, n in sorted(counter.items())]
    lines += ["", f"Crashes (a signal), hangs, tracebacks or untyped exits: **{len(result['bad'])}**."]
    lines += [f"- copy {r['copy']} `{r['command']}`: {r['result']}; run again (`--recheck`): {r['again']} in "
              f"{r['seconds']} s" for r in result.get("rechecked", ())]
    lines += ["",
              "Reproduce: `.venv/bin/python benchmarks/fuzz_tflite.py MODEL.tflite --keras MODEL.keras --data DIR "
              "--copies 200` (here: the reference CNN's int8 model, 5 validation images per class)."]
    text = "\n".join(lines) + "\n"
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(text)
    return text


if __name__ == "__main__":
    main()
