"""The `securitynet` command: the catalog, reports, timing, merging and sweeps, without writing pytest commands.

subcommands:
  catalog   list, show, validate, import, annotate, count (stats) or prefetch the catalog's models
  report    an HTML report (figures and CSVs) of one or more results files
  bench     time the default suite on one model and print a throughput table
  merge     one results file from several (the shards of a sweep), by row key
  sweep     run a selection as a Slurm job array (or locally) and merge the shards; `sweep status DIR`

Benchmarks themselves run through pytest: `pytest benchmarks/ -k demo` (README.md).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from pytest_securitynet.catalog.entries import BUILTIN_CATALOG, Catalog, catalog_paths, load_catalog
from pytest_securitynet.catalog.policy import check_builders
from pytest_securitynet.bench import add_bench_parser
from pytest_securitynet.errors import SecurityNetError
from pytest_securitynet.harness.settings import settings_from
from pytest_securitynet.results.merge import merge_files
from pytest_securitynet.report.cli import add_report_parser
from pytest_securitynet.sweep.cli import add_sweep_parser

DEFAULT_CSV = BUILTIN_CATALOG.parent.parent / "shared" / "reference" / "securitynet-models.csv"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except SecurityNetError as exc:
        print(f"securitynet: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`securitynet catalog list | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="securitynet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_report_parser(sub)
    add_bench_parser(sub)
    catalog = sub.add_parser("catalog", help="list, show, validate, import, annotate, count or prefetch catalog entries")
    actions = catalog.add_subparsers(dest="action", required=True)

    listing = actions.add_parser("list", help="one line per model, filtered")
    listing.add_argument("--dataset", help="only models of this dataset id, e.g. cifar10 or cifar-100")
    listing.add_argument("--purpose", choices=["benchmark", "security"])
    listing.add_argument("--type", dest="model_type", help="only this model type, e.g. resnet")
    listing.add_argument("--year", type=int)
    listing.add_argument("--tag", help="only models with this tag, e.g. akamaster")
    listing.add_argument("--available", action="store_true",
                         help="leave out entries marked unavailable and those whose package is not installed")
    _add_catalog_option(listing)
    listing.set_defaults(run=_list)

    show = actions.add_parser("show", help="one model's full entry as JSON, with computed annotations and reported numbers")
    show.add_argument("model_id")
    _add_catalog_option(show)
    show.set_defaults(run=_show)

    validate = actions.add_parser("validate", help="load and check every entry; exit 2 on the first error")
    _add_catalog_option(validate)
    validate.set_defaults(run=_validate)

    importer = actions.add_parser("import-csv", help="generate catalog files from the SecurityNet database CSV")
    importer.add_argument("csv", type=Path, nargs="?", default=DEFAULT_CSV,
                          help=f"the database CSV. Default: {DEFAULT_CSV}")
    importer.add_argument("--out", type=Path, default=BUILTIN_CATALOG / "securitynet",
                          help="directory for the generated TOML files. Default: catalog/securitynet/")
    importer.add_argument("--reported", type=Path, default=BUILTIN_CATALOG / "reported" / "securitynet.csv",
                          help="reported-results CSV to write. Default: catalog/reported/securitynet.csv")
    importer.set_defaults(run=_import_csv)

    annotate = actions.add_parser("annotate", help="recompute parameters, FLOPs, batch-norm, dropout, input size "
                                                   "and output width by building each architecture offline")
    annotate.add_argument("patterns", nargs="*", help="model id patterns (shell-style). Default: every model")
    annotate.add_argument("--out", type=Path, default=None, help="CSV to write. Default: catalog/computed/architectures.csv")
    annotate.add_argument("--no-flops", action="store_true", help="skip FLOP counting (faster)")
    _add_catalog_option(annotate)
    annotate.set_defaults(run=_annotate)

    stats = actions.add_parser("stats", help="the paper's Figure 1 counts as tables, and as PNG plots with --plots")
    stats.add_argument("--plots", type=Path, default=None, metavar="DIR", help="write one PNG per panel into DIR")
    stats.add_argument("--all", action="store_true", help="count every catalog model, not only the database's")
    _add_catalog_option(stats)
    stats.set_defaults(run=_stats)

    prefetch = actions.add_parser("prefetch", help="download the weights and data of a selection into the cache")
    prefetch.add_argument("patterns", nargs="*", metavar="SELECTION",
                          help="model id patterns (shell-style, e.g. 'cifar10-*-pytorchcv') or dataset ids")
    prefetch.add_argument("-k", dest="keyword", default=None, metavar="EXPR",
                          help="models a `pytest benchmarks/ -k EXPR` run may select, e.g. -k cifar10 or "
                               "-k 'resnet20 and akamaster' (words that name no model property count either way)")
    prefetch.add_argument("--cache", type=Path, default=None, help="cache directory. Default: SECURITYNET_CACHE or the user cache")
    prefetch.add_argument("--offline", action="store_true", help="only check; fail naming what is missing (also SECURITYNET_OFFLINE=1)")
    prefetch.add_argument("--dry-run", action="store_true", help="list what is present and missing, download nothing")
    prefetch.add_argument("--pin-on-first-download", action="store_true",
                          help="trust on first use: fetch direct-URL weights whose sha256 the catalog does not "
                               "record and pin their sha256 in the pin lock file (also SECURITYNET_PIN_ON_FIRST_DOWNLOAD=1)")
    _add_catalog_option(prefetch)
    prefetch.set_defaults(run=_prefetch)

    pin = actions.add_parser("pin", help="record the sha256 of a weights file obtained by hand for entry ID "
                                         "(in the pin lock file) and copy it into the cache, making ID runnable")
    pin.add_argument("model_id", metavar="ID")
    pin.add_argument("file", type=Path, metavar="FILE")
    pin.add_argument("--builder", help="the registered builder that reads FILE, for entries whose catalog names none "
                                       "(MedMNIST, AdversaryLossLandscape; see docs/catalog.md)")
    pin.add_argument("--builder-arg", action="append", default=[], metavar="NAME=VALUE",
                     help="a builder argument (repeatable), e.g. --builder-arg depth=18")
    pin.add_argument("--state-dict-key", help="the checkpoint's dict entry holding the weights, e.g. net")
    pin.add_argument("--strip-prefix", help="removed from every key, e.g. module.")
    pin.add_argument("--cache", type=Path, default=None, help="cache directory. Default: SECURITYNET_CACHE or the user cache")
    _add_catalog_option(pin)
    pin.set_defaults(run=_pin)
    merge = sub.add_parser("merge", help="merge results files (shards of one sweep) into one, by row key")
    merge.add_argument("files", nargs="+", type=Path,
                       help="results files written by pytest-securitynet, or one sweep directory (its shards)")
    merge.add_argument("-o", "--out", type=Path, default=None,
                       help="the merged results file to write (required for files; for a sweep directory: DIR/results.json)")
    merge.set_defaults(run=_merge)
    add_sweep_parser(sub)
    return parser


def _add_pins_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pins", type=Path, default=None, metavar="FILE",
                        help="the sha256 pin lock file. Default: SECURITYNET_PINS, else securitynet-pins.toml beside "
                             "the first user catalog, else in the current directory")


def _pinned(catalog: Catalog, args: argparse.Namespace, pin_on_first_download: bool = False) -> Catalog:
    """The catalog with the pin lock file's pins applied (catalog/pins.py)."""
    from pytest_securitynet.catalog.pins import apply_pins

    return apply_pins(catalog, _pins_file(args), pin_on_first_download)


def _pins_file(args: argparse.Namespace) -> Path:
    from pytest_securitynet.catalog.pins import pins_path

    settings = settings_from({"catalog": args.catalog, "pins": getattr(args, "pins", None)})
    return pins_path(settings.catalogs, settings.pins)


def _catalog_paths(args: argparse.Namespace) -> list[Path]:
    """The built-in catalog, `SECURITYNET_CATALOG` and `--catalog` (the same as the plugin's)."""
    return catalog_paths(settings_from({"catalog": args.catalog}).catalogs)


def _catalog(args: argparse.Namespace) -> Catalog:
    """The catalog through the plugin's validated-catalog cache (a second parse of 500 entries takes seconds)."""
    settings = settings_from({"catalog": args.catalog})
    return _pinned(load_catalog(catalog_paths(settings.catalogs), settings.cache_dir,
                                allow_code_builders=args.allow_code_builders), args)


def _add_catalog_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--catalog", action="append", default=[], metavar="PATH",
                        help="extra catalog file or directory (repeatable)")
    parser.add_argument("--allow-code-builders", action="store_true",
                        help="accept entries whose builder is a module:function: code the catalog file runs")
    _add_pins_option(parser)


def _load(args: argparse.Namespace) -> Catalog:
    return _pinned(load_catalog(_catalog_paths(args), allow_code_builders=args.allow_code_builders), args)


def _list(args: argparse.Namespace) -> int:
    from pytest_securitynet.zoo.robustbench import robustbench_unusable  # imports torch: only here

    catalog = _catalog(args)
    datasets = _datasets_named(catalog, args.dataset) if args.dataset else None
    listed = 0
    for entry in catalog.models.values():
        if datasets is not None and entry.dataset not in datasets:
            continue
        if args.purpose and entry.purpose != args.purpose:
            continue
        if args.model_type and entry.model_type != args.model_type:
            continue
        if args.year and entry.annotations.get("year") != args.year:
            continue
        if args.tag and args.tag not in entry.tags:
            continue
        needs_package = bool(robustbench_unusable(entry))  # runnable once the [robust] extra is installed
        if args.available and (entry.raw.get("unavailable") or needs_package):
            continue
        state = ("unavailable" if entry.raw.get("unavailable") else "needs [robust]" if needs_package
                 else "pinned" if entry.raw.get("pinned_file") else "")
        if not listed:
            print(_list_row("model", "dataset", "architecture", "purpose", "source", "state"))
        listed += 1
        print(_list_row(entry.id, entry.dataset, entry.architecture, entry.purpose, entry.source_kind, state))
    if not listed:
        print("no model matches these filters", file=sys.stderr)
    return 0


def _list_row(model: str, dataset: str, architecture: str, purpose: str, source: str, state: str) -> str:
    return f"{model:56} {dataset:15} {architecture:22} {purpose:10} {source:10} {state}".rstrip()


def _datasets_named(catalog, name: str) -> set[str]:
    """Dataset ids `name` stands for: an id, or the database's name that `catalog stats` prints
    (`CIFAR-10`), either case; an unknown name is an error listing both spellings."""
    wanted = name.casefold()
    names: dict[str, set[str]] = {}
    for dataset_id in catalog.datasets:
        names.setdefault(dataset_id, set()).add(dataset_id)
    for entry in catalog.models.values():
        names.setdefault(str(entry.annotations.get("dataset", entry.dataset)), set()).add(entry.dataset)
    found = {d for spelling, ids in names.items() if spelling.casefold() == wanted for d in ids}
    if found:
        return found
    shown = ", ".join(sorted(names, key=str.casefold))
    raise SecurityNetError(f"--dataset {name!r}: no such dataset; give an id or a database name: {shown}")


def _show(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    if args.model_id not in catalog.models:
        close = difflib.get_close_matches(args.model_id, list(catalog.models), n=3) or [
            i for i in catalog.models if all(part in i for part in args.model_id.split("-"))][:3]
        raise SecurityNetError(f"unknown model id {args.model_id!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
                               + "; see `securitynet catalog list`")
    entry = catalog.models[args.model_id]
    # Imported once the id is known: the annotations module loads torch, seconds an unknown id should not wait.
    from pytest_securitynet.catalog.annotate import read_computed
    from pytest_securitynet.results.regression import load_reported

    shown = entry.raw | {"catalog_file": entry.origin}
    computed = read_computed().get(entry.id)
    if computed:
        shown["computed"] = {k: v for k, v in computed.items() if k != "id"}
    reported = {f"{b} [{s}]": m for (model, b, s), m in load_reported().rows.items() if model == entry.id}
    if reported:
        shown["reported"] = reported
    print(json.dumps(shown, indent=2))
    return 0


def _validate(args: argparse.Namespace) -> int:
    catalog = _load(args)
    check_builders(catalog, args.allow_code_builders, torchvision=True)
    print(f"ok: {len(catalog.models)} models, {len(catalog.datasets)} datasets")
    return 0


def _import_csv(args: argparse.Namespace) -> int:
    from pytest_securitynet.catalog.importer import run_import

    if not args.csv.is_file():
        print(f"securitynet: {args.csv} does not exist", file=sys.stderr)
        return 2
    written, items = run_import(args.csv, args.out, args.reported)
    for path in written:
        print(f"wrote {path}")
    print(f"{len(items)} models imported; check with `securitynet catalog validate`")
    return 0


def _annotate(args: argparse.Namespace) -> int:
    from fnmatch import fnmatchcase

    from pytest_securitynet.catalog.annotate import COMPUTED_CSV, annotate, read_computed, write_computed

    catalog = _load(args)
    entries = [e for e in catalog.models.values() if not args.patterns or any(fnmatchcase(e.id, p) for p in args.patterns)]
    out = args.out or COMPUTED_CSV
    rows, skipped = annotate(entries, count_flops=not args.no_flops, progress=lambda line: print(line, file=sys.stderr))
    keep = {k: v for k, v in read_computed(out).items() if k in catalog.models} if args.patterns else {}
    write_computed(rows, out, keep)
    mismatched = [r.id for r in rows if r.output_width != catalog.models[r.id].annotations["num_classes"]]
    print(f"wrote {out}: {len(rows)} architectures measured, {len(skipped)} without an offline architecture")
    for model_id in mismatched:
        print(f"securitynet: {model_id}: output width differs from the entry's num_classes", file=sys.stderr)
    return 2 if mismatched else 0


def _stats(args: argparse.Namespace) -> int:
    from pytest_securitynet.catalog.stats import format_tables, plot, records, scope_line

    catalog = _catalog(args)
    recs = records(catalog, database_only=not args.all)
    print(scope_line(catalog, len(recs), database_only=not args.all))
    print(format_tables(recs))
    if args.plots:
        for path in plot(recs, args.plots):
            print(f"wrote {path}")
    return 0


def _prefetch(args: argparse.Namespace) -> int:
    from pytest_securitynet.zoo.prefetch import plan, prefetch, select, select_by_keyword
    from pytest_securitynet.zoo.store import FileStore

    settings = settings_from({"catalog": args.catalog, "cache": args.cache, "offline": args.offline,
                              "pin_on_first_download": args.pin_on_first_download})
    catalog = _pinned(load_catalog(catalog_paths(settings.catalogs), allow_code_builders=args.allow_code_builders),
                      args, settings.pin_on_first_download)
    store = FileStore(cache_dir=settings.cache_dir, mirrors=list(settings.mirrors), offline=settings.offline)
    if not args.patterns and not args.keyword:
        raise SecurityNetError("catalog prefetch: give model id patterns or dataset ids, or -k EXPR")
    chosen = select(catalog, args.patterns) if args.patterns else []
    if args.keyword:
        chosen += [e for e in select_by_keyword(catalog, args.keyword) if e not in chosen]
    print(f"{len(chosen)} model(s) selected", file=sys.stderr)
    needs, unavailable = plan(chosen, catalog, store)
    for model_id, reason in unavailable.items():
        print(f"skipped {model_id} (unavailable): {reason}")
    if args.dry_run:
        for need in needs:
            print(f"{'present' if need.present else 'missing'}  {need.name}  ({need.what}) {'' if need.present else need.source}".rstrip())
        return 0
    try:
        fetched = prefetch(needs, store, report=lambda line: print(line, file=sys.stderr))
    finally:  # weights fetched before a dataset failed are pinned all the same
        _pin_fetched(chosen, store)
    print(f"{len(needs)} file(s) needed, {len(fetched)} fetched, all in {store.cache_dir} or a mirror")
    return 0


def _pin_fetched(chosen, store) -> None:
    """Trust on first use: pin each fetched file of an entry marked for it (catalog/pins.py)."""
    from pytest_securitynet.catalog.pins import record_first_download
    from pytest_securitynet.zoo.resolver import resolve_model

    for entry in chosen:
        need = resolve_model(entry).needs[0] if entry.raw.get("pin_on_first_download") else None
        if need is not None and store.find(need) is not None:
            pin = record_first_download(entry, store.get(need))
            print(f"pinned {entry.id}: {pin.file} sha256 {pin.sha256} in {entry.raw['pin_on_first_download']}")


def _pin(args: argparse.Namespace) -> int:
    from pytest_securitynet.catalog.pins import pin_by_hand

    settings = settings_from({"catalog": args.catalog, "cache": args.cache, "pins": args.pins})
    catalog = _load(args)
    pin, copy = pin_by_hand(catalog, args.model_id, args.file, _pins_file(args), settings.cache_dir,
                            builder=args.builder, builder_args=_builder_args(args.builder_arg),
                            state_dict_key=args.state_dict_key, strip_prefix=args.strip_prefix,
                            allow_code_builders=args.allow_code_builders)
    print(f"pinned {pin.model_id}: {pin.file} sha256 {pin.sha256} in {_pins_file(args)}; copied to {copy}")
    return 0


def _builder_args(items: list[str]) -> dict:
    """`--builder-arg NAME=VALUE` values: whole numbers, true/false, else text."""
    out: dict = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SecurityNetError(f"--builder-arg {item!r}: write NAME=VALUE, e.g. depth=18")
        out[name] = (int(value) if value.lstrip("-").isdigit() else
                     value == "true" if value in ("true", "false") else value)
    return out


def _merge(args: argparse.Namespace) -> int:
    from pytest_securitynet.sweep.status import sweep_results

    files, out = list(args.files), args.out
    try:
        if len(files) == 1 and files[0].is_dir():
            files, out = sweep_results(files[0]), out or files[0] / "results.json"
        if out is None:
            print("securitynet merge: -o/--out is required when merging files", file=sys.stderr)
            return 2
        merged = merge_files(files, out)
        args.out = out
    except (OSError, ValueError, SecurityNetError) as exc:
        print(f"securitynet merge: {exc}", file=sys.stderr)
        return 2
    for conflict in merged.conflicts:
        print(conflict.warning("securitynet merge"), file=sys.stderr)
    print(f"{args.out}: {len(merged.rows)} rows from {len(merged.sources)} file(s), "
          f"{merged.collapsed} identical duplicate(s) folded, {len(merged.conflicts)} conflict(s)")
    if merged.replaced_kept is not None:
        print(f"the file it replaced, whose rows the merge does not all hold, is kept as {merged.replaced_kept}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
