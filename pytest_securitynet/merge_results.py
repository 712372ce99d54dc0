"""`securitynet merge`: one results file from the shards of a sweep (Slurm jobs, machines, reruns).

Rows merge by key as in the report: identical duplicates fold into one, and of two different rows
the passed one wins, then the later `finished_at`. The merged file is an ordinary results file, so
it feeds `--securitynet-resume`, `--securitynet-compare` and `securitynet report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .report.merge import ResultSet, load_and_merge
from .results import ResultsWriter, now


def merge_files(paths: Iterable[str | Path], out: str | Path) -> ResultSet:
    """Merge the results files `paths` into `out` (written atomically); returns what the merge found."""
    result_set = load_and_merge(paths)
    started = [s.run.get("started_at") for s in result_set.sources if s.run.get("started_at")]
    run = {
        "status": "merged",
        "merged_at": now(),
        "started_at": min(started) if started else None,
        "merged_from": [{"path": str(s.path), "rows": s.rows, "status": s.run.get("status"),
                         "host": s.run.get("host"), "argv": s.run.get("argv")} for s in result_set.sources],
        "conflicts": [conflict.key for conflict in result_set.conflicts],
    }
    present = {row["model"] for row in result_set.rows}
    models = {m: info for m, info in result_set.models.items() if m in present}
    ResultsWriter(Path(out), run, {"models": models, "results": result_set.rows}).write()
    return result_set
