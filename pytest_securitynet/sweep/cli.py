"""`securitynet sweep ... --out runs/NAME -- <pytest args>` and `securitynet sweep status runs/NAME`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from pytest_securitynet.errors import SecurityNetError
from pytest_securitynet.sweep.options import AUTO, EXECUTORS, SweepOptions
from pytest_securitynet.sweep.plan import PLAN_FILE, read_plan
from pytest_securitynet.sweep.status import status_lines, sweep_status, unreadable_files
from pytest_securitynet.sweep.submit import run_sweep

DESCRIPTION = """Run a selection of the catalog as a job array: collect it once, cut it into shards by
model (longest first), and run each shard's pytest with its own results file and
--securitynet-resume, on Slurm through submitit (requeued on timeout or preemption), or on this
machine. When every shard has ended the shards are merged into OUT/results.json. Running the same
command again (with or without the pytest arguments) continues the sweep."""

EPILOG = """examples:
  securitynet sweep --shards 64 --partition gpu --time 240 --max-parallel 16 --out runs/cifar10 -- benchmarks/ -k cifar10
  securitynet sweep --shards 2 --executor local --out runs/demo -- benchmarks/ -k demo
  securitynet sweep status runs/cifar10      # per shard: pending, running, done or failed, and rows
See docs/scaling.md."""


def add_sweep_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep", help="run a selection as a Slurm job array (or locally) and merge the shards; "
                      "`sweep status DIR` shows a sweep's shards",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, metavar="DIR", help="the sweep directory, e.g. runs/NAME (required)")
    parser.add_argument("--shards", type=int, metavar="N", help="number of shards (jobs) of a new sweep")
    parser.add_argument("--executor", choices=EXECUTORS, default="slurm",
                        help="slurm (job array), local (subprocesses on this machine) or debug (in this process). "
                             "Default: slurm")
    parser.add_argument("--gpus-per-shard", type=_gpus, default=AUTO, metavar="N",
                        help="GPUs per shard; more than one starts one xdist worker per GPU. Default: auto "
                             "(1 where the partition's nodes, or this machine for local shards, have a GPU, else 0)")
    parser.add_argument("--cpus-per-shard", type=int, default=None, metavar="N", help="Slurm CPUs per shard. Default: Slurm's")
    parser.add_argument("--mem-gb", type=float, default=None, metavar="GB", help="Slurm memory per shard. Default: Slurm's")
    parser.add_argument("--partition", default=None, help="Slurm partition. Default: Slurm's")
    parser.add_argument("--time", type=int, default=240, metavar="MINUTES",
                        help="time limit per job; a shard cut off is requeued and resumes. Default: 240")
    parser.add_argument("--max-parallel", type=int, default=16, metavar="N",
                        help="shards running at once (the Slurm array's %% limit). Default: 16")
    parser.add_argument("--retries", type=int, default=2, metavar="N",
                        help="resubmissions of a shard that fails (crash, lost node); failed tests are results, "
                             "not failures. Default: 2")
    parser.add_argument("--signal-delay", type=int, default=120, metavar="SECONDS",
                        help="seconds before the time limit at which a shard is told to stop and requeue. Default: 120")
    parser.add_argument("--slurm-setup", action="append", default=[], metavar="COMMAND",
                        help="shell line run before each shard, e.g. 'source venv/bin/activate' (repeatable)")
    parser.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                        help="any other sbatch option, e.g. account=abc or qos=high (repeatable)")
    parser.add_argument("--durations-from", action="append", default=[], type=Path, metavar="RESULTS",
                        help="plan with the test times of an earlier results file (repeatable). "
                             "Default: per-benchmark estimates")
    parser.add_argument("--plan-only", action="store_true",
                        help="write the plan (plan.json, one manifest per shard) and print it; submit nothing")
    parser.add_argument("--no-wait", action="store_true",
                        help="submit and return; run the same command again to retry, resubmit and merge")
    parser.add_argument("--poll", type=float, default=None, metavar="SECONDS",
                        help="how often to look at the shards. Default: 30 on Slurm, 1 otherwise")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER,
                        help="`-- <pytest arguments>` selecting the tests, e.g. `-- benchmarks/ -k cifar10`")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    rest = list(args.pytest_args)
    if rest[:1] == ["status"]:
        return _status(rest[1:])
    if rest[:1] == ["--"]:
        rest = rest[1:]
    if args.out is None:
        print("securitynet sweep: --out DIR is required (or: securitynet sweep status DIR)", file=sys.stderr)
        return 2
    try:
        parameters = dict(_key_value(item) for item in args.slurm_option)
    except ValueError as exc:
        print(f"securitynet sweep: {exc}", file=sys.stderr)
        return 2
    options = SweepOptions(
        executor=args.executor, shards=args.shards, gpus_per_shard=args.gpus_per_shard,
        cpus_per_shard=args.cpus_per_shard, mem_gb=args.mem_gb, partition=args.partition, time_min=args.time,
        max_parallel=args.max_parallel, retries=args.retries, signal_delay_s=args.signal_delay,
        slurm_setup=args.slurm_setup, slurm_parameters=parameters, durations_from=args.durations_from,
        wait=not args.no_wait, plan_only=args.plan_only, poll_s=args.poll)
    try:
        outcome = run_sweep(args.out, rest, options, say=lambda line: print(f"securitynet sweep: {line}", flush=True))
    except SecurityNetError as exc:  # a bad option or sweep directory: one line, before anything runs
        print(f"securitynet sweep: {exc}", file=sys.stderr)
        return 2
    if options.plan_only:
        for shard in outcome.plan.shards:
            print(f"{shard.name}  {len(shard.nodeids):5} tests  {shard.seconds / 60:7.1f} min  {', '.join(shard.models)}")
        return 0
    if outcome.merged is None and not options.wait:
        return 0  # submitted; the shards run on
    if outcome.merged is not None:
        print(f"{outcome.merged}: merged from {sum(1 for s in outcome.statuses if s.rows)} shard(s), "
              f"{outcome.conflicts} conflict(s)")
    return 0 if outcome.complete else 1


def _gpus(value: str) -> int | str:
    if value == AUTO:
        return AUTO
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give a number of GPUs or auto") from None


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--slurm-option {item!r}: write KEY=VALUE, e.g. account=abc")
    return key.strip(), value.strip()


def _status(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="securitynet sweep status",
                                     description="per shard: pending, running, done or failed, and its rows")
    parser.add_argument("out", type=Path, metavar="DIR", help="the sweep directory (--out of `securitynet sweep`)")
    parser.add_argument("--json", action="store_true", help="print the shards' states as JSON")
    args = parser.parse_args(argv)
    if not (args.out / PLAN_FILE).exists():
        print(f"securitynet sweep status: {args.out}: not a sweep directory (no {PLAN_FILE})", file=sys.stderr)
        return 2
    statuses = sweep_status(args.out, read_plan(args.out))
    if args.json:
        print(json.dumps([asdict(s) for s in statuses], indent=1))
    else:
        print("\n".join(status_lines(statuses)))
    problems = unreadable_files(statuses)
    for line in problems:
        print(f"securitynet sweep status: {line}", file=sys.stderr)
    return 1 if problems else 0
