"""Parallel verification: N interpreter instances side by side vs one, on the same 10,000 images.

    .venv/bin/python benchmarks/parallel_verify.py                     # demo models, 1 vs 2 workers, 5 repeats
    .venv/bin/python benchmarks/parallel_verify.py --workers 1 2 4 --repeats 3 --json out.json

`LiteRTClassifier(num_threads=N)` (what `verify.num_threads` sets) runs N single-threaded LiteRT
interpreters, each on its own chunk of the batch; N = 1 is the serial baseline. Images: the Fashion-MNIST
test set (10,000; see verify_throughput.py), preprocessed once up front, so only interpreter work is timed.
Repeats are interleaved (1, 2, 1, 2, ...) so background load hits every setting alike; the speed-up is the
ratio of median wall times from the same run. Every setting must give bit-identical scores to the serial one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from verify_throughput import REPO, load_images

from tflite_pipeline.data.preprocess import PreprocessSpec
from tflite_pipeline.tflite.bench import cpu_description
from tflite_pipeline.tflite.interpreter import LiteRTClassifier


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--float32", type=Path, default=REPO / "models/demo/mobilenet_v2_float32.tflite")
    parser.add_argument("--int8", type=Path, default=REPO / "models/demo/mobilenet_v2_int8.tflite")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="interpreter instances (default 1 2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()

    spec = PreprocessSpec.read_json(args.int8.parent / "preprocessing.json")
    images, where = load_images(spec, args.images, "auto")
    models = {"float32": args.float32, "int8": args.int8}
    runners = {(kind, n): LiteRTClassifier(path, num_threads=n, batch_size=args.batch_size)
               for kind, path in models.items() for n in args.workers}
    for runner in runners.values():
        runner.predict(images[:args.batch_size])  # warm-up
    seconds: dict[tuple[str, int], list[float]] = {key: [] for key in runners}
    identical = True
    for repeat in range(args.repeats):
        for kind in models:
            serial = None
            for n in args.workers:
                start = time.perf_counter()
                scores = runners[kind, n].predict(images)
                seconds[kind, n].append(time.perf_counter() - start)
                serial = scores if serial is None else serial
                identical &= bool(np.array_equal(scores, serial))
        print(f"  repeat {repeat + 1}/{args.repeats}: " + ", ".join(
            f"{kind} x{n} {s[-1]:.2f} s" for (kind, n), s in seconds.items()), file=sys.stderr, flush=True)
    cpu = cpu_description()
    median = {key: float(np.median(s)) for key, s in seconds.items()}
    print(f"## Verification of {len(images):,} images ({where}) on {cpu['model']} ({cpu['summary']}, "
          f"os.cpu_count() = {cpu['logical_cpus']})\n")
    print("| model | interpreters | median s | images/s | speed-up vs 1 |\n|---|---:|---:|---:|---:|")
    for (kind, n), value in median.items():
        print(f"| {kind} | {n} | {value:.2f} | {len(images) / value:,.0f} | "
              f"{median[kind, args.workers[0]] / value:.2f}x |")
    print(f"\n{args.repeats} interleaved repeats, batch {args.batch_size}; scores bit-identical to the serial run: "
          f"{identical}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({f"{kind} x{n}": s for (kind, n), s in seconds.items()}, indent=2))
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
