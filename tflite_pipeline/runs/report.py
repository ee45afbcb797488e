"""The run report: `report.json` for machines; `report.md` and a self-contained `report.html` (plots
embedded) for people, with the same plots as `report_*.png` in the run folder."""

from __future__ import annotations

import base64
import html
import re
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

from tflite_pipeline.optimize.channels import format_groups
from tflite_pipeline.optimize.stage import StageRecord
from tflite_pipeline.tflite.bench import LatencyResult
from tflite_pipeline.tflite.diagnose import IDEAL_RMSE_OVER_SCALE, Diagnosis, FallbackResult, OptionRanking, layer_name
from tflite_pipeline.tflite.flatbuffer import TFLiteInfo, gzip_size
from tflite_pipeline.tflite.parity import ParityReport


@dataclass(frozen=True)
class StepFailure:
    """An optional step that failed after verification: the run folder was published without its output."""

    step: str
    error: str          # the exception's class
    message: str
    exit_code: int      # its error family's exit code (12 for an unexpected error)


@dataclass(frozen=True)
class ModelArtifact:
    """One exported `.tflite` and what its flatbuffer says."""

    variant: str
    file: str
    size_bytes: int
    gzip_bytes: int
    info: TFLiteInfo
    layer_sparsity: dict[str, float] = field(default_factory=dict)  # pruned layers, read from the flatbuffer
    latency: LatencyResult | None = None                            # LiteRT, batch 1, on the run's machine

    @classmethod
    def measure(cls, variant: str, file: str, data: bytes, info: TFLiteInfo,
                layer_sparsity: dict[str, float] | None = None, latency: LatencyResult | None = None
                ) -> ModelArtifact:
        return cls(variant=variant, file=file, size_bytes=len(data), gzip_bytes=gzip_size(data), info=info,
                   layer_sparsity=dict(layer_sparsity or {}), latency=latency)

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
    rankings: tuple[OptionRanking, ...] = ()                # options measured for an int8 model that failed
    micro: tuple[Any, ...] = ()                             # export.micro.MicroExport per model ([micro])
    metadata: tuple[Any, ...] = ()                          # export.metadata.MetadataRecord per .tflite
    machine: dict[str, Any] = field(default_factory=dict)   # bench.cpu_description(): where latency was measured
    channels: dict[str, Any] | None = None                  # channels.ChannelPlan.to_dict() of a thinned run
    lowrank: dict[str, Any] | None = None                   # lowrank.RankPlan.to_dict() of a factored run
    reused_stages: tuple[str, ...] = ()                     # training stages loaded from the stage cache
    failed_steps: tuple[StepFailure, ...] = ()              # optional steps that failed (the models are verified)
    figures_written: tuple[str, ...] | None = None          # plot files in the run folder (None: all it has)

    @property
    def passed(self) -> bool:
        return self.parity.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_name": self.run_name, "passed": self.passed, "warnings": list(self.warnings),
            "parity": self.parity.to_dict(), "artifacts": [a.to_dict() for a in self.artifacts],
            "stages": [asdict(stage) for stage in self.stages],
            "diagnoses": [d.to_dict() for d in self.diagnoses], "fallbacks": [f.to_dict() for f in self.fallbacks],
            "option_rankings": [r.to_dict() for r in self.rankings],
            "micro": [m.to_dict() for m in self.micro], "metadata": [m.to_dict() for m in self.metadata],
            "model": self.model, "data": self.data, "preprocessing": self.preprocessing,
            "seconds": self.seconds, "versions": self.versions, "recipe": self.recipe, "machine": self.machine,
            "channels": self.channels, "lowrank": self.lowrank, "reused_stages": list(self.reused_stages),
            "failed_steps": [asdict(f) for f in self.failed_steps], "next_steps": self.next_steps(),
        }

    @property
    def exit_code(self) -> int:
        """What the CLI returns: 9 when the gate failed, else the first failed optional step's code, else 0."""
        if not self.passed:
            return 9
        return self.failed_steps[0].exit_code if self.failed_steps else 0

    def next_steps(self) -> list[str]:
        """What to try when an int8 model missed the gate: recipes that fix it and the float fallback."""
        failed = [row for row in self.parity.rows if not row.passed]
        if self.parity.keras_failures:  # the float model itself is off: fix its inputs before any recipe
            return [f"The float model fails the gate itself ({'; '.join(self.parity.keras_failures)}). Check "
                    "labels.txt (one class per line, in the model's output order) and the preprocessing "
                    f"(`{self.preprocessing.get('formula')}`; --normalization sets the range it was trained on)."]
        if not failed:
            return []
        source = self.recipe.get("model", {}).get("source", "mobilenet_v2")
        user = source != "mobilenet_v2"
        on_model = f" --set {shlex.quote(f'model.source={source}')} --set train.epochs=0" if user else ""
        steps = []
        if self.parity.keras_top1 < 1.5 / max(2, self.model.get("classes", 2)):
            steps.append(f"The float model itself scores {self.parity.keras_top1:.1%}: check the preprocessing "
                         f"(`{self.preprocessing.get('formula')}`, {self.preprocessing.get('source') or 'recipe'}): "
                         "pass --normalization for the range the model was trained on.")
        if any(row.variant in ("int8", "int8_fallback") for row in failed):
            steps.append(f"Quantization-aware training keeps accuracy that post-training int8 loses: "
                         f"`tflite-pipeline run --recipe qat{on_model}` (or `prune-pqat-kd` / `channels-qat-kd` to "
                         "compress further, with the float model distilling).")
            fallback = self.recipe.get("diagnose", {}).get("fallback", True)
            steps.append("The per-layer diagnosis shows which layers lose most; the accuracy-budgeted float fallback "
                         "keeps a few of them in float (`int8_fallback`, not for int8-only accelerators)" +
                         ("." if fallback else ": enable it with --set diagnose.fallback=true."))
            if self.rankings:
                best = self.rankings[0].options[0]
                steps.append(f"Measured for `{self.rankings[0].variant}` (see \"Options measured\"): the closest to "
                             f"float is {best.name} ({best.agreement:.2%} agreement; {best.cost}).")
            else:
                steps.append("The [ptq] techniques choose activation ranges and weight rounding for fidelity: try "
                             "--set ptq.ranges=percentile --set ptq.adaround=true --set ptq.bias_correction=true, "
                             "or the int16x8 variant (--variants int8 int16x8).")
        staged = [row for row in failed if row.variant not in ("int8", "int8_fallback")]
        if staged:
            base = self.stages[0].keras_top1 if self.stages else self.parity.keras_top1
            losses = ", ".join(f"{s.name} {s.keras_top1:.2%}" for s in self.stages[1:])
            budget = self.parity.max_top1_drop
            lost_in_keras = [s.name for s in self.stages[1:] if (base - s.keras_top1) * 100 > budget]
            if lost_in_keras:
                steps.append(f"The fine-tuned stages lost accuracy in Keras already (baseline {base:.2%}; {losses}): "
                             f"give `{lost_in_keras[0]}` more epochs, or compress less (a lower "
                             "`prune.target_sparsity`, more `cluster.clusters`, a larger `channels.mac_budget`)" +
                             ("." if self.recipe.get("distill", {}).get("enabled") else
                              ", and enable [distill] with the float model as teacher."))
            else:
                steps.append(f"The stages kept their accuracy in Keras ({losses}) but their int8 model lost it: give "
                             "the QAT stage more epochs, or enable [qat] after the compression stage.")
        return steps

    def artifact(self, variant: str) -> ModelArtifact | None:
        return next((a for a in self.artifacts if a.variant == variant), None)

    def _fallback_cost(self, variant: str) -> str:
        strict, fallback = self.artifact(variant), self.artifact(f"{variant}_fallback")
        if strict is None or fallback is None:
            return ""
        text = f"Cost: size {fallback.size_bytes / strict.size_bytes:.2f}x the strict int8 model"
        if strict.latency and fallback.latency:
            text += f", latency {fallback.latency.median_ms / strict.latency.median_ms:.2f}x (same run, same threads)"
        return text + "."

    def _micro_markdown(self) -> list[str]:
        from tflite_pipeline.export.micro import format_micro_table

        first = self.micro[0]
        lines = ["", "## Microcontroller (TensorFlow Lite Micro)", "",
                 f"Each int8 model as C++ sources for TFLM (`{first.folder}/` and its siblings: model array, op "
                 "resolver, input table, labels, demo sketch). The arena is the smallest TFLM allocated and ran the "
                 f"model in ({first.runtime}, on this machine), plus the margin; TFLM and LiteRT ran the same input "
                 "bytes of the validation images.", "", format_micro_table(self.micro), ""]
        lines += [f"- `{m.model}`: ops {', '.join(m.ops)}" + (f"; budget {m.budget.note}" if m.budget else "")
                  for m in self.micro]
        return lines

    def _channels_markdown(self) -> list[str]:
        c = self.channels
        lines = ["## Channel pruning", "", f"MACs per image {c['macs_before']:,} -> {c['macs_after']:,} "
                 f"({c['macs_after'] / c['macs_before']:.1%}, {c['macs_before'] / c['macs_after']:.2f}x fewer)"
                 + ("" if c["ratio"] is None else f"; ratio solved for the MAC budget: {c['ratio']:.3f}") + ".", ""]
        pairs = [(before, after) for before, after in (("float32", "thinned_float32"), ("int8", self._last_int8()))
                 if after and self.artifact(before) and self.artifact(after)
                 and self.artifact(before).latency and self.artifact(after).latency]
        for before, after in pairs:
            b, a = self.artifact(before).latency, self.artifact(after).latency
            lines.append(f"- LiteRT latency `{before}` {b.median_ms:.2f} ms -> `{after}` {a.median_ms:.2f} ms: "
                         f"{b.median_ms / a.median_ms:.2f}x faster (medians, {a.threads} thread(s), same run)")
        lines += [""] if pairs else []
        lines.append(format_groups(c["groups"]))
        if c["skipped"]:
            by_reason: dict[str, list[str]] = {}
            for layer, reason in c["skipped"].items():  # "reach 'block_2_add' (Add)" -> "reach an Add layer"
                general = re.sub(r"'[^']*' \((\w+)\)", lambda m: f"{'an' if m[1][0] in 'AEIOU' else 'a'} {m[1]} layer",
                                 reason)
                by_reason.setdefault(general, []).append(f"`{layer}`")
            lines += ["", "Kept whole (their channels cannot be removed alone):", ""]
            lines += [f"- {', '.join(layers)}: {reason}" for reason, layers in by_reason.items()]
        return [*lines, ""]

    def _lowrank_markdown(self) -> list[str]:
        from tflite_pipeline.optimize.lowrank import RankPlan

        plan = RankPlan.from_dict(self.lowrank)
        return ["## Low-rank factorization", "", f"{len(plan.ranks)} of {len(plan.layers)} candidate layers factored "
                f"at {plan.energy:.1%} retained energy: MACs per image {plan.macs_before:,} -> {plan.macs_after:,} "
                f"({plan.macs_after / plan.macs_before:.1%}). A rank r pays only below C_in*C_out/(C_in+C_out); "
                "the layers where it cannot are left whole.", "", plan.format_table(), ""]

    def _last_int8(self) -> str | None:
        names = [a.variant for a in self.artifacts if a.variant.endswith("_int8") and a.variant != "int8"]
        return names[-1] if names else None

    @property
    def figures_available(self) -> bool:
        return bool(self.artifacts) and self.figures_written != ()

    def figure_titles(self) -> dict[str, str]:
        """File name -> title of every plot this report has."""
        titles = {"report_accuracy_vs_size.png": "Top-1 vs gzip size",
                  "report_stages.png": "Top-1 at each stage"}
        if any(a.latency for a in self.artifacts):
            titles["report_accuracy_vs_latency.png"] = "Top-1 vs latency"
        if self.parity.keras_per_class_top1:
            titles["report_per_class.png"] = "Top-1 per class"
        for d in self.diagnoses:
            titles[f"report_layers_{d.variant}.png"] = f"Per-layer quantization error of {d.variant}"
        return titles

    def figures(self) -> dict[str, bytes]:
        """PNG bytes of every plot in `figure_titles()`."""
        from tflite_pipeline.runs import plots

        rows = {row.variant: row for row in self.parity.rows}
        measured = [a for a in self.artifacts if a.variant in rows]
        out = {"report_accuracy_vs_size.png": plots.tradeoff(
            [plots.ModelPoint(a.variant, rows[a.variant].top1, a.gzip_bytes / 1024) for a in measured],
            cost_label="gzip size (KiB)", title="Top-1 vs compressed size (Pareto front ringed)",
            baseline_top1=self.parity.keras_top1)}
        timed = [a for a in measured if a.latency]
        if timed:
            out["report_accuracy_vs_latency.png"] = plots.tradeoff(
                [plots.ModelPoint(a.variant, rows[a.variant].top1, a.latency.median_ms) for a in timed],
                cost_label=f"latency, median ms ({timed[0].latency.threads} thread(s), "
                           f"{self.machine.get('summary', 'this CPU')})",
                title="Top-1 vs latency (Pareto front ringed)", baseline_top1=self.parity.keras_top1)
        names = [f"{s.name} (Keras)" for s in self.stages] + [f"{v} .tflite" for v in rows]
        values = [s.keras_top1 for s in self.stages] + [row.top1 for row in rows.values()]
        out["report_stages.png"] = plots.stage_bars(names, values)
        if self.parity.keras_per_class_top1:
            series = {"float Keras": self.parity.keras_per_class_top1,
                      **{row.variant: row.per_class_top1 for row in self.parity.rows}}
            out["report_per_class.png"] = plots.per_class(self.parity.class_names, series)
        float_kept = {f.variant: set(f.float_layers) for f in self.fallbacks if f.met}
        for d in self.diagnoses:
            out[f"report_layers_{d.variant}.png"] = plots.layer_errors(
                [e.short_name for e in d.layers], [e.rmse_over_scale for e in d.layers], ideal=IDEAL_RMSE_OVER_SCALE,
                highlight=[e.short_name for e in d.layers if e.tensor in float_kept.get(d.variant, set())],
                title=f"Per-layer quantization error of {d.variant}")
        return out

    def to_html(self, figures: dict[str, bytes]) -> str:
        """One self-contained HTML page: the Markdown report with every plot embedded as a data URI."""
        import markdown

        text = self.to_markdown()
        for file, png in figures.items():
            text = text.replace(f"]({file})", f"](data:image/png;base64,{base64.b64encode(png).decode()})")
        body = markdown.markdown(text, extensions=["tables"])
        return ("<!doctype html>\n<html><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.run_name)}: tflite_pipeline report</title><style>{_CSS}</style></head>"
                f"<body>{body}</body></html>\n")

    def to_markdown(self) -> str:
        status = "PASSED" if self.passed else "FAILED"
        lines = [f"# Run `{self.run_name}`: parity gate {status}", ""]
        lines += [f"> warning: {w}" for w in self.warnings] + ([""] if self.warnings else [])
        if self.failed_steps:
            lines += ["## Optional steps that failed", "", "The models above were converted and verified; these "
                      "steps after them failed and their outputs are missing:", ""]
            lines += [f"- {f.step}: {f.error}: {f.message} (exit code {f.exit_code})" for f in self.failed_steps]
            lines.append("")
        rebuild = self.model.get("rebuild")
        if rebuild:
            lines += [f"The tfmot stages ran on a flat tf_keras rebuild of {rebuild['source']}"
                      + (f" (nested {', '.join(rebuild['nested'])} inlined)" if rebuild["nested"] else "")
                      + (f"; {rebuild['preprocessing']}" if rebuild["preprocessing"] else "")
                      + f". Largest output difference from the original on {rebuild['images']} calibration images: "
                      f"{rebuild['max_abs_diff']:.2g} (float32; outputs up to {rebuild['max_abs_output']:.3g}).", ""]
        if self.reused_stages:
            lines += [f"Stages finished by an earlier run with the same inputs, loaded from the stage cache: "
                      f"{', '.join(self.reused_stages)}.", ""]
        lines += [f"Model `{self.model['name']}`: input {self.model['input_shape']}, {self.model['classes']} classes, "
                  f"{self.model['parameters']:,} parameters. Validation data: `{self.parity.data}` "
                  f"({self.parity.num_images} images).", "", "## Parity (LiteRT vs float Keras, same images)", "",
                  self.parity.format_table(), ""]
        if len(self.stages) > 1:
            lines += ["## Stages (Keras side)", "", "| stage | Keras top-1 | Δ vs baseline (pts) | layers | sparsity "
                      "| clusters | parameters | MACs |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
            base = self.stages[0].keras_top1
            for st in self.stages:
                lines.append(f"| {st.name} | {st.keras_top1:.2%} | {round((st.keras_top1 - base) * 100, 2) + 0.0:+.2f} "
                             f"| {len(st.layers) or ''} | {'' if st.sparsity is None else f'{st.sparsity:.1%}'} | "
                             f"{st.clusters or ''} | {st.parameters:,} | {'' if st.macs is None else f'{st.macs:,}'} |")
            lines.append("")
        if self.channels:
            lines += self._channels_markdown()
        if self.lowrank:
            lines += self._lowrank_markdown()
        lines += ["## Files", "", "| variant | file | size | gzip | latency median / p90 | weight sparsity (all / "
                  "pruned layers) | full-integer | input | output |", "|---|---|---:|---:|---:|---:|---|---|---|"]
        for a in self.artifacts:
            i, o = a.info.inputs[0], a.info.outputs[0]
            pruned = "" if a.pruned_sparsity is None else f" / {a.pruned_sparsity:.1%}"
            latency = "" if a.latency is None else f"{a.latency.median_ms:.2f} / {a.latency.p90_ms:.2f} ms"
            lines.append(f"| {a.variant} | `{a.file}` | {a.size_bytes / 1024:,.1f} KiB | "
                         f"{a.gzip_bytes / 1024:,.1f} KiB | {latency} | {a.info.weight_sparsity:.1%}{pruned} | "
                         f"{'yes' if a.info.is_full_integer else 'no'} | {_io(i)} | {_io(o)} |")
        timed = [a.latency for a in self.artifacts if a.latency is not None]
        if timed:
            lines += ["", f"Latency: LiteRT {timed[0].kernels}, batch 1, {timed[0].threads} thread(s), median of "
                      f"{timed[0].runs} invokes after {timed[0].warmup} warm-up, measured on "
                      f"{self.machine.get('summary', 'this machine')} ({self.machine.get('model', 'unknown CPU')}, "
                      f"{self.machine.get('usable_cpus', '?')} usable cores). "
                      "Int8 is not faster than float on every CPU: read these as this machine's numbers only "
                      "(see `tflite-pipeline bench`)."]
        if self.next_steps():
            lines += ["", "## Next steps (the gate failed)", ""] + [f"- {step}" for step in self.next_steps()]
        lines += ["", "## Per class (top-1)", "", self.parity.format_per_class()]
        for diagnosis in self.diagnoses:
            lines += ["", f"## Quantization diagnosis: `{diagnosis.variant}`", "", diagnosis.format_table(),
                      "", f"All layers: `{self.model['name']}_{diagnosis.variant}_layers.csv`."]
        for ranking in self.rankings:
            lines += ["", f"## Options measured: `{ranking.variant}` missed the gate", "",
                      "Each measured on the validation split against the Keras source, best agreement first:", "",
                      ranking.format_table()]
        for fallback in self.fallbacks:
            lines += ["", f"## Float fallback: `{fallback.variant}`", "", fallback.format_table()]
            if fallback.model is not None:
                kept = ", ".join(f"`{layer_name(t)}`" for t in fallback.float_layers)
                lines += ["", f"Kept in float: {kept}. The strict `{fallback.variant}` model is unchanged; "
                          f"`{fallback.variant}_fallback` has float ops (not for int8-only accelerators)."]
                cost = self._fallback_cost(fallback.variant)
                if cost:
                    lines += ["", cost]
        if self.micro:
            lines += self._micro_markdown()
        if self.metadata:
            from tflite_pipeline.export.metadata import format_metadata_table

            lines += ["", "## TFLite metadata (MediaPipe Tasks, LiteRT support library)", "",
                      "Labels (`labels.txt` packed into the file), the input image and its normalization, embedded in "
                      "each `.tflite`; the outputs with and without metadata were compared bit for bit on the "
                      "validation images. MediaPipe Tasks' ImageClassifier takes uint8 or float32 input: for int8 "
                      "use the pixels variant.", "", format_metadata_table(self.metadata)]
        if self.figures_available:
            lines += ["", "## Plots", ""] + [f"![{title}]({file})" for file, title in self.figure_titles().items()]
        lines += ["", "## Preprocessing", "", f"`{self.preprocessing['formula']}` on "
                  f"{self.preprocessing['channel_order']} pixels resized ({self.preprocessing['resize']}) to "
                  f"{self.preprocessing['height']}x{self.preprocessing['width']}; see `preprocessing.json`.", "",
                  "## Time", "", " · ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()), "",
                  "## Versions", "", " · ".join(f"{k} {v}" for k, v in self.versions.items()), ""]
        return "\n".join(lines)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:90%}th,td{border:1px solid #ccc;padding:3px 8px}"
        "th{background:#f0f0f0}td{text-align:right}td:first-child{text-align:left}img{max-width:100%;"
        "display:block;margin:1em 0}code{background:#f4f4f4;padding:0 3px}blockquote{color:#a40;margin-left:0}")


def _io(t) -> str:
    quant = f" (scale {t.scale:.4g}, zp {t.zero_point})" if t.scale is not None else ""
    return f"{t.dtype}{list(t.shape)}{quant}"
