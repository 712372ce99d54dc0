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
    `weights of M changed: sha256 ab12cd34.. -> 9f8e7d6c..`."""
    out = []
    for name in FIELDS:
        if name == CODE_VERSION_FIELD and not include_code:
            continue
        if name in recorded and name in current and _canonical(recorded[name]) != _canonical(current[name]):
            out.append(describe(name, recorded[name], current[name], model))
    return out


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
        changed = [f"{key} {_show(before.get(key))} -> {_show(after.get(key))}" for key in sorted({*before, *after})
                   if _canonical(before.get(key)) != _canonical(after.get(key))]
        return f"{name} changed: {', '.join(changed)}"
    return f"{name} changed: {_show(before)} -> {_show(after)}"


def _short(value: Any) -> str:
    return f"{str(value)[:12]}.." if isinstance(value, str) and len(value) > 12 else str(value)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
