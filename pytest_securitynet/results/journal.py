"""The journal beside a results file: finished rows appended as JSON Lines, replayed by readers.

Rewriting the whole results document after every test writes O(n^2) bytes over a run of n rows.
Instead the writer (`rows.ResultsWriter`) appends every row to a JSON Lines journal beside the
results file (`x.json` -> `x.journal.jsonl`), flushed and fsync'd before the test's report is
done, and compacts journal and document into the JSON (atomically: temporary file, fsync, rename)
at the end, on Ctrl-C, and at most every few seconds when the journal has grown enough
(`CompactionPolicy`). The document plus the journal always hold every finished row;
`load_journaled` reads both, so a file left by a killed run loses nothing. Compaction never lets a
row vanish: the document is renamed into place before the journal is emptied, and replaying a row
twice only replaces it by itself.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable


log = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".journal.jsonl"
COMPACT_INTERVAL_S = 5.0
"""At most one periodic compaction per this many seconds."""
COMPACT_RATIO = 2.0
"""A periodic compaction waits until the journal holds this many times the document's bytes, so the
rewrites form a geometric series: the 20,000-row run of tests/test_journal.py writes 2.5 times its
final file in all (journal included), where rewriting after every row writes about n/2 files."""


def results_target(path: Path) -> Path:
    """The file a results path names: the target of a symlink (so a symlinked results file is
    written through and locked once, not replaced by a regular file), else the path itself."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def journal_path(results_path: Path) -> Path:
    """The journal beside a results file: `shard-017.json` -> `shard-017.journal.jsonl` (beside the
    file a symlink points to, where the writer keeps it)."""
    results_path = results_target(results_path)
    return results_path.with_name(results_path.stem + JOURNAL_SUFFIX)


def file_mode(path: Path | None = None) -> int:
    """The permissions for (re)writing `path`: an existing file's own, else 0666 less the umask, as
    `open` would give a new file (`mkstemp` alone would make every results file 0600)."""
    if path is not None:
        try:
            return stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            pass
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Write `data` to a temporary file beside `path`, fsync it and rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
    try:
        os.fchmod(fd, mode)
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
        start = os.lseek(fd, 0, os.SEEK_END)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
            if self.durable:
                os.fsync(fd)
        except OSError:
            self._cut(fd, start)
            raise
        self.size += len(data)
        self.bytes_written += len(data)
        return len(data)

    def clear(self) -> None:
        """Empty the journal (after its records reached the document); creates no file."""
        if self._fd is None and not self.path.exists():
            self.size = 0
            return
        fd = self._open()
        os.ftruncate(fd, 0)
        if self.durable:
            os.fsync(fd)
        self.size = 0

    def _cut(self, fd: int, size: int) -> None:
        """Drop the part of a failed append (a full disk) that reached the file, so the journal
        keeps ending in a whole record and a later append cannot follow half a line."""
        try:
            os.ftruncate(fd, size)
        except OSError as exc:
            log.warning("%s: cannot cut a failed append off (%s); readers drop it as a torn last line", self.path, exc)

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
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
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


def replay(doc: dict[str, Any], records: Iterable[dict[str, Any]],
           key: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """`doc` with the journal's records applied in order: a row replaces the one with its `key`, or is
    appended; a record's model data and benchmark specs are added to the document's."""
    rows = {key(r): r for r in doc.get("results", [])}
    models = dict(doc.get("models") or {})
    benchmarks = dict(doc.get("benchmarks") or {})
    for record in records:
        row = record["row"]
        rows[key(row)] = row
        if record.get("model_info") is not None:
            models[row["model"]] = record["model_info"]
        benchmarks.update(record.get("benchmarks") or {})
    replayed = {**doc, "models": models, "results": list(rows.values())}
    if benchmarks:
        replayed["benchmarks"] = benchmarks
    return replayed


def load_journaled(path: Path, load_document: Callable[[Path], dict[str, Any]], empty: dict[str, Any],
                   key: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    """A document as a killed run left it: the file (read by `load_document`) plus its journal.

    Raises `FileNotFoundError` when neither exists. A journal without its document (a run killed
    before its first compaction) is replayed onto `empty`."""
    path = Path(path)
    journal = journal_path(path)
    records = read_journal(journal) if journal.is_file() else []
    if path.is_file():
        doc = load_document(path)
    elif records:
        doc = dict(empty)
    else:
        raise FileNotFoundError(f"{path}: no such results file")
    return replay(doc, records, key) if records else doc


@dataclass
class CompactionPolicy:
    """When a periodic compaction is worth its cost: enough time passed and enough journal grew."""

    interval_s: float = COMPACT_INTERVAL_S
    ratio: float = COMPACT_RATIO

    def due(self, journal_bytes: int, document_bytes: int, seconds_since: float) -> bool:
        return seconds_since >= self.interval_s and journal_bytes >= self.ratio * document_bytes
