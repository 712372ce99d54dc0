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
from typing import Any, Iterable, Mapping

from pytest_securitynet.errors import SecurityNetError
from pytest_securitynet.results.provenance import CODE_VERSION_FIELD, _canonical, _show, describe
from pytest_securitynet.results.archive import runs_dir

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


# --- what produced the rows (harness/provenance.py) ------------------------------------------

PRODUCERS = ("weights_sha256", "dataset_sha256", "catalog_entry_sha256")
"""Provenance fields that tell two models apart: rows differing in one are rows of two models."""


def check_resume_provenance(path: Path, previous: dict[str, Any], entry_hashes: Mapping[str, str],
                            code_version: str, mixed: bool) -> None:
    """Refuse (`ResumeMismatchError`) to resume a file whose rows cannot be checked (written by a
    version that records no provenance), or were produced from other catalog entries, or (unless
    `mixed`) by another code version. Weights and data are checked as rows arrive
    (`resumed_row_conflict`): their checksums are known once a model is loaded."""
    rows = previous["results"]
    unchecked = [row for row in rows if not isinstance(row.get("provenance"), dict)]
    if unchecked:
        raise ResumeMismatchError(
            f"--securitynet-resume: {path} holds {len(unchecked)} row(s) written by an older version that records "
            f"no provenance (weights and data checksums, code version), so they cannot be checked against this "
            f"run's; run without --securitynet-resume (the file is then kept, numbered, in "
            f"{runs_dir(path).name}/) or write elsewhere with --securitynet-json")
    changes: dict[str, None] = {}
    for row in rows:
        provenance, model = row["provenance"], row["model"]
        recorded = provenance.get("catalog_entry_sha256")
        if recorded and model in entry_hashes and recorded != entry_hashes[model]:
            changes.setdefault(describe("catalog_entry_sha256", recorded, entry_hashes[model], model))
        version = provenance.get(CODE_VERSION_FIELD)
        if version and version != code_version and not mixed:
            changes.setdefault(describe(CODE_VERSION_FIELD, version, code_version))
    if changes:
        raise ResumeMismatchError(
            f"--securitynet-resume: {path} holds rows produced by something else ({'; '.join(changes)}); resuming "
            f"would mix them with this run's. Run without --securitynet-resume (the file is then kept, numbered, "
            f"in {runs_dir(path).name}/) or write elsewhere with --securitynet-json")


def first_provenance(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each model's provenance as its first row records it: the one `resumed_row_conflict` compares a
    new row with (rows are checked as they are added, so one per model is enough)."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        if isinstance(row.get("provenance"), dict):
            out.setdefault(row["model"], row["provenance"])
    return out


def resumed_row_conflict(path: Path, recorded: Mapping[str, Any] | None, row: dict[str, Any]) -> str | None:
    """The message refusing `row` when `recorded` (the file's provenance of its model, from
    `first_provenance`) names other weights, data or catalog entry (a retrained demo model, a changed
    dataset archive), else None."""
    current = row.get("provenance")
    if not isinstance(current, dict) or not recorded:
        return None
    changes = [describe(name, recorded[name], current[name], row["model"]) for name in PRODUCERS
               if recorded.get(name) and current.get(name) and recorded[name] != current[name]]
    if not changes:
        return None
    return (f"--securitynet-resume: {path} holds rows of {row['model']} produced by something else "
            f"({'; '.join(changes)}); this run stops before mixing rows of two models in one file. Run "
            f"without --securitynet-resume (the file is then kept, numbered, in {runs_dir(path).name}/) "
            f"or write elsewhere with --securitynet-json")
