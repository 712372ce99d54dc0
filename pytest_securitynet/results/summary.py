"""The short table printed at the end of a run: one line per result row."""

from __future__ import annotations

from typing import Any

MAX_ROWS = 40
MAX_METRICS = 4


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Model, benchmark, setting, outcome and the first few numeric metrics of each row."""
    table = [("model", "benchmark", "setting", "outcome", "metrics")]
    for row in sorted(rows, key=lambda r: (r["model"], r["benchmark"], r["setting"]))[:MAX_ROWS]:
        numbers = [(k, v) for k, v in row.get("metrics", {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in numbers[:MAX_METRICS])
        table.append((row["model"], row["benchmark"], row["setting"], row.get("outcome", "?"), shown))
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths)) + "  " + r[4] for r in table]
    if len(rows) > MAX_ROWS:
        lines.append(f"... and {len(rows) - MAX_ROWS} more rows in the JSON file")
    return lines


def _fmt(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"
