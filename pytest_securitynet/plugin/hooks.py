"""pytest wiring: options, configuration and collection. Fixtures and reporting are plugins of their own."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from pytest_securitynet.plugin import estimate, fixtures, gpus, hookspec, profiling, reporter, selection, specs, timeouts
from pytest_securitynet.plugin import collected
from pytest_securitynet.plugin.budgets import check_budgets, check_budgets_at_start
from pytest_securitynet.plugin import signals
from pytest_securitynet.plugin import regression
from pytest_securitynet.errors import SecurityNetError
from pytest_securitynet.plugin.items import benchmark_name, entry_of, item_row_key, key_of_nodeid
from pytest_securitynet.plugin.missing import MissingFiles, missing_files
from pytest_securitynet.plugin.overview import XdistStartLine, start_line
from pytest_securitynet.plugin.progress import ProgressPlugin
from pytest_securitynet.results.lock import ResultsLock, check_results_path, holder_info
from pytest_securitynet.results.resume import check_resume, check_resume_provenance
from pytest_securitynet.harness.provenance import code_version, entry_sha256
from pytest_securitynet.zoo.robustbench import robustbench_unusable
from pytest_securitynet.results.rows import (PASSED, ResultsWriter, load_results, now, plain, results_exist, row_key,
                                             run_info)
from pytest_securitynet.plugin.runstate import STATE, RunState, harness
from pytest_securitynet.harness.settings import Settings, settings_from

DEFAULT_JSON = "securitynet-results.json"
MAX_PREFETCH_IDS = 4
HEAVY_SKIPPED = pytest.StashKey[bool]()


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.register(fixtures, "securitynet-fixtures")
    pluginmanager.register(reporter, "securitynet-report-rows")
    pluginmanager.register(specs, "securitynet-specs")
    pluginmanager.register(profiling, "securitynet-profiling")
    group = parser.getgroup("securitynet", "SecurityNet benchmarks")
    group.addoption("--gpus", dest="securitynet_gpus", type=int, default=None, metavar="N",
                    help="start N xdist workers, one pinned to each GPU (unless -n is given). Default: 0 (no workers).")
    group.addoption("--workers-per-gpu", dest="securitynet_workers_per_gpu", type=int, default=None, metavar="K",
                    help="with --gpus N: K workers pinned to each GPU, N*K in all. Default: 1.")
    group.addoption("--securitynet-catalog", action="append", default=[], metavar="PATH",
                    help="extra catalog file or directory (repeatable; also SECURITYNET_CATALOG). Default: built-in only.")
    group.addoption("--securitynet-dataset", action="append", default=[], metavar="ID=OTHER",
                    help="evaluate models of dataset ID on catalogued copy OTHER, e.g. cifar10=cifar10-jpeg "
                         "(repeatable; also ini securitynet_dataset and env SECURITYNET_DATASET). Default: none.")
    group.addoption("--securitynet-budget", action="append", default=[], metavar="NAME.FIELD=VALUE",
                    help="change a benchmark's budget, e.g. backdoor.nc_epochs=10 (repeatable; also ini "
                         "securitynet_budget and env SECURITYNET_BUDGET; every row records what was used). "
                         "Default: each benchmark's own (docs/budgets.md).")
    group.addoption("--securitynet-json", default=None, metavar="PATH",
                    help=f"results file; each finished row is journaled beside it at once. "
                         f"Default: {DEFAULT_JSON} in the invocation directory.")
    group.addoption("--securitynet-resume", action="store_true",
                    help="keep the rows of an existing results file and skip tests that already passed; refused "
                         "when the file was written with other settings (seed, members, limit, datasets, budgets). "
                         "Default: off.")
    group.addoption("--securitynet-resume-mixed", action="store_true",
                    help="--securitynet-resume even when the settings differ: each row records its own in "
                         "`run_settings`. Default: off.")
    group.addoption("--securitynet-cache", default=None, metavar="DIR",
                    help="weights and data cache (also SECURITYNET_CACHE). Default: the user cache dir.")
    group.addoption("--securitynet-offline", action="store_true",
                    help="never download; a missing file fails at once (also SECURITYNET_OFFLINE=1). Default: off.")
    group.addoption("--securitynet-seed", type=int, default=None, metavar="N", help="seed for every sampled set. Default: 0.")
    group.addoption("--securitynet-members", type=int, default=None, metavar="N",
                    help="members (and as many non-members) per model. Default: 5000 (the paper's).")
    group.addoption("--securitynet-limit", type=int, default=None, metavar="N",
                    help="cap every set (members, auxiliary, train/test evaluation) at N samples, for quick runs. Default: none.")
    group.addoption("--securitynet-bootstrap", type=int, default=None, metavar="N",
                    help="resamples of the bootstrap 95%% interval recorded beside each headline metric "
                         "(0: values without intervals). Default: 1000.")
    group.addoption("--securitynet-batch-size", type=int, default=None, metavar="N", help="inference batch size. Default: 256.")
    group.addoption("--securitynet-device", default=None, metavar="DEVICE",
                    help="torch device for every test, e.g. cpu or cuda:1. Default: the worker's GPU, else cpu.")
    group.addoption("--securitynet-heavy", action="store_true",
                    help="run tests marked heavy (e.g. the WRN-50-2 stealing surrogate) on a CPU too. "
                         "Default: off (they skip on a CPU, saying so).")
    group.addoption("--securitynet-timeout", type=float, default=None, metavar="SECONDS",
                    help="time limit of each benchmark test, replacing the ini `timeout` of pytest-timeout "
                         "(also ini securitynet_timeout; 0: none). Default: 0.")
    group.addoption("--securitynet-report", default=None, metavar="DIR",
                    help="write `securitynet report` of the results into DIR when the run ends "
                         "(also ini securitynet_report). Default: off.")
    group.addoption("--securitynet-skip-missing", action="store_true",
                    help="skip the tests of models whose weights or data are neither in the cache nor a mirror "
                         "(and cannot be downloaded now). Default: off (such a run stops before its first test, "
                         "saying how many models lack files).")
    group.addoption("--securitynet-allow-code-builders", action="store_true",
                    help="let catalog entries name a module:function builder, i.e. run code from the catalog "
                         "file (also ini securitynet_allow_code_builders). Default: registered builders only.")
    group.addoption("--securitynet-pins", default=None, metavar="FILE",
                    help="the sha256 pin lock file (also ini securitynet_pins, SECURITYNET_PINS). "
                         "Default: securitynet-pins.toml beside the first user catalog, else in the current directory.")
    group.addoption("--securitynet-pin-on-first-download", action="store_true",
                    help="trust on first use: let direct-URL entries without a recorded sha256 load, pinning the "
                         "sha256 of their first download in the pin lock file (also ini "
                         "securitynet_pin_on_first_download, SECURITYNET_PIN_ON_FIRST_DOWNLOAD=1). Default: off.")
    regression.add_options(group)
    parser.addini("securitynet_pins", "the sha256 pin lock file", default="")
    parser.addini("securitynet_pin_on_first_download", "pin direct-URL weights on their first download",
                  type="bool", default=False)
    parser.addini("securitynet_dataset", "dataset overrides ID=OTHER, one per line", type="linelist", default=[])
    parser.addini("securitynet_budget", "budget overrides NAME.FIELD=VALUE, one per line", type="linelist", default=[])
    parser.addini("securitynet_allow_code_builders", "let catalog entries name module:function builders (code)",
                  type="bool", default=False)
    parser.addini("securitynet_timeout", "time limit of each benchmark test in seconds (0: none)", default="")
    parser.addini("securitynet_report", "folder for the report written when the run ends", default="")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_cmdline_main(config: pytest.Config):
    gpus.configure_workers(config)
    return (yield)


def pytest_report_header(config: pytest.Config) -> str | None:
    return gpus.pytest_report_header(config)


def settings_of(config: pytest.Config) -> Settings:
    """The run's settings from options, ini values and environment (a usage error when one is bad)."""
    names = ("catalog", "dataset", "budget", "cache", "offline", "seed", "members", "limit", "batch_size", "device",
             "allow_code_builders", "bootstrap", "pins", "pin_on_first_download")
    options = {name: config.getoption(f"securitynet_{name}") for name in names}
    options["gpus"] = config.getoption("securitynet_gpus")
    options["workers_per_gpu"] = config.getoption("securitynet_workers_per_gpu")
    options["timeout"] = config.getoption("securitynet_timeout")
    ini = {"dataset": config.getini("securitynet_dataset"), "budget": config.getini("securitynet_budget"),
           "timeout": config.getini("securitynet_timeout"),
           "allow_code_builders": config.getini("securitynet_allow_code_builders"),
           "pins": config.getini("securitynet_pins") or None,
           "pin_on_first_download": config.getini("securitynet_pin_on_first_download")}
    try:
        return settings_from(options, ini)
    except SecurityNetError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "benchmark_models: tests on models published as benchmarks")
    config.addinivalue_line("markers", "security_models: tests on models published by security papers")
    config.addinivalue_line("markers", "xdist_group(name): keep tests of one group on one xdist worker")
    config.addinivalue_line("markers", "securitynet_heavy(reason): skip on a CPU unless --securitynet-heavy")
    signals.install(config)  # SIGTERM ends the run as Ctrl-C does; workers stop with their controller
    opt = config.getoption
    settings = settings_of(config)
    workerinput = getattr(config, "workerinput", None)
    json_path = Path(opt("securitynet_json") or Path(config.invocation_params.dir) / DEFAULT_JSON)
    state = RunState(settings, json_path, opt("securitynet_resume") or opt("securitynet_resume_mixed"),
                   gpu_index=workerinput.get(gpus.GPU_KEY) if workerinput else None)
    state.report_dir = opt("securitynet_report") or config.getini("securitynet_report") or None
    if workerinput is None:  # estimates are printed by the controller (or a run without xdist)
        state.durations = [estimate.previous_run(json_path), estimate.reference_run()]
    config.stash[STATE] = state
    config.pluginmanager.register(ProgressPlugin(config, lambda item: entry_of(item) is not None,
                                                 lambda item: _expected(item, state)), "securitynet-progress")
    if regression.wanted(config):
        config.pluginmanager.register(regression.RegressionPlugin(config), "securitynet-regression")
    if workerinput is not None:
        state.done = set(workerinput.get(gpus.DONE_KEY, ()))
        gpus.configure_worker(config, workerinput)
        return
    if not config.option.help:
        check_budgets_at_start(config, settings)  # on the controller: one usage error, before workers start
    if opt("securitynet_json") and not (config.option.collectonly or config.option.help):
        _usage(lambda: check_results_path(json_path))  # a path given to write to must be writable, at once
    lock = ResultsLock(json_path)  # one writer per results file; a fresh run takes it before its first test
    config.add_cleanup(lock.release)
    if state.resume and not (config.option.collectonly or config.option.help or config.option.markers):
        _usage(lambda: lock.acquire(holder_info(now())))  # the rows read now stay the file's until the run ends
    previous = _previous_results(state) if state.resume else None
    per_row = _usage(lambda: check_resume(json_path, previous, plain(settings.as_dict()),
                                          opt("securitynet_resume_mixed"))) if previous else None
    if previous:  # rows of other weights, data or entries are found as they arrive (reporter)
        _usage(lambda: check_resume_provenance(json_path, previous, _entry_hashes(config, previous), code_version(),
                                               opt("securitynet_resume_mixed")))
    state.done = {row_key(r) for r in previous["results"] if r.get("outcome") == PASSED} if previous else set()
    if not config.option.collectonly:
        run = run_info(config.invocation_params.args, settings.as_dict())
        config.hook.pytest_securitynet_run_info(config=config, run=run)
        state.writer = ResultsWriter(json_path, plain(run), previous, row_settings=per_row)
        config.pluginmanager.register(reporter.ResultsReporter(state, lock), "securitynet-results")
    if config.pluginmanager.hasplugin("xdist") and getattr(config.option, "numprocesses", None):
        pool = gpus.GpuPool(settings.gpus, per_gpu=settings.workers_per_gpu)
        folder = collected.new_folder()  # where workers list their benchmark tests
        config.add_cleanup(lambda: collected.remove(folder))
        config.pluginmanager.register(gpus.XdistHooks(pool, sorted(state.done), config.option.dist == "loadgroup", state,
                                                      collected_dir=folder))
        device = settings.device or (f"GPUs {', '.join(map(str, pool.devices))}" if pool.devices else "cpu")
        config.pluginmanager.register(XdistStartLine(config, lambda ids: _xdist_start_line(config, ids, device), folder))


def _xdist_start_line(config: pytest.Config, ids: list[str], device: str) -> str | None:
    """The start line from node ids (the controller has no items)."""
    state = config.stash[STATE]
    models = harness(config).catalog.models
    keys, found, benchmarks = [], [], set()
    for key in filter(None, (key_of_nodeid(nodeid, models) for nodeid in ids)):
        model, benchmark, setting = key
        benchmarks.add(benchmark)
        found.append(model)
        keys.append(row_key({"model": model, "benchmark": benchmark, "setting": setting}))
    if not keys:
        return None
    entries = [models[m] for m in dict.fromkeys(found)]
    _check_missing(config, entries)
    workers = config.option.numprocesses
    return start_line(list(dict.fromkeys(found)), len(keys), len(benchmarks), f"{device}, {workers} workers",
                      state.json_path, _estimate(config, keys, entries) + " (summed over workers)")


def _estimate(config: pytest.Config, keys: list[str], entries: list) -> str:
    """The start line's expected time: the tests', training the demo models not cached yet, and the current load."""
    cold = estimate.cold_models(entries, harness(config).files.cache_dir)
    return estimate.estimate(keys, config.stash[STATE].durations, cold).describe(*estimate.current_load())


def _expected(item: pytest.Item, state: RunState) -> float | None:
    entry = entry_of(item)
    return estimate.expected_seconds(item_row_key(item, entry), state.durations) if entry is not None else None


def pytest_sessionstart(session: pytest.Session) -> None:
    # The catalog (built-in, SECURITYNET_CATALOG, --securitynet-catalog) is loaded before
    # collection, so a bad file stops the run as a usage error rather than a collection error.
    harness(session.config)


def _previous_results(state: RunState) -> dict[str, Any] | None:
    if not results_exist(state.json_path):  # a killed run may have left only its journal
        return None
    try:
        return load_results(state.json_path)
    except (ValueError, OSError) as exc:
        raise pytest.UsageError(f"--securitynet-resume: cannot read {state.json_path}: {exc}") from None


def _entry_hashes(config: pytest.Config, previous: dict[str, Any]) -> dict[str, str]:
    """sha256 of today's catalog entry of each model the file has rows of."""
    models = harness(config).catalog.models
    return {m: entry_sha256(models[m].raw) for m in {r["model"] for r in previous["results"]} if m in models}


def _usage(call):
    """`call()`, with a `SecurityNetError` turned into a usage error (one line, exit 4)."""
    try:
        return call()
    except SecurityNetError as exc:
        raise pytest.UsageError(str(exc)) from None


# --- collection -------------------------------------------------------------------------------

def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "catalog_entry" not in metafunc.fixturenames:
        return
    state = metafunc.config.stash[STATE]
    if state.catalog_params is None:  # built once: every benchmark function shares them
        state.catalog_params = [
            pytest.param(e, id=e.id, marks=[pytest.mark.xdist_group(e.id), getattr(pytest.mark, f"{e.purpose}_models"),
                                            *_unavailable(e)])
            for e in harness(metafunc.config).catalog.models.values()
        ]
    params = state.catalog_params
    keyword = selection.compile_keyword(metafunc.config.option.keyword)
    if keyword is not None:  # models no test of which `-k` can select are never generated
        rest = selection.shared_names(metafunc)
        params = [p for p in params if selection.may_match(keyword, [p.id, *_keywords(state, p.values[0])], p.id, rest)]
    metafunc.parametrize("catalog_entry", params)


def _keywords(state: RunState, entry) -> set[str]:
    if entry.id not in state.keywords:
        state.keywords[entry.id] = entry.keywords()
    return state.keywords[entry.id]


def _unavailable(entry) -> list:
    """Entries whose weights have no public direct file, or whose loader's package is not installed
    (RobustBench's zoo without the [robust] extra), skip, saying why."""
    reason = entry.raw.get("unavailable") or robustbench_unusable(entry)
    return [pytest.mark.skip(reason=f"{entry.id}: {reason}")] if reason else []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash[STATE]
    check_budgets(config, state.settings)  # benchmark modules, which declare budgets, are imported now
    models = harness(config).catalog.models
    order = {model_id: i for i, model_id in enumerate(models)}
    done, keep = [], []
    for item in items:
        entry = entry_of(item)
        if entry is not None:
            item.extra_keyword_matches.update(_keywords(state, entry))
            if state.done and item_row_key(item, entry) in state.done:
                done.append(item)
                continue
        keep.append((order.get(entry.id, -1) if entry is not None else -1, item))
    # All tests of one model run back to back, so the model is loaded and queried once.
    keep.sort(key=lambda pair: pair[0])
    if done:
        config.hook.pytest_deselected(items=done)
    items[:] = [item for _, item in keep]
    _limit_and_skip_heavy(config, state, items)


def _limit_and_skip_heavy(config: pytest.Config, state: RunState, items: list[pytest.Item]) -> None:
    """Benchmark tests get the run's benchmark time limit; heavy ones skip on a CPU unless asked for.

    The limit is `--securitynet-timeout`; without it, a `--timeout` given on the command line
    stands, and the ini `timeout` (meant for the project's tests) is lifted: no limit.
    """
    limit = state.settings.timeout
    if limit is None and getattr(config.option, "timeout", None) is None:
        limit = 0.0
    has_timeout = config.pluginmanager.hasplugin("timeout") and limit is not None
    run_heavy = config.getoption("securitynet_heavy")
    for item in items:
        if entry_of(item) is None:
            continue
        if has_timeout:
            timeouts.apply_limit(item, limit)
        heavy = item.get_closest_marker("securitynet_heavy")
        if heavy is not None and not run_heavy and _on_cpu(config):
            reason = heavy.kwargs.get("reason") or (heavy.args[0] if heavy.args else "marked heavy")
            item.add_marker(pytest.mark.skip(reason=f"heavy on a CPU: {reason}; --securitynet-heavy runs it"))
            item.stash[HEAVY_SKIPPED] = True


def _on_cpu(config: pytest.Config) -> bool:
    """Whether this process's tests run on the CPU (resolves the device, as the first test would)."""
    return harness(config).device.type == "cpu"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Before the results file is taken over and the start line printed: tell an xdist controller which
    tests are benchmarks, and find the selected models whose weights or data are missing."""
    config = session.config
    benchmark = [(item, entry) for item in session.items if (entry := entry_of(item)) is not None]
    collected.write(config, [item.nodeid for item, _ in benchmark])
    if not benchmark or config.option.collectonly:
        return
    runnable = [(item, entry) for item, entry in benchmark if item.get_closest_marker("skip") is None]
    missing = _check_missing(config, list({entry.id: entry for _, entry in runnable}.values()))
    if missing:  # only with --securitynet-skip-missing: else _check_missing stopped the run
        for item, entry in runnable:
            if entry.id in missing.models:
                item.add_marker(pytest.mark.skip(reason=missing.reason(entry.id)))


def _check_missing(config: pytest.Config, entries: list) -> MissingFiles | None:
    """The models among `entries` that lack files; a usage error (one line) unless --securitynet-skip-missing.

    An xdist worker never stops the run (its controller does, from the workers' lists) and prints nothing."""
    worker = hasattr(config, "workerinput")
    if worker and not config.getoption("securitynet_skip_missing"):
        return None  # the controller checks the workers' lists; nothing here would be used
    h = harness(config)
    missing = missing_files(entries, h.files, h.dataset_for)
    if not missing:
        return None
    if not config.getoption("securitynet_skip_missing"):
        raise pytest.UsageError(missing.stop_line(_prefetch_selection(config, list(missing.models))))
    if not worker:
        config.stash[STATE].notices.append(missing.skip_line())
    return missing


def _prefetch_selection(config: pytest.Config, model_ids: list[str]) -> str:
    """What to give `securitynet catalog prefetch` for the models a run lacks: the run's -k, else their ids."""
    keyword = (config.option.keyword or "").strip()
    if keyword:
        return f"-k {shlex.quote(keyword)}"
    return " ".join(model_ids) if len(model_ids) <= MAX_PREFETCH_IDS else "'*'"


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> str | list[str] | None:
    """The line before the first test: models, tests, device, results file, expected time, heavy skips."""
    state = config.stash[STATE]
    benchmark_items = [(item, entry) for item in items if (entry := entry_of(item)) is not None]
    if not benchmark_items or config.option.collectonly:
        return None
    models = list(dict.fromkeys(entry.id for _, entry in benchmark_items))
    benchmarks = {benchmark_name(item) for item, _ in benchmark_items}
    keys = [item_row_key(item, entry) for item, entry in benchmark_items
            if item.get_closest_marker("skip") is None]
    heavy = sum(item.stash.get(HEAVY_SKIPPED, False) for item, _ in benchmark_items)
    entries = list({entry.id: entry for _, entry in benchmark_items}.values())
    line = start_line(models, len(benchmark_items), len(benchmarks), str(harness(config).device), state.json_path,
                      _estimate(config, keys, entries), heavy)
    return [*state.notices, line]
