"""The results file: one JSON document, plus a journal of the rows finished since it was last written.

Rows are keyed by (model, benchmark, setting), so a rerun replaces its row, shards of one sweep
merge by key, and `--securitynet-resume` knows what is already done. Each finished row is appended
to the journal beside the file at once and the document is compacted now and then (`journal`), so
a run of n rows writes O(n) bytes; `load_results` replays a journal a killed run left behind.
Schema: docs/results-schema.md.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from pytest_securitynet.results.journal import CompactionPolicy, Journal, journal_path, load_journaled, write_atomic

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


def load_document(path: Path) -> dict[str, Any]:
    """The results document as it is on disk (without its journal), checked for the schema."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a {SCHEMA} file (schema={doc.get('schema')!r})")
    return doc


def load_results(path: Path) -> dict[str, Any]:
    """A results file with every finished row: the document, plus the journal a killed run left."""
    empty = {"schema": SCHEMA, "run": {"status": "running"}, "models": {}, "results": []}
    return load_journaled(Path(path), load_document, empty, row_key)


def results_exist(path: Path) -> bool:
    """Whether a results file, or the journal of a run killed before writing it, is at `path`."""
    return Path(path).is_file() or journal_path(Path(path)).is_file()


class ResultsWriter:
    """The rows of a run, durable after each `add`: journaled at once, compacted into the JSON now and then.

    Nothing is written before the first row, so a run that records nothing leaves an existing file
    as it was. The first row's compaction writes the document (with the rows carried over by
    `--securitynet-resume`, which `load_results` read with any journal a killed run left) and
    empties the journal; a run that does not resume drops such a journal first, as it replaces
    the file."""

    def __init__(self, path: Path, run: dict[str, Any], previous: dict[str, Any] | None = None, *,
                 policy: CompactionPolicy | None = None, durable: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        self.path = Path(path)
        self.run = run
        self.models: dict[str, Any] = dict(previous.get("models", {})) if previous else {}
        self.rows: dict[str, dict[str, Any]] = {row_key(r): r for r in previous["results"]} if previous else {}
        # the specs of the benchmarks that have rows, by id (results/spec.py)
        self.benchmarks: dict[str, Any] = dict(previous.get("benchmarks", {})) if previous else {}
        self.policy = policy or CompactionPolicy()
        self.durable = durable
        self.journal = Journal(journal_path(self.path), durable)
        self.document_bytes_written = 0
        self.compactions = 0
        self._clock = clock
        self._document_size = 0
        self._last_compaction = clock()
        self._started = False
        self._fresh = previous is None  # a journal found now belongs to the run this one replaces
        self._stored_benchmarks: set[str] = set()  # specs already in the document or the journal

    @property
    def bytes_written(self) -> int:
        """Every byte this writer wrote: journal appends and document rewrites."""
        return self.journal.bytes_written + self.document_bytes_written

    def add(self, row: dict[str, Any], model_info: dict[str, Any] | None) -> None:
        row = plain(row)
        info = plain(model_info) if model_info is not None else None
        self.rows[row_key(row)] = row
        if info is not None:
            self.models[row["model"]] = info
        if not self._started:
            self.write()
            return
        record: dict[str, Any] = {"row": row, "model_info": info}
        new_specs = {k: v for k, v in self.benchmarks.items() if k not in self._stored_benchmarks}
        if new_specs:  # put in `benchmarks` by the spec recorder just before this row
            record["benchmarks"] = plain(new_specs)
            self._stored_benchmarks.update(new_specs)
        self.journal.append(record)
        if self.policy.due(self.journal.size, self._document_size, self._clock() - self._last_compaction):
            self.write()

    def finish(self, status: str) -> None:
        """The run ended (complete, interrupted by Ctrl-C, error): the final compaction, no journal left."""
        self.run["status"] = status
        self.run["finished_at"] = now()
        self.write()
        self.journal.remove()

    def write(self) -> None:
        """Compact: rewrite the whole document atomically, then empty the journal."""
        doc = {"schema": SCHEMA, "run": self.run, "models": self.models, "results": list(self.rows.values())}
        if self.benchmarks:
            doc["benchmarks"] = self.benchmarks
        data = (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode("utf-8")
        if not self._started and self._fresh:
            self.journal.clear()  # before the document: its rows must never be replayed into this run's
        write_atomic(self.path, data, self.durable)
        self.journal.clear()
        self.document_bytes_written += len(data)
        self.compactions += 1
        self._document_size = len(data)
        self._last_compaction = self._clock()
        self._started = True
        self._stored_benchmarks = set(self.benchmarks)

    def close(self) -> None:
        self.journal.close()
