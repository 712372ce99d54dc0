"""Plan a sweep: collect the selection once, group its tests by model, cut the groups into shards.

A model never spans shards (its weights, data and posteriors are loaded once per process). Groups
go to shards by expected cost, longest first, each to the shard with the least so far (LPT), ties
broken by model id and shard number, so the same selection and shard count give the same plan on
any machine. Costs come from a previous results file when one is given (a row's `wall_time_s` +
`setup_time_s`; a test without a row costs its benchmark's median there), else from
`DEFAULT_SECONDS`.
"""

from __future__ import annotations

import heapq
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from pytest_securitynet.errors import SecurityNetError
from pytest_securitynet.results.journal import write_atomic
from pytest_securitynet.results.rows import load_results, row_key

PLUGIN = "pytest_securitynet.plugin.manifest"
"""The pytest plugin (`-p`) that records a collection for the planner and runs a shard's manifest."""
PLAN_SCHEMA = "securitynet-sweep-plan/1"
PLAN_FILE = "plan.json"

DEFAULT_SECONDS: dict[str, float] = {
    "backdoor_detection": 14.0,
    "evasion": 11.0,
    "membership_inference": 3.0,
    "model_stealing": 15.0,
    "task_performance": 5.0,
}
"""Planning weights per test of each benchmark file, in seconds on one H200. Backdoor detection and
evasion are per-test means of the 2026-11-28 H200 profile (shared/measurements/2026-11-28-h200.md:
Neural Cleanse 27 s, STRIP 0.6 s, NEO 13 s; FGSM about 1 s, transfer 25 s once, PGD-10 6.5 s,
PGD-50 27 s); the other three were not reached there and are guesses, chosen so that a CIFAR-10
model's 32 tests add up to the profile's estimate of about 5 minutes per model. Only their ratios
shape a plan; pass a previous results file (`--durations-from`) for measured costs."""
FALLBACK_SECONDS = 10.0
"""The weight of a test of a benchmark file not in `DEFAULT_SECONDS` (a user's own attack)."""
NO_MODEL = "(no model)"
"""The group of collected tests that are not parametrized with a catalog model."""


def write_manifest(path: Path, nodeids: list[str]) -> None:
    """A shard's manifest: its node ids, one a line."""
    bad = [n for n in nodeids if "\n" in n]
    if bad:
        raise PlanError(f"a test id with a line break cannot go in a manifest: {bad[0]!r}")
    Path(path).write_text("".join(f"{n}\n" for n in nodeids), encoding="utf-8")


def read_manifest(path: Path) -> list[str]:
    """The node ids a manifest lists, in order."""
    return [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


class PlanError(SecurityNetError):
    """The selection cannot be planned: collection failed, found nothing, or the plan is unreadable."""


@dataclass(frozen=True)
class CollectedTest:
    """One test of the selection, as the planner's collection recorded it."""

    nodeid: str
    model: str | None
    benchmark: str
    setting: str

    @property
    def key(self) -> str:
        return row_key({"model": self.model or NO_MODEL, "benchmark": self.benchmark, "setting": self.setting})


@dataclass
class ModelGroup:
    """A model's tests: the unit a shard gets."""

    model: str
    nodeids: list[str]
    seconds: float


@dataclass
class ShardPlan:
    """What one shard runs: its models' tests, and how long that is expected to take."""

    index: int
    name: str
    models: list[str] = field(default_factory=list)
    nodeids: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Plan:
    """The shards of a sweep, with the pytest arguments that select its tests."""

    pytest_args: list[str]
    requested_shards: int
    shards: list[ShardPlan]
    durations_from: list[str] = field(default_factory=list)

    @property
    def tests(self) -> int:
        return sum(len(s.nodeids) for s in self.shards)

    def shard(self, name: str) -> ShardPlan:
        for shard in self.shards:
            if shard.name == name:
                return shard
        raise PlanError(f"the plan has no shard {name!r}")


def collect(pytest_args: Sequence[str], cwd: Path, python: str = sys.executable,
            env: dict[str, str] | None = None) -> list[CollectedTest]:
    """The tests `pytest <pytest_args>` selects, collected once in a subprocess (`--collect-only`)."""
    with tempfile.TemporaryDirectory(prefix="securitynet-plan-") as tmp:
        target = Path(tmp) / "collected.json"
        cmd = [python, "-m", "pytest", "--collect-only", "-q", "-p", PLUGIN,
               f"--securitynet-collect-to={target}", *pytest_args]
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        if proc.returncode == 5 or (proc.returncode == 0 and not target.exists()):
            raise PlanError(f"the selection {' '.join(pytest_args)!r} collected no test")
        if proc.returncode != 0 or not target.exists():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise PlanError(f"collecting {' '.join(pytest_args)!r} failed (pytest exit {proc.returncode}):\n{tail}")
        records = json.loads(target.read_text(encoding="utf-8"))
    tests = [CollectedTest(r["nodeid"], r["model"], r["benchmark"], r["setting"]) for r in records]
    if not tests:
        raise PlanError(f"the selection {' '.join(pytest_args)!r} collected no test")
    return tests


class Durations:
    """Seconds per row key from earlier results files, with each benchmark's median for the rest."""

    def __init__(self, rows: Iterable[dict[str, Any]] = ()):
        self.by_key: dict[str, float] = {}
        per_benchmark: dict[str, list[float]] = {}
        for row in rows:
            seconds = float(row.get("wall_time_s") or 0.0) + float(row.get("setup_time_s") or 0.0)
            if seconds <= 0.0:
                continue  # skipped and crashed rows say nothing about a test's cost
            self.by_key[row_key(row)] = seconds
            per_benchmark.setdefault(row["benchmark"], []).append(seconds)
        self.by_benchmark = {b: statistics.median(s) for b, s in per_benchmark.items()}

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> "Durations":
        rows: list[dict[str, Any]] = []
        for path in paths:
            try:
                rows.extend(load_results(Path(path))["results"])
            except (OSError, ValueError) as exc:
                raise PlanError(f"--durations-from: cannot read {path}: {exc}") from None
        return cls(rows)

    def seconds(self, test: CollectedTest) -> float:
        if test.key in self.by_key:
            return self.by_key[test.key]
        if test.benchmark in self.by_benchmark:
            return self.by_benchmark[test.benchmark]
        return DEFAULT_SECONDS.get(test.benchmark.partition(".")[0], FALLBACK_SECONDS)


def group_by_model(tests: Iterable[CollectedTest], durations: Durations) -> list[ModelGroup]:
    """One group per model (tests without a model form one group), node ids sorted."""
    groups: dict[str, ModelGroup] = {}
    for test in tests:
        model = test.model or NO_MODEL
        group = groups.setdefault(model, ModelGroup(model, [], 0.0))
        group.nodeids.append(test.nodeid)
        group.seconds += durations.seconds(test)
    for group in groups.values():
        group.nodeids.sort()
    return sorted(groups.values(), key=lambda g: g.model)


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:0{max(3, len(str(count - 1)))}d}"


def assign(groups: Sequence[ModelGroup], shards: int) -> list[ShardPlan]:
    """Longest processing time first: each group, costliest first, to the least loaded shard.

    Ties go to the smaller model id and the lower shard number. Never more shards than groups."""
    if shards < 1:
        raise PlanError(f"a sweep needs at least one shard, not {shards}")
    count = min(shards, len(groups))
    plans = [ShardPlan(i, shard_name(i, count)) for i in range(count)]
    heap = [(0.0, i) for i in range(count)]
    for group in sorted(groups, key=lambda g: (-g.seconds, g.model)):
        load, index = heapq.heappop(heap)
        shard = plans[index]
        shard.models.append(group.model)
        shard.nodeids.extend(group.nodeids)
        shard.seconds += group.seconds
        heapq.heappush(heap, (shard.seconds, index))
    return plans


def make_plan(tests: Sequence[CollectedTest], shards: int, pytest_args: Sequence[str],
              durations: Durations | None = None, durations_from: Sequence[str] = ()) -> Plan:
    groups = group_by_model(tests, durations or Durations())
    return Plan(pytest_args=list(pytest_args), requested_shards=shards, shards=assign(groups, shards),
                durations_from=[str(p) for p in durations_from])


def write_plan(plan: Plan, out: Path) -> Path:
    """`plan.json` and one manifest per shard (`shard-017.txt`) in `out`; returns the plan file."""
    out.mkdir(parents=True, exist_ok=True)
    for shard in plan.shards:
        write_manifest(out / f"{shard.name}.txt", shard.nodeids)
    doc = {
        "schema": PLAN_SCHEMA,
        "pytest_args": plan.pytest_args,
        "requested_shards": plan.requested_shards,
        "durations_from": plan.durations_from,
        "default_seconds": DEFAULT_SECONDS,
        "tests": plan.tests,
        "models": sum(len(s.models) for s in plan.shards),
        "expected_seconds": round(sum(s.seconds for s in plan.shards), 3),
        "shards": [{"name": s.name, "models": s.models, "tests": len(s.nodeids), "expected_seconds": round(s.seconds, 3)}
                   for s in plan.shards],
    }
    path = out / PLAN_FILE
    write_atomic(path, (json.dumps(doc, indent=1) + "\n").encode("utf-8"))
    return path


def read_plan(out: Path) -> Plan:
    """The plan of the sweep in `out`, with each shard's node ids read back from its manifest."""
    path = out / PLAN_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanError(f"{path}: cannot read the sweep's plan ({exc})") from None
    if doc.get("schema") != PLAN_SCHEMA:
        raise PlanError(f"{path}: not a {PLAN_SCHEMA} file")
    shards = []
    for index, s in enumerate(doc["shards"]):
        manifest = out / f"{s['name']}.txt"
        try:
            nodeids = read_manifest(manifest)
        except OSError as exc:
            raise PlanError(f"{manifest}: cannot read the shard's manifest ({exc})") from None
        shards.append(ShardPlan(index, s["name"], list(s["models"]), nodeids, float(s["expected_seconds"])))
    return Plan(pytest_args=list(doc["pytest_args"]), requested_shards=int(doc["requested_shards"]),
                shards=shards, durations_from=list(doc.get("durations_from", [])))


def plan_summary(plan: Plan) -> list[str]:
    """Lines describing a plan: totals, then the costliest and cheapest shards."""
    if not plan.shards:
        return ["empty plan"]
    loads = [s.seconds for s in plan.shards]
    lines = [f"{plan.tests} tests of {sum(len(s.models) for s in plan.shards)} models in {len(plan.shards)} shards "
             f"(asked for {plan.requested_shards}); expected {sum(loads) / 3600:.2f} h in all, "
             f"longest shard {max(loads) / 60:.1f} min, shortest {min(loads) / 60:.1f} min"]
    source = ", ".join(plan.durations_from) if plan.durations_from else "per-benchmark defaults"
    lines.append(f"costs from {source}")
    return lines

