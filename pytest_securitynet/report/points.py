"""Telling the points of a figure apart by model: a colour and marker per model, short model ids
for point labels, and labels placed so they stay inside the axes.

A figure identifies models only when it has few of them (`MAX_IDENTIFIED`); with more, a legend of
model ids would hide the data and colours would repeat, so the sections colour by group instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

MAX_IDENTIFIED = 8
"""Up to this many models, each gets its own colour and marker, a legend entry and a point label."""
MARKERS = "osD^vP*X"
MAX_ID_CHARS = 18
"""Point labels longer than this are cut (the legend keeps the full id)."""
LABEL_SIZE = 6.5
EDGE = 0.6
"""A point beyond this fraction of the axes (right or top) gets its label on the inner side."""


@dataclass(frozen=True)
class Style:
    """How one model's points are drawn."""

    color: tuple
    marker: str


def identified(names: Iterable[str]) -> list[str]:
    """The sorted distinct `names` when there are few enough to tell apart (else an empty list)."""
    distinct = sorted({str(n) for n in names})
    return distinct if len(distinct) <= MAX_IDENTIFIED else []


def model_styles(names: Sequence[str]) -> dict[str, Style]:
    """A distinct colour and marker for each of `names` (at most `MAX_IDENTIFIED`)."""
    cmap = plt.get_cmap("tab10")
    return {name: Style(cmap(i % 10), MARKERS[i % len(MARKERS)]) for i, name in enumerate(names)}


def short_ids(names: Sequence[str]) -> dict[str, str]:
    """Each model id without the dash-separated words every id shares at its start and end.

    `demo-digits-cnn`, `demo-digits-rbf-overfit` -> `cnn`, `rbf-overfit`. A single id, or ids
    that would become equal, stay whole; anything longer than `MAX_ID_CHARS` is cut.
    """
    words = [str(n).split("-") for n in names]
    if len(words) > 1:
        shortest = min(len(w) for w in words)
        head = 0
        while head < shortest - 1 and len({w[head] for w in words}) == 1:
            head += 1
        tail = 0
        while tail < shortest - head - 1 and len({w[-1 - tail] for w in words}) == 1:
            tail += 1
        short = ["-".join(w[head:len(w) - tail]) for w in words]
        if len(set(short)) < len(short):
            short = [str(n) for n in names]
    else:
        short = [str(n) for n in names]
    return {str(n): _cut(s) for n, s in zip(names, short)}


def _cut(text: str) -> str:
    return text if len(text) <= MAX_ID_CHARS else text[: MAX_ID_CHARS - 1] + "…"


def label_points(ax, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str]) -> list:
    """Write `labels` beside their points, on the side that faces the middle of the axes.

    Call it after the axis limits are final. Labels of points in the right (top) part of the
    axes go to their left (below), so none runs over the axes' edge.
    """
    ax.autoscale_view()
    to_axes = ax.transData + ax.transAxes.inverted()
    texts = []
    for x, y, label in zip(xs, ys, labels):
        fx, fy = to_axes.transform((float(x), float(y)))
        right, top = fx > EDGE, fy > EDGE
        texts.append(ax.annotate(label, (x, y), xytext=(-4 if right else 4, -4 if top else 4),
                                 textcoords="offset points", fontsize=LABEL_SIZE, color="0.2",
                                 ha="right" if right else "left", va="top" if top else "bottom", zorder=4))
    return texts


def legend_handles(styles: dict[str, Style], color: tuple | str | None = None) -> list[Line2D]:
    """One legend entry per model: its marker, in its colour (or in `color` when colour means a group)."""
    return [Line2D([], [], linestyle="", marker=s.marker, markersize=5, markeredgecolor="black",
                   markeredgewidth=0.4, color=s.color if color is None else color, label=name)
            for name, s in styles.items()]
