"""A sweep's options, checked before anything is collected, written or submitted.

Every bad value gives one line naming the option as `securitynet sweep` spells it and what to use
instead. `--gpus-per-shard auto` becomes a number here: 1 where a node of the partition (on Slurm, its GRES)
or this machine (elsewhere) has a GPU, 0 where it has none.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from pytest_securitynet.errors import SecurityNetError
from pytest_securitynet.sweep import slurm

EXECUTORS = ("slurm", "local", "debug")
AUTO = "auto"
SIGNAL_SLACK_S = 60
"""Slurm checks time limits about once a minute, so its warning signal may come up to 60 s before
`--signal-delay` says (sbatch(1), --signal): `--time` must leave room for both."""


class SweepError(SecurityNetError):
    """A sweep cannot start or continue (bad arguments, a busy or mismatched sweep directory)."""


@dataclass
class SweepOptions:
    """How to run the shards (the plan itself depends only on the selection, shards and durations)."""

    executor: str = "slurm"
    shards: int | None = None
    gpus_per_shard: int | str = AUTO
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

    def validate(self) -> None:
        """SweepError, in one line, for the first option out of range."""
        if self.executor not in EXECUTORS:
            raise SweepError(f"--executor {self.executor}: use one of {', '.join(EXECUTORS)}")
        _at_least("--shards", self.shards, 1, "number of shards", optional=True)
        if self.gpus_per_shard != AUTO:
            _at_least("--gpus-per-shard", self.gpus_per_shard, 0, "GPUs per shard, or auto")
        _at_least("--cpus-per-shard", self.cpus_per_shard, 1, "CPUs per shard", optional=True)
        if self.mem_gb is not None and not (_number(self.mem_gb) and self.mem_gb > 0):
            raise SweepError(f"--mem-gb {self.mem_gb}: give the memory per shard in GB, more than 0")
        _at_least("--time", self.time_min, 1, "minutes per job")
        _at_least("--max-parallel", self.max_parallel, 1, "shards running at once")
        _at_least("--retries", self.retries, 0, "resubmissions of a failed shard; 0 for none")
        _at_least("--signal-delay", self.signal_delay_s, 0, "seconds of warning before the time limit")
        if self.poll_s is not None and not (_number(self.poll_s) and self.poll_s > 0):
            raise SweepError(f"--poll {self.poll_s}: give the seconds between looks at the shards, more than 0")
        limit_s = self.time_min * 60
        slack = SIGNAL_SLACK_S if self.executor == "slurm" else 0
        if self.signal_delay_s + slack >= limit_s:
            need = (self.signal_delay_s + slack) // 60 + 1
            early = f" and Slurm may send it up to {SIGNAL_SLACK_S} s earlier" if slack else ""
            raise SweepError(f"--time {self.time_min}: the stop warning comes --signal-delay {self.signal_delay_s} s "
                             f"before the limit{early}, which leaves no time to run: give --time {need} or more, "
                             f"or a smaller --signal-delay")
        for path in self.durations_from:
            if not Path(path).is_file():
                raise SweepError(f"--durations-from {path}: no such results file")
        for key in self.slurm_parameters:
            if key.replace("-", "_") in RESERVED_SLURM_KEYS:
                raise SweepError(f"--slurm-option {key}: the sweep sets it ({RESERVED_SLURM_KEYS[key.replace('-', '_')]})")


RESERVED_SLURM_KEYS = {"array": "one array task per shard", "signal": "--signal-delay", "time": "--time",
                       "job_name": "the sweep directory's name", "output": "under OUT/submitit/",
                       "error": "under OUT/submitit/", "gpus_per_node": "--gpus-per-shard",
                       "partition": "--partition"}


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN


def _at_least(option: str, value: object, minimum: int, meaning: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
        raise SweepError(f"{option} {value}: must be a whole number of at least {minimum} ({meaning})")


def resolve_gpus(options: SweepOptions) -> SweepOptions:
    """The options with `--gpus-per-shard` a number the executor can give each shard, checked
    against what is there (SweepError, one line, otherwise). Asks Slurm (sinfo) on Slurm."""
    if options.executor == "slurm":
        partition = options.partition
        try:
            partition = partition or slurm.default_partition()
            available = slurm.partition_gpus(partition)
        except slurm.NoPartition as exc:
            raise SweepError(f"--partition {partition}: {exc}") from None
        except slurm.SlurmUnavailable as exc:
            raise SweepError(f"--executor slurm: {exc} (--executor local runs the shards on this machine)") from None
        where = f"a node of partition {partition}"
    else:
        available = len(visible_gpus())
        where = "this machine"
    if options.gpus_per_shard == AUTO:
        gpus = 1 if available else 0
    else:
        gpus = int(options.gpus_per_shard)
        if gpus > available:
            have = f"has {available} GPU(s)" if available else "has no GPU"
            raise SweepError(f"--gpus-per-shard {gpus}: {where} {have}; give --gpus-per-shard "
                             f"{available if available else 0} or auto")
    return dataclasses.replace(options, gpus_per_shard=gpus)


def visible_gpus() -> list[str]:
    """The GPUs this process may hand to local shards (torch is imported only here)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return []
    from pytest_securitynet.harness.devices import inherited_gpus

    return inherited_gpus()
