"""`securitynet bench`: the default suite on one catalog model, as a throughput table.

It runs the benchmark files through pytest (the same code path as a sweep) with a results file of
its own, then prints one line per test: wall time, the phases the test recorded, the achieved
TFLOP/s where the work is counted, and the peak GPU memory. Anyone with a GPU gets the same table
from one command; docs/performance.md keeps the latest one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from pytest_securitynet.errors import SecurityNetError
from pytest_securitynet.results.rows import load_results, results_exist

DESCRIPTION = ("Time the default benchmark suite on one catalog model: pytest runs the benchmark files with a "
               "results file of its own (OUT/bench.json), then one line per test is printed and written to "
               "OUT/bench.md: wall time, the phases the test recorded, TFLOP/s where the work is counted, and "
               "peak GPU memory. Run it from a checkout (it needs ./benchmarks).")
DEFAULT_MODEL = "cifar10-resnet56-akamaster"
DEFAULT_SELECTION = "not wrn50_2"
"""The default suite without the WRN-50-2 surrogate (timed on its own with `--with-wrn`)."""


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="time the default suite on one model and print a throughput table",
                           description=DESCRIPTION)
    bench.add_argument("--model", default=DEFAULT_MODEL, help=f"catalog model id. Default: {DEFAULT_MODEL}")
    bench.add_argument("--dataset", action="append", default=[], metavar="ID=OTHER",
                       help="dataset override, e.g. cifar10=cifar10-jpeg (repeatable). Default: none")
    bench.add_argument("--device", default=None, help="torch device. Default: the first GPU, else cpu")
    bench.add_argument("--benchmarks", type=Path, default=Path("benchmarks"),
                       help="the benchmark files. Default: ./benchmarks (run from a checkout)")
    bench.add_argument("--out", type=Path, default=Path("securitynet-bench"),
                       help="folder for the results JSON and the table (bench.json, bench.md). Default: securitynet-bench")
    bench.add_argument("-k", dest="keyword", default=None, metavar="EXPR",
                       help="narrow the suite further (ANDed with the model), e.g. 'neural-cleanse or pgd'. Default: none")
    bench.add_argument("--with-wrn", action="store_true", help="include the WRN-50-2 stealing surrogate. Default: off")
    bench.add_argument("pytest_args", nargs="*", help="more pytest/harness options after `--`, e.g. --securitynet-budget ...")
    bench.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    if not args.benchmarks.is_dir():
        raise SecurityNetError(f"bench: no benchmark folder at {args.benchmarks}; run from a checkout or pass --benchmarks DIR")
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "bench.json"
    command = bench_command(args, results)
    print("securitynet bench: " + " ".join(command), file=sys.stderr)
    code = subprocess.call(command)
    if not results_exist(results):
        raise SecurityNetError(f"bench: pytest exited {code} without writing {results}")
    doc = load_results(results)
    table = format_table(doc["results"], doc.get("run", {}))
    (args.out / "bench.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0 if code in (0, 1) else code


def bench_command(args: argparse.Namespace, results: Path) -> list[str]:
    selection = args.model if args.with_wrn else f"{args.model} and {DEFAULT_SELECTION}"
    if args.keyword:
        selection = f"{selection} and ({args.keyword})"
    command = [sys.executable, "-m", "pytest", str(args.benchmarks), "-p", "no:cacheprovider", "-q",
               "-k", selection, "--securitynet-json", str(results)]
    command += [f"--securitynet-dataset={item}" for item in args.dataset]
    if args.device:
        command += ["--securitynet-device", args.device]
    return command + list(args.pytest_args)


def format_table(rows: Sequence[dict[str, Any]], run: dict[str, Any] | None = None) -> str:
    """A markdown table: test, outcome, wall time, phases, TFLOP/s, peak GPU memory; and the total."""
    lines = ["| test | outcome | wall s | phases (s) | TFLOP/s | peak GPU GiB |", "|---|---|---:|---|---:|---:|"]
    total = 0.0
    for row in sorted(rows, key=lambda r: (r.get("benchmark", ""), r.get("setting", ""))):
        wall = float(row.get("wall_time_s") or 0.0) + float(row.get("setup_time_s") or 0.0)
        total += wall
        phases = row.get("phases") or row.get("metrics", {}).get("phases") or {}
        phase_text = ", ".join(f"{k} {float(v):.2f}" for k, v in phases.items()) if isinstance(phases, dict) else ""
        tflops = _tflop_per_s(row.get("metrics") or {})
        memory = row.get("peak_gpu_memory_gib")
        lines.append(f"| {row.get('benchmark')} [{row.get('setting')}] | {row.get('outcome')} | {wall:.2f} | "
                     f"{phase_text} | {'' if tflops is None else f'{tflops:.3g}'} | "
                     f"{'' if memory is None else f'{memory:.2f}'} |")
    device = (run or {}).get("device") or next((r.get("device") for r in rows if r.get("device")), "?")
    lines.append(f"| **all {len(rows)} tests** | | {total:.1f} | | | |")
    lines.append("")
    lines.append(f"device: {device}; wall time includes each test's setup (model and data loading).")
    return "\n".join(lines)


def _tflop_per_s(metrics: dict[str, Any]) -> float | None:
    values = [float(v) for k, v in metrics.items() if k.endswith("tflop_per_s") and isinstance(v, (int, float))]
    return max(values) if values else None
