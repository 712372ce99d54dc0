"""Time limits of benchmark tests, apart from the project's own tests.

A project's `timeout` ini value (pytest-timeout) is meant for its unit tests; a benchmark on a
slow machine may rightly take longer. Benchmark tests therefore get `--securitynet-timeout`
(ini `securitynet_timeout`) instead: no limit by default. A benchmark that runs out of time says
which budget of its file to lower, with the values it ran with.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType

import pytest

from pytest_securitynet.harness.settings import Settings

TIMEOUT_MARK = "timeout"
PYTEST_TIMEOUT_TEXT = "from pytest-timeout"


def apply_limit(item: pytest.Item, seconds: float) -> None:
    """Give a benchmark test the limit `seconds` (0: none) unless it carries its own timeout mark."""
    if item.get_closest_marker(TIMEOUT_MARK) is None:
        item.add_marker(pytest.mark.timeout(seconds))


def timed_out(report: pytest.TestReport) -> bool:
    """A failure raised by pytest-timeout (its signal method fails the test with this text)."""
    return report.failed and PYTEST_TIMEOUT_TEXT in (report.longreprtext or "")


def module_budgets(module: ModuleType | None) -> list[type]:
    """The budget dataclasses (`@budget(...)`) a benchmark file declares."""
    found = []
    for value in vars(module).values() if module is not None else ():
        if isinstance(value, type) and dataclasses.is_dataclass(value) and getattr(value, "budget_name", None):
            if value.__module__ == module.__name__ and value not in found:
                found.append(value)
    return found


def hint(item: pytest.Item, settings: Settings, limit: float | None) -> str:
    """What to lower after a timeout: the file's budgets with the values this run used."""
    after = f" after {limit:g} s" if limit else ""
    budgets = module_budgets(getattr(item, "module", None))
    if not budgets:
        return (f"securitynet: {item.nodeid} timed out{after}; its file declares no budget: "
                f"--securitynet-limit N caps its data, --securitynet-timeout S raises the limit")
    used = []
    for cls in budgets:
        values = settings.budget(cls)
        used += [f"{cls.budget_name}.{f.name}={getattr(values, f.name)}" for f in dataclasses.fields(cls)]
    return (f"securitynet: {item.nodeid} timed out{after}; lower its budget with --securitynet-budget "
            f"NAME.FIELD=VALUE (this run: {', '.join(used)}; 0 means derived per model, docs/budgets.md), "
            f"or raise --securitynet-timeout")
