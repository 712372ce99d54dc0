"""Results reporting: rows travel with test reports and the controller writes them to JSON."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from pytest_securitynet.catalog.entries import ModelEntry
from pytest_securitynet.errors import SecurityNetError
from pytest_securitynet.plugin import timeouts
from pytest_securitynet.plugin.items import (
    METRICS, benchmark_name, entry_of, key_of_nodeid, model_in_nodeid, setting_of,
)
from pytest_securitynet.plugin.progress import CPU_SECONDS
from pytest_securitynet.plugin.provenance import provenance_of
from pytest_securitynet.results.resume import first_provenance, resumed_row_conflict
from pytest_securitynet.results.archive import artifacts_dir
from pytest_securitynet.results.lock import ResultsLock, check_results_path, holder_info
from pytest_securitynet.results.rows import ResultsWriteError, now, plain, replaced_results
from pytest_securitynet.plugin.runstate import STATE, RunState, harness, state_harness
from pytest_securitynet.results.summary import summary_lines

PAYLOAD = "securitynet"
log = logging.getLogger(__name__)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    entry = entry_of(item)
    if entry is not None and (report.when == "call" or (report.when == "setup" and not report.passed)):
        row = _payload(item, entry)
        if timeouts.timed_out(report):
            state = item.config.stash[STATE]
            row["hint"] = timeouts.hint(item, state.settings, state.settings.timeout or getattr(item.config.option, "timeout", None))
            report.sections.append(("securitynet timeout", row["hint"]))
        item.config.hook.pytest_securitynet_row(item=item, row=row)
        report.user_properties.append((PAYLOAD, plain(row)))
    return report


def _payload(item: pytest.Item, entry: ModelEntry) -> dict[str, Any]:
    state = item.config.stash[STATE]
    h = harness(item.config)
    params = {k: v for k, v in item.callspec.params.items() if k != "catalog_entry"}
    loaded = getattr(item, "funcargs", {}).get("_securitynet_loaded")
    cpu = item.stash.get(CPU_SECONDS, None)
    return plain({
        "model": entry.id,
        "benchmark": benchmark_name(item),
        "setting": setting_of(item, entry),
        "params": {k: v if isinstance(v, (int, float, str, bool)) or v is None else repr(v) for k, v in params.items()},
        "metrics": item.stash.get(METRICS, {}),
        "dataset": entry.dataset,
        "dataset_source": h.dataset_for(entry).id,
        "device": str(h.device) if h.device_resolved else None,
        "seed": state.settings.seed,
        "worker": getattr(item.config, "workerinput", {}).get("workerid", "main"),
        "nodeid": item.nodeid,
        "finished_at": now(),
        **({"sizes": {name: len(part) for name, part in loaded.sets.items()}} if loaded is not None else {}),
        **({"cpu_time_s": round(cpu, 4)} if cpu is not None else {}),
        "provenance": provenance_of(item, entry),
    })


class ResultsReporter:
    """Controller-side: turns test reports into rows, writes the JSON, prints the summary.

    Once collection shows benchmark tests (and before the first runs) it takes the results file
    over: locks it, checks that what is there is a results file, and marks it "running" (keeping
    the one a fresh run replaces as a backup). Under xdist, where the controller sees node ids only,
    it checks at start that no other run holds the file and takes it over with the first row. A
    run without benchmarks, such as the project's own tests, neither locks nor touches it."""

    def __init__(self, state: RunState, lock: ResultsLock):
        self.state = state
        self.lock = lock
        self.report_line: str | None = None
        self.taken_over = False
        self.checked_free = False
        self.recorded_provenance: dict[str, dict] | None = None  # model -> provenance, on resume
        self.write_error: str | None = None

    def take_over(self) -> None:
        if self.taken_over:
            return
        self.taken_over = True
        state = self.state
        try:
            self.lock.acquire(holder_info(state.writer.run.get("started_at") or now()))  # held already when resuming
            if not state.resume:
                state.writer.replaces = replaced_results(state.json_path)
            state.writer.start()
        except SecurityNetError as exc:
            raise pytest.UsageError(str(exc)) from None

    @pytest.hookimpl
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if any(entry_of(item) is not None for item in session.items):
            self.take_over()

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids: list[str]) -> None:
        # The controller of an xdist run collects nothing itself, and a node id naming a catalog model
        # may belong to any test: it stops at start if another run holds the file, and takes the file
        # over with the first benchmark row (at once when an earlier run's artifacts must move first).
        if self.taken_over or self.checked_free:
            return
        self.checked_free = True
        models = state_harness(self.state).catalog.models
        if any(model_in_nodeid(nodeid, models) is not None for nodeid in ids):
            try:
                check_results_path(self.state.json_path)
                self.lock.check_free()
                if self.state.resume:
                    pass  # a resumed run keeps its rows, and their files, in place
                elif artifacts_dir(self.state.json_path).is_dir():
                    # Before the scheduler hands workers their tests: their files must not land among
                    # the replaced run's artifacts, which move with it, kept at once (all put back
                    # if this run records nothing).
                    self.take_over()
                else:
                    self.state.writer.no_artifacts_to_set_aside()
            except SecurityNetError as exc:
                raise pytest.UsageError(str(exc)) from None

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        state = self.state
        payload = dict(report.user_properties).get(PAYLOAD) if report.user_properties else None
        if report.when == "setup" and report.passed:
            state.setup_seconds[report.nodeid] = report.duration
            return
        if payload is None and report.when not in ("setup", "call", "teardown"):
            payload = _crashed_payload(report, state)  # xdist's report for a worker that died
        if payload is None:
            return
        row = dict(payload)
        row["outcome"] = "error" if report.when == "setup" and report.failed else report.outcome
        row["wall_time_s"] = round(report.duration, 4) if report.when == "call" else 0.0
        row["setup_time_s"] = round(state.setup_seconds.pop(report.nodeid, 0.0), 4)
        if report.skipped and isinstance(report.longrepr, tuple):
            row["message"] = report.longrepr[2]
        elif report.failed:
            row["message"] = "\n".join(filter(None, [_short(report), row.pop("hint", None)]))
        entry = state_harness(state).catalog.models.get(row["model"])
        info = _model_info(entry) if entry else None
        if info is not None and row.get("sizes"):
            info["sizes"] = row["sizes"]
            state.writer.run.setdefault("effective", {}).setdefault("members", {})[row["model"]] = row["sizes"]["members"]
        try:
            self.take_over()
        except pytest.UsageError as exc:  # another run took the file since the start
            pytest.exit(str(exc), returncode=pytest.ExitCode.USAGE_ERROR)
        if state.resume:
            if self.recorded_provenance is None:  # indexed once, then kept up to date below
                self.recorded_provenance = first_provenance(state.writer.rows.values())
            conflict = resumed_row_conflict(state.json_path, self.recorded_provenance.get(row["model"]), row)
            if conflict:  # a resumed file holds rows of this model from other weights or data: add nothing
                pytest.exit(conflict, returncode=pytest.ExitCode.USAGE_ERROR)
            if isinstance(row.get("provenance"), dict):
                self.recorded_provenance.setdefault(row["model"], row["provenance"])
        try:
            state.writer.add(row, info)
        except ResultsWriteError as exc:  # a full disk: stop, as a run that cannot record has no use
            self.write_error = str(exc)
            pytest.exit(f"securitynet: {exc}", returncode=pytest.ExitCode.INTERRUPTED)

    @pytest.hookimpl
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        status = {0: "complete", 1: "complete", 2: "interrupted", 5: "complete"}.get(int(exitstatus), "error")
        try:
            self.state.writer.finish(status)
        except ResultsWriteError as exc:
            self.write_error = self.write_error or str(exc)
            session.exitstatus = pytest.ExitCode.INTERRUPTED
        finally:
            self.state.writer.close()
        if self.state.report_dir and self.state.writer.rows and not self.write_error:
            self.report_line = _build_report(self.state.json_path, Path(self.state.report_dir))

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter, exitstatus: int, config: pytest.Config) -> None:
        state = self.state
        if int(exitstatus) == 5:
            _explain_empty_selection(terminalreporter, config, state)
            return
        if state.writer.rows:
            terminalreporter.section("securitynet")
            for line in summary_lines(list(state.writer.rows.values())):
                terminalreporter.write_line(line)
        if self.write_error:  # the file holds fewer rows than the table: say which
            terminalreporter.write_line(f"securitynet: {self.write_error}", red=True)
        elif state.writer.rows:
            terminalreporter.write_line(f"results: {state.json_path} ({len(state.writer.rows)} rows)")
            if state.writer.archived is not None:
                terminalreporter.write_line(f"previous run: {state.writer.archived} (every earlier run is kept "
                                            f"in {state.writer.archived.parent.name}/, numbered)")
            if self.report_line:
                terminalreporter.write_line(self.report_line)
            elif not state.report_dir:
                terminalreporter.write_line(f"report: securitynet report {state.json_path} -o report/ "
                                            f"(or run with --securitynet-report report/)")


def _build_report(json_path: Path, out_dir: Path) -> str:
    """`securitynet report JSON -o DIR`; a failure is reported on the terminal, never fails the run."""
    from pytest_securitynet.report import build_report

    try:
        report = build_report([json_path], out_dir, command=f"securitynet report {json_path} -o {out_dir}")
    except (OSError, ValueError, SecurityNetError) as exc:
        log.warning("securitynet report failed: %s", exc)
        return f"report: not written ({exc})"
    return f"report: {report.index} ({len(report.sections)} sections: {', '.join(report.sections)})"


def _crashed_payload(report: pytest.TestReport, state: RunState) -> dict[str, Any] | None:
    """The row of a test whose xdist worker died, rebuilt from its node id (`...::test_y[model-setting]`)."""
    h = state_harness(state)
    key = key_of_nodeid(report.nodeid, h.catalog.models)
    if key is None:
        return None
    model, benchmark, setting = key
    entry = h.catalog.models[model]
    gateway = getattr(getattr(report, "node", None), "gateway", None)  # xdist sets report.node
    worker = gateway.id if gateway is not None else None
    return {"model": model, "benchmark": benchmark, "setting": setting, "params": {}, "metrics": {},
            "dataset": entry.dataset, "dataset_source": h.dataset_for(entry).id,
            "device": state.worker_devices.get(worker), "seed": state.settings.seed, "worker": worker,
            "nodeid": report.nodeid, "finished_at": now()}


def _short(report: pytest.TestReport, limit: int = 2000) -> str:
    """The error itself: the last exception of a chain (not the one it was raised while handling)."""
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None and crash.message:
        return crash.message[:limit]
    if isinstance(report.longrepr, str):  # e.g. xdist's report for a worker that died
        return report.longrepr.strip()[:limit]
    lines = report.longreprtext.strip().splitlines()
    return "\n".join(lines[-3:])[:limit]


def _model_info(entry: ModelEntry) -> dict[str, Any]:
    keys = ("dataset", "architecture", "model_type", "source", "preprocess", "annotations", "tags")
    return {k: entry.raw[k] for k in keys if k in entry.raw} | {"catalog_file": entry.origin}


def _explain_empty_selection(terminalreporter, config: pytest.Config, state: RunState) -> None:
    if state.done:
        terminalreporter.write_line(
            f"securitynet: nothing left to run: {len(state.done)} passed rows in {state.json_path} are kept (--securitynet-resume).")
        return
    selection = " ".join(f"{flag} {value!r}" for flag, value in (("-k", config.option.keyword), ("-m", config.option.markexpr)) if value)
    models = harness(config).catalog.models
    demo = [i for i, e in models.items() if "demo" in e.tags]
    terminalreporter.write_line(
        f"securitynet: no benchmark matched the selection {selection or '(none)'}. The catalog has "
        f"{len(models)} models (e.g. {', '.join(demo + list(models)[:3])}); ids and keywords are listed by "
        f"`securitynet catalog list`.", red=True)


