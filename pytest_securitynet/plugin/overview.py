"""The line printed before the first test: what will run, where, for how long, and what skips."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pytest

from pytest_securitynet.plugin import collected
from pytest_securitynet.plugin.runstate import STATE

MAX_NAMED = 4


def start_line(models: Sequence[str], n_tests: int, n_benchmarks: int, device: str, json_path: Path,
               estimate: str, heavy_skipped: int = 0) -> str:
    """`securitynet: 62 tests of 5 benchmarks on 2 models (a, b); device cpu; results PATH; about 48 s ...`."""
    named = ", ".join(models[:MAX_NAMED]) + (f", ... {len(models) - MAX_NAMED} more" if len(models) > MAX_NAMED else "")
    parts = [f"securitynet: {_count(n_tests, 'test')} of {_count(n_benchmarks, 'benchmark')} on "
             f"{_count(len(models), 'model')}" + (f" ({named})" if models else ""),
             f"device {device}", f"results {_shown(json_path)}", estimate]
    if heavy_skipped:
        parts.append(f"{_count(heavy_skipped, 'heavy test')} skip on a CPU (--securitynet-heavy runs them)")
    return "; ".join(parts)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _shown(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class XdistStartLine:
    """Under xdist the controller collects nothing: the start line is made from the first worker's
    benchmark tests (the node ids it listed in `folder`, plugin/collected.py) and printed when the
    first test starts, after xdist's own `N workers [M items]` line, below the run's notices.

    `describe(ids)` returns the line (models and row keys come from the ids), or None.
    """

    def __init__(self, config, describe, folder: Path):
        self.config = config
        self.describe = describe
        self.folder = folder
        self.line: str | None = None
        self.described = False

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_node_collection_finished(self, node, ids: list[str]) -> None:
        if not self.described:
            self.described = True
            self.line = self.describe(collected.read(self.folder, node.gateway.id) or [])

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logstart(self, nodeid: str, location) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if self.line and reporter is not None:
            reporter.ensure_newline()
            for line in (*self.config.stash[STATE].notices, self.line):
                reporter.write_line(line)
        self.line = None
