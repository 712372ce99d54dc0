"""Where a sweep stands, read from its directory at any time: one state per shard, and its rows.

A sweep directory holds `plan.json`, one manifest per shard, `jobs.json` (every submission: shard,
executor, job id, when), and per shard the state file its job writes (`shard-017.state.json`:
running, requeued, done or failed, with host, job id and pytest's exit status) and its results file.

One rule decides a shard's state, wherever it runs: the scheduler is asked about the shard's latest
job (squeue on Slurm; for a local job, its controller process on the submitting host), and the
state file says how far the job got. A shard is *done* once pytest ended with a result (exit 0, 1
or 5); *running* while its job runs pytest; *pending* while its job waits in the queue, including a
job Slurm requeued (preemption, `scontrol requeue`, a time limit); and *failed* when pytest ended
with a status that is not a result, or its job has left the queue without the shard saying it
finished. A shard whose job is still queued or running is never failed, so it is never submitted twice.
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
from pytest_securitynet.sweep import slurm
from pytest_securitynet.sweep.plan import PLAN_FILE, Plan, PlanError, ShardPlan, read_plan

JOBS_FILE = "jobs.json"
STATES = ("pending", "running", "done", "failed")

JobState = Callable[[dict[str, Any]], "str | None"]
"""A submission's job as its scheduler sees it: a Slurm state name (`PENDING`, `RUNNING`, ...),
`slurm.GONE` once it has left the queue, or None when the scheduler cannot be asked from here."""


class SweepFileError(PlanError):
    """A file of the sweep directory cannot be read (the message names it and what to do)."""


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
    job_state: str | None = None  # the scheduler's word on the latest job; None where it cannot be asked
    unreadable: str = ""  # why the shard's results file cannot be read, naming it

    @property
    def job_alive(self) -> bool:
        """Whether the latest job is still queued, running or requeued (then it is never resubmitted)."""
        return self.job_state in slurm.ALIVE


def read_state(path: Path) -> dict[str, Any] | None:
    """A shard's state file, or None when it has not started. It is written atomically, so a file
    that is not JSON was damaged: SweepFileError names it (removing it lets the shard run again)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SweepFileError(f"{path}: cannot read the shard's state ({exc.strerror or exc})") from None
    try:
        state = json.loads(text)
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
        return state
    except ValueError as exc:
        raise SweepFileError(f"{path}: not a shard state file ({exc}); remove it and the shard runs again") from None


def read_submissions(out: Path) -> list[dict[str, Any]]:
    """Every submission recorded in `jobs.json`, oldest first."""
    path = Path(out) / JOBS_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        submissions = doc["submissions"]
        if not isinstance(submissions, list) or not all(isinstance(r, dict) and "shard" in r for r in submissions):
            raise ValueError("`submissions` is not a list of submissions")
        return submissions
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SweepFileError(f"{path}: cannot read the sweep's submissions ({exc}); "
                             f"check that no job of the sweep is still queued, then remove it") from None


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


def local_job_state(record: dict[str, Any]) -> str | None:
    """A local job's state: its submitit controller (the job id is its pid) on the submitting host
    is this executor's scheduler. A debug job ran inside the sweep command, so it has ended."""
    if record.get("executor") == "local" and str(record.get("job_id", "")).isdigit():
        alive = process_alive(record.get("host"), int(record["job_id"]))
        return None if alive is None else ("RUNNING" if alive else slurm.GONE)
    if record.get("executor") == "debug":
        return slurm.GONE
    return None


class JobStates:
    """The scheduler's state of every job in `records`, asked once (one squeue call for Slurm)."""

    def __init__(self, records: Iterable[dict[str, Any]]):
        self.slurm: dict[str, str] | None = {}
        self.error = ""
        ids = [str(r["job_id"]) for r in records if r.get("executor") == "slurm" and r.get("job_id")]
        if ids:
            try:
                self.slurm = slurm.job_states(ids)
            except slurm.SlurmUnavailable as exc:
                self.slurm, self.error = None, str(exc)

    def __call__(self, record: dict[str, Any]) -> str | None:
        if record.get("executor") != "slurm":
            return local_job_state(record)
        if self.slurm is None:
            return None
        return self.slurm.get(str(record.get("job_id")))


def _belongs_to(state: dict[str, Any], submission: dict[str, Any]) -> bool:
    """Whether the state file was written by the submission's job (or a later start of it)."""
    if state.get("job_id") and submission.get("job_id"):
        return str(state["job_id"]) == str(submission["job_id"])
    # Without job ids (the debug executor), by time: a submission after the state's last start or
    # end is a job that has not started yet.
    return float(submission.get("submitted_ts", 0)) <= float(state.get("ended_ts") or state.get("started_ts") or 0)


def shard_status(out: Path, shard: ShardPlan, submission: dict[str, Any] | None,
                 state: dict[str, Any] | None, job_state: str | None) -> ShardStatus:
    """The state of one shard from its latest submission, its job's state and its state file."""
    status = ShardStatus(name=shard.name, state="pending", tests=len(shard.nodeids), models=len(shard.models),
                         expected_seconds=shard.seconds)
    try:
        status.rows, status.passed = count_rows(Path(out) / f"{shard.name}.json")
    except ValueError as exc:
        status.unreadable = str(exc)
    if submission is not None:
        status.job_id, status.job_state = str(submission.get("job_id")), job_state
    own = state is not None and (submission is None or _belongs_to(state, submission))
    if state is not None:
        status.starts = int(state.get("starts", 0))
    if own:
        status.host, status.exit_code = state.get("host"), state.get("exit_code")
        status.job_id = state.get("job_id") or status.job_id
    if state is not None and state.get("state") == "done":  # a result is final, whichever job wrote it
        status.state = "done"
        status.detail = "" if state.get("exit_code") == 0 else _exit_detail(state.get("exit_code"))
        return _unreadable(status)
    kind = state.get("state") if own else None
    alive = None if job_state is None else job_state in slurm.ALIVE
    on = f" (job {job_state})" if job_state and job_state != slurm.GONE else ""
    if alive:  # the scheduler holds the job: it runs or will run (again)
        if kind == "running" and job_state in ("RUNNING", "COMPLETING"):
            status.state = "running"
        elif kind == "failed" and job_state in ("RUNNING", "COMPLETING"):
            status.state, status.detail = "failed", f"{state.get('reason') or 'failed'}; its job is ending"
        else:
            status.detail = ("requeued" if kind in ("requeued", "running", "failed") else "queued") + on
        return _unreadable(status)
    if kind == "failed":
        status.state, status.detail = "failed", state.get("reason") or "failed"
    elif alive is None:  # the scheduler cannot be asked here: the state file is all there is
        if kind == "running":
            status.state, status.detail = "running", "job state unknown here"
        elif submission is not None:
            status.detail = "requeued" if kind == "requeued" else "submitted"
    elif kind == "running":
        status.state, status.detail = "failed", "the job ended while the shard ran (killed or lost)" + on
    elif kind == "requeued":
        status.state, status.detail = "failed", "the requeued job ended before it ran again" + on
    elif submission is not None:
        status.state, status.detail = "failed", "the job ended before pytest started" + on
    elif state is not None:  # a state file with no submission on record
        status.state, status.detail = "failed", "its job is not on record"
    return _unreadable(status)


def _unreadable(status: ShardStatus) -> ShardStatus:
    if status.unreadable:
        status.state, status.detail = "failed", status.unreadable
    return status


def _exit_detail(code: Any) -> str:
    return {1: "some tests failed", 5: "nothing left to run"}.get(code, f"exit {code}")


_counted: dict[Path, tuple[tuple, tuple[int, int]]] = {}
"""Per results file: the sizes and times of it and its journal when last counted, and the counts."""


def count_rows(results: Path) -> tuple[int, int]:
    """Rows and passed rows in a shard's results file and journal (0, 0 when there is none yet);
    ValueError, naming the file, when it cannot be read.

    A sweep polls every few seconds; a shard whose files have not changed since is not read again."""
    results = Path(results)
    stamp = tuple(_stamp(p) for p in (results, journal_path(results)))
    known = _counted.get(results)
    if known is not None and known[0] == stamp:
        return known[1]
    if not results_exist(results):
        return 0, 0
    try:
        rows = load_results(results)["results"]
    except (OSError, ValueError) as exc:
        reason = str(exc) if str(results) in str(exc) else f"{results}: {exc}"
        raise ValueError(f"unreadable results: {reason}") from None
    counts = len(rows), sum(1 for r in rows if r.get("outcome") == PASSED)
    _counted[results] = (stamp, counts)
    return counts


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def sweep_status(out: Path, plan: Plan, job_state: JobState | None = None,
                 submissions: list[dict[str, Any]] | None = None) -> list[ShardStatus]:
    """Every shard's status, in plan order. `job_state` defaults to asking the scheduler (JobStates);
    `submissions` to reading them from `out` (a caller that has just read them passes them on)."""
    if submissions is None:
        submissions = read_submissions(out)
    latest = {r["shard"]: r for r in submissions}
    job_state = job_state or JobStates(latest.values())
    statuses = []
    for shard in plan.shards:
        submission = latest.get(shard.name)
        problem = ""
        try:
            state = read_state(Path(out) / f"{shard.name}.state.json")
        except SweepFileError as exc:
            state, problem = None, str(exc)
        status = shard_status(out, shard, submission, state, job_state(submission) if submission else None)
        if problem and not status.unreadable:
            status.unreadable = problem
        statuses.append(_unreadable(status))
    return statuses


def unreadable_files(statuses: Iterable[ShardStatus]) -> list[str]:
    """One line per shard whose results or state file cannot be read, naming the file."""
    return [s.unreadable for s in statuses if s.unreadable]


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
