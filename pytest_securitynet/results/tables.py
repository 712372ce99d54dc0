"""Tables computed from result rows, in one place for the benchmark's command line and the report."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable

from pytest_securitynet.results.rows import PASSED

BACKDOOR_DETECTION = "backdoor_detection.detection"


def false_positive_rates(rows: Iterable[dict[str, Any]], purpose: str | None = None,
                         benchmark: str = BACKDOOR_DETECTION) -> dict[str, dict[str, dict[str, Any]]]:
    """SecurityNet Table 1: `{family: {detector: {models, flagged, false_positive_rate, mean_runtime_s}}}`.

    Over the passed rows of `benchmark` that hold a verdict (`flagged`). Every model is presumed
    clean (SecurityNet §4.3), so the rate is flagged models / models. The family is the row's
    `dataset_family` metric (else its dataset), the detector its `detector` metric (else its
    setting). `purpose="benchmark"` keeps the paper's selection (benchmark models only).
    `mean_runtime_s` is over the rows that timed the detector (None when none did).
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        metrics = row.get("metrics") or {}
        if (row.get("benchmark") != benchmark or row.get("outcome") != PASSED or metrics.get("flagged") is None
                or purpose not in (None, metrics.get("purpose"))):
            continue
        family = str(metrics.get("dataset_family") or row.get("dataset"))
        groups[(family, str(metrics.get("detector") or row.get("setting")))].append(metrics)
    table: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for (family, detector), group in sorted(groups.items()):
        flagged = sum(bool(m["flagged"]) for m in group)
        runtimes = [float(m["runtime_s"]) for m in group if _number(m.get("runtime_s"))]
        table[family][detector] = {
            "models": len(group), "flagged": flagged, "false_positive_rate": flagged / len(group),
            "mean_runtime_s": sum(runtimes) / len(runtimes) if runtimes else None,
        }
    return dict(table)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
