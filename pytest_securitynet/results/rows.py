"""The results file: one JSON document, plus a journal of the rows finished since it was last written.

Rows are keyed by (model, benchmark, setting), so a rerun replaces its row, shards of one sweep
merge by key, and `--securitynet-resume` knows what is already done. Each finished row is appended
to the journal beside the file at once and the document is compacted now and then (`journal`), so
a run of n rows writes O(n) bytes; `load_results` replays a journal a killed run left behind.
A run takes the file over before its first test (`ResultsWriter.start`): the file a fresh run
replaces is kept, numbered, in `x-runs/` (`archive`), and the file says "running" until the run
ends. A results path that is a symlink is written through: the file it points to is the one
locked, journaled and replaced.
Schema: docs/results-schema.md (checked on reading by `schema.check_document`).
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

from pytest_securitynet.errors import SecurityNetError
from pytest_securitynet.results.archive import SetAside, next_run_path, set_aside_artifacts
from pytest_securitynet.results.journal import (CompactionPolicy, Journal, journal_path, load_journaled, results_target,
                                                write_atomic)
from pytest_securitynet.results.schema import SCHEMA, check_document, check_row

PASSED = "passed"


class ResultsWriteError(SecurityNetError):
    """The results file or its journal cannot be written (a full disk, a read-only folder)."""


class ResultsFileError(SecurityNetError):
    """A file is where the results go, and it is not a results file (so it is left alone)."""


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
    """The results document as it is on disk (without its journal), checked for the schema
    (`ValueError` naming the file, and the row when one is malformed)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:  # not JSON, or not UTF-8
        raise ValueError(f"{path}: not JSON ({exc})") from None
    return check_document(doc, Path(path))


def load_results(path: Path) -> dict[str, Any]:
    """A results file with every finished row: the document, plus the journal a killed run left."""
    path = Path(path)
    empty = {"schema": SCHEMA, "run": {"status": "running"}, "models": {}, "results": []}
    journal = journal_path(path)
    return load_journaled(path, load_document, empty, lambda row: row_key(check_row(row, f"{journal}: a row")))


def replaced_results(path: Path) -> dict[str, Any] | None:
    """The results a fresh run at `path` replaces (document plus journal), or None when there are
    none. `ResultsFileError` when what is there is not a results file: a run never overwrites it."""
    path = Path(path)
    if not results_exist(path):
        return None
    try:
        return load_results(path)
    except (ValueError, OSError) as exc:
        raise ResultsFileError(f"{path} exists and is not a securitynet results file this run may replace ({exc}): "
                               f"move it away or write this run's results elsewhere") from None


def encode(doc: dict[str, Any]) -> bytes:
    """A results document as the bytes of its file."""
    return (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode("utf-8")


def results_exist(path: Path) -> bool:
    """Whether a results file, or the journal of a run killed before writing it, is at `path`."""
    return Path(path).is_file() or journal_path(Path(path)).is_file()


class ResultsWriter:
    """The rows of a run, durable after each `add`: journaled at once, compacted into the JSON now and then.

    A run calls `start` before its first test: it takes the file over, writing the document (with
    the rows carried over by `--securitynet-resume`, which `load_results` read with any journal a
    killed run left) with the run's status "running", after keeping the file a fresh run replaces
    (`replaces`, with rows) numbered in the runs folder (`archive`; `archived` says where). A run
    killed from then on leaves a file that says
    "running", never the previous run's "complete". A run that ends having recorded nothing puts
    `replaces` back (or removes its file when there was none). Without `start`, nothing is written
    before the first row, whose compaction writes the document. A run that does not resume drops
    a leftover journal before its first write, as it replaces the file. `row_settings`, when
    given, is recorded in every new row as `run_settings` (a resume that mixes settings).

    A write that fails (`OSError`: a full disk) raises `ResultsWriteError`: every row added before
    is in the document or the journal, and the message says so."""

    def __init__(self, path: Path, run: dict[str, Any], previous: dict[str, Any] | None = None, *,
                 policy: CompactionPolicy | None = None, durable: bool = True,
                 clock: Callable[[], float] = time.monotonic, replaces: dict[str, Any] | None = None,
                 row_settings: dict[str, Any] | None = None):
        self.given_path = Path(path)  # as the run names it: its artifacts folder is beside it
        self.path = results_target(path)
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
        self.replaces = previous if previous is not None else replaces  # the file as it was before this run
        self.row_settings = plain(row_settings) if row_settings is not None else None
        self.added = 0  # rows this run added
        self.archived: Path | None = None  # where `start` kept the file this run replaces
        self.kept_path: Path | None = None  # where it will be kept, once chosen
        self.set_aside: SetAside | None = None  # its artifacts, moved beside `kept_path`
        self._artifacts_settled = False  # decided, before any test wrote a file, what to move
        self._taken_over = False

    @property
    def bytes_written(self) -> int:
        """Every byte this writer wrote: journal appends and document rewrites."""
        return self.journal.bytes_written + self.document_bytes_written

    def _replaces_rows(self) -> bool:
        return self._fresh and self.replaces is not None and bool(self.replaces.get("results"))

    def _keep_at(self) -> Path:
        """Where the replaced file is kept: chosen once, so its artifacts and its rows get one number."""
        if self.kept_path is None:
            self.kept_path = next_run_path(self.path, self.replaces.get("run"))
        return self.kept_path

    def set_aside_artifacts(self) -> None:
        """Before this run's first test can write a file: move the artifacts of the run it replaces
        to where `start` keeps that run (`start` calls it, before the first test). Decided once: a
        folder that appears later is this run's own. Raises `ResultsWriteError` when they cannot be moved."""
        if self._artifacts_settled:
            return
        self._artifacts_settled = True
        if not self._replaces_rows():
            return
        try:
            self.set_aside = set_aside_artifacts(self.given_path, self._keep_at())
        except OSError as exc:
            raise ResultsWriteError(f"cannot move the earlier run's artifacts to {self.kept_path.parent}: "
                                    f"{exc.strerror or exc}") from exc

    def no_artifacts_to_set_aside(self) -> None:
        """Nothing to move (no artifacts folder before any test ran): whatever appears is this run's."""
        self._artifacts_settled = True

    def start(self) -> Path | None:
        """Take the file over before the first test (see the class docstring); returns where the
        replaced file was kept, if anywhere. Raises `ResultsWriteError` when a file cannot be written."""
        self.set_aside_artifacts()
        try:
            if self._replaces_rows():
                kept = self.set_aside.rows_pointing_here(self.replaces) if self.set_aside else self.replaces
                write_atomic(self._keep_at(), encode(kept), self.durable)
                self.archived = self.kept_path
            self.write()
        except OSError as exc:
            failure = f"cannot write {exc.filename or self.path}: {exc.strerror or exc}"
            if self.archived is None:  # the earlier run is still whole at the path: its artifacts go back too
                try:
                    self._artifacts_back()
                except ResultsWriteError as back:
                    failure += f"; and {back}"
            raise ResultsWriteError(failure) from exc
        self._taken_over = True
        return self.archived

    def _artifacts_back(self) -> None:
        """Put the earlier run's artifacts back beside the results path (`OSError` as `ResultsWriteError`)."""
        set_aside, self.set_aside, self.kept_path = self.set_aside, None, None
        if set_aside is None:
            return
        try:
            set_aside.put_back()
        except OSError as exc:
            raise ResultsWriteError(f"cannot move the earlier run's artifacts back from {set_aside.dest} to "
                                    f"{set_aside.source}: {exc.strerror or exc}") from exc

    def add(self, row: dict[str, Any], model_info: dict[str, Any] | None) -> None:
        row = plain(row)
        if self.row_settings is not None:
            row.setdefault("run_settings", self.row_settings)
        info = plain(model_info) if model_info is not None else None
        kept = len(self.rows)
        self.rows[row_key(row)] = row
        self.added += 1
        if info is not None:
            self.models[row["model"]] = info
        try:
            self._store(row, info)
        except OSError as exc:
            raise ResultsWriteError(
                f"cannot write results to {self.path} ({exc.strerror or exc}); the run stops here. The {kept} "
                f"rows finished before are kept in {self.path.name} and {self.journal.path.name}") from exc

    def _store(self, row: dict[str, Any], info: dict[str, Any] | None) -> None:
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
        """The run ended (complete, interrupted by Ctrl-C, error): the final compaction, no journal
        left; or, when it recorded nothing, the file as it was before `start`."""
        try:
            if self.added == 0:
                self._put_back()
                return
            self.run["status"] = status
            self.run["finished_at"] = now()
            self.write()
            self.journal.remove()
        except OSError as exc:
            raise ResultsWriteError(f"cannot write the last results to {self.path} ({exc.strerror or exc}); "
                                    f"every row written before is in {self.path.name} and "
                                    f"{self.journal.path.name}") from exc

    def _put_back(self) -> None:
        """Undo `start` (and `set_aside_artifacts`) for a run that recorded nothing (a selection that
        matched nothing, Ctrl-C)."""
        if not self._taken_over:
            if self.archived is None:  # the earlier run is whole at the path: its files go back beside it
                self._artifacts_back()
            return  # else it is kept, whole, in the runs folder, its files beside it
        if self.replaces is not None:
            write_atomic(self.path, encode(self.replaces), self.durable)
        else:
            self.path.unlink(missing_ok=True)
        self.journal.remove()
        self._artifacts_back()  # its files beside it again, before its kept copy goes
        if self.archived is not None:  # the file is back where it was: no second copy of it
            self.archived.unlink(missing_ok=True)
            self.archived = None

    def write(self) -> None:
        """Compact: rewrite the whole document atomically, then empty the journal."""
        doc = {"schema": SCHEMA, "run": self.run, "models": self.models, "results": list(self.rows.values())}
        if self.benchmarks:
            doc["benchmarks"] = self.benchmarks
        data = encode(doc)
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
