"""Regression checks: compare each measured metric with a reference and fail the tests that drift.

A reference is either `reported` (the numbers the SecurityNet database reports,
`catalog/reported/securitynet.csv`) or a results JSON of an earlier run, a baseline being the subset
of one that `--securitynet-save-baseline` writes (docs/regression.md). References are keyed by
(model, benchmark, setting) and hold numeric metrics. A metric is compared only where a tolerance
is known for it: the benchmark's spec declares one per metric and kind of reference
(`results/spec.py`), and `--securitynet-tolerance METRIC=ABS` overrides it; `*=ABS` gives every
other numeric metric a tolerance too.

Pure functions without pytest; the pytest wiring is `plugin/regression.py`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pytest_securitynet.catalog.entries import BUILTIN_CATALOG
from pytest_securitynet.results.journal import write_atomic
from pytest_securitynet.results.rows import PASSED, SCHEMA, encode, load_results, now, plain, row_key
from pytest_securitynet.results.spec import BASELINE, BenchmarkSpec

REPORTED = "reported"
REPORTED_CSV = BUILTIN_CATALOG / "reported" / "securitynet.csv"
BASELINE_KIND = "securitynet-baseline/1"
REGRESSION = "securitynet-regression"

Key = tuple[str, str, str]


@dataclass
class Reference:
    """Metrics of a reference, keyed by (model, benchmark, setting), with where each row came from."""

    label: str
    kind: str  # "reported" or "results"
    rows: dict[Key, dict[str, float]] = field(default_factory=dict)
    context: dict[Key, dict[str, Any]] = field(default_factory=dict)
    benchmarks: dict[str, Any] = field(default_factory=dict)  # the file's specs block, if any

    def get(self, model: str, benchmark: str, setting: str) -> dict[str, float] | None:
        return self.rows.get((model, benchmark, setting))


@dataclass(frozen=True)
class Drift:
    metric: str
    measured: float | None
    reference: float
    tolerance: float

    @property
    def delta(self) -> float | None:
        return None if self.measured is None else self.measured - self.reference

    @property
    def ok(self) -> bool:
        return self.measured is not None and abs(self.measured - self.reference) <= self.tolerance + 1e-12


def load_reference(spec: str | Path, reported_csv: Path = REPORTED_CSV) -> Reference:
    """`reported` (the database's numbers) or the path of a results JSON or baseline."""
    if str(spec) == REPORTED:
        return load_reported(reported_csv)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--securitynet-compare: {path} is neither `reported` nor an existing results JSON or baseline")
    doc = load_results(path)
    ref = Reference(label=str(path), kind="results", benchmarks=dict(doc.get("benchmarks") or {}))
    for row in doc["results"]:
        if row.get("outcome", PASSED) != PASSED:
            continue
        key = (row["model"], row["benchmark"], row["setting"])
        ref.rows[key] = {k: float(v) for k, v in row.get("metrics", {}).items() if _is_number(v)}
        ref.context[key] = {k: row.get(k) for k in ("dataset", "dataset_source", "seed")}
    return ref


def load_reported(path: Path = REPORTED_CSV) -> Reference:
    """The reported-results CSV (model, benchmark, setting, metric, value, database_column)."""
    ref = Reference(label="reported (SecurityNet database)", kind=REPORTED)
    with open(path, newline="", encoding="utf-8") as fh:
        for record in csv.DictReader(fh):
            key = (record["model"], record["benchmark"], record["setting"])
            ref.rows.setdefault(key, {})[record["metric"]] = float(record["value"])
    return ref


def tolerance_kind(reference: Reference) -> str:
    """Which of a spec's tolerances apply: `reported` against the database, else `baseline` (a re-run)."""
    return REPORTED if reference.kind == REPORTED else BASELINE


def tolerances_for(reference: Reference, spec: BenchmarkSpec | None,
                   overrides: dict[str, float] | None = None) -> dict[str, float]:
    """The spec's tolerances for this kind of reference, updated with `overrides` (`*` = any other metric).

    Without a spec (a benchmark that declares none) only `overrides` give tolerances.
    """
    base = spec.tolerances(tolerance_kind(reference)) if spec is not None else {}
    return {**base, **(overrides or {})}


def parse_tolerances(items: Iterable[str]) -> dict[str, float]:
    """`["auc=0.02", "*=0.05"]` -> {"auc": 0.02, "*": 0.05}; raises ValueError on a bad item."""
    out = {}
    for item in items:
        for part in item.replace(",", " ").split():
            name, sep, value = part.partition("=")
            try:
                number = float(value)
            except ValueError:
                number = -1.0
            if not sep or not name or number < 0 or not math.isfinite(number):
                raise ValueError(f"bad tolerance {part!r}: write METRIC=ABS with ABS >= 0, e.g. test_accuracy=0.02")
            out[name] = number
    return out


def compare(metrics: dict[str, Any], reference: dict[str, float], tolerances: dict[str, float]) -> list[Drift]:
    """Every reference metric that has a tolerance, measured against it (missing -> `measured=None`)."""
    out = []
    for metric in sorted(reference):
        tolerance = tolerances.get(metric, tolerances.get("*"))
        if tolerance is None:
            continue
        value = metrics.get(metric)
        measured = float(value) if _is_number(value) else None
        out.append(Drift(metric, measured, reference[metric], tolerance))
    return out


def format_table(drifts: list[Drift], reference_label: str) -> str:
    """Measured vs reference, one line per metric, drifting ones marked."""
    width = max([len("metric"), *(len(d.metric) for d in drifts)])
    ref_name = "reported" if reference_label.startswith(REPORTED) else "reference"
    lines = [f"{'metric':{width}}  {'measured':>9}  {ref_name:>9}  {'delta':>8}  {'tolerance':>9}",
             f"{'-' * width}  {'-' * 9}  {'-' * 9}  {'-' * 8}  {'-' * 9}"]
    for d in drifts:
        measured = "missing" if d.measured is None else f"{d.measured:.4f}"
        delta = "" if d.delta is None else f"{d.delta:+.4f}"
        mark = "" if d.ok else "  DRIFT"
        lines.append(f"{d.metric:{width}}  {measured:>9}  {d.reference:>9.4f}  {delta:>8}  {d.tolerance:>9.4f}{mark}")
    return "\n".join(lines)


def failure_text(model: str, benchmark: str, setting: str, drifts: list[Drift], reference: Reference) -> str:
    bad = [d for d in drifts if not d.ok]
    head = (f"securitynet regression: {len(bad)} of {len(drifts)} metric(s) of {model} {benchmark} [{setting}] "
            f"are outside the tolerance against {reference.label}")
    return "\n".join(f"E   {line}" for line in [head, *format_table(drifts, reference.label).splitlines()])


def baseline_document(rows: Iterable[dict[str, Any]], run: dict[str, Any] | None = None,
                      benchmarks: dict[str, Any] | None = None) -> dict[str, Any]:
    """A baseline: the passed rows of a run (key, metrics and the context that makes them comparable),
    and the specs (`benchmarks`) of the benchmarks those rows belong to."""
    keep = ("model", "benchmark", "setting", "params", "metrics", "dataset", "dataset_source", "seed", "device", "outcome")
    results = [{k: r[k] for k in keep if k in r} for r in rows if r.get("outcome") == PASSED]
    results.sort(key=row_key)
    run = run or {}
    doc = {
        "schema": SCHEMA,
        "kind": BASELINE_KIND,
        "run": {"created_at": now(), "argv": run.get("argv"), "settings": run.get("settings"), "versions": run.get("versions")},
        "models": {},
        "results": plain(results),
    }
    present = {r["benchmark"] for r in results}
    specs = {k: v for k, v in (benchmarks or {}).items() if k in present}
    if specs:
        doc["benchmarks"] = plain(specs)
    return doc


def write_baseline(path: Path, rows: Iterable[dict[str, Any]], run: dict[str, Any] | None = None,
                   benchmarks: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    write_atomic(path, encode(baseline_document(rows, run, benchmarks)))
    return path


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
