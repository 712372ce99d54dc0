"""The `report` subcommand: `securitynet report RESULTS.json [MORE.json ...] -o DIR`.

`add_report_parser(subparsers)` registers it on the `securitynet` command's subparsers;
`main(argv)` runs it alone (`python -m pytest_securitynet.report`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Sequence

from pytest_securitynet.errors import SecurityNetError

DESCRIPTION = ("Write an HTML report (index.html, README.md, PNG figures, CSV tables) of one or more results "
               "files, merged by row key; sections without data are left out.")


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    """Add `report` to `subparsers` (from `ArgumentParser.add_subparsers`); it sets `run`."""
    parser = subparsers.add_parser("report", help="HTML report of results files", description=DESCRIPTION)
    _add_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", metavar="RESULTS.json",
                        help="results files (shards or runs); duplicate rows are merged and conflicts flagged")
    parser.add_argument("-o", "--output", default="securitynet-report", metavar="DIR",
                        help="folder to write into (default: securitynet-report)")
    parser.add_argument("--reported", action="append", metavar="PATH",
                        help="reported-numbers CSV or folder of CSVs, repeatable (columns model,benchmark,setting,"
                             "metric,value; default: the catalog's reported/ folder)")
    parser.add_argument("--no-reported", action="store_true", help="leave out the measured-vs-reported section")
    parser.add_argument("--embed", action="store_true",
                        help="inline the PNGs into index.html as data URIs (a single-file page; default: off)")
    parser.add_argument("--title", default=None, help="page title (default: SecurityNet report)")
    parser.add_argument("--dpi", type=int, default=None, help="resolution of the PNG figures (default: 110)")


def run(args: argparse.Namespace) -> int:
    from pytest_securitynet.report import TITLE, build_report

    try:
        report = build_report(args.results, args.output, reported=args.reported, use_reported=not args.no_reported,
                              embed=args.embed, title=args.title or TITLE, dpi=args.dpi, command=command_line(args))
    except (OSError, ValueError) as exc:
        raise SecurityNetError(str(exc)) from exc
    for conflict in report.conflicts:
        print(conflict.warning("securitynet report"), file=sys.stderr)
    rs = report.result_set
    print(f"{report.index}: {len(report.sections)} sections ({', '.join(report.sections)}), "
          f"{len(rs.rows)} rows from {len(rs.sources)} file(s), {len(report.conflicts)} conflicting duplicate(s)")
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The `securitynet report` command equivalent to `args`, for the page."""
    words = ["securitynet", "report", *args.results, "-o", args.output]
    words += [w for path in args.reported or [] for w in ("--reported", path)]
    words += ["--no-reported"] * args.no_reported + ["--embed"] * args.embed
    words += ["--title", args.title] if args.title else []
    words += ["--dpi", str(args.dpi)] if args.dpi else []
    return shlex.join(words)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="securitynet report", description=DESCRIPTION)
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except SecurityNetError as exc:
        print(f"securitynet report: {exc}", file=sys.stderr)
        return 2
