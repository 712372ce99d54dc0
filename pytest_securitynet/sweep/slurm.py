"""What Slurm itself says about a sweep's jobs and partitions, through its client commands.

The sweep decides whether a shard's job still exists by asking `squeue` (jobs slurmctld holds:
pending, running, requeued, completing, and for `MinJobAge` seconds after they end, their final
state). A job squeue no longer lists has ended for good, so no accounting (`sacct`, slurmdbd) is
needed. `sinfo` tells a partition's GPUs, `scontrol` whether a job was requeued, `scancel` ends a
job the sweep no longer wants.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
from typing import Iterable

COMMAND_TIMEOUT_S = 60.0
ALIVE = frozenset({"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "SUSPENDED", "PREEMPTED",
                   "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED", "STAGE_OUT", "SIGNALING", "STOPPED", "RESV_DEL_HOLD"})
"""States of a job that is still in the queue or may run again (a requeued job passes through
COMPLETING and PENDING): the sweep never submits a shard again while its job is in one of them."""
GONE = "GONE"
"""The state of a job squeue no longer lists: it ended, long enough ago for slurmctld to drop it."""
REQUEUE_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"})


class SlurmUnavailable(RuntimeError):
    """A Slurm command is missing or failed; the message says which and why, in one line."""


class NoPartition(SlurmUnavailable):
    """Slurm has no partition of that name."""


def _run(args: list[str]) -> str:
    if shutil.which(args[0]) is None:
        raise SlurmUnavailable(f"{args[0]} not found (is this a Slurm login node?)")
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable(f"`{' '.join(args[:2])} ...` did not answer within {COMMAND_TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        message = " ".join((proc.stderr or proc.stdout).split()) or f"exit status {proc.returncode}"
        raise SlurmUnavailable(f"{args[0]}: {message}")
    return proc.stdout


def job_states(job_ids: Iterable[str]) -> dict[str, str]:
    """Each job id's state as squeue gives it (`PENDING`, `RUNNING`, `CANCELLED` ...), or `GONE`.

    One squeue call for all of them: every job of this user slurmctld still holds, one line per
    array task. Raises SlurmUnavailable when squeue cannot answer (then nothing is known)."""
    wanted = {str(j) for j in job_ids}
    if not wanted:
        return {}
    out = _run(["squeue", "--noheader", "--array", "--states=all", "--user", getpass.getuser(), "--format=%i|%T"])
    listed: dict[str, str] = {}
    for line in out.splitlines():
        job, _, state = line.strip().partition("|")
        if job and state:
            listed[job] = state.strip().upper()
    return {job: listed.get(job, GONE) for job in wanted}


def cancel(job_ids: Iterable[str]) -> None:
    """scancel the jobs (array tasks are named `123_4`)."""
    ids = sorted({str(j) for j in job_ids})
    if ids:
        _run(["scancel", *ids])


def default_partition() -> str:
    """The partition sbatch uses when none is given (sinfo marks it with `*`)."""
    for line in _run(["sinfo", "--noheader", "--format=%P"]).split():
        if line.endswith("*"):
            return line[:-1]
    raise SlurmUnavailable("sinfo shows no default partition: give --partition")


def partitions() -> list[str]:
    return sorted({p.rstrip("*") for p in _run(["sinfo", "--noheader", "--format=%P"]).split()})


def partition_gpus(partition: str) -> int:
    """The most GPUs one node of `partition` has, from its GRES (`gpu:4`, `gpu:a100:8(S:0-1)`); 0 without."""
    out = _run(["sinfo", "--noheader", "--partition", partition, "--format=%G"])
    if not out.strip():
        raise NoPartition(f"no such partition (sinfo lists: {', '.join(partitions()) or 'none'})")
    return max(gres_gpus(line) for line in out.splitlines() if line.strip())


def gres_gpus(gres: str) -> int:
    """GPUs in one node's GRES string: `(null)` -> 0, `gpu:2,shard:8` -> 2, `gpu:a100:4(S:0-1)` -> 4."""
    total = 0
    for item in re.split(r",(?![^(]*\))", gres.strip()):
        fields = re.sub(r"\(.*?\)", "", item).split(":")
        if fields[0] == "gpu":
            count = fields[-1] if len(fields) > 1 else "1"
            total += int(count) if count.isdigit() else 1
    return total


def job_requeued(job_id: str, restarts_at_start: int) -> bool | None:
    """Whether Slurm has requeued job `job_id` since it started (its restart count grew, or it is
    pending again); None when scontrol cannot tell. Asked by a shard that got SIGTERM: a requeue
    (`scontrol requeue`, preemption) and a cancel both start with SIGTERM."""
    try:
        out = _run(["scontrol", "--oneliner", "show", "job", str(job_id)])
    except SlurmUnavailable:
        return None
    fields = dict(item.partition("=")[::2] for item in out.split())
    restarts = fields.get("Restarts", "")
    if fields.get("JobState", "").upper() in REQUEUE_STATES:
        return True
    return int(restarts) > restarts_at_start if restarts.isdigit() else None


def restart_count() -> int:
    """How many times Slurm has requeued the job this process runs in (0 outside Slurm)."""
    value = os.environ.get("SLURM_RESTART_COUNT", "0")
    return int(value) if value.isdigit() else 0
