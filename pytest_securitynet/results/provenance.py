"""Comparing what produced two rows (their `provenance`, computed by harness/provenance.py), and
saying what changed in one line each: `weights of M changed: sha256 ab12cd34ef56.. -> 9f8e7d6c5b4a..`.

No torch, no pytest: the regression check, resume and merge read it.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

CODE_VERSION_FIELD = "code_version"
FIELDS = ("weights_sha256", "dataset_sha256", "catalog_entry_sha256", "budgets", "seed", "members", "limit",
          CODE_VERSION_FIELD)
"""Provenance fields in the order a difference is reported."""


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any], *, model: str = "",
                include_code: bool = True) -> list[str]:
    """One line per field both record with other values, weights first:
    `weights of M changed: sha256 ab12cd34.. -> 9f8e7d6c..`. Within `budgets`, only fields both
    record are compared (a field added since is no change)."""
    out = []
    for name in FIELDS:
        if name == CODE_VERSION_FIELD and not include_code:
            continue
        if name in recorded and name in current and _changed(recorded[name], current[name]):
            out.append(describe(name, recorded[name], current[name], model))
    return out


def _changed(before: Any, after: Any) -> bool:
    if isinstance(before, dict) and isinstance(after, dict):
        return any(_changed(before[k], after[k]) for k in before.keys() & after.keys())
    return _canonical(before) != _canonical(after)


def describe(name: str, before: Any, after: Any, model: str = "") -> str:
    of = f" of {model}" if model else ""
    if name == "weights_sha256":
        return f"weights{of} changed: sha256 {_short(before)} -> {_short(after)}"
    if name == "dataset_sha256":
        return f"data{of} changed: sha256 of the decoded dataset {_short(before)} -> {_short(after)}"
    if name == "catalog_entry_sha256":
        return f"catalog entry{of} changed: sha256 {_short(before)} -> {_short(after)}"
    if name == CODE_VERSION_FIELD:
        return f"code version changed: pytest-securitynet {before} -> {after}"
    if isinstance(before, dict) and isinstance(after, dict):
        return f"{name} changed: {', '.join(_changes(before, after))}"
    return f"{name} changed: {_show(before)} -> {_show(after)}"


def _changes(before: dict, after: dict, prefix: str = "") -> list[str]:
    """`name.field X -> Y` for each field both dicts hold with other values (nested dicts flattened)."""
    out = []
    for key in sorted(before.keys() & after.keys()):
        if isinstance(before[key], dict) and isinstance(after[key], dict):
            out.extend(_changes(before[key], after[key], f"{prefix}{key}."))
        elif _changed(before[key], after[key]):
            out.append(f"{prefix}{key} {_show(before[key])} -> {_show(after[key])}")
    return out


def _short(value: Any) -> str:
    return f"{str(value)[:12]}.." if isinstance(value, str) and len(value) > 12 else str(value)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
