"""Matplotlib helpers for the report: correlation scatters, per-group strips, saving PNGs.

Every figure is drawn with the Agg backend (no display needed), labels both axes with their
unit, and is saved as one PNG. Pearson's r is computed with scipy and shown with its n; it is
shown only where x and y each take at least 3 different values (below that a figure says nothing
of r; the CSVs still list what was computed).
With few models (`points.MAX_IDENTIFIED`) every model has its own marker, a legend entry and, where
it is one point, a label beside it.
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
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from pytest_securitynet.report import points as P  # noqa: E402
from pytest_securitynet.report.frames import CI_HIGH, CI_LOW  # noqa: E402

DPI = 110
PANEL = (4.2, 3.4)  # inches per subplot
MIN_POINTS = 3
"""Pearson's r needs at least this many points; figures show none with fewer."""
MARGIN = 0.08
"""Room between the outermost points and the axes, as a fraction of the data range."""
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
    """Pearson correlation of two variables over `n` points; `r` is None where undefined.

    `distinct` is the smaller of the numbers of different x and different y values among them.
    """

    r: float | None
    p: float | None
    n: int
    distinct: int | None = None

    def label(self) -> str | None:
        """What a figure says of this correlation, or None: say nothing.

        Nothing is said unless both variables take `MIN_POINTS` different values: two models
        measured in several settings are many points but still only two models.
        """
        distinct = self.n if self.distinct is None else self.distinct
        if self.r is None or min(self.n, distinct) < MIN_POINTS:
            return None
        return f"r = {self.r:.3f} (n = {self.n})"


def pearson(x: Iterable[float], y: Iterable[float]) -> Corr:
    """Pearson's r between `x` and `y` over the pairs where both are finite numbers."""
    pairs = [(float(a), float(b)) for a, b in zip(x, y) if _finite(a) and _finite(b)]
    n = len(pairs)
    distinct = min(len({a for a, _ in pairs}), len({b for _, b in pairs}))
    if n < MIN_POINTS:
        return Corr(None, None, n, distinct)
    xs, ys = np.array(pairs).T
    if np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return Corr(None, None, n, distinct)
    result = stats.pearsonr(xs, ys)
    r = float(np.clip(result.statistic, -1.0, 1.0))
    return Corr(r, float(result.pvalue), n, distinct)


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


TITLE_LINE_IN = 0.24
"""Height in inches of one line of a figure title at 11 pt, with its spacing."""


def save(fig, path: Path, title: str, dpi: int = DPI) -> Path:
    """Title the figure, lay it out, write it as a PNG and close it.

    The PNG is cropped to what is drawn (`bbox_inches="tight"`), so no label is cut at its edge.
    """
    lay_out(fig, title)
    fig.savefig(path, dpi=dpi, format="png", bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    return path


def lay_out(fig, title: str) -> None:
    """Title the figure above its panels: `tight_layout` alone ignores a suptitle, whose lines then
    cover the first row's panel titles, so the panels are laid out below the room the title takes."""
    chars = max(30, int(fig.get_figwidth() * 10))  # about what fits across the figure at 11 pt
    wrapped = textwrap.fill(title, chars)
    fig.suptitle(wrapped, fontsize=11, y=1.0, va="top")
    room = (wrapped.count("\n") + 1) * TITLE_LINE_IN + 0.1
    fig.tight_layout(rect=(0, 0, 1, max(0.5, 1 - room / fig.get_figheight())))


MISSING = "unknown"
"""How a figure names the group of rows whose grouping column is empty."""


def labels(values: pd.Series) -> pd.Series:
    """`values` as text, empty ones named `MISSING`: pandas' `astype(str)` keeps them missing
    (NaN), which neither sorts among strings nor equals any group name."""
    return values.astype(object).where(values.notna(), MISSING).astype(str)


def color_map(groups: Sequence[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {g: cmap(i % 10) for i, g in enumerate(groups)}


def error_bars(ax, data: pd.DataFrame, x: str, y: str) -> None:
    """Grey 95% interval bars behind the points of `y` against `x`, for whichever of the two has its
    interval columns (`frames.CI_LOW`, `CI_HIGH`)."""
    bars = {}
    for axis, name in (("xerr", x), ("yerr", y)):
        low, high = name + CI_LOW, name + CI_HIGH
        if low in data and high in data:
            lo, hi, value = (pd.to_numeric(data[c], errors="coerce") for c in (low, high, name))
            if lo.notna().any():
                bars[axis] = [(value - lo).clip(lower=0).fillna(0).to_numpy(), (hi - value).clip(lower=0).fillna(0).to_numpy()]
    if bars:
        ax.errorbar(pd.to_numeric(data[x]), pd.to_numeric(data[y]), fmt="none", ecolor="0.55", elinewidth=0.7,
                    capsize=1.5, zorder=2, **bars)


def scatter_groups(ax, frame: pd.DataFrame, x: str, y: str, group: str | None, *, xlabel: str, ylabel: str,
                   title: str, diagonal: bool = False, label_col: str | None = "model") -> dict[str, Corr]:
    """Scatter `y` against `x`, one colour per `group` value, r per group (and over all points);
    rows whose `group` is empty form the group `MISSING`.

    With few `label_col` values (models), each has its own marker (and colour, when there is
    no group) in the legend, and points that are a model's only one are labelled with its short
    id. r is shown only where it has `MIN_POINTS` points. Returns `{group value: Corr}` plus
    `"all"` when there is more than one group.
    """
    data = frame.dropna(subset=[x, y])
    names = labels(data[group]) if group else None
    groups = sorted(names.unique()) if group else ["all"]
    by_group = len(groups) > 1
    colors = color_map(groups)
    models = P.identified(data[label_col]) if label_col and label_col in data else []
    styles = P.model_styles(models)
    ax.margins(MARGIN)
    error_bars(ax, data, x, y)
    out: dict[str, Corr] = {}
    handles = []
    for i, name in enumerate(groups):
        part = data[names == name] if group else data
        corr = pearson(part[x], part[y])
        out[name] = corr
        if styles:
            for model, points in part.groupby(part[label_col].astype(str)):
                style = styles[model]
                ax.scatter(points[x], points[y], s=30, color=colors[name] if by_group else style.color,
                           marker=style.marker, edgecolor="black", linewidth=0.4, zorder=3)
        else:
            ax.scatter(part[x], part[y], s=28, color=colors[name], marker=MARKERS[i % len(MARKERS)],
                       edgecolor="black", linewidth=0.4, zorder=3)
        if by_group:
            handles.append(Line2D([], [], linestyle="", marker="o" if styles else MARKERS[i % len(MARKERS)],
                                  markersize=5, markeredgecolor="black", markeredgewidth=0.4, color=colors[name],
                                  label=_with_r(name, corr)))
    if by_group:
        out["all"] = pearson(data[x], data[y])
    overall = out.get("all", out[groups[0]]) if groups else pearson([], [])
    handles += P.legend_handles(styles, color="0.6" if by_group else None)
    if diagonal:
        handles.append(_diagonal(ax))
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    summary = overall.label()
    ax.set_title(f"{title}\n{'all points: ' if by_group else ''}{summary}" if summary else title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=7)
    if styles and len(data) == data[label_col].nunique():  # one point per model: label each
        short = P.short_ids(models)
        P.label_points(ax, data[x], data[y], [short[str(m)] for m in data[label_col]])
    if len(handles) > 1 or (handles and by_group):
        ax.legend(handles=handles, fontsize=6, loc="best", framealpha=0.85)
    return out


def _with_r(name: str, corr: Corr) -> str:
    label = corr.label()
    return f"{name}: {label}" if label else name


def _diagonal(ax) -> Line2D:
    ax.autoscale_view()
    lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
    hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
    (line,) = ax.plot([lo, hi], [lo, hi], linestyle="--", color="0.5", linewidth=0.8, label="y = x", zorder=1)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    return line


def strip_by_category(ax, frame: pd.DataFrame, category: str, y: str, *, order: Sequence[str] | None = None,
                      xlabel: str, ylabel: str, title: str, connect: str | None = None, log: bool = False,
                      identify: str | None = None) -> None:
    """Points of `y` per `category` value (with a box where a category has 3 or more), optionally
    joining the points of one `connect` value (e.g. a model) across categories.

    With few `identify` values (models), each has its own colour and marker, side by side within
    a category, and a legend entry; otherwise points are coloured by category.
    """
    data = frame.dropna(subset=[y])
    data = data.assign(**{category: labels(data[category])})
    cats = list(order) if order else sorted(data[category].unique())
    cats = [c for c in cats if (data[category] == c).any()]
    position = {c: i for i, c in enumerate(cats)}
    values = [data.loc[data[category] == c, y].astype(float).to_numpy() for c in cats]
    boxed = [i for i, v in enumerate(values) if len(v) >= 3]
    if boxed:
        ax.boxplot([values[i] for i in boxed], positions=boxed, widths=0.5, showfliers=False,
                   medianprops={"color": "black"}, boxprops={"color": "0.55"}, whiskerprops={"color": "0.55"},
                   capprops={"color": "0.55"})
    models = P.identified(data[identify]) if identify and identify in data else []
    if models:
        _strip_by_model(ax, data, category, y, position, identify, models, connect)
    else:
        _strip_by_position(ax, data, category, y, position, values, cats, connect)
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels([f"{c}\n(n = {len(v)})" for c, v in zip(cats, values)], fontsize=7,
                       rotation=30 if len(cats) > 4 else 0, ha="right" if len(cats) > 4 else "center")
    ax.set_xlim(-0.5, len(cats) - 0.5)
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
    if models:
        ax.legend(handles=P.legend_handles(P.model_styles(models)), fontsize=6, loc="best", framealpha=0.85)


def _strip_by_position(ax, data: pd.DataFrame, category: str, y: str, position: dict[str, int],
                       values: list[np.ndarray], cats: list[str], connect: str | None) -> None:
    """Many models: points coloured by category, jittered unless joined by `connect`."""
    rng = np.random.default_rng(0)
    if connect:
        for _, part in data.groupby(connect):
            part = part[part[category].isin(position)]
            part = part.assign(_pos=part[category].map(position)).sort_values("_pos")
            ax.plot(part["_pos"], part[y], color="0.7", linewidth=0.7, zorder=1)
    colors = color_map(cats)
    for i, v in enumerate(values):
        jitter = rng.uniform(-0.08, 0.08, len(v)) if len(v) > 1 and not connect else np.zeros(len(v))
        ax.scatter(np.full(len(v), i) + jitter, v, s=22, color=colors[cats[i]], edgecolor="black",
                   linewidth=0.4, zorder=3)


def _strip_by_model(ax, data: pd.DataFrame, category: str, y: str, position: dict[str, int], identify: str,
                    models: list[str], connect: str | None) -> None:
    """Few models: one colour and marker per model, each model at its own offset in a category."""
    styles = P.model_styles(models)
    step = min(0.1, 0.6 / len(models))
    for j, model in enumerate(models):
        part = data[(data[identify].astype(str) == model) & data[category].isin(position)]
        pos = part[category].map(position) + (j - (len(models) - 1) / 2) * step
        part = part.assign(_pos=pos).sort_values("_pos")
        style = styles[model]
        if connect:
            ax.plot(part["_pos"], part[y], color=style.color, linewidth=0.8, alpha=0.6, zorder=2)
        ax.scatter(part["_pos"], part[y], s=28, color=style.color, marker=style.marker, edgecolor="black",
                   linewidth=0.4, zorder=3)


def lines_by(ax, frame: pd.DataFrame, x: str, y: str, line: str, *, xlabel: str, ylabel: str, title: str,
             legend: bool = True) -> None:
    """One line of `y` against `x` per `line` value (e.g. one model per line)."""
    data = frame.dropna(subset=[x, y])
    data = data.assign(**{line: labels(data[line])})
    names = sorted(data[line].unique())
    colors = color_map(names)
    for i, name in enumerate(names):
        part = data[data[line] == name].sort_values(x)
        ax.plot(part[x], part[y], marker=MARKERS[i % len(MARKERS)], markersize=4, linewidth=1,
                color=colors[name], label=name)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=7)
    if names and legend:
        ax.legend(fontsize=6, loc="best")
