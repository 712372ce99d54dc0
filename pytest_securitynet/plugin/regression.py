"""The regression options and plugin: compare each passed test's metrics with a reference and fail
the ones that drift (the comparisons themselves are `results/regression.py`).

Before numbers, a row's provenance (harness/provenance.py) is compared with its reference row's: a
row produced by other weights, data, catalog entry, budgets, seed or sample sizes fails, naming the
difference, unless `--securitynet-accept-provenance`. What a comparison cannot see (reference rows
that did not run, tests without a reference row, tolerances naming no metric) is a note, or an
error failing the run under `--securitynet-compare-strict`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pytest_securitynet.results.provenance import CODE_VERSION_FIELD, differences
from pytest_securitynet.plugin.items import METRICS, benchmark_name, entry_of, setting_of
from pytest_securitynet.plugin.provenance import provenance_of
from pytest_securitynet.plugin.runstate import STATE, harness
from pytest_securitynet.plugin.specs import spec_of
from pytest_securitynet.results.journal import journal_path
from pytest_securitynet.results.regression import (
    REGRESSION, REPORTED, compare, failure_text, load_reference, parse_tolerances, provenance_text, reported_csvs,
    tolerance_kind, tolerance_notes, tolerances_for, write_baseline,
)
from pytest_securitynet.results.spec import specs_from_block

LISTED = 10  # keys named per note before "and N more"


def add_options(group: pytest.OptionGroup) -> None:
    """The regression options, for the plugin's `pytest_addoption`."""
    group.addoption("--securitynet-compare", default=None, metavar="REFERENCE",
                    help="compare every measured metric with REFERENCE: `reported` (the SecurityNet database's "
                         "numbers) or a results JSON / baseline path (not the file this run writes); a drift beyond "
                         "the tolerance fails the test. Default: no comparison.")
    group.addoption("--securitynet-tolerance", action="append", default=[], metavar="METRIC=ABS",
                    help="absolute tolerance of a metric, over what the benchmark's SPEC declares (repeatable; "
                         "`*=ABS` for every other numeric metric); held to |delta|, intervals not used. Default: "
                         "the SPEC's, per benchmark and metric, see docs/regression.md (e.g. test_accuracy 0.01 "
                         "against a baseline, 0.02 against reported), applied to the distance between intervals.")
    group.addoption("--securitynet-compare-strict", action="store_true",
                    help="make what a comparison cannot check an error that fails the run: reference rows that "
                         "did not run, tests without a reference row, tolerances naming no metric. Default: notes.")
    group.addoption("--securitynet-accept-provenance", action="store_true",
                    help="compare rows whose provenance (weights, data, catalog entry, budgets, seed, sizes) "
                         "differs from their reference row's, with a note, instead of failing them.")
    group.addoption("--securitynet-save-baseline", default=None, metavar="PATH",
                    help="write the passed rows of this run as a baseline to PATH at the end. Default: none.")


def wanted(config: pytest.Config) -> bool:
    """Whether any regression option is given (register `RegressionPlugin` only then)."""
    return bool(config.getoption("securitynet_compare", None) or config.getoption("securitynet_save_baseline", None))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


class RegressionPlugin:
    """Compares each passed benchmark test's metrics with the reference (in the process that runs
    the test) and, in the controller, counts the comparisons, checks what was not compared, and
    writes the baseline."""

    def __init__(self, config: pytest.Config):
        self.config = config
        spec = config.getoption("securitynet_compare", None)
        self.strict = bool(config.getoption("securitynet_compare_strict", False))
        self.accept_provenance = bool(config.getoption("securitynet_accept_provenance", False))
        state = config.stash.get(STATE, None)
        if spec and spec != REPORTED and state is not None:
            written = state.json_path
            if any(_same_file(Path(spec), path) for path in (written, journal_path(written))):
                raise pytest.UsageError(
                    f"--securitynet-compare {spec}: that is the results file this run writes (--securitynet-json), "
                    f"so its rows would become their own reference; compare with a baseline "
                    f"(--securitynet-save-baseline) or a copy of an earlier results file")
        try:
            self.tolerance_overrides = parse_tolerances(config.getoption("securitynet_tolerance", None) or [])
            extra = reported_csvs(state.settings.catalogs) if state is not None else []
            self.reference = load_reference(spec, extra_reported=extra) if spec else None
        except (ValueError, OSError) as exc:
            raise pytest.UsageError(str(exc)) from None
        self.baseline_path = config.getoption("securitynet_save_baseline", None)
        self.tally = {"compared": 0, "drifted": 0, "no_reference": 0, "not_comparable": 0, "no_tolerance": 0,
                      "provenance": 0}
        self.notes: list[str] = []
        self.errors: list[str] = []
        self.outcomes: dict[tuple[str, str, str], str] = {}  # controller: each compared key's result

    # --- in the process that runs the test -----------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        if self.reference is None or report.when != "call" or not report.passed:
            return report
        entry = entry_of(item)
        if entry is None:
            return report
        benchmark, setting = benchmark_name(item), setting_of(item, entry)
        key = (entry.id, benchmark, setting)
        ref = self.reference.get(*key)
        outcome: dict[str, Any] = {"model": entry.id, "benchmark": benchmark, "setting": setting}
        source = harness(item.config).dataset_for(entry).id
        context = self.reference.context.get(key, {})
        if ref is None:
            outcome["result"] = "no_reference"
        elif self.reference.kind == REPORTED and source != entry.dataset:
            outcome["result"] = "not_comparable"
            outcome["note"] = (f"{entry.id}: evaluated on {source}, the reported numbers are for {entry.dataset}; "
                               f"not compared")
        else:
            first: list[str] = []
            recorded = context.get("provenance")
            if self.reference.kind != REPORTED:
                current = provenance_of(item, entry)
                if not isinstance(recorded, dict):
                    outcome["note"] = (f"{self.reference.label}: its rows record no provenance (written by an older "
                                       f"version); regenerate it to have weights and data checked")
                else:
                    changes = differences(recorded, current, model=entry.id, include_code=False)
                    code = differences({k: v for k, v in recorded.items() if k == CODE_VERSION_FIELD}, current)
                    if code:
                        outcome["note"] = f"{code[0]} since {self.reference.label} was written"
                    if changes and not self.accept_provenance:
                        outcome["result"] = "provenance"
                        report.outcome = "failed"
                        report.longrepr = provenance_text(entry.id, benchmark, setting, changes, self.reference)
                        report.user_properties.append((REGRESSION, outcome))
                        return report
                    if changes:
                        first = [f"provenance differs (accepted): {c}" for c in changes]
                        outcome["note"] = f"{entry.id} [{setting}]: compared despite {'; '.join(changes)}"
            tolerances = tolerances_for(self.reference, spec_of(item, self.reference.benchmarks),
                                        self.tolerance_overrides)
            drifts = compare(item.stash.get(METRICS, {}), ref, tolerances, self.reference.intervals.get(key),
                             absolute=self.tolerance_overrides)
            expected = context.get("dataset_source")
            bad = [d for d in drifts if not d.ok]
            outcome["result"] = "drifted" if bad else "compared" if drifts else "no_tolerance"
            if not drifts:
                outcome["note"] = (f"{benchmark}: no metric of the reference row has a tolerance; declare them in "
                                   f"the benchmark's SPEC or give --securitynet-tolerance")
            if bad:
                report.outcome = "failed"
                text = failure_text(entry.id, benchmark, setting, drifts, self.reference, first)
                if expected and expected != source:
                    text += f"\nE   note: the reference row was measured on {expected}, this run on {source}"
                report.longrepr = text
        report.user_properties.append((REGRESSION, outcome))
        return report

    # --- in the controller ---------------------------------------------------------------------

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if hasattr(self.config, "workerinput"):
            return  # the controller tallies (xdist sends it every report)
        for name, value in report.user_properties:
            if name == REGRESSION:
                self.tally[value["result"]] += 1
                self.outcomes[(value["model"], value["benchmark"], value["setting"])] = value["result"]
                if value.get("note"):
                    self.notes.append(value["note"])

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if hasattr(self.config, "workerinput"):
            return
        state = self.config.stash.get(STATE, None)
        writer = getattr(state, "writer", None)
        if self.reference is not None and int(exitstatus) in (0, 1):
            self._check_coverage(writer)
            if self.strict and self.errors and session.exitstatus == 0:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if self.baseline_path is not None and writer is not None:
            write_baseline(Path(self.baseline_path), list(writer.rows.values()), writer.run, writer.benchmarks)

    def _check_coverage(self, writer) -> None:
        """What the comparison could not check: errors under strict mode, else notes."""
        rows = list(writer.rows.values()) if writer is not None else []
        ran = {(r["model"], r["benchmark"], r["setting"]): r for r in rows}
        found: list[str] = []
        unreferenced = sorted(k for k, result in self.outcomes.items() if result == "no_reference")
        if unreferenced:
            found.append(f"{len(unreferenced)} test(s) without a reference row in {self.reference.label}: "
                         f"{_listed(unreferenced)}")
        expected = set(self.reference.rows)
        if self.reference.kind == REPORTED:  # the database: only rows of the models and benchmarks that ran
            ran_pairs = {r[:2] for r in ran}
            expected = {k for k in expected if k[:2] in ran_pairs}
        missing = sorted(k for k in expected if k not in self.outcomes)
        if missing:
            how = [f"{'::'.join(k)} ({_why(ran.get(k))})" for k in missing]
            found.append(f"{len(missing)} row(s) of {self.reference.label} were not compared: {_listed(how, raw=True)}")
        known = {m for metrics in self.reference.rows.values() for m in metrics}
        known |= {m for r in rows for m in (r.get("metrics") or {})}
        specs = specs_from_block(writer.benchmarks) if writer is not None else {}
        specs |= specs_from_block(self.reference.benchmarks)
        unknown, loosened = tolerance_notes(self.tolerance_overrides, specs, tolerance_kind(self.reference), known)
        found.extend(unknown)
        self.notes.extend(loosened)
        if self.strict:
            self.errors.extend(found)
        else:
            self.notes.extend(f"{text} (an error under --securitynet-compare-strict)" for text in found)

    def pytest_terminal_summary(self, terminalreporter, exitstatus: int, config: pytest.Config) -> None:
        if hasattr(config, "workerinput"):
            return
        if self.reference is not None:
            t = self.tally
            terminalreporter.section("securitynet regression")
            terminalreporter.write_line(
                f"against {self.reference.label}: {t['compared'] + t['drifted']} test(s) compared, {t['drifted']} drifted, "
                f"{t['provenance']} with other provenance, {t['no_reference']} without a reference row, "
                f"{t['not_comparable']} not comparable, {t['no_tolerance']} without a tolerance")
            for note in list(dict.fromkeys(self.notes))[:20]:
                terminalreporter.write_line(f"note: {note}")
            for error in self.errors:
                terminalreporter.write_line(f"error (--securitynet-compare-strict): {error}", red=True)
        if self.baseline_path is not None:
            terminalreporter.write_line(f"baseline: {self.baseline_path}")


def _listed(keys: list, raw: bool = False) -> str:
    names = [k if raw else "::".join(k) for k in keys]
    more = f" and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return ", ".join(names[:LISTED]) + more


def _why(row: dict[str, Any] | None) -> str:
    if row is None:
        return "not run"
    outcome = row.get("outcome", "?")
    message = (row.get("message") or "").splitlines()
    return f"{outcome}: {message[0][:80]}" if message and outcome != "passed" else outcome
