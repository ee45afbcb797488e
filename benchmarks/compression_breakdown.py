"""Where a compressed int8 .tflite's gzip bytes go: weights (pruned/clustered or not), biases, per-channel scales.

    .venv/bin/python benchmarks/compression_breakdown.py models/explore/candidates/ptq/mobilenet_v2_int8.tflite \
        models/explore/candidates/prune80-cluster16-pcqat/mobilenet_v2_pcqat_int8.tflite \
        models/explore/candidates/channels50-prune80-cluster16-pcqat/mobilenet_v2_pcqat_int8.tflite --figures

Each category's bytes (read through LiteRT's tensor list) are gzipped on their own (-9), so the parts add up to
about the whole file's gzip size; the rest is the flatbuffer's structure (shapes, names, zero points, ops).
Writes docs/figures/compression-breakdown.md (+ .json) with --figures.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from figures import write_figure

CATEGORIES = ("int8 weights with zeros (pruned)", "int8 weights, dense", "int32 biases", "weight scales (float32)",
              "bias scales (float32)")


def breakdown(path: Path) -> dict[str, tuple[int, int]]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    parts: dict[str, bytes] = dict.fromkeys(CATEGORIES, b"")
    for detail in interpreter.get_tensor_details():
        try:
            value = interpreter.get_tensor(detail["index"])
        except ValueError:      # a tensor without data (activations before allocation)
            continue
        scales = detail["quantization_parameters"]["scales"].astype(np.float32).tobytes()
        if value.dtype == np.int8 and value.ndim in (2, 4):
            parts["int8 weights with zeros (pruned)" if np.mean(value == 0) > 0.3 else "int8 weights, dense"] += \
                value.tobytes()
            parts["weight scales (float32)"] += scales
        elif value.dtype == np.int32 and value.ndim == 1:
            parts["int32 biases"] += value.tobytes()
            parts["bias scales (float32)"] += scales
    data = path.read_bytes()
    out = {name: (len(raw), len(gzip.compress(raw, 9))) for name, raw in parts.items()}
    total = (len(data), len(gzip.compress(data, 9)))
    out["the rest (structure)"] = (total[0] - sum(raw for raw, _ in out.values()),
                                   total[1] - sum(packed for _, packed in out.values()))
    out["whole file"] = total
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--figures", action="store_true")
    args = parser.parse_args(argv)
    results = {str(path): breakdown(path) for path in args.models}
    names = list(next(iter(results.values())))
    lines = ["| part | " + " | ".join(f"`{Path(p).parent.name}/{Path(p).name}` raw / gzip" for p in results) + " |",
             "|---|" + "---:|" * len(results)]
    for name in names:
        cells = [f"{r[name][0] / 1024:,.1f} / {r[name][1] / 1024:,.1f} KB" for r in results.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.figures:
        write_figure("compression-breakdown", "Where an int8 file's gzip bytes go", lines,
                     {"models": {p: {k: list(v) for k, v in r.items()} for p, r in results.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
