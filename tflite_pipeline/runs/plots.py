"""PNG plots for the run report (matplotlib, Agg backend: no display needed).

Each function takes plain numbers and returns PNG bytes, so the report can embed them in HTML
and write them next to `report.md`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

_DPI = 110


@dataclass(frozen=True)
class ModelPoint:
    """One `.tflite` on a trade-off plot."""

    name: str
    top1: float          # fraction
    cost: float          # size in KiB, or latency in ms: lower is better


def pareto_front(points: Sequence[ModelPoint]) -> list[ModelPoint]:
    """The points no other point beats on both accuracy (higher) and cost (lower), cheapest first."""
    front = [p for p in points
             if not any((q.top1 >= p.top1 and q.cost <= p.cost) and (q.top1 > p.top1 or q.cost < p.cost)
                        for q in points)]
    return sorted(front, key=lambda p: p.cost)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=_DPI)
    plt.close(fig)
    return buffer.getvalue()


# where a point's name goes, in offset points, tried in turn until it overlaps no name placed before it
_LABEL_SPOTS = ((6, 4, "left"), (6, -11, "left"), (-6, 4, "right"), (-6, -11, "right"), (0, 9, "center"),
                (0, -16, "center"))


def _label_points(fig, ax, points: Sequence[ModelPoint]) -> None:
    """Name each point beside it, on the first side where the name stays inside the axes and overlaps no other
    name (close points, long names). Call once the axes are complete: it measures the names where they are drawn."""
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    placed = []

    def name_at(p: ModelPoint, spot: tuple[int, int, str]):
        dx, dy, align = spot
        label = ax.annotate(p.name, (p.cost, p.top1 * 100), textcoords="offset points", xytext=(dx, dy), ha=align,
                            fontsize=8)
        return label, label.get_window_extent(renderer)

    for p in points:
        for spot in _LABEL_SPOTS:
            label, box = name_at(p, spot)
            fits = inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
            if fits and not any(box.overlaps(other) for other in placed):
                break
            label.remove()
        else:   # every side is taken: the first one, overlapping
            label, box = name_at(p, _LABEL_SPOTS[0])
        placed.append(box)


def tradeoff(points: Sequence[ModelPoint], *, cost_label: str, title: str, baseline_top1: float | None = None,
             max_cost: float | None = None, min_top1: float | None = None, chosen: str | None = None) -> bytes:
    """Accuracy vs cost scatter, one labelled point per model, the Pareto front drawn and ringed; a budget
    (`max_cost`, `min_top1`) shaded as the region outside it, and the `chosen` model marked."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    front = pareto_front(points)
    ax.scatter([p.cost for p in points], [p.top1 * 100 for p in points], s=36, color="tab:blue", zorder=3)
    ax.plot([p.cost for p in front], [p.top1 * 100 for p in front], color="tab:orange", lw=1.5, zorder=2,
            label="Pareto front")
    ax.scatter([p.cost for p in front], [p.top1 * 100 for p in front], s=110, facecolors="none",
               edgecolors="tab:orange", lw=1.5, zorder=4)
    if baseline_top1 is not None:
        ax.axhline(baseline_top1 * 100, color="grey", ls="--", lw=1, label="float Keras")
    if max_cost is not None:
        ax.axvspan(max_cost, max(max_cost, *[p.cost for p in points]) * 1.05, color="tab:red", alpha=0.08,
                   label="outside the budget")
    if min_top1 is not None:
        ax.axhspan(min(min_top1, *[p.top1 for p in points]) * 100 - 0.2, min_top1 * 100, color="tab:red", alpha=0.08,
                   label=None if max_cost is not None else "outside the budget")
    for p in points:
        if p.name == chosen:
            ax.scatter([p.cost], [p.top1 * 100], s=160, marker="*", color="tab:green", zorder=5, label="recommended")
    ax.set_xlabel(cost_label)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _label_points(fig, ax, points)
    return _png(fig)


def stage_bars(names: Sequence[str], top1: Sequence[float], *, title: str = "Top-1 at each stage") -> bytes:
    """Horizontal bars of top-1 per stage / model, zoomed to the interesting range."""
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(names) + 1.2))
    values = [v * 100 for v in top1]
    bars = ax.barh(range(len(names)), values, color=["tab:grey" if "Keras" in n else "tab:blue" for n in names])
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    low = max(0.0, math.floor(min(values) - 3))
    ax.set_xlim(low, min(100.0, max(values) + 2))
    for bar, v in zip(bars, values, strict=True):
        ax.text(bar.get_width() + 0.1, bar.get_y() + bar.get_height() / 2, f"{v:.2f}%", va="center", fontsize=8)
    ax.set_xlabel("top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def per_class(class_names: Sequence[str], series: dict[str, Sequence[float]]) -> bytes:
    """Grouped bars: top-1 per class for each model."""
    n, k = len(class_names), len(series)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.55 * n * max(1, k) / 2 + 2), 4.2))
    width = 0.8 / max(k, 1)
    for j, (label, values) in enumerate(series.items()):
        ax.bar([i + (j - (k - 1) / 2) * width for i in range(n)], [v * 100 for v in values], width, label=label)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("top-1 (%)")
    lowest = min((v for values in series.values() for v in values if not math.isnan(v)), default=0.0)
    ax.set_ylim(max(0.0, math.floor(lowest * 100 - 5)), 100)
    ax.set_title("Top-1 per class", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def layer_errors(names: Sequence[str], rmse_over_scale: Sequence[float], *, ideal: float,
                 highlight: Sequence[str] = (), title: str = "Per-layer quantization error") -> bytes:
    """RMSE/scale per quantized layer in model order; the ideal rounding level and float-kept layers marked."""
    fig, ax = plt.subplots(figsize=(8.0, 3.6))
    colors = ["tab:red" if name in highlight else "tab:blue" for name in names]
    ax.bar(range(len(names)), rmse_over_scale, color=colors)
    ax.axhline(ideal, color="grey", ls="--", lw=1, label=f"pure rounding ({ideal:.2f})")
    worst = [i for i in sorted(range(len(names)), key=lambda i: -rmse_over_scale[i])[:3]
             if rmse_over_scale[i] > 1.5 * ideal]  # name only the clear outliers: labels of a flat profile overlap
    for i in worst:
        ax.annotate(names[i], (i, rmse_over_scale[i]), textcoords="offset points", xytext=(0, 3), ha="center",
                    fontsize=7, rotation=30)
    ax.set_xlabel("quantized layer (model order)")
    ax.set_ylabel("RMSE / scale")
    ax.set_title(title + (" (red: kept in float by the fallback)" if highlight else ""), fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)
