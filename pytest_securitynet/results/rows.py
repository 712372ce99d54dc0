"""The results file: one JSON document, rewritten atomically after every finished test.

Rows are keyed by (model, benchmark, setting), so a rerun replaces its row, shards of one sweep
merge by key, and `--securitynet-resume` knows what is already done. Schema: docs/results-schema.md.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import platform
import socket
import sys
from pathlib import Path
from typing import Any, Iterable

from pytest_securitynet.zoo.store import atomic_path

SCHEMA = "securitynet-results/1"
PASSED = "passed"


def row_key(row: dict[str, Any]) -> str:
    """The stable id of a result row: `model::benchmark::setting`."""
    return f"{row['model']}::{row['benchmark']}::{row['setting']}"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def plain(value: Any) -> Any:
    """Convert numpy/torch scalars and arrays, tuples and str subclasses to JSON (and execnet) builtins."""
    if value is None or type(value) in (bool, int, str):
        return value
    if isinstance(value, float):
        value = float(value)
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # numpy and torch scalars and arrays
        return plain(value.tolist())
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    for kind in (bool, int, str):
        if isinstance(value, kind):
            return kind(value)
    raise TypeError(f"cannot record a value of type {type(value).__name__}: use numbers, strings, lists or dicts")


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("pytest-securitynet", "torch", "torchvision", "timm", "pytorchcv", "numpy", "scikit-learn", "pytest", "pytest-xdist"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def run_info(args: Iterable[str], settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "started_at": now(),
        "finished_at": None,
        "status": "running",
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "argv": [*sys.argv[:1], *args],
        "settings": plain(settings),
        "versions": versions(),
    }


def load_results(path: Path) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a {SCHEMA} file (schema={doc.get('schema')!r})")
    return doc


class ResultsWriter:
    """Holds the run's rows and rewrites the JSON file atomically whenever one is added."""

    def __init__(self, path: Path, run: dict[str, Any], previous: dict[str, Any] | None = None):
        self.path = Path(path)
        self.run = run
        self.models: dict[str, Any] = dict(previous.get("models", {})) if previous else {}
        self.rows: dict[str, dict[str, Any]] = {row_key(r): r for r in previous["results"]} if previous else {}

    def add(self, row: dict[str, Any], model_info: dict[str, Any] | None) -> None:
        self.rows[row_key(row)] = plain(row)
        if model_info is not None:
            self.models[row["model"]] = plain(model_info)
        self.write()

    def finish(self, status: str) -> None:
        self.run["status"] = status
        self.run["finished_at"] = now()
        self.write()

    def write(self) -> None:
        doc = {"schema": SCHEMA, "run": self.run, "models": self.models, "results": list(self.rows.values())}
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n", encoding="utf-8")
