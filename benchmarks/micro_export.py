"""Microcontroller export of trained runs, measured: flash, the smallest tensor arena TFLM runs each model in, the
budget left, TFLM vs LiteRT on every validation image, and the model array cross-compiled for a Cortex-M4.

    make demo                                             # models/demo/ (MobileNetV2 0.35 @ 64x64)
    .venv/bin/tflite-pipeline run --recipe micro          # models/micro/ (0.35 @ 48x48, sized for the Nano 33 BLE)
    .venv/bin/python benchmarks/micro_export.py models/micro models/demo --board nano33ble --figures

For every run: top-1 of the float Keras model (the run's report), of its int8 model in LiteRT (XNNPACK, as the
gate ran it, and reference kernels) and in TFLM; TFLM's agreement with both; flash bytes, the measured arena, the
exported arena (10% margin) and the headroom in the board's budget. Then the files of the first run's export, its
op resolver, and `arm-none-eabi-g++` on its `model_data.cc` with `arm-none-eabi-size -A` of the object. Writes
benchmarks/results/micro/ (the exports); with --figures docs/figures/micro-export.md (+ .json).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from figures import REPO, write_figure

from tflite_pipeline.export.micro import export_micro, micro_parity, open_micro_source

OUT = REPO / "benchmarks" / "results" / "micro"
ARM_FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-std=c++11", "-Os",
             "-fdata-sections", "-Wall", "-Werror"]


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _gate_top1(run_dir: Path, model: str) -> float | None:
    """The int8 model's top-1 in the run's own verification (LiteRT, the gate's kernels)."""
    report = json.loads((run_dir / "report.json").read_text())
    variant = Path(model).stem.removeprefix(report["model"]["name"] + "_")
    return next((row["top1"] for row in report["parity"]["rows"] if row["variant"] == variant), None)


def measure(run_dir: Path, board: str) -> list[dict]:
    rows = []
    for export in export_micro(run_dir, OUT / run_dir.name, board=board, log=_log):
        source = open_micro_source(run_dir, [export.model])
        xnnpack, _, _ = micro_parity(run_dir / export.model, source.images, source.spec, export.arena_bytes,
                                     kernels="xnnpack", log=_log)
        rows.append({"run": run_dir.name, "export": export.to_dict(), "gate_top1": _gate_top1(run_dir, export.model),
                     "tflm_vs_xnnpack": xnnpack.agreement, "xnnpack_max_steps": xnnpack.max_output_steps})
    return rows


def cross_compile(folder: Path) -> dict:
    """`model_data.cc` -> an ARM object; the read-only section sizes and alignment from binutils."""
    compiler = shutil.which("arm-none-eabi-g++")
    if compiler is None:
        return {"error": "arm-none-eabi-g++ not found (make setup installs gcc-arm-none-eabi)"}
    obj = OUT / f"{folder.name}.model_data.o"
    compile_cmd = ["arm-none-eabi-g++", *ARM_FLAGS, "-c", str(folder / "model_data.cc"), "-o", str(obj)]
    subprocess.run(compile_cmd, check=True)
    size = subprocess.run(["arm-none-eabi-size", "-A", str(obj)], check=True, capture_output=True, text=True).stdout
    headers = subprocess.run(["arm-none-eabi-objdump", "-h", str(obj)], check=True, capture_output=True,
                             text=True).stdout
    return {"compile": shlex.join(_relative(compile_cmd)), "size": shlex.join(_relative(
        ["arm-none-eabi-size", "-A", str(obj)])), "size_output": size.strip(),
            "rodata_headers": [line.strip() for line in headers.splitlines() if ".rodata" in line]}


def _relative(command: list[str]) -> list[str]:
    return [str(Path(part).relative_to(REPO)) if part.startswith(str(REPO)) else part for part in command]


def markdown(rows: list[dict], board: str, compiled: dict, first: Path) -> list[str]:
    e0 = rows[0]["export"]
    lines = [f"Board budget `{board}`: {e0['budget']['note']}: the model may take "
             f"{e0['budget']['flash_bytes'] / 1024:,.0f} KB of flash and {e0['budget']['ram_bytes'] / 1024:,.0f} KB "
             "of RAM. TFLM ran every validation image with the exported arena; LiteRT ran the same input bytes.", "",
             "| run | model | top-1 float Keras | top-1 int8 LiteRT (XNNPACK, the gate) | top-1 int8 LiteRT reference "
             "| top-1 int8 TFLM | TFLM vs LiteRT reference | TFLM vs XNNPACK | max diff vs reference | images | flash "
             "| smallest arena (TFLM) | exported arena (+margin) | flash left | RAM left |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        e, p = row["export"], row["export"]["parity"]
        gate = "n/a" if row["gate_top1"] is None else f"{row['gate_top1']:.2%}"
        lines.append(f"| {row['run']} | `{e['model']}` | {e['keras_top1']:.2%} | {gate} | {p['litert_top1']:.2%} | "
                     f"{p['tflm_top1']:.2%} | {p['agreement']:.2%} | {row['tflm_vs_xnnpack']:.2%} | "
                     f"{p['max_output_steps']} steps | {p['images']} | {e['flash_bytes']:,} B | "
                     f"{e['arena_measured']:,} B | {e['arena_bytes']:,} B | {e['headroom']['flash']:.0%} | "
                     f"{e['headroom']['ram']:.0%} |")
    lines += ["", "Ops registered per model: " + "; ".join(f"{r['run']}: {', '.join(r['export']['ops'])}"
                                                          for r in rows), "",
              f"## The export of `{rows[0]['run']}`", "", f"`{first.relative_to(REPO)}/`:", "", "```",
              *sorted(p.name for p in first.iterdir()), "```", "", "`model_ops.h`:", "", "```cpp",
              (first / "model_ops.h").read_text().rstrip(), "```", "", "## Cross-compiled for a Cortex-M4", ""]
    if "error" in compiled:
        return [*lines, compiled["error"]]
    return [*lines, "```", f"$ {compiled['compile']}", f"$ {compiled['size']}", compiled["size_output"], "```", "",
            f"The model array's section is {e0['flash_bytes']:,} bytes, the model's size, aligned to 2**4 (objdump "
            "-h):", "", "```", *compiled["rodata_headers"], "```"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (their int8 models are exported)")
    parser.add_argument("--board", default="nano33ble")
    parser.add_argument("--figures", action="store_true", help="also write docs/figures/micro-export.md")
    args = parser.parse_args()
    rows = [row for run in args.runs for row in measure(run.resolve(), args.board)]
    first = OUT / args.runs[0].resolve().name / Path(rows[0]["export"]["model"]).stem
    compiled = cross_compile(first)
    lines = markdown(rows, args.board, compiled, first)
    print("\n".join(lines))
    if args.figures:
        write_figure("micro-export", "Microcontroller export: flash, arena and TFLM parity", lines,
                     {"rows": rows, "cross_compile": compiled})
    return 0


if __name__ == "__main__":
    sys.exit(main())
