"""Read one or more results files (shards, reruns) and merge their rows by key; `securitynet merge`.

Rows are keyed by `model::benchmark::setting` (`results.row_key`). A key seen in several files is
a duplicate: identical duplicates (same outcome and metrics) collapse into one row; duplicates that
differ are *conflicts*, kept in `ResultSet.conflicts` so the report can list them. Timings and
cache provenance are not results: reruns that differ only in how long they took or in whether a
trained helper came from the cache (`result_metric`: not `phases`, `speedup`, names in seconds or
per second, `reference_source`, `quantile_backbone_source`, `source_cached`) are identical, and row
fields outside `outcome` and `metrics` (wall and setup times, `finished_at`, `worker`, `nodeid`, peak
memory) are never compared. Of two conflicting rows the report keeps a passed one over one that did not pass, then
the one that finished last, then the one from the file given last.

`merge_files` never destroys rows: it refuses to write over one of its inputs or over a file that
is not a results file, and keeps a results file it replaces in the runs folder (`archive`) when
the merge would lose any of its rows. The merged `run.settings` are the inputs' when they all
agree on what decides a row (`resume.ROW_SETTINGS`); otherwise every row records its file's in
`run_settings`, so `--securitynet-resume` compares each row's settings.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pytest_securitynet.errors import SecurityNetError
from pytest_securitynet.results.archive import next_run_path
from pytest_securitynet.results.journal import write_atomic
from pytest_securitynet.results.resume import row_settings
from pytest_securitynet.results.rows import (PASSED, SCHEMA, ResultsWriter, encode, load_results, now, results_exist,
                                             results_target, row_key)

MAX_DIFF_SHOWN = 4
"""Differing metrics named per conflict in the report (all of them are in the CSV)."""
TIMING_METRICS = frozenset({"phases", "speedup"})
TIMING_SUFFIXES = ("_s",)
"""Metric names ending so are durations or rates (`runtime_s`, `attack_time_s`, `samples_per_s`)."""
PROVENANCE_METRICS = frozenset({"reference_source", "quantile_backbone_source", "source_cached"})
"""Whether reference models or a surrogate were trained in this run or read from the cache."""


@dataclass
class Source:
    """One input file: its path, its run block and how many rows it held."""

    path: Path
    run: dict[str, Any]
    rows: int


@dataclass
class Conflict:
    """Two rows with the same key and different outcome or metrics."""

    key: str
    kept: str  # file of the row the report uses
    dropped: str  # file of the other row
    kept_outcome: str
    dropped_outcome: str
    differences: list[str]  # "metric: kept value vs dropped value"

    def warning(self, prog: str) -> str:
        """The line a command prints for this conflict on stderr."""
        return (f"{prog}: warning: duplicate row with different results: {self.describe()} "
                f"(kept {self.kept}, dropped {self.dropped})")

    def describe(self) -> str:
        shown = "; ".join(self.differences[:MAX_DIFF_SHOWN])
        more = f" (and {len(self.differences) - MAX_DIFF_SHOWN} more)" if len(self.differences) > MAX_DIFF_SHOWN else ""
        return f"{self.key}: {shown}{more}"


@dataclass
class ResultSet:
    """The merged rows of every input file, with the models' catalog data and what the merge found."""

    rows: list[dict[str, Any]]
    models: dict[str, dict[str, Any]]
    sources: list[Source]
    conflicts: list[Conflict] = field(default_factory=list)
    collapsed: int = 0  # identical duplicates folded into one row
    origin: dict[str, Path] = field(default_factory=dict)  # row key -> file it was taken from
    benchmarks: dict[str, dict[str, Any]] = field(default_factory=dict)  # the files' specs by id (the later file wins)
    replaced_kept: Path | None = None  # where `merge_files` kept the results file `-o` replaced

    @property
    def passed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("outcome") == PASSED]

    @property
    def not_passed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("outcome") != PASSED]


def load_documents(paths: Iterable[str | Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Each path's results document with its journal replayed, checked for the schema (`ValueError`
    names a bad file)."""
    out = []
    for path in paths:
        path = Path(path)
        if not results_exist(path):
            raise FileNotFoundError(f"{path}: no such results file")
        try:
            doc = load_results(path)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON ({exc})") from exc
        if not isinstance(doc.get("results"), list):
            raise ValueError(f"{path}: a {SCHEMA} file needs a `results` list")
        out.append((path, doc))
    return out


def merge(documents: list[tuple[Path, dict[str, Any]]]) -> ResultSet:
    """Merge the rows of `documents` (in the order given) by key; see the module docstring."""
    rows: dict[str, dict[str, Any]] = {}
    origin: dict[str, Path] = {}
    models: dict[str, dict[str, Any]] = {}
    benchmarks: dict[str, dict[str, Any]] = {}
    sources, conflicts, collapsed = [], [], 0
    for path, doc in documents:
        sources.append(Source(path=path, run=doc.get("run") or {}, rows=len(doc["results"])))
        for model_id, info in (doc.get("models") or {}).items():
            models[model_id] = info
        benchmarks.update(doc.get("benchmarks") or {})
        for row in doc["results"]:
            key = row_key(row)
            if key not in rows:
                rows[key], origin[key] = row, path
                continue
            old = rows[key]
            if _same(old, row):
                collapsed += 1
                continue
            keep_new = _prefer(row, old)
            kept, dropped = (row, old) if keep_new else (old, row)
            kept_path, dropped_path = (path, origin[key]) if keep_new else (origin[key], path)
            conflicts.append(Conflict(key=key, kept=str(kept_path), dropped=str(dropped_path),
                                      kept_outcome=str(kept.get("outcome")), dropped_outcome=str(dropped.get("outcome")),
                                      differences=_differences(kept, dropped)))
            if keep_new:
                rows[key], origin[key] = row, path
    return ResultSet(rows=list(rows.values()), models=models, sources=sources, conflicts=conflicts,
                     collapsed=collapsed, origin=origin, benchmarks=benchmarks)


def load_and_merge(paths: Iterable[str | Path]) -> ResultSet:
    return merge(load_documents(paths))


def result_metric(name: str) -> bool:
    """Whether a rerun must reproduce a metric: not a time, not where a cached helper came from."""
    return not (name in TIMING_METRICS or name.endswith(TIMING_SUFFIXES) or name in PROVENANCE_METRICS)


def results_of(row: dict[str, Any]) -> dict[str, Any]:
    """A row's metrics that are results (`result_metric`)."""
    return {k: v for k, v in (row.get("metrics") or {}).items() if result_metric(k)}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("outcome") == b.get("outcome") and _equal(results_of(a), results_of(b))


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def _prefer(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Whether `new` should replace `old`: passed first, then the later `finished_at`, then the later file."""
    new_passed, old_passed = new.get("outcome") == PASSED, old.get("outcome") == PASSED
    if new_passed != old_passed:
        return new_passed
    return str(new.get("finished_at") or "") >= str(old.get("finished_at") or "")


def _differences(kept: dict[str, Any], dropped: dict[str, Any]) -> list[str]:
    out = []
    if kept.get("outcome") != dropped.get("outcome"):
        out.append(f"outcome: {kept.get('outcome')} vs {dropped.get('outcome')}")
    a, b = results_of(kept), results_of(dropped)
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b or not _equal(a[name], b[name]):
            out.append(f"{name}: {_short(a.get(name, '(absent)'))} vs {_short(b.get(name, '(absent)'))}")
    return out


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."

class MergeOutputError(SecurityNetError):
    """`-o` names a file the merge must not replace (one of its inputs, or not a results file)."""


def merge_files(paths: Iterable[str | Path], out: str | Path) -> ResultSet:
    """Merge the results files `paths` into `out` (written atomically); returns what the merge found.

    `MergeOutputError` when `out` is an input or not a results file; a results file at `out` whose
    rows the merge would lose is kept first (`ResultSet.replaced_kept` says where)."""
    paths, out = [Path(p) for p in paths], Path(out)
    existing = _check_output(paths, out)
    documents = load_documents(paths)
    common = _common_settings(documents)
    result_set = merge(_with_row_settings(documents, common))
    started = [s.run.get("started_at") for s in result_set.sources if s.run.get("started_at")]
    run = {
        "status": "merged",
        "merged_at": now(),
        "started_at": min(started) if started else None,
        "merged_from": [{"path": str(s.path), "rows": s.rows, "status": s.run.get("status"),
                         "host": s.run.get("host"), "argv": s.run.get("argv"),
                         "settings": s.run.get("settings")} for s in result_set.sources],
        "conflicts": [conflict.key for conflict in result_set.conflicts],
    }
    if common is not None:
        run["settings"] = common
    present = {row["model"] for row in result_set.rows}
    models = {m: info for m, info in result_set.models.items() if m in present}
    result_set.replaced_kept = _keep_replaced(out, existing, result_set.rows)
    ResultsWriter(out, run, {"models": models, "results": result_set.rows,
                             "benchmarks": result_set.benchmarks}).write()
    return result_set


def _check_output(paths: list[Path], out: Path) -> dict[str, Any] | None:
    """Refuse an `out` that is one of the inputs (by any path, symlinks included) or not a results file;
    return the results already there (None if none), read once for `_keep_replaced`."""
    target = results_target(out).resolve()
    for path in paths:
        if results_target(path).resolve() == target:
            raise MergeOutputError(f"-o {out} is one of the files being merged; merging into it would destroy the "
                                   f"rows that lose a conflict. Write the merge to a new file")
    if out.exists() and not out.is_file():
        raise MergeOutputError(f"-o {out} is not a file; give the path of the merged results file")
    if not results_exist(out):
        return None
    try:
        return load_results(out)
    except (ValueError, OSError) as exc:
        raise MergeOutputError(f"-o {out} exists and is not a securitynet results file ({exc}); "
                               f"the merge leaves it alone: write the merge elsewhere") from None


def _keep_replaced(out: Path, old: dict[str, Any] | None, rows: list[dict[str, Any]]) -> Path | None:
    """Keep the results `old` found at `out` in its runs folder when the merge would lose one of its rows."""
    if old is None:
        return None
    merged = {row_key(row): row for row in rows}
    if all(merged.get(row_key(row)) == row for row in old["results"]):
        return None  # every row it holds is in the merge, unchanged (e.g. a sweep merged again)
    kept = next_run_path(results_target(out), old.get("run"))
    write_atomic(kept, encode(old))
    return kept


def _common_settings(documents: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any] | None:
    """The inputs' `run.settings` when every input records them and they agree on what decides a row."""
    recorded = [(doc.get("run") or {}).get("settings") for _, doc in documents]
    if not recorded or not all(isinstance(s, dict) for s in recorded):
        return None
    first = row_settings(recorded[0])
    return dict(recorded[0]) if all(row_settings(s) == first for s in recorded[1:]) else None


def _with_row_settings(documents: list[tuple[Path, dict[str, Any]]],
                       common: dict[str, Any] | None) -> list[tuple[Path, dict[str, Any]]]:
    """When the inputs' settings differ (`common` is None: one does not record them), each row
    carries its file's as `run_settings`, as a mixed resume records them."""
    if common is not None:
        return documents
    out = []
    for path, doc in documents:
        settings = (doc.get("run") or {}).get("settings")
        if isinstance(settings, dict):
            doc = {**doc, "results": [row if "run_settings" in row else {**row, "run_settings": row_settings(settings)}
                                      for row in doc["results"]]}
        out.append((path, doc))
    return out
