"""Earlier runs are kept, numbered, in a folder beside the results file; the newest stays at its path.

A fresh run that replaces a results file holding rows (document plus journal) first copies it to
`<stem>-runs/NNNN_<its start time>.json` beside it (`securitynet-results.json` ->
`securitynet-results-runs/0003_2026-12-07T07-30-54.json`), numbered after the highest number
there, so no run discards another run's rows. `securitynet merge -o` does the same before
replacing a file whose rows the merge would lose. The run's end names the copy.

A run's files (`<stem>-artifacts/`, e.g. Neural Cleanse triggers) move with its rows to
`<stem>-runs/NNNN_<time>-artifacts/`, and the kept rows' paths are rewritten to match, so a kept
run is laid out like the newest one (`<its stem>-artifacts/` beside it) and its report still works.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUNS_SUFFIX = "-runs"
ARTIFACTS_SUFFIX = "-artifacts"
_NUMBERED = re.compile(r"(\d{4,})_.*\.json")
_NUMBERED_ENTRY = re.compile(r"(\d{4,})_.*(\.json|-artifacts)")  # a kept run, or its files alone (a killed move)


def runs_dir(results_path: Path) -> Path:
    """The folder of earlier runs beside a results file: `out.json` -> `out-runs/`."""
    results_path = Path(results_path)
    return results_path.with_name(results_path.stem + RUNS_SUFFIX)


def archived_runs(results_path: Path) -> list[Path]:
    """The earlier runs kept for `results_path`, oldest first."""
    folder = runs_dir(results_path)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NUMBERED.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def next_run_path(results_path: Path, run: dict[str, Any] | None) -> Path:
    """Where the run `run` (the `run` block of the file being replaced) is kept: the next number,
    and its start time (else now) in a form every file system accepts."""
    folder = runs_dir(results_path)
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    taken = [int(m.group(1)) for name in names if (m := _NUMBERED_ENTRY.fullmatch(name))]
    return folder / f"{max(taken, default=0) + 1:04d}_{_stamp((run or {}).get('started_at'))}.json"


def _stamp(started_at: Any) -> str:
    try:
        when = dt.datetime.fromisoformat(str(started_at))
    except ValueError:
        when = dt.datetime.now(dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H-%M-%S")


def artifacts_dir(results_path: Path) -> Path:
    """The folder of a results file's own files: `out.json` -> `out-artifacts/`."""
    results_path = Path(results_path)
    return results_path.with_name(results_path.stem + ARTIFACTS_SUFFIX)


@dataclass
class SetAside:
    """The artifacts folder of a replaced run, moved to where that run is kept."""

    source: Path  # `<stem>-artifacts/` beside the results path as the run names it
    dest: Path  # `<kept stem>-artifacts/` in the runs folder

    def rows_pointing_here(self, document: dict[str, Any]) -> dict[str, Any]:
        """`document` with every row path into `source` (relative to the results file, or absolute)
        pointing into `dest` (relative to the kept file, or absolute)."""
        dest = os.path.abspath(self.dest) + "/"
        prefixes = {self.source.name + "/": self.dest.name + "/", os.path.abspath(self.source) + "/": dest,
                    str(self.source.resolve()) + "/": dest}

        def rewrite(value: Any) -> Any:
            if isinstance(value, str):
                for old, new in prefixes.items():
                    if value.startswith(old):
                        return new + value[len(old):]
                return value
            if isinstance(value, dict):
                return {k: rewrite(v) for k, v in value.items()}
            if isinstance(value, list):
                return [rewrite(v) for v in value]
            return value

        return {**document, "results": [rewrite(row) for row in document.get("results", [])]}

    def put_back(self) -> None:
        """Undo the move (the run that replaced it recorded nothing). What the new run wrote into
        `source` meanwhile belongs to no row (the move came before its first test): it goes."""
        if not self.dest.is_dir():
            return
        unrecorded = None
        if self.source.exists() or self.source.is_symlink():  # out of the way in one step, then deleted
            unrecorded = Path(tempfile.mkdtemp(prefix=f".{self.source.name}-unrecorded-", dir=self.source.parent))
            self.source.rename(unrecorded / self.source.name)
        _move(self.dest, self.source)
        if unrecorded is not None:
            shutil.rmtree(unrecorded, ignore_errors=True)
        try:
            self.dest.parent.rmdir()  # the runs folder, if the move made it and nothing else is there
        except OSError:
            pass


def set_aside_artifacts(results_path: Path, kept_path: Path) -> SetAside | None:
    """Move the artifacts beside `results_path` (the path as the run names it) to those of the run
    kept at `kept_path`; None when there is none (or the place is taken)."""
    source, dest = artifacts_dir(results_path), artifacts_dir(kept_path)
    if not source.is_dir() or dest.exists():
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    _move(source, dest)
    return SetAside(source, dest)


def _move(source: Path, dest: Path) -> None:
    """Rename `source` to `dest` (never into a folder already there); copy where the two are on
    different file systems (a runs folder that is a link to another disk)."""
    try:
        os.rename(source, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV or dest.exists():
            raise
        shutil.move(str(source), str(dest))
