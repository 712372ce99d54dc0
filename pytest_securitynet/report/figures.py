"""Matplotlib helpers for the report: correlation scatters, per-group strips, saving PNGs.

Every figure is drawn with the Agg backend (no display needed), labels both axes with their
unit, and is saved as one PNG. Pearson's r is computed with scipy and shown with its n; below
3 points, or when one variable does not vary, r is undefined and the figure says so.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

DPI = 110
PANEL = (4.2, 3.4)  # inches per subplot
MAX_POINT_LABELS = 10
"""Scatter points are labelled with their model id when a panel has at most this many."""
MARKERS = "osD^vP*Xh<>p"

# Axis labels, each with its unit.
ACCURACY = "fraction of test images, 0-1"
LABELS = {
    "target_accuracy": f"target test accuracy ({ACCURACY})",
    "test_accuracy": f"target test accuracy ({ACCURACY})",
    "clean_accuracy": f"target clean accuracy ({ACCURACY})",
    "attack_accuracy": f"surrogate accuracy ({ACCURACY})",
    "agreement": "agreement with the target (fraction of test images, 0-1)",
    "auc": "attack AUC (0.5 = chance, 1 = perfect)",
    "accuracy_drop": "accuracy drop (clean - adversarial, fraction 0-1)",
    "gap_train_test": "overfitting gap (train - test accuracy, fraction)",
    "gap_members": "overfitting gap (members - non-members accuracy, fraction)",
    "year": "publication year (calendar year)",
    "budget_pct": "query budget (% of the training split)",
    "eps": "eps (L-inf, on the [0, 1] pixel scale)",
    "runtime_s": "runtime (s, log scale)",
    "anomaly_index": "anomaly index (MAD units)",
    "tpr": "TPR (fraction of members, 0-1)",
}


@dataclass(frozen=True)
class Corr:
    """Pearson correlation of two variables over `n` points; `r` is None where undefined."""

    r: float | None
    p: float | None
    n: int

    def text(self) -> str:
        if self.r is None:
            return f"r undefined (n = {self.n})"
        return f"r = {self.r:.3f} (n = {self.n})"


def pearson(x: Iterable[float], y: Iterable[float]) -> Corr:
    """Pearson's r between `x` and `y` over the pairs where both are finite numbers."""
    pairs = [(float(a), float(b)) for a, b in zip(x, y) if _finite(a) and _finite(b)]
    n = len(pairs)
    if n < 3:
        return Corr(None, None, n)
    xs, ys = np.array(pairs).T
    if np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return Corr(None, None, n)
    result = stats.pearsonr(xs, ys)
    r = float(np.clip(result.statistic, -1.0, 1.0))
    return Corr(r, float(result.pvalue), n)


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def panels(n: int, ncols: int = 3, panel: tuple[float, float] = PANEL):
    """A figure with `n` subplots on a grid of at most `ncols` columns; unused axes are hidden."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows + 0.4), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def save(fig, path: Path, title: str, dpi: int = DPI) -> Path:
    """Title the figure, lay it out, write it as a PNG and close it."""
    chars = max(30, int(fig.get_figwidth() * 10))  # about what fits across the figure at 11 pt
    fig.suptitle(textwrap.fill(title, chars), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, format="png")
    plt.close(fig)
    return path


def color_map(groups: Sequence[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {g: cmap(i % 10) for i, g in enumerate(groups)}


def scatter_groups(ax, frame: pd.DataFrame, x: str, y: str, group: str | None, *, xlabel: str, ylabel: str,
                   title: str, diagonal: bool = False, label_col: str | None = "model") -> dict[str, Corr]:
    """Scatter `y` against `x`, one colour per `group` value, r per group (and over all points).

    Returns `{group value: Corr}` plus `"all"` when there is more than one group.
    """
    data = frame.dropna(subset=[x, y])
    groups = sorted(data[group].astype(str).unique()) if group else ["all"]
    colors = color_map(groups)
    out: dict[str, Corr] = {}
    for i, name in enumerate(groups):
        part = data[data[group].astype(str) == name] if group else data
        corr = pearson(part[x], part[y])
        out[name] = corr
        label = f"{name}: {corr.text()}" if len(groups) > 1 else None
        ax.scatter(part[x], part[y], s=28, color=colors[name], marker=MARKERS[i % len(MARKERS)],
                   edgecolor="black", linewidth=0.4, label=label, zorder=3)
    if len(groups) > 1:
        out["all"] = pearson(data[x], data[y])
    overall = out.get("all", out[groups[0]]) if groups else pearson([], [])
    if label_col and 0 < len(data) <= MAX_POINT_LABELS:
        for _, row in data.iterrows():
            ax.annotate(str(row[label_col]), (row[x], row[y]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points", color="0.25")
    if diagonal:
        _diagonal(ax)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(f"{title}\n{'all points: ' if len(groups) > 1 else ''}{overall.text()}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=7)
    if len(groups) > 1:
        ax.legend(fontsize=6, loc="best")
    return out


def _diagonal(ax) -> None:
    lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
    hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
    ax.plot([lo, hi], [lo, hi], linestyle="--", color="0.5", linewidth=0.8, label="y = x", zorder=1)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)


def strip_by_category(ax, frame: pd.DataFrame, category: str, y: str, *, order: Sequence[str] | None = None,
                      xlabel: str, ylabel: str, title: str, connect: str | None = None, log: bool = False) -> None:
    """Points of `y` per `category` value (with a box where a category has 3 or more), optionally
    joining the points of one `connect` value (e.g. a model) across categories."""
    data = frame.dropna(subset=[y])
    cats = list(order) if order else sorted(data[category].astype(str).unique())
    cats = [c for c in cats if (data[category].astype(str) == c).any()]
    position = {c: i for i, c in enumerate(cats)}
    values = [data.loc[data[category].astype(str) == c, y].astype(float).to_numpy() for c in cats]
    boxed = [i for i, v in enumerate(values) if len(v) >= 3]
    if boxed:
        ax.boxplot([values[i] for i in boxed], positions=boxed, widths=0.5, showfliers=False,
                   medianprops={"color": "black"}, boxprops={"color": "0.55"}, whiskerprops={"color": "0.55"},
                   capprops={"color": "0.55"})
    rng = np.random.default_rng(0)
    if connect:
        for _, part in data.groupby(connect):
            part = part[part[category].astype(str).isin(position)]
            part = part.assign(_pos=part[category].astype(str).map(position)).sort_values("_pos")
            ax.plot(part["_pos"], part[y], color="0.7", linewidth=0.7, zorder=1)
    for i, v in enumerate(values):
        jitter = rng.uniform(-0.08, 0.08, len(v)) if len(v) > 1 and not connect else np.zeros(len(v))
        ax.scatter(np.full(len(v), i) + jitter, v, s=22, color=color_map(cats)[cats[i]], edgecolor="black",
                   linewidth=0.4, zorder=3)
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels([f"{c}\n(n = {len(v)})" for c, v in zip(cats, values)], fontsize=7,
                       rotation=30 if len(cats) > 4 else 0, ha="right" if len(cats) > 4 else "center")
    if log:
        ax.set_yscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        ax.yaxis.set_major_formatter(plain)
        low, high = ax.get_ylim()
        # label the 2..9 ticks only when the axis spans less than a decade (else they overlap)
        ax.yaxis.set_minor_formatter(plain if low > 0 and high / low < 10 else NullFormatter())
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    ax.tick_params(axis="y", labelsize=7)


def lines_by(ax, frame: pd.DataFrame, x: str, y: str, line: str, *, xlabel: str, ylabel: str, title: str,
             legend: bool = True) -> None:
    """One line of `y` against `x` per `line` value (e.g. one model per line)."""
    data = frame.dropna(subset=[x, y])
    names = sorted(data[line].astype(str).unique())
    colors = color_map(names)
    for i, name in enumerate(names):
        part = data[data[line].astype(str) == name].sort_values(x)
        ax.plot(part[x], part[y], marker=MARKERS[i % len(MARKERS)], markersize=4, linewidth=1,
                color=colors[name], label=name)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=7)
    if names and legend:
        ax.legend(fontsize=6, loc="best")
