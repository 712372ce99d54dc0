"""The table printed at the end of a run: rows grouped per model, each model with its counts.

Every row is shown up to `MAX_ROWS`; beyond that a model's passed rows fold into its count line
and only rows that did not pass are listed, so a large sweep's summary still shows every failure.
A row that did not pass shows its reason where a passed row shows its metrics; a long reason
wraps onto indented lines under its column instead of being cut, so the whole hint stays readable.
"""

from __future__ import annotations

import textwrap
from collections import Counter, defaultdict
from typing import Any

MAX_ROWS = 200
MAX_METRICS = 4
REASON_WIDTH = 100
OUTCOMES = ("passed", "failed", "error", "skipped")


def summary_lines(rows: list[dict[str, Any]], max_rows: int = MAX_ROWS) -> list[str]:
    """One count line per model, then its rows (benchmark, setting, outcome, metrics or reason)."""
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: (r["model"], r["benchmark"], r["setting"])):
        by_model[row["model"]].append(row)
    fold = len(rows) > max_rows
    table: list[tuple[str, ...] | str] = []
    for model, group in by_model.items():
        table.append(f"{model}: {_counts(group)}")
        shown = [r for r in group if not fold or r.get("outcome") != "passed"]
        table += [("  " + r["benchmark"], r["setting"], r.get("outcome", "?"), _detail(r)) for r in shown]
    cells = [t for t in table if isinstance(t, tuple)]
    widths = [max((len(t[i]) for t in cells), default=0) for i in range(3)]
    lines: list[str] = []
    for t in table:
        if isinstance(t, str):
            lines.append(t)
            continue
        lead = "  ".join(c.ljust(w) for c, w in zip(t[:3], widths)) + "  "
        wrapped = textwrap.wrap(t[3], REASON_WIDTH, break_long_words=False, break_on_hyphens=False) or [""]
        lines.append(lead + wrapped[0])
        lines += [" " * len(lead) + more for more in wrapped[1:]]
    total = _counts(rows)
    lines.append(f"{len(by_model)} model{'s' if len(by_model) != 1 else ''}, {len(rows)} row{'s' if len(rows) != 1 else ''}: {total}"
                 + (f" (passed rows folded into the counts above beyond {max_rows} rows; all are in the JSON)"
                    if fold else ""))
    return lines


def _counts(rows: list[dict[str, Any]]) -> str:
    counts = Counter(r.get("outcome", "?") for r in rows)
    order = [o for o in OUTCOMES if counts[o]] + sorted(o for o in counts if o not in OUTCOMES)
    return ", ".join(f"{counts[o]} {o}" for o in order)


def _detail(row: dict[str, Any]) -> str:
    """The first few numeric metrics of a passed row, else the first line of its reason."""
    if row.get("outcome") != "passed":
        reason = (row.get("message") or "").strip().splitlines()
        text = reason[0].removeprefix("Skipped: ") if reason else "(no reason recorded)"
        return text
    numbers = [(k, v) for k, v in row.get("metrics", {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return " ".join(f"{k}={_fmt(v)}" for k, v in numbers[:MAX_METRICS])


def _fmt(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"
