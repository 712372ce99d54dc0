"""Hooks other plugins and conftest files implement to change what the harness records."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec
def pytest_securitynet_row(item: pytest.Item, row: dict[str, Any]) -> None:
    """Change a test's results row in place (add keys, e.g. `row["extra"] = {...}`).

    Called in the process that ran the test, after the test, before the row travels to the
    controller; values must be plain JSON types.
    """


@pytest.hookspec
def pytest_securitynet_run_info(config: pytest.Config, run: dict[str, Any]) -> None:
    """Change the results file's `run` block in place (add machine or cluster facts) at session start."""
