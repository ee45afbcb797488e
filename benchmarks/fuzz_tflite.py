"""Byte-flip fuzzing of the commands that read a `.tflite`: damaged files must end in a typed error or a
success, never a crash (a signal, a traceback) or a hang.

    .venv/bin/python benchmarks/fuzz_tflite.py MODEL.tflite --keras MODEL.keras --data DIR [--copies 200]

Each copy of MODEL flips 1-8 random bytes anywhere in the file (seeded); every copy goes through
`inspect`, `verify` and `check-runtime` as separate CLI processes with a timeout. Prints the counts per
command and exit code, and writes them to benchmarks/results/fuzz_tflite.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

CLI = str(Path(sys.executable).with_name("tflite-pipeline"))
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
    parser.add_argument("model")
    parser.add_argument("--keras", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--copies", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
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
                    (Path("benchmarks/results") / "fuzz").mkdir(parents=True, exist_ok=True)
                    (Path("benchmarks/results") / "fuzz" / path.name).write_bytes(path.read_bytes())
            if (number + 1) % 20 == 0:
                print(f"{number + 1}/{args.copies} copies: " + "; ".join(
                    f"{k} {dict(v)}" for k, v in counts.items()), file=sys.stderr, flush=True)
    print("| command | " + " | ".join(["outcome", "copies"]) + " |\n|---|---|---:|")
    for name, counter in counts.items():
        for result, n in sorted(counter.items()):
            print(f"| {name} | {result} | {n} |")
    print(f"\ncrashes, hangs, tracebacks or untyped exits: {len(bad)}")
    Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
    Path("benchmarks/results/fuzz_tflite.json").write_text(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": args.model,
        "copies": args.copies, "seed": args.seed, "counts": {k: dict(v) for k, v in counts.items()},
        "bad": bad}, indent=2))


if __name__ == "__main__":
    main()
