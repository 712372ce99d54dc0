"""Budget overrides checked at configuration, before any test runs and before xdist starts workers.

Budgets are declared by the benchmark files (`@budget("name")` dataclasses), which pytest imports
only at collection, and an xdist controller never collects. So when a run overrides a budget that
no imported module has declared yet, the files the run names are searched for its declaration
(`@budget("name")` in the text) and those files alone are imported here. Each override is then
checked against its field's declaration (type, range, choices: `harness.settings.budget_field`),
so a bad value is one usage error on the controller, not a failure in every test or a worker's
INTERNALERROR. A budget no file declares is left to collection, which warns about it.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Iterable

import pytest

from pytest_securitynet.errors import SecurityNetError
from pytest_securitynet.harness.settings import Settings, declared_budgets

SKIPPED_DIRS = {"__pycache__", "node_modules", "site-packages", "venv", "build", "dist"}


def check_budgets_at_start(config: pytest.Config, settings: Settings) -> None:
    """Raise `pytest.UsageError` for the first override its declaration refuses."""
    if not settings.budgets:
        return
    missing = [name for name in settings.budgets if name not in declared_budgets()]
    if missing:
        import_declarations(candidate_files(config), missing)
    check_budgets(config, settings, warn_undeclared=False)


def check_budgets(config: pytest.Config, settings: Settings, *, warn_undeclared: bool = True) -> None:
    """Each override checked against its declaration (`pytest.UsageError` for the first refused);
    one not declared by any imported benchmark is a warning once collection has imported them all."""
    declared = declared_budgets()
    for name in settings.budgets:
        if name not in declared:
            if warn_undeclared:
                config.issue_config_time_warning(pytest.PytestConfigWarning(
                    f"--securitynet-budget {name}.*: no collected benchmark declares a budget {name!r} "
                    f"(declared: {', '.join(sorted(declared)) or 'none'}); ignored"), stacklevel=2)
            continue
        try:
            settings.budget(declared[name])
        except SecurityNetError as exc:
            raise pytest.UsageError(str(exc)) from None


def candidate_files(config: pytest.Config) -> list[Path]:
    """The test files the run's arguments name or hold (pytest's `python_files` patterns)."""
    patterns = config.getini("python_files") or ["test_*.py", "*_test.py"]
    base = Path(config.invocation_params.dir)
    found: list[Path] = []
    for arg in config.args:
        path = base / str(arg).split("::", 1)[0]
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS]
                found += [Path(folder) / f for f in sorted(files)
                          if any(fnmatch.fnmatch(f, p) for p in patterns)]
    return found


def import_declarations(files: Iterable[Path], names: Iterable[str]) -> None:
    """Import the files whose text declares one of the budgets `names`. A file that fails to import
    is left to collection, which reports it as usual."""
    wanted = re.compile(r"""@budget\(\s*["'](%s)["']""" % "|".join(re.escape(n) for n in names))
    for index, path in enumerate(files):
        try:
            if not wanted.search(path.read_text(encoding="utf-8", errors="replace")):
                continue
        except OSError:
            continue
        name = f"_securitynet_budgets_{index}_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve string annotations through sys.modules
        try:
            spec.loader.exec_module(module)
        except Exception:  # noqa: BLE001 - collection imports it again and reports the error
            sys.modules.pop(name, None)
