"""Where benchmark scripts publish what they measured: `docs/figures/<name>.md` (+ `.json`), headed by the date,
the command that reproduces it, the CPU and the library versions, so the docs link figures instead of copying them.

    from figures import write_figure
    write_figure("latency-mobilenet-v2", "Batch-1 latency", "benchmarks/latency.py", markdown_lines, data)
"""

from __future__ import annotations

import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "docs" / "figures"


def measured_on() -> dict[str, Any]:
    """Date, CPU and versions of this measurement (imports no TensorFlow)."""
    from tflite_pipeline.env import run_versions
    from tflite_pipeline.tflite.bench import cpu_description

    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": cpu_description(),
            "versions": run_versions()}


def write_figure(name: str, title: str, lines: list[str], data: dict[str, Any], *,
                 command: str | None = None) -> Path:
    """Write docs/figures/<name>.md (title, provenance, then `lines`) and <name>.json (`data` + provenance);
    returns the Markdown path. `command` defaults to this process's command line."""
    from tflite_pipeline.files import atomic_write_json, atomic_write_text

    meta = measured_on()
    command = command or shlex.join([".venv/bin/python", str(Path(sys.argv[0]).resolve().relative_to(REPO)),
                                     *sys.argv[1:]])
    cpu, versions = meta["cpu"], meta["versions"]
    header = [f"# {title}", "",
              f"Measured {meta['date']} on {cpu['model']} ({cpu['summary']}; os.cpu_count() = {cpu['logical_cpus']}); "
              + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", "",
              f"Reproduce: `{command}` (this file is written by it; do not edit by hand).", ""]
    FIGURES.mkdir(parents=True, exist_ok=True)
    atomic_write_json(FIGURES / f"{name}.json", {**meta, "command": command, **data})
    return atomic_write_text(FIGURES / f"{name}.md", "\n".join(header + lines).rstrip() + "\n")
