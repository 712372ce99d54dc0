"""Benchmark specs in a run: the `SPEC` each collected benchmark file declares is registered and
checked against its tests, travels to the controller with a test report (once per benchmark and
process, so xdist workers need nothing else), and is written into the results JSON's `benchmarks`
block. The spec module itself (`results/spec.py`) knows nothing of pytest."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

import pytest

from pytest_securitynet.plugin.items import benchmark_name, entry_of
from pytest_securitynet.plugin.runstate import STATE
from pytest_securitynet.results.spec import BenchmarkSpec, declared_specs, register_spec, spec_for, specs

SPEC_PROPERTY = "securitynet-spec"
"""The `user_properties` name a test report carries its benchmark's spec under."""
COLLECTED = pytest.StashKey[dict[str, BenchmarkSpec]]()
SENT = pytest.StashKey[set[str]]()


class SpecWarning(UserWarning):
    """A benchmark file's SPEC does not fit its tests."""


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Register the specs of the benchmark files that have selected tests; warn about a SPEC whose
    id names none of its file's tests (the row's benchmark would not find it)."""
    names: dict[ModuleType, set[str]] = {}
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and entry_of(item) is not None:
            names.setdefault(module, set()).add(benchmark_name(item))
    collected = config.stash.setdefault(COLLECTED, {})
    for module, benchmarks in names.items():
        try:
            declared = declared_specs(module)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        for spec in declared:
            register_spec(spec)
            if spec.id not in benchmarks | defined_benchmarks(module):
                warnings.warn(SpecWarning(
                    f"{module.__file__}: SPEC id {spec.id!r} names none of this file's benchmarks "
                    f"({', '.join(sorted(benchmarks))}: <file without test_>.<function without test_>)"))
        registered = specs()
        collected.update({b: registered[b] for b in benchmarks if b in registered})


def defined_benchmarks(module: ModuleType) -> set[str]:
    """The benchmarks a file's test functions define, selected or not (a file may declare one spec per
    function, and a selection need not reach every function)."""
    stem = Path(module.__file__ or "").stem.removeprefix("test_")
    return {f"{stem}.{name.removeprefix('test_')}" for name in vars(module) if name.startswith("test_")
            and callable(vars(module)[name])}


def spec_of(item: pytest.Item, *blocks: Mapping[str, Any] | None) -> BenchmarkSpec | None:
    """The spec of a test's benchmark: its file's (or a registered one), else from `blocks` (e.g. a
    reference file's `benchmarks`), else the built-in one; None when there is none."""
    name = benchmark_name(item)
    return item.config.stash.get(COLLECTED, {}).get(name) or spec_for(name, *blocks)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if entry_of(item) is not None and (report.when == "call" or (report.when == "setup" and not report.passed)):
        spec = spec_of(item)
        sent = item.config.stash.setdefault(SENT, set())
        if spec is not None and spec.id not in sent:
            sent.add(spec.id)
            report.user_properties.append((SPEC_PROPERTY, spec.as_dict()))
    return report


class SpecRecorder:
    """Controller-side: puts each spec a report carries into the results writer's `benchmarks` block,
    before the row itself is written (`tryfirst`)."""

    def __init__(self, config: pytest.Config):
        self.config = config

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        state = self.config.stash.get(STATE, None)
        writer = getattr(state, "writer", None)
        if writer is None:
            return
        for name, value in report.user_properties:
            if name == SPEC_PROPERTY and isinstance(value, dict) and value.get("id"):
                writer.benchmarks[value["id"]] = value


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(SpecRecorder(config), "securitynet-spec-recorder")
