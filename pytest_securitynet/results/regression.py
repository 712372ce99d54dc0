"""Regression checks: compare each measured metric with a reference and fail the tests that drift.

A reference is either `reported` (the numbers the SecurityNet database reports,
`catalog/reported/securitynet.csv`) or a results JSON of an earlier run, a baseline being the subset
of one that `--securitynet-save-baseline` writes (docs/regression.md). References are keyed by
(model, benchmark, setting) and hold numeric metrics. A metric is compared only where a tolerance
is known for it: the benchmark's spec declares one per metric and kind of reference
(`results/spec.py`), and `--securitynet-tolerance METRIC=ABS` overrides it; `*=ABS` gives every
other numeric metric a tolerance too.

Drift is decided with the metrics' bootstrap intervals (results/intervals.py) where both rows have
them: a metric drifts when its interval and the reference's are further apart than the tolerance
(overlapping intervals never drift; without intervals, the distance is |measured - reference|, the
plain absolute rule). A tolerance given with `--securitynet-tolerance` is an override: the plain
absolute rule, intervals ignored. Rows also carry `provenance` (harness/provenance.py): what
produced them, compared before any number (`provenance_differences`).

Pure functions without pytest; the pytest wiring is `plugin/regression.py`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pytest_securitynet.catalog.entries import BUILTIN_CATALOG
from pytest_securitynet.results.intervals import interval_of
from pytest_securitynet.results.journal import write_atomic
from pytest_securitynet.results.rows import PASSED, SCHEMA, encode, load_results, now, plain, row_key
from pytest_securitynet.results.spec import BASELINE, BenchmarkSpec

REPORTED = "reported"
REPORTED_CSV = BUILTIN_CATALOG / "reported" / "securitynet.csv"
BASELINE_KIND = "securitynet-baseline/1"
REGRESSION = "securitynet-regression"

Key = tuple[str, str, str]
BASELINE_ROW_FIELDS = ("model", "benchmark", "setting", "params", "metrics", "dataset", "dataset_source", "seed",
                       "device", "outcome", "provenance")
BASELINE_SETTINGS = ("seed", "members", "limit", "dataset_overrides", "budgets", "bootstrap")
"""The run settings a baseline keeps: those that decide its numbers (no cache, mirror or catalog paths)."""
MODEL_PROVENANCE = ("weights_sha256", "dataset_sha256", "catalog_entry_sha256")


@dataclass
class Reference:
    """Metrics of a reference, keyed by (model, benchmark, setting), with where each row came from."""

    label: str
    kind: str  # "reported" or "results"
    rows: dict[Key, dict[str, float]] = field(default_factory=dict)
    context: dict[Key, dict[str, Any]] = field(default_factory=dict)  # dataset, dataset_source, seed, provenance
    intervals: dict[Key, dict[str, tuple[float, float]]] = field(default_factory=dict)
    benchmarks: dict[str, Any] = field(default_factory=dict)  # the file's specs block, if any

    def get(self, model: str, benchmark: str, setting: str) -> dict[str, float] | None:
        return self.rows.get((model, benchmark, setting))


@dataclass(frozen=True)
class Drift:
    """One compared metric. `ok` when the distance between the measured and the reference interval
    (each the point value where a row has none) is within `tolerance`; with `absolute` (a tolerance
    from the command line), when |measured - reference| is."""

    metric: str
    measured: float | None
    reference: float
    tolerance: float
    measured_interval: tuple[float, float] | None = None
    reference_interval: tuple[float, float] | None = None
    absolute: bool = False

    @property
    def delta(self) -> float | None:
        return None if self.measured is None else self.measured - self.reference

    @property
    def gap(self) -> float | None:
        """How far apart the two intervals are (0 when they overlap); |delta| under the absolute rule."""
        if self.measured is None:
            return None
        if self.absolute:
            return abs(self.measured - self.reference)
        low_m, high_m = self.measured_interval or (self.measured, self.measured)
        low_r, high_r = self.reference_interval or (self.reference, self.reference)
        return max(0.0, low_m - high_r, low_r - high_m)

    @property
    def ok(self) -> bool:
        gap = self.gap
        return gap is not None and gap <= self.tolerance + 1e-12


def load_reference(spec: str | Path, reported_csv: Path = REPORTED_CSV, extra_reported: Iterable[Path] = ()) -> Reference:
    """`reported` (the database's numbers, plus `extra_reported` CSVs of user catalogs) or the path
    of a results JSON or baseline."""
    if str(spec) == REPORTED:
        return load_reported(reported_csv, *extra_reported)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--securitynet-compare: {path} is neither `reported` nor an existing results JSON or baseline")
    doc = load_results(path)
    ref = Reference(label=str(path), kind="results", benchmarks=dict(doc.get("benchmarks") or {}))
    for row in doc["results"]:
        if row.get("outcome", PASSED) != PASSED:
            continue
        key = (row["model"], row["benchmark"], row["setting"])
        metrics = row.get("metrics") or {}
        ref.rows[key] = {k: float(v) for k, v in metrics.items() if _is_number(v)}
        ref.context[key] = {k: row.get(k) for k in ("dataset", "dataset_source", "seed", "provenance")}
        ref.intervals[key] = {k: iv for k in ref.rows[key] if (iv := interval_of(metrics, k)) is not None}
    return ref


def load_reported(path: Path = REPORTED_CSV, *extra: Path) -> Reference:
    """The reported-results CSVs (model, benchmark, setting, metric, value, database_column): the
    database's, then those of user catalogs (`reported_csvs`), a later file's value winning."""
    shipped = "".join(f", {Path(e).parent.parent.name}/reported/{Path(e).name}" for e in extra)
    ref = Reference(label=f"reported (SecurityNet database{shipped})", kind=REPORTED)
    for csv_path in (path, *extra):
        with open(csv_path, newline="", encoding="utf-8") as fh:
            for record in csv.DictReader(fh):
                key = (record["model"], record["benchmark"], record["setting"])
                ref.rows.setdefault(key, {})[record["metric"]] = float(record["value"])
    return ref


def reported_csvs(catalog_paths: Iterable[str | Path]) -> list[Path]:
    """Reported numbers that user catalog folders ship beside their entries: `DIR/reported/*.csv`,
    laid out like the built-in `catalog/reported/securitynet.csv`."""
    out = []
    for path in map(Path, catalog_paths):
        if path.is_dir() and path.resolve() != BUILTIN_CATALOG.resolve():
            out.extend(sorted((path / "reported").glob("*.csv")))
    return out


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


def compare(metrics: dict[str, Any], reference: dict[str, float], tolerances: dict[str, float],
            reference_intervals: dict[str, tuple[float, float]] | None = None,
            absolute: Iterable[str] = ()) -> list[Drift]:
    """Every reference metric that has a tolerance, measured against it (missing -> `measured=None`),
    with both rows' intervals where they have them; tolerances of the metrics in `absolute` (given
    on the command line; `*` stands for the metrics it covers) use the plain absolute rule."""
    out = []
    absolute = set(absolute)
    for metric in sorted(reference):
        name = metric if metric in tolerances else "*"
        tolerance = tolerances.get(name)
        if tolerance is None:
            continue
        value = metrics.get(metric)
        measured = float(value) if _is_number(value) else None
        out.append(Drift(metric, measured, reference[metric], tolerance,
                         interval_of(metrics, metric) if measured is not None else None,
                         (reference_intervals or {}).get(metric), absolute=name in absolute))
    return out


def format_table(drifts: list[Drift], reference_label: str) -> str:
    """Measured vs reference with their 95% intervals (± half width), one line per metric, the
    distance between the intervals (`gap`, 0 when they overlap), drifting ones marked."""
    width = max([len("metric"), *(len(d.metric) for d in drifts)])
    ref_name = "reported" if reference_label.startswith(REPORTED) else "reference"
    lines = [f"{'metric':{width}}  {'measured':>15}  {ref_name:>15}  {'delta':>8}  {'gap':>7}  {'tolerance':>9}",
             f"{'-' * width}  {'-' * 15}  {'-' * 15}  {'-' * 8}  {'-' * 7}  {'-' * 9}"]
    for d in drifts:
        measured = "missing" if d.measured is None else _with_interval(d.measured, d.measured_interval)
        delta = "" if d.delta is None else f"{d.delta:+.4f}"
        gap = "" if d.gap is None else f"{d.gap:.4f}"
        tolerance = f"{d.tolerance:.4f}" + ("*" if d.absolute else " ")
        mark = "" if d.ok else "  DRIFT"
        lines.append(f"{d.metric:{width}}  {measured:>15}  {_with_interval(d.reference, d.reference_interval):>15}  "
                     f"{delta:>8}  {gap:>7}  {tolerance:>9}{mark}")
    if any(d.absolute for d in drifts):
        lines.append("* given with --securitynet-tolerance: |delta| is held to it, intervals not used")
    return "\n".join(lines)


def _with_interval(value: float, interval: tuple[float, float] | None) -> str:
    if interval is None:
        return f"{value:.4f}"
    return f"{value:.4f}±{(interval[1] - interval[0]) / 2:.4f}"


def failure_text(model: str, benchmark: str, setting: str, drifts: list[Drift], reference: Reference,
                 first: Iterable[str] = ()) -> str:
    """The failure message: lines that must be read first (a provenance change), then the table."""
    bad = [d for d in drifts if not d.ok]
    head = (f"securitynet regression: {len(bad)} of {len(drifts)} metric(s) of {model} {benchmark} [{setting}] "
            f"are outside the tolerance against {reference.label}")
    return "\n".join(f"E   {line}" for line in [*first, head, *format_table(drifts, reference.label).splitlines()])


def provenance_text(model: str, benchmark: str, setting: str, changes: list[str], reference: Reference) -> str:
    """The failure message of a row produced by something else than its reference row."""
    head = (f"securitynet regression: {model} {benchmark} [{setting}] was produced by something else than its "
            f"row in {reference.label}:")
    tail = ("not compared: regenerate the baseline if the change is meant, or give "
            "--securitynet-accept-provenance to compare the numbers anyway")
    return "\n".join(f"E   {line}" for line in [head, *(f"  {c}" for c in changes), tail])


def tolerance_notes(overrides: dict[str, float], specs: dict[str, BenchmarkSpec], kind: str,
                    known_metrics: set[str]) -> tuple[list[str], list[str]]:
    """(unknown, loosened): `--securitynet-tolerance` names no benchmark declares, no reference row
    holds and no test recorded (a misspelling compares nothing); and overrides wider than a spec's."""
    declared = {m.name for spec in specs.values() for m in spec.metrics}
    unknown = [f"--securitynet-tolerance {name}={value:g}: no benchmark, reference row or test of this run has a "
               f"metric {name!r}" for name, value in overrides.items()
               if name != "*" and name not in declared | known_metrics]
    loosened = []
    for name, value in overrides.items():
        for spec in specs.values():
            was = spec.tolerances(kind).get(name)
            if was is not None and value > was:
                loosened.append(f"--securitynet-tolerance {name}={value:g} loosens {spec.id}'s {kind} tolerance "
                                f"of {name} ({was:g})")
    return unknown, loosened


def baseline_document(rows: Iterable[dict[str, Any]], run: dict[str, Any] | None = None,
                      benchmarks: dict[str, Any] | None = None) -> dict[str, Any]:
    """A baseline: the passed rows of a run (key, metrics and the context that makes them comparable),
    and the specs (`benchmarks`) of the benchmarks those rows belong to."""
    results = [{k: r[k] for k in BASELINE_ROW_FIELDS if k in r} for r in rows if r.get("outcome") == PASSED]
    results.sort(key=row_key)
    run = run or {}
    settings = run.get("settings") or {}
    models: dict[str, Any] = {}
    for r in results:  # what each model's rows were produced from
        provenance = r.get("provenance") or {}
        models[r["model"]] = {k: provenance[k] for k in MODEL_PROVENANCE if k in provenance}
    doc = {
        "schema": SCHEMA,
        "kind": BASELINE_KIND,
        # Settings that decide the numbers only: no paths of this machine, no command line.
        "run": {"created_at": now(), "settings": {k: settings[k] for k in BASELINE_SETTINGS if k in settings},
                "versions": run.get("versions")},
        "models": models,
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
