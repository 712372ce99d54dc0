"""Results writing that scales: each finished row is appended to a journal, the JSON is compacted now and then.

Rewriting the whole results document after every test writes O(n^2) bytes over a run of n rows.
Instead every row is appended to a JSON Lines journal beside the results file (`x.json` ->
`x.journal.jsonl`), flushed and fsync'd before `add` returns, and the document is rewritten
(atomically: temporary file, fsync, rename) only when the journal has grown to `ratio` times the
document and at least `interval_s` seconds have passed, and at the end of the run. The document
plus the journal always hold every finished row; `load_journaled` reads both, so a file left by a
killed run loses nothing. Compaction never lets a row vanish: the document is renamed into place
before the journal is emptied, and replaying a row twice only replaces it by itself.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .results import SCHEMA, now, plain, row_key

log = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".journal.jsonl"
COMPACT_INTERVAL_S = 5.0
"""At most one periodic compaction per this many seconds."""
COMPACT_RATIO = 2.0
"""A periodic compaction waits until the journal holds this many times the document's bytes, so the
rewrites form a geometric series: a whole run writes under 3x its final file (journal included)."""


def journal_path(results_path: Path) -> Path:
    """The journal beside a results file: `shard-017.json` -> `shard-017.journal.jsonl`."""
    results_path = Path(results_path)
    return results_path.with_name(results_path.stem + JOURNAL_SUFFIX)


def write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Write `data` to a temporary file beside `path`, fsync it and rename it onto `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    if durable:
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is then as durable as it gets
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Journal:
    """An append-only JSON Lines file; every `append` is one write, flushed and (if durable) fsync'd."""

    def __init__(self, path: Path, durable: bool = True):
        self.path = Path(path)
        self.durable = durable
        self.size = 0  # bytes appended since the journal was last emptied
        self.bytes_written = 0  # bytes appended over the journal's life
        self._fd: int | None = None

    def append(self, record: dict[str, Any]) -> int:
        data = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
        fd = self._open()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if self.durable:
            os.fsync(fd)
        self.size += len(data)
        self.bytes_written += len(data)
        return len(data)

    def clear(self) -> None:
        """Empty the journal (after its records reached the document)."""
        fd = self._open()
        os.ftruncate(fd, 0)
        if self.durable:
            os.fsync(fd)
        self.size = 0

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return self._fd


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The records of a journal. A torn last line (the writer was killed mid-append) is dropped;
    a bad line anywhere else is corruption and raises `ValueError` naming the line."""
    raw = Path(path).read_bytes()
    lines = raw.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # `tail` is empty unless the last append was cut short
    records = []
    for number, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if number == len(complete) and not tail:
                log.warning("%s: dropped a torn last line", path)
                continue
            raise ValueError(f"{path}:{number}: not a journal record ({exc})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("row"), dict):
            raise ValueError(f"{path}:{number}: a journal record needs a `row` object")
        records.append(record)
    if tail.strip():
        log.warning("%s: dropped a torn last line", path)
    return records


def replay(doc: dict[str, Any], records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """`doc` with the journal's rows applied in order: a row replaces the one with its key, or is appended."""
    rows = {row_key(r): r for r in doc.get("results", [])}
    models = dict(doc.get("models") or {})
    for record in records:
        row = record["row"]
        rows[row_key(row)] = row
        if record.get("model_info") is not None:
            models[row["model"]] = record["model_info"]
    return {**doc, "models": models, "results": list(rows.values())}


def load_journaled(path: Path, load_document: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """A results document as a killed run left it: the file (read by `load_document`) plus its journal.

    Raises `FileNotFoundError` when neither exists. A journal without its document (a run killed
    before its first compaction) gives a document whose run status is `running`."""
    path = Path(path)
    journal = journal_path(path)
    records = read_journal(journal) if journal.is_file() else []
    if path.is_file():
        doc = load_document(path)
    elif records:
        doc = {"schema": SCHEMA, "run": {"status": "running"}, "models": {}, "results": []}
    else:
        raise FileNotFoundError(f"{path}: no such results file")
    return replay(doc, records) if records else doc


@dataclass
class CompactionPolicy:
    """When a periodic compaction is worth its cost: enough time passed and enough journal grew."""

    interval_s: float = COMPACT_INTERVAL_S
    ratio: float = COMPACT_RATIO

    def due(self, journal_bytes: int, document_bytes: int, seconds_since: float) -> bool:
        return seconds_since >= self.interval_s and journal_bytes >= self.ratio * document_bytes


class JournaledResults:
    """The rows of a run, durable after each `add`: journaled at once, compacted into the JSON now and then.

    Nothing is written before the first row, so a run that records nothing leaves an existing file
    as it was. The first row's compaction writes the document (with the rows carried over by
    `--securitynet-resume`) and empties a journal a killed run may have left (replayed into
    `previous` by `load_journaled`)."""

    def __init__(self, path: Path, run: dict[str, Any], previous: dict[str, Any] | None = None, *,
                 policy: CompactionPolicy | None = None, durable: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        self.path = Path(path)
        self.run = run
        self.models: dict[str, Any] = dict(previous.get("models", {})) if previous else {}
        self.rows: dict[str, dict[str, Any]] = {row_key(r): r for r in previous["results"]} if previous else {}
        self.policy = policy or CompactionPolicy()
        self.durable = durable
        self.journal = Journal(journal_path(self.path), durable)
        self.document_bytes_written = 0
        self.compactions = 0
        self._clock = clock
        self._document_size = 0
        self._last_compaction = clock()
        self._started = False
        self._fresh = previous is None  # a journal found now belongs to a run this one replaces

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
        self.journal.append({"row": row, "model_info": info})
        if self.policy.due(self.journal.size, self._document_size, self._clock() - self._last_compaction):
            self.write()

    def finish(self, status: str) -> None:
        self.run["status"] = status
        self.run["finished_at"] = now()
        self.write()
        self.journal.remove()

    def write(self) -> None:
        """Compact: rewrite the whole document atomically, then empty the journal."""
        doc = {"schema": SCHEMA, "run": self.run, "models": self.models, "results": list(self.rows.values())}
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

    def close(self) -> None:
        self.journal.close()
