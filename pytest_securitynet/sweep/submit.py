"""Submit a sweep's shards through submitit and see it through: retries, continuation, one results file.

`run_sweep` plans the selection (or reads the plan a first run left in the sweep directory), then
submits every shard that is not done and not queued or running: on Slurm as one job array
(`--max-parallel` is the array's `%` limit), locally at most `--max-parallel` at a time, each with
its own GPUs taken from the ones this process sees, or in this process (`debug`). It polls the
shards' states, resubmits a failed shard up to `--retries` times, and when every shard has ended
merges the shards' results files into `results.json`. Run again with the same directory, it
continues: done shards stay done, a shard's own results file makes it skip what it passed.

A shard is submitted again only once the scheduler says its job has left the queue: a job Slurm
requeued is waited for, never duplicated. A job the sweep no longer wants (an older submission of
a shard, a requeued job of a shard that is done) is cancelled, and a sweep that waits returns only
once none of its jobs is left in the queue.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from filelock import FileLock, Timeout

from pytest_securitynet.results.journal import write_atomic
from pytest_securitynet.results.merge import merge_files
from pytest_securitynet.results.rows import now
from pytest_securitynet.sweep import slurm
from pytest_securitynet.sweep.options import EXECUTORS, SweepError, SweepOptions, resolve_gpus  # noqa: F401
from pytest_securitynet.sweep.plan import PLAN_FILE, Durations, Plan, collect, make_plan, plan_summary, read_plan, write_plan
from pytest_securitynet.sweep.status import (JobStates, ShardStatus, SweepFileError, read_submissions,
                                             record_submissions, shard_results, status_lines, sweep_status,
                                             unreadable_files)

log = logging.getLogger(__name__)

SETTINGS_FILE = "sweep.json"
MERGED_FILE = "results.json"
MAX_TIMEOUTS = 10
"""How many times submitit requeues a shard cut off by its time limit (a preemption does not count)."""
DONE_JOB_GRACE_S = 60.0
"""How long the job of a finished shard may stay in the queue (its process exiting) before it is cancelled."""
RESERVED_OPTIONS = ("--securitynet-json", "--securitynet-manifest", "--securitynet-collect-to")

Say = Callable[[str], None]


@dataclass
class SweepOutcome:
    """Where a sweep stands when `run_sweep` returns."""

    plan: Plan
    statuses: list[ShardStatus]
    submissions: int
    merged: Path | None = None
    conflicts: int = 0

    @property
    def complete(self) -> bool:
        return all(s.state == "done" for s in self.statuses)


def run_sweep(out: Path, pytest_args: Sequence[str], options: SweepOptions, cwd: Path | None = None,
              say: Say = log.info) -> SweepOutcome:
    """Plan (or continue) the sweep in `out` and run it; see the module docstring."""
    options.validate()
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise SweepError(f"--out {out}: a file, not a directory")
    if not options.plan_only:
        options = resolve_gpus(options)  # asks Slurm: fails here, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / "sweep.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SweepError(f"another `securitynet sweep` is working on {out}") from None
    try:
        executor = None if options.plan_only else make_executor(out, options)  # no Slurm: fail before collecting
        plan, settings = prepare(out, pytest_args, options, Path(cwd or os.getcwd()).resolve(), say)
        if executor is None:
            return SweepOutcome(plan, sweep_status(out, plan, lambda record: None), 0)
        return _drive(out, plan, settings, options, executor, say)
    finally:
        lock.release()


def prepare(out: Path, pytest_args: Sequence[str], options: SweepOptions, cwd: Path, say: Say) -> tuple[Plan, dict]:
    """The sweep's plan and settings: read back when `out` has them, else collected and written."""
    if (out / PLAN_FILE).exists():
        plan = read_plan(out)
        settings = read_settings(out)
        if pytest_args and list(pytest_args) != plan.pytest_args:
            raise SweepError(f"{out} holds a sweep of `{' '.join(plan.pytest_args)}`, not `{' '.join(pytest_args)}`: "
                             f"continue it without pytest arguments, or choose another --out")
        if options.shards is not None and options.shards != plan.requested_shards:
            raise SweepError(f"{out} holds a sweep planned for {plan.requested_shards} shards, not {options.shards}")
        say(f"continuing the sweep in {out}: {len(plan.shards)} shards, {plan.tests} tests")
        return plan, settings
    if not pytest_args:
        raise SweepError(f"{out} holds no sweep yet: give the selection after `--`, e.g. `-- benchmarks/ -k cifar10`")
    reserved = [a for a in pytest_args if a.split("=", 1)[0] in RESERVED_OPTIONS]
    if reserved:
        raise SweepError(f"{reserved[0]} is set by the sweep for each shard; leave it out")
    if options.shards is None:
        raise SweepError("a new sweep needs --shards N")
    say(f"collecting `pytest {' '.join(pytest_args)}` in {cwd}")
    tests = collect(pytest_args, cwd)
    durations = Durations.from_files(options.durations_from) if options.durations_from else None
    plan = make_plan(tests, options.shards, pytest_args, durations, [str(p) for p in options.durations_from])
    write_plan(plan, out)
    settings = {"cwd": str(cwd), "python": sys.executable, "created_at": now(), "host": socket.gethostname()}
    write_atomic(out / SETTINGS_FILE, (json.dumps(settings, indent=1) + "\n").encode("utf-8"))
    for line in plan_summary(plan):
        say(line)
    return plan, settings


def read_settings(out: Path) -> dict[str, Any]:
    """`sweep.json`: where and with which Python the sweep was planned."""
    path = out / SETTINGS_FILE
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(settings, dict) or "cwd" not in settings:
            raise ValueError("no `cwd`")
        return settings
    except (OSError, ValueError) as exc:
        raise SweepFileError(f"{path}: cannot read the sweep's settings ({exc})") from None


def slurm_parameters(out: Path, options: SweepOptions) -> dict[str, Any]:
    """The SlurmExecutor parameters of a sweep: one task per shard, the array limited to --max-parallel."""
    params: dict[str, Any] = {
        "job_name": f"securitynet-{out.name}", "time": options.time_min, "nodes": 1, "ntasks_per_node": 1,
        "array_parallelism": options.max_parallel, "signal_delay_s": options.signal_delay_s,
    }
    if options.gpus_per_shard:  # a number by now: options.resolve_gpus ran first
        params["gpus_per_node"] = int(options.gpus_per_shard)
    if options.cpus_per_shard:
        params["cpus_per_task"] = options.cpus_per_shard
    if options.mem_gb:
        params["mem"] = _mem(options.mem_gb)
    if options.partition:
        params["partition"] = options.partition
    if options.slurm_setup:
        params["setup"] = list(options.slurm_setup)
    if options.slurm_parameters:
        params["additional_parameters"] = dict(options.slurm_parameters)
    return params


def _mem(gb: float) -> str:
    return f"{int(gb)}GB" if gb == int(gb) else f"{int(gb * 1024)}MB"


def make_executor(out: Path, options: SweepOptions):
    """A submitit executor writing its pickles and logs under `out/submitit/<job id>/`."""
    try:
        import submitit
    except ImportError:
        raise SweepError("securitynet sweep needs submitit: pip install 'pytest-securitynet[slurm]'") from None
    folder = out / "submitit" / "%j"
    if options.executor == "slurm":
        try:
            executor = submitit.SlurmExecutor(folder, max_num_timeout=MAX_TIMEOUTS)
        except RuntimeError as exc:
            raise SweepError(f"--executor slurm: {exc} (use --executor local on one machine)") from None
        executor.update_parameters(**slurm_parameters(out, options))
    elif options.executor == "local":
        executor = submitit.LocalExecutor(folder, max_num_timeout=MAX_TIMEOUTS)
        # GPUs are handed to local shards by the sweep (ShardSpec.env), not by submitit, which
        # would number them from 0 whatever CUDA_VISIBLE_DEVICES this process inherited.
        executor.update_parameters(timeout_min=options.time_min, signal_delay_s=options.signal_delay_s,
                                   gpus_per_node=0, stderr_to_stdout=True)
    else:
        executor = submitit.DebugExecutor(folder)
    return executor


def local_slots(options: SweepOptions, devices: list[str]) -> list[str]:
    """One CUDA_VISIBLE_DEVICES value per local shard that may run at once.

    Each slot is `--gpus-per-shard` of the devices this process sees (so inherited ids are kept,
    never renumbered); with `--gpus-per-shard 0` shards run on the CPU."""
    size = int(options.gpus_per_shard)
    if not size:
        return [""] * options.max_parallel
    slots = [",".join(devices[i:i + size]) for i in range(0, len(devices) - size + 1, size)]
    if not slots:
        raise SweepError(f"--gpus-per-shard {size}: only {len(devices)} GPU(s) visible here")
    return slots[:options.max_parallel]


class _Driver:
    """The submission loop of one `run_sweep` call."""

    def __init__(self, out: Path, plan: Plan, settings: dict, options: SweepOptions, executor: Any, say: Say):
        self.out, self.plan, self.settings, self.options, self.say = out, plan, settings, options, say
        self.executor = executor
        self.attempts: dict[str, int] = {}  # submissions per shard in this call
        self.jobs: dict[str, Any] = {}  # shard -> submitit job of this call
        self.slots = []
        if options.executor == "local":
            from pytest_securitynet.sweep.options import visible_gpus  # imports torch: only here

            self.slots = local_slots(options, visible_gpus())
        self.held: dict[str, int] = {}  # shard -> index of the slot its local job holds
        self.submissions = 0
        self.records: list[dict[str, Any]] = []  # every submission of the sweep, this call's and earlier ones
        self.job_states: dict[str, str | None] = {}  # job id -> the scheduler's state, at the last look
        self.done_seen: dict[str, float] = {}  # job id of a finished shard -> when it was first seen still queued
        self.cancelled: set[str] = set()
        self.scheduler_error = ""

    def statuses(self) -> list[ShardStatus]:
        """Every shard's state, the scheduler asked once about every job the sweep has submitted."""
        for name, job in list(self.jobs.items()):
            if self.options.executor == "local" and job.done():  # reaps the finished controller
                self.held.pop(name, None)
        self.records = read_submissions(self.out)
        ask = JobStates(self.records)
        if ask.error and ask.error != self.scheduler_error:
            self.say(f"cannot ask Slurm about the jobs ({ask.error}); no shard is submitted again until it answers")
        self.scheduler_error = ask.error
        self.job_states = {str(r.get("job_id")): ask(r) for r in self.records}
        return sweep_status(self.out, self.plan, ask, self.records)

    def wanted(self, statuses: list[ShardStatus]) -> list[str]:
        """Shards to submit now: never submitted, or failed (the scheduler says their job has left the
        queue, or the shard said it failed) with retries left. A shard whose job is queued, running
        or requeued is never submitted again."""
        names = []
        for status in statuses:
            if status.job_alive or status.state in ("done", "running"):
                continue
            if status.state == "pending" and status.job_id:
                continue  # submitted, and the scheduler cannot be asked: wait
            if self.attempts.get(status.name, 0) > self.options.retries:
                continue
            names.append(status.name)
        return names

    def unwanted_jobs(self, statuses: list[ShardStatus]) -> list[str]:
        """Queued or running jobs the sweep no longer needs: older submissions of a shard (a newer
        one runs it), and the job of a finished shard once it has had time to exit (a requeued copy
        waiting in the queue goes at once)."""
        latest = {r["shard"]: str(r.get("job_id")) for r in self.records}
        done = {s.name for s in statuses if s.state == "done"}
        ids = []
        for record in self.records:
            job = str(record.get("job_id"))
            state = self.job_states.get(job)
            if record.get("executor") != "slurm" or state not in slurm.ALIVE or job in self.cancelled:
                continue
            if latest.get(record["shard"]) != job:
                ids.append(job)
            elif record["shard"] in done:
                first = self.done_seen.setdefault(job, time.monotonic())
                if state not in ("RUNNING", "COMPLETING") or time.monotonic() - first > DONE_JOB_GRACE_S:
                    ids.append(job)
        return ids

    def cancel(self, job_ids: list[str]) -> None:
        if not job_ids:
            return
        try:
            slurm.cancel(job_ids)
        except slurm.SlurmUnavailable as exc:
            self.say(f"could not cancel job(s) {', '.join(job_ids)} the sweep no longer needs: {exc}")
            return
        self.cancelled.update(job_ids)
        self.say(f"cancelled job(s) the sweep no longer needs: {', '.join(job_ids)}")

    def queued(self) -> list[str]:
        """The sweep's jobs the scheduler still holds (pending, running, requeued or completing)."""
        return [job for job, state in self.job_states.items() if state in slurm.ALIVE]

    def submit(self, names: list[str]) -> None:
        free = [i for i in range(len(self.slots)) if i not in self.held.values()]
        if self.options.executor == "local":
            names = names[:len(free)]
        if not names:
            return
        from pytest_securitynet.sweep.shard import ShardRun, ShardSpec

        runs = []
        for i, name in enumerate(names):
            env: dict[str, str | None] = {}
            if self.options.executor == "local":
                env["CUDA_VISIBLE_DEVICES"] = self.slots[free[i]]
                self.held[name] = free[i]
            spec = ShardSpec(out=str(self.out), name=name, pytest_args=self.plan.pytest_args, cwd=self.settings["cwd"],
                             python=self.settings.get("python", sys.executable), gpus=self.options.gpus_per_shard, env=env,
                             stop_grace_s=max(5.0, self.options.signal_delay_s / 2))
            runs.append(ShardRun(spec, raise_on_failure=self.options.executor != "debug"))
        jobs = self._submit_array(runs)
        stamp, ts = now(), time.time()
        record_submissions(self.out, [{"shard": name, "executor": self.options.executor, "job_id": str(job.job_id),
                                       "submitted_at": stamp, "submitted_ts": ts, "host": socket.gethostname(),
                                       "folder": str(self.executor.folder)} for name, job in zip(names, jobs)])
        for name, job in zip(names, jobs):
            self.attempts[name] = self.attempts.get(name, 0) + 1
            self.jobs[name] = job
        self.submissions += len(names)
        retried = [n for n in names if self.attempts[n] > 1]
        self.say(f"submitted {len(names)} shard(s) to {self.options.executor}"
                 + (f" ({len(retried)} retried: {', '.join(retried)})" if retried else "")
                 + f": job {jobs[0].job_id}" + (f" .. {jobs[-1].job_id}" if len(jobs) > 1 else ""))
        if self.options.executor == "debug":
            for job in jobs:
                job.results()  # runs the shard here and now

    def _submit_array(self, runs: list[Any]) -> list[Any]:
        """submitit's submit_array; a refused sbatch is one line, and leaves no pickle behind."""
        import submitit

        folder = self.out / "submitit"
        before = set(folder.glob("*")) if folder.exists() else set()
        try:
            return self.executor.submit_array(runs)
        except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError, OSError) as exc:
            for path in (set(folder.glob("*")) if folder.exists() else set()) - before:
                if path.is_file():
                    path.unlink(missing_ok=True)
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else type(exc).__name__)
            raise SweepError(f"the {self.options.executor} executor refused the shards: {reason}") from None

    def active(self, statuses: list[ShardStatus]) -> bool:
        """Whether anything of the sweep may still change: a shard running or queued, or a job of it left."""
        return bool(self.queued()) or any(s.state == "running" or (s.state == "pending" and s.job_id)
                                          for s in statuses)


def _drive(out: Path, plan: Plan, settings: dict, options: SweepOptions, executor: Any, say: Say) -> SweepOutcome:
    driver = _Driver(out, plan, settings, options, executor, say)
    poll = options.poll_s if options.poll_s is not None else (30.0 if options.executor == "slurm" else 1.0)
    last = ""
    while True:
        statuses = driver.statuses()
        unreadable = unreadable_files(statuses)
        if unreadable:
            raise SweepError(unreadable[0] + ("" if len(unreadable) == 1 else f" (and {len(unreadable) - 1} more)"))
        driver.cancel(driver.unwanted_jobs(statuses))
        wanted = driver.wanted(statuses)
        if wanted:
            driver.submit(wanted)
            statuses = driver.statuses()
        summary = status_lines(statuses)[-1]
        if summary != last:
            say(summary)
            last = summary
        if not driver.active(statuses) and not driver.wanted(statuses):
            break  # every shard has ended: merge
        if not options.wait:
            return SweepOutcome(plan, statuses, driver.submissions)
        time.sleep(poll)
    outcome = SweepOutcome(plan, statuses, driver.submissions)
    merged = merge_shards(out, plan)
    if merged is not None:
        outcome.merged, outcome.conflicts = merged
    for status in statuses:
        if status.state == "failed":
            say(f"{status.name} failed after {driver.attempts.get(status.name, 0)} submission(s): {status.detail}")
    return outcome


def merge_shards(out: Path, plan: Plan) -> tuple[Path, int] | None:
    """Merge the shards' results into `out/results.json`; returns it and the number of conflicts."""
    files = shard_results(out, plan)
    if not files:
        return None
    merged = merge_files(files, out / MERGED_FILE)
    return out / MERGED_FILE, len(merged.conflicts)

