"""The shape a results document must have before anything reads its rows.

`securitynet report`, `securitynet merge` and `--securitynet-resume` read files a user names, which
may be any JSON at all. Checking the shape once, on reading, turns a list, a row without its key
fields or `metrics` that is not an object into one `ValueError` naming the file and the row,
instead of a `KeyError` or `AttributeError` deep inside whatever reads it first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SCHEMA = "securitynet-results/1"
KEY_FIELDS = ("model", "benchmark", "setting")
OBJECT_FIELDS = ("run", "models", "benchmarks")
"""Top-level fields that, when present and not null, must be JSON objects."""


def json_kind(value: Any) -> str:
    """The JSON name of a value's type, for messages: object, list, string, number, true/false, null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "number"
    return {dict: "object", list: "list", str: "string"}.get(type(value), type(value).__name__)


def check_document(doc: Any, path: Path) -> dict[str, Any]:
    """`doc` if it is a results document with well-formed rows; else `ValueError` naming `path`."""
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a {SCHEMA} file (the JSON is a {json_kind(doc)}, not an object)")
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a {SCHEMA} file (schema={doc.get('schema')!r})")
    for name in OBJECT_FIELDS:
        if doc.get(name) is not None and not isinstance(doc[name], dict):
            raise ValueError(f"{path}: `{name}` is a {json_kind(doc[name])}, not an object")
    if not isinstance(doc.get("results"), list):
        raise ValueError(f"{path}: a {SCHEMA} file needs a `results` list (found {json_kind(doc.get('results'))})")
    for index, row in enumerate(doc["results"]):
        check_row(row, f"{path}: results[{index}]")
    return doc


def check_row(row: Any, where: str) -> dict[str, Any]:
    """`row` if it has string key fields and object `metrics` (or none); else `ValueError` naming `where`."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a row must be an object, not a {json_kind(row)}")
    bad = [name for name in KEY_FIELDS if not isinstance(row.get(name), str)]
    if bad:
        raise ValueError(f"{where}: a row needs the strings `model`, `benchmark` and `setting` "
                         f"(missing or not a string: {', '.join(bad)})")
    metrics = row.get("metrics")
    if metrics is not None and not isinstance(metrics, dict):
        raise ValueError(f"{where} ({row['model']}::{row['benchmark']}::{row['setting']}): "
                         f"`metrics` is a {json_kind(metrics)}, not an object")
    return row
