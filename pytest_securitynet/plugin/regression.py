"""The regression options and plugin: compare each passed test's metrics with a reference and fail
the ones that drift (the comparisons themselves are `results/regression.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_securitynet.plugin.items import METRICS, benchmark_name, entry_of, setting_of
from pytest_securitynet.plugin.runstate import STATE, harness
from pytest_securitynet.plugin.specs import spec_of
from pytest_securitynet.results.regression import (
    REGRESSION, REPORTED, compare, failure_text, load_reference, parse_tolerances, tolerances_for, write_baseline,
)


def add_options(group: pytest.OptionGroup) -> None:
    """The regression options, for the plugin's `pytest_addoption`."""
    group.addoption("--securitynet-compare", default=None, metavar="REFERENCE",
                    help="compare every measured metric with REFERENCE: `reported` (the SecurityNet database's "
                         "numbers) or a results JSON / baseline path; a drift beyond the tolerance fails the test. "
                         "Default: no comparison.")
    group.addoption("--securitynet-tolerance", action="append", default=[], metavar="METRIC=ABS",
                    help="absolute tolerance of a metric, over what the benchmark's SPEC declares (repeatable; "
                         "`*=ABS` for every other numeric metric). Default: the SPEC's, per benchmark and metric, "
                         "see docs/regression.md (e.g. test_accuracy 0.01 against a baseline, 0.02 against reported).")
    group.addoption("--securitynet-save-baseline", default=None, metavar="PATH",
                    help="write the passed rows of this run as a baseline to PATH at the end. Default: none.")


def wanted(config: pytest.Config) -> bool:
    """Whether any regression option is given (register `RegressionPlugin` only then)."""
    return bool(config.getoption("securitynet_compare", None) or config.getoption("securitynet_save_baseline", None))


class RegressionPlugin:
    """Compares each passed benchmark test's metrics with the reference (in the process that runs
    the test) and, in the controller, counts the comparisons and writes the baseline."""

    def __init__(self, config: pytest.Config):
        self.config = config
        spec = config.getoption("securitynet_compare", None)
        try:
            self.tolerance_overrides = parse_tolerances(config.getoption("securitynet_tolerance", None) or [])
            self.reference = load_reference(spec) if spec else None
        except (ValueError, OSError) as exc:
            raise pytest.UsageError(str(exc)) from None
        self.baseline_path = config.getoption("securitynet_save_baseline", None)
        self.tally = {"compared": 0, "drifted": 0, "no_reference": 0, "not_comparable": 0, "no_tolerance": 0}
        self.notes: list[str] = []

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        if self.reference is None or report.when != "call" or not report.passed:
            return report
        entry = entry_of(item)
        if entry is None:
            return report
        benchmark, setting = benchmark_name(item), setting_of(item, entry)
        ref = self.reference.get(entry.id, benchmark, setting)
        outcome: dict[str, Any] = {"model": entry.id, "benchmark": benchmark, "setting": setting}
        source = harness(item.config).dataset_for(entry).id
        if ref is None:
            outcome["result"] = "no_reference"
        elif self.reference.kind == REPORTED and source != entry.dataset:
            outcome["result"] = "not_comparable"
            outcome["note"] = (f"{entry.id}: evaluated on {source}, the reported numbers are for {entry.dataset}; "
                               f"not compared")
        else:
            tolerances = tolerances_for(self.reference, spec_of(item, self.reference.benchmarks),
                                        self.tolerance_overrides)
            drifts = compare(item.stash.get(METRICS, {}), ref, tolerances)
            expected = self.reference.context.get((entry.id, benchmark, setting), {}).get("dataset_source")
            bad = [d for d in drifts if not d.ok]
            outcome["result"] = "drifted" if bad else "compared" if drifts else "no_tolerance"
            if not drifts:
                outcome["note"] = (f"{benchmark}: no metric of the reference row has a tolerance; declare them in "
                                   f"the benchmark's SPEC or give --securitynet-tolerance")
            if bad:
                report.outcome = "failed"
                text = failure_text(entry.id, benchmark, setting, drifts, self.reference)
                if expected and expected != source:
                    text += f"\nE   note: the reference row was measured on {expected}, this run on {source}"
                report.longrepr = text
        report.user_properties.append((REGRESSION, outcome))
        return report

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if hasattr(self.config, "workerinput"):
            return  # the controller tallies (xdist sends it every report)
        for name, value in report.user_properties:
            if name == REGRESSION:
                self.tally[value["result"]] += 1
                if value.get("note") and len(self.notes) < 20:
                    self.notes.append(value["note"])

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.baseline_path is None or hasattr(self.config, "workerinput"):
            return
        state = self.config.stash.get(STATE, None)
        writer = getattr(state, "writer", None)
        if writer is None:
            return
        write_baseline(Path(self.baseline_path), list(writer.rows.values()), writer.run, writer.benchmarks)

    def pytest_terminal_summary(self, terminalreporter, exitstatus: int, config: pytest.Config) -> None:
        if hasattr(config, "workerinput"):
            return
        if self.reference is not None:
            t = self.tally
            terminalreporter.section("securitynet regression")
            terminalreporter.write_line(
                f"against {self.reference.label}: {t['compared'] + t['drifted']} test(s) compared, {t['drifted']} drifted, "
                f"{t['no_reference']} without a reference row, {t['not_comparable']} not comparable, "
                f"{t['no_tolerance']} without a tolerance")
            for note in dict.fromkeys(self.notes):
                terminalreporter.write_line(note)
        if self.baseline_path is not None:
            terminalreporter.write_line(f"baseline: {self.baseline_path}")
