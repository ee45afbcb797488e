"""`explore`: the most accurate model within a budget, found among candidate recipes and proven by the gate.

Each candidate is the base recipe (its model, data, training) with the fine-tune sections of a bundled recipe
(`CANDIDATES`: PTQ, QAT, pruning, deep compression, channel pruning, low-rank), run as an ordinary run into
`EXPLORE_DIR/candidates/<name>/`. They share the stage cache, so the baseline trains once; a finished
candidate is read back instead of run again, so a stopped `explore` resumes where it was. Every candidate's
int8 model is measured (top-1, agreement, size raw and gzip, MACs, latency at the budget's threads, conversion
time), the Pareto front is plotted, and the most accurate candidate inside the budget is verified again by the
parity gate and copied to `EXPLORE_DIR/recommended/`.

    budget = ExploreBudget(max_gzip_kb=250, max_top1_drop=1.0)
    report = explore(tp.load_recipe("default"), budget)        # -> models/explore/
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tflite_pipeline.config.recipe import Recipe, load_recipe
from tflite_pipeline.errors import BudgetError, ParityError, PipelineError, RecipeError
from tflite_pipeline.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from tflite_pipeline.progress import Log, duration
from tflite_pipeline.progress import log as _stderr
from tflite_pipeline.runs.folder import check_run_name

STAGE_SECTIONS = ("channels", "lowrank", "prune", "cluster", "qat", "distill")   # what a candidate takes over


@dataclass(frozen=True)
class Candidate:
    """A recipe to try: the fine-tune sections of bundled `recipe`, with `overrides` on top."""

    name: str
    recipe: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    from_scratch: bool = False   # a MobileNetV2 of its own width/resolution, trained for the explore's scratch_epochs

    def recipe_overrides(self, scratch_epochs: int | None) -> dict[str, Any]:
        if not self.from_scratch:
            return dict(self.overrides)
        if scratch_epochs is None:
            raise RecipeError(f"Candidate {self.name!r} trains a MobileNetV2 from scratch; give a from-scratch "
                              f"budget (`--from-scratch-epochs N`, `explore(..., scratch_epochs=N)`) to try it.")
        return {"model.source": "mobilenet_v2", "model.weights": "none", "train.epochs": scratch_epochs,
                **self.overrides}


CANDIDATES: tuple[Candidate, ...] = (
    Candidate("ptq", "default", {}, "post-training int8"),
    Candidate("qat", "qat", {}, "quantization-aware training"),
    Candidate("prune50-pqat", "prune-pqat-kd", {"prune.initial_sparsity": 0.3, "prune.target_sparsity": 0.5},
              "50% pruning -> PQAT, distilled"),
    Candidate("prune80-pqat", "prune-pqat-kd", {}, "80% pruning -> PQAT, distilled"),
    Candidate("prune80-cluster16-pcqat", "prune-cluster-pcqat", {},
              "80% pruning -> 16 clusters keeping the zeros -> PCQAT, distilled"),
    Candidate("channels50-prune80-cluster16-pcqat", "deep-compression", {},
              "channel pruning to 50% of the MACs -> 80% pruning -> 16 clusters keeping the zeros -> PCQAT, "
              "distilled"),
    Candidate("channels50-qat", "channels-qat-kd", {}, "channel pruning to 50% of the MACs -> QAT, distilled"),
    Candidate("channels70-qat", "channels-qat-kd", {"channels.mac_budget": 0.7},
              "channel pruning to 70% of the MACs -> QAT, distilled"),
    Candidate("lowrank70-qat", "channels-qat-kd", {"channels.enabled": False, "lowrank.enabled": True,
                                                   "lowrank.mac_budget": 0.7, "lowrank.epochs": 12},
              "low-rank factorization to 70% of the MACs -> QAT, distilled (MobileNetV2 0.35 cannot go below "
              "60%: its depthwise layers and narrow 1x1 layers keep the rest)"),
)

# Width and resolution: each needs its own float model, trained from scratch on the explore's data; tried only
# when a from-scratch budget (epochs) is given. Their top-1 drop is measured against the base's float baseline.
SCRATCH_CANDIDATES: tuple[Candidate, ...] = tuple(
    Candidate(f"w{alpha:g}-{size}px-qat", "qat", {"model.alpha": alpha, "model.input_size": size},
              f"MobileNetV2 {alpha:g} @ {size}x{size} trained from scratch -> QAT", from_scratch=True)
    for alpha, size in ((0.35, 48), (0.5, 48), (0.25, 64), (0.5, 32)))


@dataclass(frozen=True)
class ExploreBudget:
    """What the model to ship must meet (None: no limit). Latency is LiteRT's median at `threads` here."""

    max_gzip_kb: float | None = None
    max_size_kb: float | None = None
    max_latency_ms: float | None = None
    threads: int = 1
    max_top1_drop: float = 1.0         # points below the float baseline
    max_convert_s: float | None = None
    time_budget_min: float | None = None   # no candidate starts after this much time

    def __post_init__(self) -> None:
        for name in ("max_gzip_kb", "max_size_kb", "max_latency_ms", "max_convert_s", "time_budget_min"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise RecipeError(f"Received {name}={value}; expected a number above 0 (or no limit).")
        if self.threads < 1:
            raise RecipeError(f"Received threads={self.threads}; expected an integer >= 1.")

    def misses(self, result: CandidateResult) -> list[str]:
        """What `result` misses, in words (empty: it is within the budget)."""
        out = [] if result.gate_passed else ["the parity gate failed"]
        checks = [(result.top1_drop, self.max_top1_drop, "top-1 drop", "pts"),
                  (result.gzip_bytes / 1024, self.max_gzip_kb, "gzip size", "KB"),
                  (result.size_bytes / 1024, self.max_size_kb, "size", "KB"),
                  (result.latency_ms, self.max_latency_ms, "latency", "ms"),
                  (result.convert_s, self.max_convert_s, "conversion", "s")]
        for value, limit, what, unit in checks:
            if limit is not None and (value is None or value > limit):
                shown = "not measured" if value is None else f"{value:,.2f} {unit}"
                out.append(f"{what} {shown} > {limit:,.2f} {unit}")
        return out

    def describe(self) -> str:
        parts = [f"top-1 drop <= {self.max_top1_drop} pts"]
        parts += [f"{what} <= {value:,} {unit}" for what, value, unit in
                  (("gzip", self.max_gzip_kb, "KB"), ("size", self.max_size_kb, "KB"),
                   (f"latency ({self.threads} thread{'s' if self.threads > 1 else ''})", self.max_latency_ms, "ms"),
                   ("conversion", self.max_convert_s, "s")) if value is not None]
        return ", ".join(parts)


@dataclass(frozen=True)
class CandidateResult:
    """One candidate's int8 model, as its run measured it."""

    name: str
    description: str
    file: str                    # the .tflite, relative to the explore folder
    top1: float
    top1_drop: float             # points below the base's float baseline
    agreement: float
    size_bytes: int
    gzip_bytes: int
    macs: int
    parameters: int
    latency_ms: float | None
    convert_s: float | None
    seconds: float
    gate_passed: bool
    reused: bool = False
    misses: tuple[str, ...] = ()
    float_top1: float | None = None   # the candidate's own float model (a from-scratch one differs from the base's)

    @property
    def meets(self) -> bool:
        return not self.misses


@dataclass(frozen=True)
class ExploreReport:
    """Every candidate measured, which were not run and why, and the model recommended for the budget."""

    budget: ExploreBudget
    baseline_top1: float | None
    float32_gzip_bytes: int | None
    results: tuple[CandidateResult, ...]
    skipped: dict[str, str]
    recommended: str | None
    recommended_file: str | None
    seconds: float
    machine: dict[str, Any] = field(default_factory=dict)

    def result(self, name: str) -> CandidateResult:
        return next(r for r in self.results if r.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {"budget": asdict(self.budget), "baseline_top1": self.baseline_top1,
                "float32_gzip_bytes": self.float32_gzip_bytes,
                "results": [{**asdict(r), "meets": r.meets} for r in self.results], "skipped": self.skipped,
                "recommended": self.recommended, "recommended_file": self.recommended_file,
                "seconds": self.seconds, "machine": self.machine}

    def format_table(self) -> str:
        ratio = "gzip vs float32" if self.float32_gzip_bytes else ""
        rows = [f"| candidate | top-1 | Δ top-1 (pts) | agreement | size | gzip | {ratio} | MACs | latency | "
                "convert | within budget |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in sorted(self.results, key=lambda r: -r.top1):
            mark = "**recommended**" if r.name == self.recommended else "yes" if r.meets else "; ".join(r.misses)
            vs = f"{r.gzip_bytes / self.float32_gzip_bytes:.3f}x" if self.float32_gzip_bytes else ""
            latency = "" if r.latency_ms is None else f"{r.latency_ms:.2f} ms"
            convert = "" if r.convert_s is None else f"{r.convert_s:.0f} s"
            rows.append(f"| {r.name} | {r.top1:.2%} | {0.0 - r.top1_drop:+.2f} | {r.agreement:.2%} | "
                        f"{r.size_bytes / 1024:,.1f} KB | {r.gzip_bytes / 1024:,.1f} KB | {vs} | {r.macs:,} | "
                        f"{latency} | {convert} | {mark} |")
        return "\n".join(rows)

    def to_markdown(self, figures: Sequence[str] = ()) -> str:
        lines = ["# explore", "", f"Budget: {self.budget.describe()}.",
                 f"Float baseline top-1: {self.baseline_top1:.2%}." if self.baseline_top1 is not None else "", "",
                 self.format_table(), ""]
        if self.recommended:
            lines += [f"Recommended: **{self.recommended}** ({self.result(self.recommended).description}), the "
                      f"most accurate candidate within the budget, verified again by the parity gate and copied to "
                      f"`{self.recommended_file}`.", ""]
        else:
            lines += ["No candidate is within the budget: see each one's misses above.", ""]
        lines += [f"- {name} not run: {reason}" for name, reason in self.skipped.items()]
        lines += [""] if self.skipped else []
        lines += [f"![{name}]({name})" for name in figures]
        runs = sum(r.seconds for r in self.results)
        lines += ["", f"{len(self.results)} candidates; their runs took {duration(runs)} in all, this explore "
                  f"{duration(self.seconds)}"
                  + (f" on {self.machine.get('summary')}" if self.machine.get("summary") else "") + "."]
        return "\n".join(lines) + "\n"


def candidate_recipe(base: Recipe, candidate: Candidate, budget: ExploreBudget,
                     overrides: Mapping[str, Any] | None = None, scratch_epochs: int | None = None) -> Recipe:
    """`base` with `candidate`'s fine-tune sections and overrides, latency measured at the budget's threads, the
    gate's top-1 drop the budget's, and the user's `overrides` last (they win). A from-scratch candidate builds
    its own MobileNetV2 and trains it for `scratch_epochs`."""
    source = load_recipe(candidate.recipe)
    sections = {f"{name}.{key}": value for name in STAGE_SECTIONS
                for key, value in getattr(source, name).to_dict().items()}
    own = candidate.recipe_overrides(scratch_epochs)
    fine_tunes = source.optimizes or any(str(k).endswith(".enabled") and v for k, v in own.items())
    return base.with_overrides({**sections, **own, "bench.enabled": True,
                                "bench.threads": budget.threads, "verify.max_top1_drop": budget.max_top1_drop,
                                "convert.variants": [] if fine_tunes else ["float32", "int8"],
                                **(overrides or {})})


def _same_recipe(report: Mapping[str, Any], recipe: Recipe) -> bool:
    return json.dumps(report.get("recipe"), sort_keys=True) == json.dumps(
        json.loads(json.dumps(recipe.to_dict())), sort_keys=True)


def _measure(name: str, description: str, run_dir: Path, root: Path, budget: ExploreBudget, reused: bool,
             baseline_top1: float | None = None) -> tuple[CandidateResult, dict[str, Any]]:
    """The candidate's int8 model (its last full-integer artifact) and its report; its top-1 drop against
    `baseline_top1` when given (a from-scratch candidate against the base's float model), else its own."""
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    int8 = [a for a in report["artifacts"] if a["info"]["is_full_integer"] and a["variant"].endswith("int8")]
    if not int8:
        raise RecipeError(f"Candidate {name!r} exported no int8 model ({run_dir}); add int8 to convert.variants.")
    artifact = int8[-1]
    row = next(r for r in report["parity"]["rows"] if r["variant"] == artifact["variant"])
    latency = artifact.get("latency") or {}
    result = CandidateResult(
        name=name, description=description, file=str((run_dir / artifact["file"]).relative_to(root)),
        top1=row["top1"], agreement=row["agreement"], float_top1=report["parity"]["keras_top1"],
        top1_drop=row["top1_drop"] if baseline_top1 is None else round(100 * (baseline_top1 - row["top1"]), 4),
        size_bytes=artifact["size_bytes"], gzip_bytes=artifact["gzip_bytes"], macs=artifact["info"]["macs"],
        parameters=artifact["info"]["num_parameters"], latency_ms=latency.get("median_ms"),
        convert_s=report["seconds"].get("convert"), seconds=report["seconds"]["total"],
        gate_passed=not row["failures"], reused=reused)
    return replace(result, misses=tuple(budget.misses(result))), report


def explore(base: Recipe, budget: ExploreBudget, *, candidates: Sequence[Candidate] | None = None,
            overrides: Mapping[str, Any] | None = None, output_dir: str | Path = "models",
            run_name: str = "explore", overwrite: bool = False, cache_dir: str | Path | None = None,
            use_cache: bool = True, scratch_epochs: int | None = None, log: Log = _stderr) -> ExploreReport:
    """Run (or read back) every candidate, pick the most accurate within `budget`, verify and copy it. Writes
    `explore.json`, `explore.md` and the Pareto plots into `output_dir/run_name/`. Raises `BudgetError` (with the
    report) when no candidate is within the budget, `ParityError` if the recommended model fails the gate again.
    `candidates`: default `CANDIDATES`, and `SCRATCH_CANDIDATES` (width, resolution) when `scratch_epochs` is
    given; one that fails with a typed error is listed as not run, the others go on."""
    from tflite_pipeline.runs.pipeline import run

    if scratch_epochs is not None and scratch_epochs < 1:
        raise RecipeError(f"Received scratch_epochs={scratch_epochs}; expected an integer >= 1 (the epochs each "
                          f"from-scratch candidate trains) or none.")
    candidates = _with_baseline(CANDIDATES + (SCRATCH_CANDIDATES if scratch_epochs else ()) if candidates is None
                                else tuple(candidates))
    recipes = [candidate_recipe(base, c, budget, overrides, scratch_epochs) for c in candidates]   # errors first
    root = Path(output_dir) / check_run_name(run_name)
    if overwrite and root.exists():
        shutil.rmtree(root)
    (root / "candidates").mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir else Path(output_dir) / ".cache"
    started = time.monotonic()
    results: list[CandidateResult] = []
    skipped: dict[str, str] = {}
    reports: dict[str, dict[str, Any]] = {}
    for number, (candidate, recipe) in enumerate(zip(candidates, recipes, strict=True), 1):
        run_dir = root / "candidates" / candidate.name
        elapsed = time.monotonic() - started
        done = run_dir / "report.json"
        reuse = done.is_file() and _same_recipe(json.loads(done.read_text(encoding="utf-8")), recipe)
        base_reports = _base_reports(reports, candidates)
        if candidate.from_scratch and not base_reports:
            skipped[candidate.name] = "no candidate on the base model finished, so there is no float baseline to " \
                                      "measure its top-1 drop against"
            log(f"[explore] {number}/{len(candidates)} {candidate.name}: skipped, {skipped[candidate.name]}")
            continue
        baseline = base_reports[0]["parity"]["keras_top1"] if candidate.from_scratch else None
        if not reuse and budget.time_budget_min is not None and elapsed >= budget.time_budget_min * 60:
            skipped[candidate.name] = f"the time budget ({budget.time_budget_min:g} min) was used up"
            log(f"[explore] {number}/{len(candidates)} {candidate.name}: skipped, time budget used up")
            continue
        log(f"[explore] {number}/{len(candidates)} {candidate.name} ({candidate.description}); "
            f"{duration(elapsed)} elapsed" + ("; finished by an earlier explore: read back" if reuse else ""))
        if not reuse:
            try:
                run(recipe, output_dir=root / "candidates", run_name=candidate.name, overwrite=True,
                    cache_dir=cache, use_cache=use_cache, log=log)
            except PipelineError as error:   # one candidate that cannot run does not stop the others
                skipped[candidate.name] = f"failed ({type(error).__name__}, exit {error.exit_code}): {error}"
                log(f"[explore] {candidate.name} failed: {error}")
                continue
        result, reports[candidate.name] = _measure(candidate.name, candidate.description, run_dir, root, budget,
                                                   reuse, baseline)
        results.append(result)
        log(f"[explore] {candidate.name}: top-1 {result.top1:.2%} ({0.0 - result.top1_drop:+.2f} pts), gzip "
            f"{result.gzip_bytes / 1024:,.1f} KB, " + ("within the budget" if result.meets else
                                                       "misses: " + "; ".join(result.misses)))
        _write(root, _report(budget, results, skipped, None, None, _base_reports(reports, candidates), started),
               final=False)

    within = sorted((r for r in results if r.meets), key=lambda r: (-r.top1, r.gzip_bytes))
    recommended = within[0] if within else None
    shipped = _ship(root, recommended, log) if recommended else None
    report = _report(budget, results, skipped, recommended, shipped, _base_reports(reports, candidates), started)
    _write(root, report, final=True)
    log(f"[explore] {root}/explore.md: {len(results)} candidates; " +
        (f"recommended {recommended.name} -> {shipped}" if recommended else "none within the budget"))
    if recommended is None:
        raise BudgetError(f"No candidate is within the budget ({budget.describe()}); closest: "
                          + "; ".join(f"{r.name}: {', '.join(r.misses)}" for r in sorted(
                              results, key=lambda r: len(r.misses))[:3])
                          + f". The measurements are in {root}/explore.md.", report)
    return report


def _with_baseline(candidates: tuple[Candidate, ...]) -> tuple[Candidate, ...]:
    """From-scratch candidates are judged against the base's float baseline, so they run after the base's
    candidates (`ptq` first when none is in the list)."""
    base = tuple(c for c in candidates if not c.from_scratch)
    scratch = tuple(c for c in candidates if c.from_scratch)
    return ((base or CANDIDATES[:1]) if scratch else base) + scratch


def _base_reports(reports: Mapping[str, dict[str, Any]], candidates: Sequence[Candidate]) -> list[dict[str, Any]]:
    """The reports of candidates built on the base's float model (not trained from scratch), in run order."""
    scratch = {c.name for c in candidates if c.from_scratch}
    return [report for name, report in reports.items() if name not in scratch]


def _report(budget: ExploreBudget, results: list[CandidateResult], skipped: dict[str, str],
            recommended: CandidateResult | None, shipped: str | None, reports: Sequence[Mapping[str, Any]],
            started: float) -> ExploreReport:
    from tflite_pipeline.tflite.bench import cpu_description

    float32 = next((a["gzip_bytes"] for r in reports for a in r["artifacts"] if a["variant"] == "float32"), None)
    baseline = next((r["parity"]["keras_top1"] for r in reports), None)
    return ExploreReport(budget=budget, baseline_top1=baseline, float32_gzip_bytes=float32, results=tuple(results),
                         skipped=dict(skipped), recommended=recommended.name if recommended else None,
                         recommended_file=shipped, seconds=round(time.monotonic() - started, 1),
                         machine=cpu_description())


def _ship(root: Path, chosen: CandidateResult, log: Log) -> str:
    """Verify the chosen candidate's run folder again (the gate, on its own files) and copy its model, labels and
    preprocessing to `recommended/`; returns the model's path relative to `root`."""
    from tflite_pipeline.runs.verify import verify

    source = root / chosen.file
    parity = verify(source.parent, log=log)
    row = max((r for r in parity.rows if source.stem.endswith(r.variant)), key=lambda r: len(r.variant))
    if not row.passed:
        raise ParityError(f"The recommended model {chosen.file} failed the parity gate on re-verification: "
                          f"{'; '.join(row.failures)}.", parity)
    target = root / "recommended"
    staging = root / ".recommended-new"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for name in (source.name, "labels.txt", "preprocessing.json"):
        atomic_write_bytes(staging / name, (source.parent / name).read_bytes())
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    atomic_write_json(staging / "recommended.json", {"candidate": chosen.name, "description": chosen.description,
                                                     "file": source.name, "sha256": digest,
                                                     "verified": {"top1": row.top1, "agreement": row.agreement,
                                                                  "source_agreement": row.source_agreement}})
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    log(f"[explore] {chosen.name} passed the gate again (top-1 {row.top1:.2%}); copied to {target}")
    return str((target / source.name).relative_to(root))


def _write(root: Path, report: ExploreReport, *, final: bool) -> None:
    figures = _figures(report) if final and report.results else {}
    for name, png in figures.items():
        atomic_write_bytes(root / name, png)
    atomic_write_json(root / "explore.json", report.to_dict())
    atomic_write_text(root / "explore.md", report.to_markdown(list(figures)))


def _figures(report: ExploreReport) -> dict[str, bytes]:
    from tflite_pipeline.runs.plots import ModelPoint, tradeoff

    def points(cost) -> list[ModelPoint]:
        return [ModelPoint(r.name, r.top1, cost(r)) for r in report.results if cost(r) is not None]

    budget = f"budget: {report.budget.describe()}"
    b = report.budget
    floor = None if report.baseline_top1 is None else report.baseline_top1 - b.max_top1_drop / 100
    shared = {"baseline_top1": report.baseline_top1, "min_top1": floor, "chosen": report.recommended}
    out = {"explore_gzip.png": tradeoff(points(lambda r: r.gzip_bytes / 1024), cost_label="gzip size (KB)",
                                        title=f"Candidates: top-1 vs gzip size ({budget})", max_cost=b.max_gzip_kb,
                                        **shared)}
    latency = points(lambda r: r.latency_ms)
    if latency:
        out["explore_latency.png"] = tradeoff(latency, cost_label=f"LiteRT latency (ms, {b.threads} thread(s))",
                                              title="Candidates: top-1 vs latency", max_cost=b.max_latency_ms,
                                              **shared)
    return out


def candidates_named(names: Sequence[str]) -> tuple[Candidate, ...]:
    """The `CANDIDATES` with these names, in the order given; `RecipeError` for an unknown one."""
    known = {c.name: c for c in CANDIDATES + SCRATCH_CANDIDATES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise RecipeError(f"Received candidate {unknown[0]!r}; expected some of {list(known)}.")
    return tuple(known[n] for n in names)
