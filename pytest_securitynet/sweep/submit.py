"""Submit a sweep's shards through submitit and see it through: retries, continuation, one results file.

`run_sweep` plans the selection (or reads the plan a first run left in the sweep directory), then
submits every shard that is not done and not queued or running: on Slurm as one job array
(`--max-parallel` is the array's `%` limit), locally at most `--max-parallel` at a time, each with
its own GPUs taken from the ones this process sees, or in this process (`debug`). It polls the
shards' states, resubmits a failed shard up to `--retries` times, and when every shard has ended
merges the shards' results files into `results.json`. Run again with the same directory, it
continues: done shards stay done, a shard's own results file makes it skip what it passed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from filelock import FileLock, Timeout

from pytest_securitynet.errors import SecurityNetError
from pytest_securitynet.results.journal import write_atomic
from pytest_securitynet.results.merge import merge_files
from pytest_securitynet.results.rows import now
from pytest_securitynet.sweep.plan import PLAN_FILE, Durations, Plan, collect, make_plan, plan_summary, read_plan, write_plan
from pytest_securitynet.sweep.status import (ShardStatus, SlurmLiveness, local_liveness, read_submissions,
                                             record_submissions, shard_results, status_lines, sweep_status)

log = logging.getLogger(__name__)

EXECUTORS = ("slurm", "local", "debug")
SETTINGS_FILE = "sweep.json"
MERGED_FILE = "results.json"
MAX_TIMEOUTS = 10
"""How many times submitit requeues a shard cut off by its time limit (a preemption does not count)."""
RESERVED_OPTIONS = ("--securitynet-json", "--securitynet-manifest", "--securitynet-collect-to")

Say = Callable[[str], None]


class SweepError(SecurityNetError):
    """A sweep cannot start or continue (bad arguments, a busy or mismatched sweep directory)."""


@dataclass
class SweepOptions:
    """How to run the shards (the plan itself depends only on the selection, shards and durations)."""

    executor: str = "slurm"
    shards: int | None = None
    gpus_per_shard: int = 1
    cpus_per_shard: int | None = None
    mem_gb: float | None = None
    partition: str | None = None
    time_min: int = 240
    max_parallel: int = 16
    retries: int = 2
    signal_delay_s: int = 120
    slurm_setup: list[str] = field(default_factory=list)
    slurm_parameters: dict[str, str] = field(default_factory=dict)
    durations_from: list[Path] = field(default_factory=list)
    wait: bool = True
    plan_only: bool = False  # write the plan and stop (nothing is submitted)
    poll_s: float | None = None  # default: 30 s on Slurm, 1 s otherwise


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
    if options.executor not in EXECUTORS:
        raise SweepError(f"unknown executor {options.executor!r}: use one of {', '.join(EXECUTORS)}")
    out = Path(out).resolve()
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
            return SweepOutcome(plan, sweep_status(out, plan, local_liveness), 0)
        return _drive(out, plan, settings, options, executor, say)
    finally:
        lock.release()


def prepare(out: Path, pytest_args: Sequence[str], options: SweepOptions, cwd: Path, say: Say) -> tuple[Plan, dict]:
    """The sweep's plan and settings: read back when `out` has them, else collected and written."""
    if (out / PLAN_FILE).exists():
        plan = read_plan(out)
        settings = json.loads((out / SETTINGS_FILE).read_text(encoding="utf-8"))
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


def slurm_parameters(out: Path, options: SweepOptions) -> dict[str, Any]:
    """The SlurmExecutor parameters of a sweep: one task per shard, the array limited to --max-parallel."""
    params: dict[str, Any] = {
        "job_name": f"securitynet-{out.name}", "time": options.time_min, "nodes": 1, "ntasks_per_node": 1,
        "array_parallelism": options.max_parallel, "signal_delay_s": options.signal_delay_s,
    }
    if options.gpus_per_shard:
        params["gpus_per_node"] = options.gpus_per_shard
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
    never renumbered); without GPUs, or with `--gpus-per-shard 0`, shards run on the CPU."""
    if options.gpus_per_shard and devices:
        size = options.gpus_per_shard
        slots = [",".join(devices[i:i + size]) for i in range(0, len(devices) - size + 1, size)]
        if not slots:
            raise SweepError(f"--gpus-per-shard {size}: only {len(devices)} GPU(s) visible here")
        return slots[:options.max_parallel]
    if options.gpus_per_shard:
        warnings.warn("no GPU visible: local shards run on the CPU", stacklevel=2)
    return [""] * options.max_parallel


class _Driver:
    """The submission loop of one `run_sweep` call."""

    def __init__(self, out: Path, plan: Plan, settings: dict, options: SweepOptions, executor: Any, say: Say):
        self.out, self.plan, self.settings, self.options, self.say = out, plan, settings, options, say
        self.executor = executor
        self.attempts: dict[str, int] = {}  # submissions per shard in this call
        self.jobs: dict[str, Any] = {}  # shard -> submitit job of this call
        self.slots = []
        if options.executor == "local":
            from pytest_securitynet.harness.devices import inherited_gpus  # imports torch: only here

            self.slots = local_slots(options, inherited_gpus())
        self.held: dict[str, int] = {}  # shard -> index of the slot its local job holds
        self.submissions = 0

    def statuses(self) -> list[ShardStatus]:
        for name, job in list(self.jobs.items()):
            if self.options.executor == "local" and job.done():  # reaps the finished controller
                self.held.pop(name, None)
        records = {r["shard"]: r for r in read_submissions(self.out)}.values()
        alive = SlurmLiveness(records) if self.options.executor == "slurm" else local_liveness
        return sweep_status(self.out, self.plan, alive)

    def wanted(self, statuses: list[ShardStatus]) -> list[str]:
        """Shards to submit now: never submitted (or their job is gone), or failed with retries left."""
        names = []
        for status in statuses:
            if status.state in ("done", "running") or (status.state == "pending" and status.job_id):
                continue
            if self.attempts.get(status.name, 0) > self.options.retries:
                continue
            names.append(status.name)
        return names

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
        jobs = self.executor.submit_array(runs)
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

    def active(self, statuses: list[ShardStatus]) -> bool:
        return any(s.state == "running" or (s.state == "pending" and s.job_id) for s in statuses)


def _drive(out: Path, plan: Plan, settings: dict, options: SweepOptions, executor: Any, say: Say) -> SweepOutcome:
    driver = _Driver(out, plan, settings, options, executor, say)
    poll = options.poll_s if options.poll_s is not None else (30.0 if options.executor == "slurm" else 1.0)
    last = ""
    while True:
        statuses = driver.statuses()
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

