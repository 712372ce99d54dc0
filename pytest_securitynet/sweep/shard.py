"""One shard of a sweep: pytest on the shard's manifest, requeued through submitit when cut off.

The shard runs `pytest <selection> --securitynet-manifest shard-017.txt --securitynet-json
shard-017.json --securitynet-resume` in a child process, so a requeued or retried shard skips the
tests it already passed. On a timeout or preemption submitit signals (USR2) and calls
`checkpoint`: the child is asked to stop (SIGINT, so it writes its results file) and the same shard
is requeued. A requeue or cancel by the scheduler (`scontrol requeue`, preemption without
`preempt_send_user_signal`, `scancel`) starts with SIGTERM instead: the shard stops pytest the same
way, asks Slurm whether the job was requeued, and records `requeued` or `failed` accordingly. The
child and its xdist workers ignore USR2 and SIGTERM (Slurm signals every process of a job, and
either would end them before the results are written), and they die with the shard's process, so
a shard killed outright leaves no pytest behind writing its file.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from filelock import FileLock, Timeout

from pytest_securitynet.results.journal import write_atomic
from pytest_securitynet.results.rows import now
from pytest_securitynet.sweep import slurm
from pytest_securitynet.sweep.plan import PLUGIN
from pytest_securitynet.sweep.status import SweepFileError, read_state

log = logging.getLogger(__name__)

DONE_EXIT_CODES = (0, 1, 5)
"""pytest exits: all passed, some tests failed, nothing left to run. A shard that ends so is done."""
POLL_S = 0.5
PR_SET_PDEATHSIG = 1


class ShardFailed(RuntimeError):
    """pytest ended a shard with an exit status that is not a result (crash, usage error, signal)."""


class ShardBusy(RuntimeError):
    """Another process runs this shard already (its lock file is held)."""


class ShardStopped(RuntimeError):
    """The shard got SIGTERM from its scheduler (a cancel or a time limit) and was not requeued."""


@dataclass
class ShardSpec:
    """Everything a shard needs to run, on any node that sees the sweep directory."""

    out: str  # the sweep directory, absolute
    name: str  # shard-017
    pytest_args: list[str]
    cwd: str  # where pytest is started (the planner's directory: node ids are relative to it)
    python: str = sys.executable
    gpus: int = 0  # GPUs the shard was given; more than one starts one xdist worker per GPU
    env: dict[str, str | None] = field(default_factory=dict)  # set (or, for None, remove) in pytest's environment
    stop_grace_s: float = 60.0  # how long a stopped pytest may take to write its results

    @property
    def directory(self) -> Path:
        return Path(self.out)

    def path(self, suffix: str) -> Path:
        return self.directory / f"{self.name}{suffix}"

    @property
    def results(self) -> Path:
        return self.path(".json")

    @property
    def manifest(self) -> Path:
        return self.path(".txt")

    @property
    def state_file(self) -> Path:
        return self.path(".state.json")

    def command(self) -> list[str]:
        args = list(self.pytest_args)
        if self.gpus > 1 and not _has_option(args, ("--gpus", "-n", "--numprocesses")):
            args += ["--gpus", str(self.gpus)]
        return [self.python, "-m", "pytest", *args, "-p", PLUGIN, f"--securitynet-manifest={self.manifest}",
                f"--securitynet-json={self.results}", "--securitynet-resume"]


def _has_option(args: list[str], names: tuple[str, ...]) -> bool:
    return any(a in names or a.startswith(tuple(f"{n}=" for n in names)) or
               (a.startswith("-n") and a[2:].isdigit()) for a in args)


class ShardRun(submitit.helpers.Checkpointable):
    """The callable submitit runs for one shard (picklable; the running child is not pickled)."""

    def __init__(self, spec: ShardSpec, raise_on_failure: bool = True):
        self.spec = spec
        self.raise_on_failure = raise_on_failure  # the debug executor opens a debugger on an exception
        self.requeues = 0
        self._proc: subprocess.Popen | None = None
        self._state: dict[str, Any] = {}
        self._terminated = False

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_proc", "_state", "_terminated")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._proc, self._state, self._terminated = None, {}, False

    def __call__(self) -> dict[str, Any]:
        spec = self.spec
        lock = FileLock(str(spec.path(".lock")))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            message = f"{spec.name} is already running elsewhere (its lock {spec.path('.lock')} is held)"
            if self.raise_on_failure:
                raise ShardBusy(message) from None
            log.warning(message)
            return {"shard": spec.name, "state": "busy", "reason": message}
        try:
            return self._run()
        finally:
            lock.release()

    def _run(self) -> dict[str, Any]:
        spec = self.spec
        try:
            previous = read_state(spec.state_file) or {}
        except SweepFileError:
            previous = {}  # a damaged state file is replaced by this start's
        restarts = slurm.restart_count()
        self._terminated = False
        self._state = {
            "shard": spec.name, "state": "running", "starts": int(previous.get("starts", 0)) + 1,
            "requeues": self.requeues, "slurm_restarts": restarts, "host": socket.gethostname(), "pid": os.getpid(),
            "job_id": _job_id(), "started_at": now(), "started_ts": time.time(), "ended_at": None, "ended_ts": None,
            "exit_code": None, "command": spec.command(),
        }
        self._write_state()
        on_sigterm = _main_thread_handler(signal.SIGTERM, self._on_sigterm)
        try:
            self._proc = launch(spec)
            if self._terminated:  # SIGTERM came while pytest was being started
                self._proc.send_signal(signal.SIGINT)
            self._state["child_pid"] = self._proc.pid
            self._write_state()
            try:
                code = wait(self._proc)
            except SystemExit:  # submitit requeues after `checkpoint` (state "requeued") by exiting
                stop(self._proc, spec.stop_grace_s)
                raise
            except BaseException as exc:  # Ctrl-C, or a requeue that submitit refused
                stop(self._proc, spec.stop_grace_s)
                self._end("failed", self._proc.returncode, f"{type(exc).__name__}: {exc}")
                raise
            if self._terminated and code not in DONE_EXIT_CODES:  # stopped early, not finished
                return self._after_sigterm(code, restarts)
        finally:
            on_sigterm.restore()
        done = code in DONE_EXIT_CODES
        self._end("done" if done else "failed", code, "" if done else _exit_reason(code))
        if not done and self.raise_on_failure:
            raise ShardFailed(f"{spec.name}: {_exit_reason(code)}")
        return dict(self._state)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        """The scheduler is ending this job (a cancel, a requeue, a preemption): stop pytest cleanly."""
        self._terminated = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)

    def _after_sigterm(self, code: int | None, restarts: int) -> dict[str, Any]:
        """pytest has stopped after SIGTERM: `requeued` if Slurm requeued the job (it runs this shard
        again and the sweep waits for it), else `failed` (the sweep may submit the shard again)."""
        job = self._state.get("job_id")
        on_slurm = os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
        requeued = slurm.job_requeued(job, restarts) if job and on_slurm else False
        if requeued:
            self._end("requeued", code, "SIGTERM: Slurm requeued the job")
            raise SystemExit(0)  # as submitit's own requeue: no result, the job runs again
        why = ("SIGTERM: the job was cancelled or reached its time limit" if requeued is False
               else "SIGTERM; scontrol could not tell whether the job was requeued")
        self._end("failed", code, why)
        if self.raise_on_failure:
            raise ShardStopped(f"{self.spec.name}: {why}")
        return dict(self._state)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on timeout or preemption: stop pytest cleanly, requeue this shard."""
        if self._proc is not None:
            stop(self._proc, self.spec.stop_grace_s)
        if self._state:
            self._end("requeued", self._proc.returncode if self._proc else None, "timeout or preemption")
        successor = ShardRun(self.spec, self.raise_on_failure)
        successor.requeues = self.requeues + 1
        return submitit.helpers.DelayedSubmission(successor)

    def _end(self, state: str, code: int | None, reason: str) -> None:
        self._state.update(state=state, exit_code=code, ended_at=now(), ended_ts=time.time(), reason=reason)
        self._write_state()

    def _write_state(self) -> None:
        write_atomic(self.spec.state_file, (json.dumps(self._state, indent=1) + "\n").encode("utf-8"))


def launch(spec: ShardSpec) -> subprocess.Popen:
    """Start the shard's pytest: preemption signals ignored, killed when this process dies."""
    env = dict(os.environ)
    for name, value in spec.env.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.Popen(spec.command(), cwd=spec.cwd, env=env, preexec_fn=_child_setup)


def preemption_signals() -> list[signal.Signals]:
    """USR2 (submitit's default), whatever SUBMITIT_PREEMPT_SIGNAL names, and SIGTERM (a cancel or
    requeue): the shard's process turns each into a clean stop of pytest."""
    names = {"USR2", "TERM", os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")}
    return sorted({getattr(signal, f"SIG{n}") for n in names if hasattr(signal, f"SIG{n}")})


class _main_thread_handler:
    """A signal handler installed for a while, then the previous one put back (main thread only:
    elsewhere, as in a test's helper thread, nothing is installed)."""

    def __init__(self, signum: signal.Signals, handler: Any):
        self.signum, self.previous = signum, None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signum, handler)

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(self.signum, self.previous)
            self.previous = None


def _child_setup() -> None:
    # Runs in the child between fork and exec. An ignored signal stays ignored across exec and in
    # every process pytest starts (its xdist workers); a handled one would reset to "terminate".
    for signum in preemption_signals():
        signal.signal(signum, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def wait(proc: subprocess.Popen) -> int:
    """Wait for the child by polling: a signal handler that runs meanwhile (submitit's) may itself
    wait on the child, which a blocking `Popen.wait` holding its lock would deadlock."""
    while True:
        code = proc.poll()
        if code is not None:
            return code
        time.sleep(POLL_S)


def stop(proc: subprocess.Popen, grace_s: float) -> int | None:
    """Ask pytest to stop (SIGINT: it finishes the results file), then kill it after `grace_s`."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return proc.returncode
        time.sleep(0.1)
    proc.kill()
    while proc.poll() is None:
        time.sleep(0.05)
    return proc.returncode


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "pytest did not end"
    if code < 0:
        try:
            return f"pytest was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"pytest was killed by signal {-code}"
    return f"pytest exited with status {code}"


def _job_id() -> str | None:
    try:
        return submitit.JobEnvironment().job_id
    except (KeyError, RuntimeError):
        return None
