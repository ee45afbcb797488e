"""The run report: `report.json` for machines and `report.md` for people, written into the run folder."""

from __future__ import annotations

import gzip
from dataclasses import asdict, dataclass, field
from typing import Any

from .diagnose import Diagnosis, FallbackResult
from .inspect import TFLiteInfo
from .verify import ParityReport


def gzip_size(data: bytes) -> int:
    """Bytes after gzip -9: what a pruned or clustered model costs in an APK or a download."""
    return len(gzip.compress(data, compresslevel=9, mtime=0))


@dataclass(frozen=True)
class StageRecord:
    """One Keras stage of a run: its accuracy and what it did to the weights."""

    name: str
    keras_top1: float
    parameters: int
    layers: tuple[str, ...] = ()          # layers the stage pruned or clustered
    sparsity: float | None = None         # mean zero fraction over those layers (Keras side)
    clusters: int | None = None           # most distinct values in one clustered kernel


@dataclass(frozen=True)
class ModelArtifact:
    """One exported `.tflite` and what its flatbuffer says."""

    variant: str
    file: str
    size_bytes: int
    gzip_bytes: int
    info: TFLiteInfo
    layer_sparsity: dict[str, float] = field(default_factory=dict)  # pruned layers, read from the flatbuffer

    @classmethod
    def measure(cls, variant: str, file: str, data: bytes, info: TFLiteInfo,
                layer_sparsity: dict[str, float] | None = None) -> "ModelArtifact":
        return cls(variant=variant, file=file, size_bytes=len(data), gzip_bytes=gzip_size(data), info=info,
                   layer_sparsity=dict(layer_sparsity or {}))

    @property
    def pruned_sparsity(self) -> float | None:
        return sum(self.layer_sparsity.values()) / len(self.layer_sparsity) if self.layer_sparsity else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["info"] = self.info.to_dict()
        return out


@dataclass(frozen=True)
class RunReport:
    """Everything a run measured. `save(folder)` writes report.json and report.md."""

    run_name: str
    recipe: dict[str, Any]
    versions: dict[str, Any]
    data: dict[str, Any]
    model: dict[str, Any]
    preprocessing: dict[str, Any]
    artifacts: tuple[ModelArtifact, ...]
    parity: ParityReport
    seconds: dict[str, float]
    warnings: tuple[str, ...] = field(default=())
    stages: tuple[StageRecord, ...] = ()
    diagnoses: tuple[Diagnosis, ...] = ()
    fallbacks: tuple[FallbackResult, ...] = ()

    @property
    def passed(self) -> bool:
        return self.parity.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_name": self.run_name, "passed": self.passed, "warnings": list(self.warnings),
            "parity": self.parity.to_dict(), "artifacts": [a.to_dict() for a in self.artifacts],
            "stages": [asdict(stage) for stage in self.stages],
            "diagnoses": [d.to_dict() for d in self.diagnoses], "fallbacks": [f.to_dict() for f in self.fallbacks],
            "model": self.model, "data": self.data, "preprocessing": self.preprocessing,
            "seconds": self.seconds, "versions": self.versions, "recipe": self.recipe,
        }

    def to_markdown(self) -> str:
        status = "PASSED" if self.passed else "FAILED"
        lines = [f"# Run `{self.run_name}`: parity gate {status}", ""]
        lines += [f"> warning: {w}" for w in self.warnings] + ([""] if self.warnings else [])
        lines += [f"Model `{self.model['name']}`: input {self.model['input_shape']}, {self.model['classes']} classes, "
                  f"{self.model['parameters']:,} parameters. Validation data: `{self.parity.data}` "
                  f"({self.parity.num_images} images).", "", "## Parity (LiteRT vs float Keras, same images)", "",
                  self.parity.format_table(), ""]
        if len(self.stages) > 1:
            lines += ["## Stages (Keras side)", "", "| stage | Keras top-1 | Δ vs baseline (pts) | layers | sparsity "
                      "| clusters | parameters |", "|---|---:|---:|---:|---:|---:|---:|"]
            base = self.stages[0].keras_top1
            for st in self.stages:
                lines.append(f"| {st.name} | {st.keras_top1:.2%} | {round((st.keras_top1 - base) * 100, 2) + 0.0:+.2f} "
                             f"| {len(st.layers) or ''} | {'' if st.sparsity is None else f'{st.sparsity:.1%}'} | "
                             f"{st.clusters or ''} | {st.parameters:,} |")
            lines.append("")
        lines += ["## Files", "", "| variant | file | size | gzip | weight sparsity (all / pruned layers) | "
                  "full-integer | input | output |", "|---|---|---:|---:|---:|---|---|---|"]
        for a in self.artifacts:
            i, o = a.info.inputs[0], a.info.outputs[0]
            pruned = "" if a.pruned_sparsity is None else f" / {a.pruned_sparsity:.1%}"
            lines.append(f"| {a.variant} | `{a.file}` | {a.size_bytes / 1024:,.1f} KiB | "
                         f"{a.gzip_bytes / 1024:,.1f} KiB | {a.info.weight_sparsity:.1%}{pruned} | "
                         f"{'yes' if a.info.is_full_integer else 'no'} | {_io(i)} | {_io(o)} |")
        lines += ["", "## Preprocessing", "", f"`{self.preprocessing['formula']}` on "
                  f"{self.preprocessing['channel_order']} pixels resized ({self.preprocessing['resize']}) to "
                  f"{self.preprocessing['height']}x{self.preprocessing['width']}; see `preprocessing.json`.", "",
                  "## Time", "", " · ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()), "",
                  "## Versions", "", " · ".join(f"{k} {v}" for k, v in self.versions.items()), ""]
        return "\n".join(lines)


def _io(t) -> str:
    quant = f" (scale {t.scale:.4g}, zp {t.zero_point})" if t.scale is not None else ""
    return f"{t.dtype}{list(t.shape)}{quant}"
