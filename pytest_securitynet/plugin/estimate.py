"""How long a run should take, from the durations of runs already made.

The first choice is the results file the run will write: a previous run left each test's seconds
there (setup plus call, measured on this machine). For tests it lacks, the reference run packaged
beside this module holds the CPU seconds each demo test took on two CPU cores (the machine is
described in the file). Tests neither knows are counted as unknown, never guessed.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pytest_securitynet.errors import SecurityNetError
from pytest_securitynet.results.rows import load_results, results_exist, row_key

REFERENCE = Path(__file__).with_name("reference-durations.json")


@dataclass(frozen=True)
class Durations:
    """Seconds per row key, and where they come from (for the start line)."""

    seconds: dict[str, float]
    source: str


@dataclass(frozen=True)
class Estimate:
    seconds: float
    known: int
    total: int
    sources: tuple[str, ...]

    def describe(self) -> str:
        """`about 48 s (previous run)`, `about 3 min for 60 of 64 tests (...)` or `no estimate yet (...)`."""
        if not self.known:
            return "no estimate yet (no earlier run of these tests; the next run has one)"
        amount = f"about {_duration(self.seconds)}"
        if self.known < self.total:
            amount += f" for {self.known} of {self.total} tests"
        return f"{amount} (from {' and '.join(self.sources)})"


def from_results(doc: dict[str, Any]) -> dict[str, float]:
    """Setup plus call seconds of every passed row of a results document."""
    return {row_key(r): float(r.get("wall_time_s") or 0.0) + float(r.get("setup_time_s") or 0.0)
            for r in doc.get("results", []) if r.get("outcome") == "passed"}


def previous_run(json_path: Path) -> Durations | None:
    """The durations an earlier run left in `json_path` (or its journal), if it holds any."""
    if not results_exist(json_path):
        return None
    try:
        seconds = from_results(load_results(json_path))
    except (OSError, ValueError, SecurityNetError):  # unreadable or malformed: the run says so when it writes
        return None
    return Durations(seconds, "the previous run's durations") if seconds else None


def reference_run(path: Path = REFERENCE) -> Durations | None:
    """The packaged reference run (CPU seconds per demo test)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        return Durations({str(k): float(v) for k, v in doc["seconds"].items()}, doc["source"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_reference(results_path: Path, source: str, path: Path = REFERENCE) -> Path:
    """Make the packaged reference from a measured run: CPU seconds (setup and call) per row key.

    `python3 -m pytest_securitynet.plugin.estimate RESULTS.json "SOURCE"` after a run of
    `pytest benchmarks/ -k demo` (README gives the measured command)."""
    doc = load_results(results_path)
    seconds = {row_key(r): round(float(r["cpu_time_s"]), 2) for r in doc.get("results", []) if "cpu_time_s" in r}
    Path(path).write_text(json.dumps({"source": source, "run": {k: doc["run"].get(k) for k in ("host", "platform",
                          "argv", "started_at", "versions")}, "seconds": dict(sorted(seconds.items()))}, indent=1) + "\n",
                          encoding="utf-8")
    return Path(path)


def estimate(keys: Iterable[str], sources: Iterable[Durations | None]) -> Estimate:
    """Sum, over `keys`, the seconds of the first source that knows each key."""
    sources = [s for s in sources if s is not None]
    keys = list(keys)
    total, known, used = 0.0, 0, []
    for key in keys:
        for source in sources:
            if key in source.seconds:
                total += source.seconds[key]
                known += 1
                if source.source not in used:
                    used.append(source.source)
                break
    return Estimate(total, known, len(keys), tuple(used))


def expected_seconds(key: str, sources: Iterable[Durations | None]) -> float | None:
    """One test's expected seconds, from the first source that knows it."""
    for source in sources:
        if source is not None and key in source.seconds:
            return source.seconds[key]
    return None


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


if __name__ == "__main__":
    print(write_reference(Path(sys.argv[1]), sys.argv[2]))
