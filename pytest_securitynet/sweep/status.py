"""Where a sweep stands, read from its directory at any time: one state per shard, and its rows.

A sweep directory holds `plan.json`, one manifest per shard, `jobs.json` (every submission: shard,
executor, job id, when), and per shard the state file its job writes (`shard-017.state.json`:
running, requeued, done or failed, with host, pid and pytest's exit status) and its results file.
A shard is *pending* until its job starts pytest (and while a requeued job waits), *running* while
it does, *done* when pytest ended with a result (exit 0, 1 or 5) and *failed* otherwise, or when
its process or job is gone without saying how it ended (a killed process, a lost node).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from pytest_securitynet.results.journal import journal_path, write_atomic
from pytest_securitynet.results.rows import PASSED, load_results, results_exist
from pytest_securitynet.sweep.plan import PLAN_FILE, Plan, PlanError, ShardPlan, read_plan

JOBS_FILE = "jobs.json"
STATES = ("pending", "running", "done", "failed")
SLURM_ALIVE = {"READY", "PENDING", "RUNNING", "REQUEUED", "COMPLETING", "PREEMPTED", "CONFIGURING", "SUSPENDED",
               "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED", "STAGE_OUT", "SIGNALING"}

Liveness = Callable[[dict[str, Any]], bool | None]
"""Whether a submission's job still exists (queued or running): True, False, or None for unknown."""


@dataclass
class ShardStatus:
    """One shard's state and progress."""

    name: str
    state: str
    tests: int
    models: int
    expected_seconds: float
    rows: int = 0
    passed: int = 0
    job_id: str | None = None
    host: str | None = None
    exit_code: int | None = None
    starts: int = 0
    detail: str = ""


def read_state(path: Path) -> dict[str, Any] | None:
    """A shard's state file, or None when it has not started (or the file is being replaced)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def read_submissions(out: Path) -> list[dict[str, Any]]:
    """Every submission recorded in `jobs.json`, oldest first."""
    path = Path(out) / JOBS_FILE
    if not path.exists():
        return []
    return list(json.loads(path.read_text(encoding="utf-8")).get("submissions", []))


def record_submissions(out: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append submissions to `jobs.json` (rewritten atomically; one sweep process writes it)."""
    submissions = read_submissions(out) + list(records)
    write_atomic(Path(out) / JOBS_FILE, (json.dumps({"submissions": submissions}, indent=1) + "\n").encode("utf-8"))


def process_alive(host: str | None, pid: int | None) -> bool | None:
    """Whether process `pid` on `host` still runs; None when it is on another host (cannot tell)."""
    if not host or not pid or host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has ended; only its parent has not reaped it yet
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def local_liveness(record: dict[str, Any]) -> bool | None:
    """A local or debug job: its controller process (the job id is its pid) on the submitting host."""
    if record.get("executor") == "local" and str(record.get("job_id", "")).isdigit():
        return process_alive(record.get("host"), int(record["job_id"]))
    if record.get("executor") == "debug":
        return False  # it ran inside the sweep command, which has returned or is asking now
    return None


class SlurmLiveness:
    """Slurm jobs' states through submitit's sacct watcher, one sacct call per refresh."""

    def __init__(self, records: Iterable[dict[str, Any]]):
        self.states: dict[str, str] = {}
        slurm = [r for r in records if r.get("executor") == "slurm" and r.get("job_id")]
        if not slurm:
            return
        try:
            import submitit
        except ImportError:
            return
        jobs = [submitit.SlurmJob(folder=r.get("folder", "."), job_id=str(r["job_id"])) for r in slurm]
        submitit.SlurmJob.watcher.update()
        for job in jobs:
            state = submitit.SlurmJob.watcher.get_state(job.job_id, mode="cache")
            self.states[job.job_id] = (state or "UNKNOWN").split()[0].upper()

    def __call__(self, record: dict[str, Any]) -> bool | None:
        if record.get("executor") != "slurm":
            return local_liveness(record)
        state = self.states.get(str(record.get("job_id")), "UNKNOWN")
        if state == "UNKNOWN":
            return None
        return state in SLURM_ALIVE


def shard_status(out: Path, shard: ShardPlan, submission: dict[str, Any] | None,
                 state: dict[str, Any] | None, alive: Liveness) -> ShardStatus:
    """The state of one shard from its latest submission, its state file and its job's liveness."""
    status = ShardStatus(name=shard.name, state="pending", tests=len(shard.nodeids), models=len(shard.models),
                         expected_seconds=shard.seconds)
    status.rows, status.passed = count_rows(Path(out) / f"{shard.name}.json")
    if submission is not None:
        status.job_id = str(submission.get("job_id"))
    # A submission after the state file's last start or end is a retry whose job has not started yet.
    resubmitted = (submission is not None and state is not None
                   and float(submission.get("submitted_ts", 0)) > float(state.get("ended_ts") or state.get("started_ts") or 0))
    if state is not None:
        status.starts = int(state.get("starts", 0))
        if not resubmitted:
            status.host, status.exit_code = state.get("host"), state.get("exit_code")
            status.job_id = state.get("job_id") or status.job_id
    if state is None or resubmitted:
        if submission is None:
            return status
        job = alive(submission)
        if job is False:
            status.state, status.detail = "failed", "the job ended before pytest started"
        else:
            status.detail = "queued" if job else "submitted"
        return status
    kind = state.get("state")
    if kind == "done":
        status.state = "done"
        status.detail = "" if state.get("exit_code") == 0 else _exit_detail(state.get("exit_code"))
        return status
    if kind == "failed":
        status.state, status.detail = "failed", state.get("reason") or "failed"
        return status
    process = process_alive(state.get("host"), state.get("pid"))
    job = alive(submission) if submission is not None else None
    if process is False or (process is None and job is False):
        status.state = "failed"
        status.detail = "the shard's process is gone" if kind == "running" else "the requeued job is gone"
        return status
    status.state = "running" if kind == "running" else "pending"
    status.detail = "" if kind == "running" else "requeued"
    return status


def _exit_detail(code: Any) -> str:
    return {1: "some tests failed", 5: "nothing left to run"}.get(code, f"exit {code}")


_counted: dict[Path, tuple[tuple, tuple[int, int]]] = {}
"""Per results file: the sizes and times of it and its journal when last counted, and the counts."""


def count_rows(results: Path) -> tuple[int, int]:
    """Rows and passed rows in a shard's results file and journal (0, 0 when there is none yet).

    A sweep polls every few seconds; a shard whose files have not changed since is not read again."""
    results = Path(results)
    stamp = tuple(_stamp(p) for p in (results, journal_path(results)))
    known = _counted.get(results)
    if known is not None and known[0] == stamp:
        return known[1]
    try:
        rows = load_results(results)["results"]
    except (OSError, ValueError):
        return 0, 0
    counts = len(rows), sum(1 for r in rows if r.get("outcome") == PASSED)
    _counted[results] = (stamp, counts)
    return counts


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def sweep_status(out: Path, plan: Plan, alive: Liveness | None = None) -> list[ShardStatus]:
    """Every shard's status, in plan order."""
    submissions = read_submissions(out)
    latest = {r["shard"]: r for r in submissions}
    alive = alive or SlurmLiveness(latest.values())
    return [shard_status(out, shard, latest.get(shard.name), read_state(Path(out) / f"{shard.name}.state.json"), alive)
            for shard in plan.shards]


def status_lines(statuses: list[ShardStatus]) -> list[str]:
    """A table of the shards and a line of totals, as `securitynet sweep status` prints them."""
    width = max([len(s.name) for s in statuses] + [5])
    lines = [f"{'shard':{width}}  {'state':8} {'rows':>11}  {'passed':>6}  {'models':>6}  {'expected':>8}  job / detail"]
    for s in statuses:
        job = f"{s.job_id or '-'}" + (f" on {s.host}" if s.host else "")
        extra = f"; {s.detail}" if s.detail else ""
        lines.append(f"{s.name:{width}}  {s.state:8} {s.rows:>5}/{s.tests:<5}  {s.passed:>6}  {s.models:>6}  "
                     f"{s.expected_seconds / 60:>6.1f} m  {job}{extra}")
    counts = {state: sum(1 for s in statuses if s.state == state) for state in STATES}
    rows, tests = sum(s.rows for s in statuses), sum(s.tests for s in statuses)
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()) + f"; {rows} of {tests} rows written")
    return lines



def shard_results(out: Path, plan: Plan) -> list[Path]:
    """The results files the shards have written so far (or their journals), in plan order."""
    return [Path(out) / f"{s.name}.json" for s in plan.shards if results_exist(Path(out) / f"{s.name}.json")]


def sweep_results(out: Path) -> list[Path]:
    """The shards' results files of the sweep directory `out` (`securitynet merge DIR`)."""
    if not (Path(out) / PLAN_FILE).exists():
        raise PlanError(f"{out}: not a sweep directory (no {PLAN_FILE})")
    files = shard_results(out, read_plan(Path(out)))
    if not files:
        raise PlanError(f"{out}: no shard has written results yet")
    return files
