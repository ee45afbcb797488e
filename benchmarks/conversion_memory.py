"""Peak memory over many conversions: in process vs `IsolatedConverter` (a spawned child per N conversions).

    .venv/bin/python benchmarks/conversion_memory.py                     # 20 int8 conversions, each way
    .venv/bin/python benchmarks/conversion_memory.py --conversions 40 --per-child 8 --json out.json

The model: the demo baseline (models/demo/mobilenet_v2_float.keras) when `make demo` has run, else the same
architecture (MobileNetV2 0.35 at 64x64, 10 classes) with random weights; calibration: 100 bundled
calibration images, preprocessed as the pipeline does. Each way runs in a fresh Python process so neither
inherits the other's heap. After every conversion it records the process's resident memory (VmRSS), its peak
(ru_maxrss of the process); the isolated way also reports its converter children's peak (ru_maxrss of
RUSAGE_CHILDREN, once they have exited). "Flat" means the parent's peak after the last conversion is within
a few MiB of its peak after the first; every flatbuffer's sha256 is compared between the two ways.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "models" / "demo" / "mobilenet_v2_float.keras"


def _mib(kib: int) -> float:
    return kib / 1024.0


def resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return _mib(int(line.split()[1]))
    return float("nan")


def measure(mode: str, conversions: int, per_child: int) -> dict:
    """In this process: convert `conversions` times in `mode` (in-process | isolated); memory after each."""
    import tflite_pipeline as tp
    from tflite_pipeline.data.folders import ImageFolder
    from tflite_pipeline.data.preprocess import PreprocessSpec
    from tflite_pipeline.tflite.convert import IsolatedConverter, convert_variant, representative_dataset

    model = tp.load_model(DEMO_MODEL) if DEMO_MODEL.is_file() else \
        tp.build_mobilenet_v2(10, 64, alpha=0.35, seed=0)
    spec = PreprocessSpec(*model.input_shape[1:])
    representative = representative_dataset(ImageFolder.scan(REPO / "representative_data" / "calibration"), spec,
                                            100)
    isolated = IsolatedConverter(per_child=per_child) if mode == "isolated" else None
    convert = isolated.convert if isolated else convert_variant
    rows = []
    for index in range(conversions):
        t0 = time.perf_counter()
        data = convert(model, "int8", representative=representative)
        rows.append({"conversion": index + 1, "seconds": round(time.perf_counter() - t0, 2),
                     "rss_mib": round(resident_mib(), 1),
                     "peak_mib": round(_mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss), 1),
                     "sha256": hashlib.sha256(data).hexdigest()})
        print(f"  {mode} {index + 1}/{conversions}: peak {rows[-1]['peak_mib']:.0f} MiB, "
              f"{rows[-1]['seconds']:.1f} s", file=sys.stderr, flush=True)
    if isolated:
        isolated.close()  # the last child exits: RUSAGE_CHILDREN now covers every converter child
    return {"mode": mode, "model": str(DEMO_MODEL.relative_to(REPO)) if DEMO_MODEL.is_file() else
            "random MobileNetV2 0.35 @ 64", "per_child": per_child if isolated else None, "rows": rows,
            "children_peak_mib": round(_mib(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss), 1)}


def run_child(mode: str, conversions: int, per_child: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", mode, "--conversions", str(conversions),
                           "--per-child", str(per_child)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_table(results: list[dict], marks: list[int]) -> str:
    by_mode = {r["mode"]: r["rows"] for r in results}
    lines = ["| after conversion | in-process: peak RSS (MiB) | RSS (MiB) | isolated: parent peak RSS (MiB) | "
             "RSS (MiB) |", "|---:|---:|---:|---:|---:|"]
    for mark in marks:
        a, b = by_mode["in-process"][mark - 1], by_mode["isolated"][mark - 1]
        lines.append(f"| {mark} | {a['peak_mib']:.0f} | {a['rss_mib']:.0f} | {b['peak_mib']:.0f} | "
                     f"{b['rss_mib']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversions", type=int, default=20)
    parser.add_argument("--per-child", type=int, default=8, help="conversions per converter child (default 8)")
    parser.add_argument("--json", help="also write the measurements here")
    parser.add_argument("--child", choices=("in-process", "isolated"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.conversions, args.per_child)))
        return
    results = [run_child(mode, args.conversions, args.per_child) for mode in ("in-process", "isolated")]
    n = args.conversions
    marks = sorted({1, 2, 5, 10, n // 2, n} - {0})
    print(f"## Peak memory over {n} int8 conversions of {results[0]['model']}\n")
    print(format_table(results, marks))
    inproc, isolated = results[0]["rows"], results[1]["rows"]
    print(f"\nin-process: peak grew {inproc[-1]['peak_mib'] - inproc[0]['peak_mib']:+.0f} MiB from conversion 1 to {n} "
          f"(median {sorted(r['seconds'] for r in inproc)[n // 2]:.1f} s per conversion)")
    print(f"isolated (a child per {args.per_child} conversions): parent peak grew "
          f"{isolated[-1]['peak_mib'] - isolated[0]['peak_mib']:+.0f} MiB; converter children's peak "
          f"{results[1]['children_peak_mib']:.0f} MiB (median {sorted(r['seconds'] for r in isolated)[n // 2]:.1f} s "
          "per conversion)")
    same = all(a["sha256"] == b["sha256"] for a, b in zip(inproc, isolated, strict=True))
    print(f"flatbuffers identical between the two ways: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
