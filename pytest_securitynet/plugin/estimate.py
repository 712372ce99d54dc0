"""How long a run should take, from the durations of runs already made.

The first choice is the results file the run will write: a previous run left each test's seconds
there (setup plus call, measured on this machine). For tests it lacks, the reference run packaged
beside this module holds the CPU seconds each demo test took on two idle CPU cores with the demo
models cached (the machine is described in the file), the CPU seconds training each demo model
adds when it is not cached yet (a cold cache), and the seconds outside the tests (starting Python
and torch, collecting, writing the report). Tests neither knows are counted as unknown, never
guessed.

The seconds are those of an idle machine. Under load the run takes longer: with a 1-minute load
average L on C cores a single-threaded run gets about C / (L + 1) of a core, so the start line
also gives the time scaled by (L + 1) / C once that exceeds 1.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from dataclasses import dataclass, field
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
    cold: dict[str, float] = field(default_factory=dict)
    """Per model: the seconds its first test adds when its weights are not cached (a demo model trains)."""
    overhead: float = 0.0
    """Seconds of a run outside its tests: starting Python and torch, collecting, writing the report."""
    cpu: bool = False
    """CPU seconds of an idle machine (the reference), which load stretches; else wall seconds measured here."""


@dataclass(frozen=True)
class Estimate:
    seconds: float
    known: int
    total: int
    sources: tuple[str, ...]
    cold_seconds: float = 0.0  # training the selected models that are not cached yet
    cold_models: int = 0
    overhead: float = 0.0
    cpu_seconds: float = 0.0  # the part that is CPU seconds of an idle machine, which load stretches

    def describe(self, load: float | None = None, cores: int | None = None) -> str:
        """`about 48 s (warm cache; from ...)`, `about 3 min for 60 of 64 tests (...)`, `no estimate yet (...)`;
        with `load` (the 1-minute load average) above the `cores`, the time that load leaves too."""
        if not self.known:
            return "no estimate yet (no earlier run of these tests; the next run has one)"
        total = self.seconds + self.cold_seconds + self.overhead
        amount = f"about {_duration(total)}"
        if self.known < self.total:
            amount += f" for {self.known} of {self.total} tests"
        trains = "demo model trains" if self.cold_models == 1 else "demo models train"
        cache = (f"cold cache: {self.cold_models} {trains} first, {_duration(self.cold_seconds)}"
                 if self.cold_models else "warm cache")
        text = f"{amount} ({cache}; from {' and '.join(self.sources)})"
        factor = load_factor(load, cores)
        if factor > 1 and self.cpu_seconds:
            loaded = total + self.cpu_seconds * (factor - 1)
            text += f"; load average {load:.1f} on {cores} cores now: expect about {_duration(loaded)}"
        return text


def load_factor(load: float | None, cores: int | None) -> float:
    """How much longer a single-threaded run takes under `load` on `cores` than alone: (load + 1) / cores, at least 1."""
    if load is None or not cores:
        return 1.0
    return max(1.0, (load + 1.0) / cores)


def current_load() -> tuple[float | None, int]:
    """The 1-minute load average (None where the system has none) and the number of CPU cores."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        load = None
    return load, os.cpu_count() or 1


def cold_models(entries: Iterable[Any], cache_dir: Path) -> list[str]:
    """The demo models among `entries` with no trained weights in the cache yet: they train on first use.

    Any cached version counts (the cache keeps one per model), so a changed recipe is not seen here."""
    folder = Path(cache_dir) / "weights" / "demo"
    return [e.id for e in entries if e.source_kind == "demo" and not any(folder.glob(f"{glob.escape(e.id)}-*.pt"))]


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
    """The packaged reference run (CPU seconds per demo test, per cold demo model, and outside the tests)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        return Durations({str(k): float(v) for k, v in doc["seconds"].items()}, doc["source"],
                         {str(k): float(v) for k, v in doc.get("cold_seconds", {}).items()},
                         float(doc.get("overhead_seconds", 0.0)), cpu=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_reference(results_path: Path, source: str, path: Path = REFERENCE, cold_results: Path | None = None,
                    process_cpu_s: float | None = None) -> Path:
    """Make the packaged reference from measured runs of `pytest benchmarks/ -k demo`: CPU seconds (setup
    and call) per row key of a warm run (`results_path`); per model, what its rows took more in a cold
    run (`cold_results`, an empty cache); and the warm run's CPU outside its tests (`process_cpu_s`, the
    process's user + sys seconds, minus the tests').

    `python3 -m pytest_securitynet.plugin.estimate WARM.json "SOURCE" [COLD.json WARM_PROCESS_CPU_S]`."""
    doc = load_results(results_path)
    seconds = {row_key(r): round(float(r["cpu_time_s"]), 2) for r in doc.get("results", []) if "cpu_time_s" in r}
    out: dict[str, Any] = {"source": source, "run": {k: doc["run"].get(k) for k in ("host", "platform", "argv",
                           "started_at", "versions")}, "seconds": dict(sorted(seconds.items()))}
    if cold_results is not None:
        warm = _per_model(doc)
        out["cold_seconds"] = {m: round(max(0.0, s - warm.get(m, 0.0)), 2)
                               for m, s in sorted(_per_model(load_results(cold_results)).items())}
    if process_cpu_s is not None:
        out["overhead_seconds"] = round(max(0.0, process_cpu_s - sum(seconds.values())), 2)
    Path(path).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return Path(path)


def _per_model(doc: dict[str, Any]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for r in doc.get("results", []):
        totals[r["model"]] = totals.get(r["model"], 0.0) + float(r.get("cpu_time_s") or 0.0)
    return totals


def estimate(keys: Iterable[str], sources: Iterable[Durations | None], cold: Iterable[str] = ()) -> Estimate:
    """Sum, over `keys`, the seconds of the first source that knows each key; plus, for each `cold`
    model, the training seconds of the first source that knows it, and the run's overhead."""
    sources = [s for s in sources if s is not None]
    keys = list(keys)
    total, known, used, cpu = 0.0, 0, [], 0.0
    for key in keys:
        for source in sources:
            if key in source.seconds:
                total += source.seconds[key]
                cpu += source.seconds[key] if source.cpu else 0.0
                known += 1
                if source.source not in used:
                    used.append(source.source)
                break
    cold_seconds, cold_count = 0.0, 0
    for model in cold:
        source = next((s for s in sources if model in s.cold), None)
        if source is not None:
            cold_seconds += source.cold[model]
            cpu += source.cold[model] if source.cpu else 0.0
            cold_count += 1
    overhead_source = next((s for s in sources if s.overhead), None) if known else None
    overhead = overhead_source.overhead if overhead_source else 0.0
    if overhead_source is not None and overhead_source.source not in used:
        used.append(overhead_source.source)  # the time outside the tests comes from it
    cpu += overhead if overhead_source is not None and overhead_source.cpu else 0.0
    return Estimate(total, known, len(keys), tuple(used), cold_seconds, cold_count, overhead, cpu)


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
    extra = sys.argv[3:5]
    print(write_reference(Path(sys.argv[1]), sys.argv[2], cold_results=Path(extra[0]) if extra else None,
                          process_cpu_s=float(extra[1]) if len(extra) > 1 else None))
