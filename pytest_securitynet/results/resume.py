"""What `--securitynet-resume` may carry over: rows measured with the settings this run uses.

Resuming keeps a file's passed rows and runs the rest. If the file's run used another seed,
sample counts, dataset copies or budgets, the file would end up holding rows measured two ways
under one `run.settings`. `check_resume` refuses that, naming each differing setting, unless the
user asks to mix (`--securitynet-resume-mixed`); then every row records the settings it was
measured with as `run_settings`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from pytest_securitynet.errors import SecurityNetError

ROW_SETTINGS = ("seed", "members", "limit", "dataset_overrides", "budgets")
"""The settings (keys of `run.settings`) that change what a row measures."""


class ResumeMismatchError(SecurityNetError):
    """The file to resume was written with other settings; the message names them."""


def row_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a run's settings that decides a row's numbers."""
    return {name: settings[name] for name in ROW_SETTINGS if name in settings}


def setting_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """`name: X in the file, Y now` for each of `ROW_SETTINGS` the file records with another value.
    A setting the file does not record (an older file) is not compared."""
    out = []
    for name in ROW_SETTINGS:
        if name in recorded and _canonical(recorded[name]) != _canonical(current.get(name)):
            out.append(f"{name}: {_show(recorded[name])} in the file, {_show(current.get(name))} now")
    return out


def check_resume(path: Path, previous: dict[str, Any], current: Mapping[str, Any], mixed: bool) -> dict[str, Any] | None:
    """Refuse (`ResumeMismatchError`) to resume `previous` with other settings unless `mixed`.

    Returns the settings new rows must record as `run_settings` (None when rows need not carry
    them): with `mixed`, or when the file already holds rows that carry theirs. Rows of `previous`
    without them get the file's `run.settings` (changed in place)."""
    run = previous.get("run") or {}
    recorded = run.get("settings")
    recorded = recorded if isinstance(recorded, dict) else None
    differences = setting_differences(recorded, current) if recorded is not None else []
    if recorded is None and not mixed:  # a merge of files with other settings: each row records its own
        differences = _row_differences(previous["results"], current)
        if "merged_from" in run and any("run_settings" not in row for row in previous["results"]):
            raise ResumeMismatchError(
                f"--securitynet-resume: {path} is a merge that does not record the settings its rows were "
                f"measured with; resuming could mix settings. Resume the files it was merged from, or use "
                f"--securitynet-resume-mixed to keep both (each new row then records its settings in `run_settings`)")
    if differences and not mixed:
        raise ResumeMismatchError(
            f"--securitynet-resume: {path} holds rows measured with other settings ({'; '.join(differences)}); "
            f"resuming would mix them. Use the file's settings, another results file, or "
            f"--securitynet-resume-mixed to keep both (each row then records its settings in `run_settings`)")
    if not (mixed or any("run_settings" in row for row in previous["results"])):
        return None
    if recorded is not None:
        for row in previous["results"]:
            row.setdefault("run_settings", row_settings(recorded))
    return row_settings(current)


def _row_differences(rows: list[dict[str, Any]], current: Mapping[str, Any]) -> list[str]:
    """`setting_differences` of every distinct `run_settings` the rows record, without repeats."""
    seen: dict[str, None] = {}
    for settings in {_canonical(row["run_settings"]): row["run_settings"] for row in rows
                     if isinstance(row.get("run_settings"), dict)}.values():
        for difference in setting_differences(settings, current):
            seen.setdefault(difference.replace(" in the file", " in some rows"))
    return list(seen)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
