"""Results files under faults and bad input: one writer per file, a file taken over at start with a
backup, resume refused across settings, a full disk, malformed files, permissions, merge of reruns."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_securitynet.cli import main as securitynet
from pytest_securitynet.results.journal import journal_path, read_journal
from pytest_securitynet.results.lock import ResultsBusyError, ResultsLock, holder_info, lock_path
from pytest_securitynet.results.merge import load_and_merge
from pytest_securitynet.results.resume import setting_differences
from pytest_securitynet.results.archive import archived_runs, runs_dir
from pytest_securitynet.results.rows import SCHEMA, ResultsWriteError, ResultsWriter, load_results, row_key, run_info

REPO = Path(__file__).resolve().parents[1]

ROWS = '''
import pytest

@pytest.mark.parametrize("k", [0, 1, 2])
def test_row(catalog_entry, record, k):
    record(k=k, score=0.5 + k / 10)
'''
"""A benchmark that records a row per model and `k` without loading any model: runs take seconds."""

KILLED_AT_FIRST_TEST = '''
import os, signal

def test_dies(catalog_entry):
    os.kill(os.getpid(), signal.SIGKILL)
'''

FULL_DISK = '''
import errno, os
from pytest_securitynet.results import journal

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FullFile:
    """A file on a full disk: nothing written to it fits."""

    def __init__(self, fh):
        self.fh = fh

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def write(self, data):
        raise ENOSPC

    def flush(self):
        pass

    def fileno(self):
        return self.fh.fileno()


class FullDisk:
    """`os` as the journal module sees it on a disk that fills up during the journal's FILL_AT-th
    append (half of that line fits) and stays full: appends and whole-document rewrites fail."""

    def __init__(self, fill_at):
        self.fill_at, self.appends, self.full = fill_at, 0, False

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        self.appends += 1
        if self.appends >= self.fill_at and not self.full:
            self.full = True
            os.write(fd, bytes(data)[: len(data) // 2])
        if self.full:
            raise ENOSPC
        return os.write(fd, data)

    def fdopen(self, fd, mode):
        fh = os.fdopen(fd, mode)
        return FullFile(fh) if self.full else fh


def pytest_configure(config):
    journal.os = FullDisk(FILL_AT)


def pytest_unconfigure(config):
    journal.os = os
'''


@pytest.fixture
def run(pytester, cache_dir, monkeypatch):
    """A temporary project with `benchmarks/test_rows.py`; `run(*args)` runs pytest on it."""
    monkeypatch.delenv("SECURITYNET_DATASET", raising=False)
    (pytester.path / "benchmarks").mkdir()
    (pytester.path / "benchmarks" / "test_rows.py").write_text(ROWS)

    def go(*args, subprocess=False):
        argv = ["-p", "no:cacheprovider", f"--securitynet-cache={cache_dir}",
                f"--securitynet-json={pytester.path / 'out.json'}", *args]
        return (pytester.runpytest_subprocess if subprocess else pytester.runpytest)(*argv)

    return go


def results_of(pytester) -> dict:
    return load_results(pytester.path / "out.json")


def keys(doc: dict) -> set[str]:
    return {row_key(r) for r in doc["results"]}


# --- one writer per results file ----------------------------------------------------------------

def test_a_run_on_a_file_another_run_holds_stops_at_start_naming_the_holder(pytester, run):
    run("benchmarks", "-k", "demo").assert_outcomes(passed=6)
    before = (pytester.path / "out.json").read_bytes()
    holder = ResultsLock(pytester.path / "out.json")
    holder.acquire(holder_info("2026-11-28T10:00:00+00:00"))  # another run, as far as the next one can tell
    try:
        result = run("benchmarks", "-k", "demo")
    finally:
        holder.release()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*out.json is being written by another run (host {socket.gethostname()}, "
                                 f"pid {os.getpid()}, started 2026-11-28T10:00:00+00:00*"])
    assert (pytester.path / "out.json").read_bytes() == before
    assert not lock_path(pytester.path / "out.json").exists()  # released by its holder
    run("benchmarks", "-k", "demo").assert_outcomes(passed=6)  # free again
    assert not lock_path(pytester.path / "out.json").exists()  # a run removes its lock when it ends


def test_a_run_without_benchmarks_neither_locks_nor_touches_the_file(pytester, run):
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_plain.py").write_text("def test_plain():\n    assert True\n")
    holder = ResultsLock(pytester.path / "out.json")
    holder.acquire(holder_info("2026-11-28T10:00:00+00:00"))  # a benchmark run writing the file meanwhile
    try:
        run("tests").assert_outcomes(passed=1)
    finally:
        holder.release()
    assert not (pytester.path / "out.json").exists() and not runs_dir(pytester.path / "out.json").exists()


def test_under_xdist_a_busy_file_stops_the_run_and_tests_naming_models_take_nothing(pytester, run):
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_named.py").write_text(  # ids that name catalog models, not benchmarks
        "from pathlib import Path\nimport pytest\n\n"
        "@pytest.mark.parametrize('model', ['demo-digits-cnn', 'demo-digits-rbf-overfit'])\n"
        "def test_named(model):\n    assert not Path('out.json.lock').exists() and not Path('out.json').exists()\n")
    run("tests", "-n", "2", subprocess=True).assert_outcomes(passed=2)
    assert not lock_path(pytester.path / "out.json").exists() and not (pytester.path / "out.json").exists()

    holder = ResultsLock(pytester.path / "out.json")
    holder.acquire(holder_info("2026-11-28T10:00:00+00:00"))
    try:
        result = run("benchmarks", "-k", "demo", "-n", "2", subprocess=True)
    finally:
        holder.release()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*out.json is being written by another run (host *, pid *, started 2026-11-28T10:00:00+00:00*"])
    assert not (pytester.path / "out.json").exists()
    run("benchmarks", "-k", "demo", "-n", "2", subprocess=True).assert_outcomes(passed=6)
    assert len(load_results(pytester.path / "out.json")["results"]) == 6 and not lock_path(pytester.path / "out.json").exists()


def test_the_lock_goes_with_its_holder_however_it_ends(tmp_path):
    results = tmp_path / "r.json"
    child = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys\n"
        "from pytest_securitynet.results.lock import ResultsLock, holder_info\n"
        "ResultsLock(sys.argv[1]).acquire(holder_info('then'))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"), str(results)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.returncode == -signal.SIGKILL and lock_path(results).exists()  # a killed holder's file stays ...
    first = ResultsLock(results)
    first.acquire(holder_info("now"))  # ... and is no obstacle
    with pytest.raises(ResultsBusyError, match=f"pid {os.getpid()}, started now"):
        ResultsLock(results).acquire(holder_info("later"))
    first.release()
    assert not lock_path(results).exists()
    second = ResultsLock(results)
    second.acquire(holder_info("later"))
    second.release()


@pytest.mark.parametrize("content", ["my notes\n", "[1, 2]\n", json.dumps({"schema": "other/2", "rows": []})])
def test_a_run_refuses_to_replace_a_file_that_is_not_a_results_file(pytester, run, content):
    (pytester.path / "out.json").write_text(content)
    result = run("benchmarks", "-k", "demo")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*out.json exists and is not a securitynet results file this run may replace*"
                                 "move it away or write this run's results elsewhere"])
    assert (pytester.path / "out.json").read_text() == content
    assert not runs_dir(pytester.path / "out.json").exists()


def test_a_run_takes_the_file_over_at_start_and_keeps_the_one_it_replaces(pytester, run):
    (pytester.path / "benchmarks" / "test_dies.py").write_text(KILLED_AT_FIRST_TEST)
    run("benchmarks/test_rows.py", "-k", "demo").assert_outcomes(passed=6)
    first = results_of(pytester)
    assert first["run"]["status"] == "complete" and len(first["results"]) == 6
    # A run that selects nothing leaves the file as it was.
    assert run("benchmarks/test_rows.py", "-k", "nothing-matches-this").ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert results_of(pytester) == first
    # A run killed in its first test: the file is no longer the previous run's "complete" one.
    killed = run("benchmarks/test_dies.py", "-k", "demo", subprocess=True)
    assert killed.ret != 0
    now = results_of(pytester)
    assert now["run"]["status"] == "running" and now["results"] == []
    assert now["run"]["started_at"] >= first["run"]["started_at"] and now["run"]["argv"] != first["run"]["argv"]
    (kept,) = archived_runs(pytester.path / "out.json")
    assert kept.name.startswith("0001_") and load_results(kept) == first
    # The next run replaces the empty file the killed one left: nothing to keep, the first run is still kept.
    run("benchmarks/test_rows.py", "-k", "demo and cnn").assert_outcomes(passed=3)
    assert len(results_of(pytester)["results"]) == 3
    assert archived_runs(pytester.path / "out.json") == [kept] and load_results(kept) == first


# --- resume with other settings -----------------------------------------------------------------

def test_resume_with_other_settings_is_refused_naming_them_unless_asked_to_mix(pytester, run):
    run("benchmarks", "-k", "demo and cnn").assert_outcomes(passed=3)
    before = (pytester.path / "out.json").read_bytes()
    refused = run("benchmarks", "-k", "demo", "--securitynet-resume", "--securitynet-seed=3", "--securitynet-limit=50")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*out.json holds rows measured with other settings (seed: 0 in the file, 3 now; "
                                  "limit: None in the file, 50 now)*--securitynet-resume-mixed*"])
    assert (pytester.path / "out.json").read_bytes() == before
    mixed = run("benchmarks", "-k", "demo", "--securitynet-resume-mixed", "--securitynet-seed=3", "--securitynet-limit=50")
    mixed.assert_outcomes(passed=3)
    doc = results_of(pytester)
    measured = {(r["model"], r["run_settings"]["seed"], r["run_settings"]["limit"]) for r in doc["results"]}
    assert measured == {("demo-digits-cnn", 0, None), ("demo-digits-rbf-overfit", 3, 50)}
    assert len(doc["results"]) == 6 and doc["run"]["settings"]["seed"] == 3


def test_every_setting_that_changes_a_row_is_compared():
    recorded = {"seed": 0, "members": 5000, "limit": None, "dataset_overrides": {}, "budgets": {},
                "batch_size": 256, "device": None}
    assert setting_differences(recorded, dict(recorded, batch_size=64, device="cuda:1")) == []
    changed = dict(recorded, members=100, dataset_overrides={"cifar10": "cifar10-jpeg"},
                   budgets={"neural_cleanse": {"epochs": "10"}})
    assert setting_differences(recorded, changed) == [
        "members: 5000 in the file, 100 now",
        'dataset_overrides: {} in the file, {"cifar10": "cifar10-jpeg"} now',
        'budgets: {} in the file, {"neural_cleanse": {"epochs": "10"}} now']
    assert setting_differences({"seed": 0}, changed) == []  # an older file that records less: compared on what it has


# --- a full disk --------------------------------------------------------------------------------

def test_a_full_disk_stops_the_run_with_a_message_and_keeps_every_finished_row(pytester, run):
    (pytester.path / "conftest.py").write_text(FULL_DISK.replace("FILL_AT", "4"))
    result = run("benchmarks", "-k", "demo")
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "Traceback" not in output and "INTERNALERROR" not in output
    result.stdout.fnmatch_lines(["*securitynet: cannot write results to *out.json (No space left on device); "
                                 "the run stops here. The 3 rows finished before are kept in out.json and "
                                 "out.journal.jsonl*"])
    assert "6 passed" not in output  # the run stopped
    doc = results_of(pytester)
    assert [(r["model"], r["setting"]) for r in doc["results"]] == [("demo-digits-cnn", k) for k in ("0", "1", "2")]
    assert doc["run"]["status"] == "running"
    journal = journal_path(pytester.path / "out.json")
    assert journal.read_bytes().endswith(b"\n")  # the half line of the failed append was cut off
    assert len(read_journal(journal)) <= 3


# --- malformed results files --------------------------------------------------------------------

BAD_FILES = {
    "a list": ([{"model": "m"}], "not a securitynet-results/1 file (the JSON is a list, not an object)"),
    "a row without its key": ({"schema": SCHEMA, "run": {}, "results": [{"model": "m", "metrics": {}}]},
                              "results[0]: a row needs the strings `model`, `benchmark` and `setting` "
                              "(missing or not a string: benchmark, setting)"),
    "metrics not an object": ({"schema": SCHEMA, "run": {}, "results": [
        {"model": "m", "benchmark": "b.c", "setting": "s", "outcome": "passed", "metrics": [0.5]}]},
        "results[0] (m::b.c::s): `metrics` is a list, not an object"),
}


@pytest.mark.parametrize("bad", BAD_FILES)
@pytest.mark.parametrize("command", ["merge", "report"])
def test_merge_and_report_name_a_malformed_file_in_one_line(tmp_path, capsys, bad, command):
    content, message = BAD_FILES[bad]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    argv = ["merge", str(path), "-o", str(tmp_path / "merged.json")] if command == "merge" else \
        ["report", str(path), "-o", str(tmp_path / "report"), "--no-reported"]
    assert securitynet(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}: {message}" in err and "Traceback" not in err


@pytest.mark.parametrize("bad", BAD_FILES)
def test_resume_names_a_malformed_file_as_a_usage_error(pytester, run, bad):
    content, message = BAD_FILES[bad]
    (pytester.path / "out.json").write_text(json.dumps(content))
    result = run("benchmarks", "-k", "demo", "--securitynet-resume")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "Traceback" not in err
    assert f"--securitynet-resume: cannot read {pytester.path / 'out.json'}: {pytester.path / 'out.json'}: {message}" in err


def test_a_malformed_journal_row_is_named(tmp_path):
    path = tmp_path / "r.json"
    journal_path(path).write_text(json.dumps({"row": {"model": "m", "setting": "s"}}) + "\n")
    with pytest.raises(ValueError, match=r"r\.journal\.jsonl: a row: a row needs the strings .*benchmark"):
        load_results(path)


# --- permissions --------------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_results_files_are_created_as_the_umask_says(tmp_path, umask):
    path = tmp_path / "r.json"
    replaced = {"schema": SCHEMA, "run": {}, "models": {}, "results": [make_row("old")]}
    previous = os.umask(umask)
    try:
        lock = ResultsLock(path)
        lock.acquire(holder_info("now"))
        writer = ResultsWriter(path, run_info([], {}), replaces=replaced)  # every file below is new
        writer.start()
        writer.add(make_row("a"), None)
        writer.add(make_row("b"), None)  # journaled
        made = [path, writer.archived, journal_path(path), lock_path(path)]
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in made}
        writer.finish("complete")
        lock.release()
    finally:
        os.umask(previous)
    assert modes == {p.name: 0o666 & ~umask for p in made}


def test_a_rewrite_keeps_the_mode_a_user_gave_the_file(tmp_path):
    path = tmp_path / "r.json"
    writer = ResultsWriter(path, run_info([], {}))
    writer.add(make_row("a"), None)
    path.chmod(0o640)
    writer.finish("complete")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# --- merging reruns -----------------------------------------------------------------------------

def make_row(setting: str, auc: float = 0.61, seconds: float = 12.5) -> dict:
    """A row as a rerun writes it: results, and timings that differ from run to run."""
    return {"model": "cifar10-resnet20-akamaster", "benchmark": "backdoor_detection.neural_cleanse", "setting": setting,
            "outcome": "passed", "metrics": {"auc": auc, "flagged": False, "runtime_s": seconds, "attack_time_s": seconds,
                                             "samples_per_s": 1000 / seconds, "attack_tflop_per_s": 3 / seconds,
                                             "speedup": seconds / 2, "phases": {"optimise": seconds * 0.9}},
            "wall_time_s": seconds + 1, "setup_time_s": seconds / 10, "finished_at": f"2026-11-28T10:{int(seconds):02d}:00+00:00",
            "worker": f"gw{int(seconds) % 4}", "nodeid": f"benchmarks/test_backdoor_detection.py::x[{setting}]@{seconds}",
            "peak_gpu_memory_gib": seconds / 100}


def write_results(path: Path, rows: list[dict]) -> Path:
    writer = ResultsWriter(path, run_info([], {}))
    for row in rows:
        writer.add(row, None)
    writer.finish("complete")
    return path


def test_merge_of_identical_reruns_reports_no_conflict_for_timings(tmp_path, capsys):
    first = write_results(tmp_path / "a.json", [make_row("s1", seconds=12.5), make_row("s2", seconds=30.0)])
    rerun = write_results(tmp_path / "b.json", [make_row("s1", seconds=14.0), make_row("s2", auc=0.7, seconds=31.0)])
    assert securitynet(["merge", str(first), str(rerun), "-o", str(tmp_path / "m.json")]) == 0
    captured = capsys.readouterr()
    assert "2 rows from 2 file(s), 1 identical duplicate(s) folded, 1 conflict(s)" in captured.out
    merged = load_and_merge([first, rerun])
    [conflict] = merged.conflicts
    assert conflict.key.endswith("::s2") and conflict.differences == ["auc: 0.7 vs 0.61"]  # the result, not the timings


def test_duplicates_differing_only_in_times_or_cache_provenance_collapse(tmp_path):
    trained, cached = make_row("s1"), make_row("s1", seconds=3.0)
    trained["metrics"].update(reference_source="trained", quantile_backbone_source="trained", source_cached=False)
    cached["metrics"].update(reference_source="disk", quantile_backbone_source="memory", source_cached=True)
    merged = load_and_merge([write_results(tmp_path / "a.json", [trained]), write_results(tmp_path / "b.json", [cached])])
    assert merged.collapsed == 1 and merged.conflicts == []
    cached["metrics"]["auc"] = 0.9  # a result that differs is still a conflict
    merged = load_and_merge([write_results(tmp_path / "a.json", [trained]), write_results(tmp_path / "c.json", [cached])])
    assert [c.differences for c in merged.conflicts] == [["auc: 0.61 vs 0.9"]]  # kept (finished last) first


# --- issue 20 and issue 19: every results file guarded, no run discards another's rows --------------

def test_no_run_discards_another_runs_rows(pytester, run):
    out = pytester.path / "out.json"
    first = run("benchmarks", "-k", "demo and cnn")
    first.assert_outcomes(passed=3)
    assert "previous run:" not in first.stdout.str()  # nothing was replaced
    runs = [results_of(pytester)]
    for selection in ("demo and rbf", "demo and cnn and 1"):
        result = run("benchmarks", "-k", selection)
        assert result.ret == 0
        runs.append(results_of(pytester))
        kept = archived_runs(out)
        result.stdout.fnmatch_lines([f"previous run: {kept[-1]} (every earlier run is kept in out-runs/, numbered)"])
    # Newest at the path, every earlier run numbered beside it, each with all its rows.
    assert [p.name[:5] for p in kept] == ["0001_", "0002_"]
    assert [load_results(p) for p in kept] == runs[:2] and results_of(pytester) == runs[2]
    assert sum(len(r["results"]) for r in runs) == 3 + 3 + 1
    # A resumed run is the same run: it keeps its rows in place and archives nothing.
    run("benchmarks", "-k", "demo and cnn", "--securitynet-resume").assert_outcomes(passed=2)
    assert archived_runs(out) == kept and len(results_of(pytester)["results"]) == 3
    # A run that records nothing leaves the file and the folder as they were.
    assert run("benchmarks", "-k", "nothing-matches").ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert archived_runs(out) == kept


def test_a_replaced_runs_artifacts_move_with_its_rows(tmp_path, monkeypatch):
    """A new run does not overwrite the files (Neural Cleanse triggers) an earlier run's rows point at;
    a run that records nothing, or cannot keep the earlier run, puts them back."""
    from pytest_securitynet.results import rows as rows_module

    path = tmp_path / "out.json"
    trigger = tmp_path / "out-artifacts" / "m" / "b" / "s" / "trigger-label3.png"
    trigger.parent.mkdir(parents=True)
    trigger.write_bytes(b"first run's trigger")
    old = dict(make_row("nc"), metrics={"trigger_png": "out-artifacts/m/b/s/trigger-label3.png", "note": "out-artifacts",
                                        "absolute": str(trigger)})
    replaced = {"schema": SCHEMA, "run": {"started_at": "2026-12-07T07:30:54+00:00"}, "models": {}, "results": [old]}

    idle = ResultsWriter(path, run_info([], {}), replaces=replaced)
    idle.set_aside_artifacts()  # what an xdist controller does before workers get tests
    assert not trigger.exists()
    unrecorded = tmp_path / "out-artifacts" / "m" / "b" / "s" / "trigger-label5.png"
    unrecorded.parent.mkdir(parents=True)  # a test of the new run began (and was stopped) ...
    unrecorded.write_bytes(b"no row points here")
    idle.finish("interrupted")  # ... and the run recorded nothing
    assert trigger.read_bytes() == b"first run's trigger" and not unrecorded.exists()
    assert archived_runs(path) == [] and not runs_dir(path).exists()

    def full_disk(target, data, durable=True):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(rows_module, "write_atomic", full_disk)  # the earlier run cannot be kept
    with pytest.raises(ResultsWriteError, match="No space left"):
        ResultsWriter(path, run_info([], {}), replaces=replaced).start()
    monkeypatch.undo()
    assert trigger.read_bytes() == b"first run's trigger" and not runs_dir(path).exists()  # whole, as it was

    real_write = rows_module.write_atomic
    monkeypatch.setattr(rows_module, "write_atomic",  # kept, then the new document does not fit
                        lambda target, *a: full_disk(target, *a) if Path(target) == path else real_write(target, *a))
    stopped = ResultsWriter(path, run_info([], {}), replaces=replaced)
    with pytest.raises(ResultsWriteError, match="No space left"):
        stopped.start()
    stopped.finish("error")
    monkeypatch.undo()
    (copy,) = archived_runs(path)  # the earlier run stays kept whole, its files beside it
    (row,) = load_results(copy)["results"]
    assert (copy.parent / row["metrics"]["trigger_png"]).read_bytes() == b"first run's trigger"
    copy.unlink()  # as before this part
    (copy.parent / row["metrics"]["trigger_png"]).parents[3].rename(tmp_path / "out-artifacts")

    writer = ResultsWriter(path, run_info([], {}), replaces=replaced)
    kept = writer.start()
    assert kept == runs_dir(path) / "0001_2026-12-07T07-30-54.json"
    assert not trigger.parent.exists()  # the new run starts with an empty artifacts folder
    (row,) = load_results(kept)["results"]
    assert row["metrics"]["trigger_png"] == "0001_2026-12-07T07-30-54-artifacts/m/b/s/trigger-label3.png"
    assert (kept.parent / row["metrics"]["trigger_png"]).read_bytes() == b"first run's trigger"
    assert Path(row["metrics"]["absolute"]).read_bytes() == b"first run's trigger"
    assert row["metrics"]["note"] == "out-artifacts"  # not a path into the folder
    writer.add(make_row("new"), None)
    writer.finish("complete")


def test_a_folder_of_files_left_without_its_run_keeps_its_number(tmp_path):
    """A run killed between moving an earlier run's files and keeping its rows leaves the folder
    alone in the runs folder: the next kept run takes the next number, never that folder."""
    from pytest_securitynet.results.archive import next_run_path

    path = tmp_path / "out.json"
    (runs_dir(path) / "0001_2026-12-07T07-30-54-artifacts").mkdir(parents=True)
    assert next_run_path(path, {"started_at": "2026-12-07T08:00:00+00:00"}).name == "0002_2026-12-07T08-00-00.json"


ARTIFACTS = '''
import os

def test_file(catalog_entry, record, artifacts_dir, results_path):
    path = artifacts_dir / "file.txt"
    path.write_text(os.environ["RUN_TAG"])
    record(file=os.path.relpath(path, results_path.parent), absolute=str(path))
'''


@pytest.mark.slow
def test_under_xdist_the_replaced_runs_artifacts_move_before_any_worker_writes(pytester, run, monkeypatch):
    (pytester.path / "benchmarks" / "test_files.py").write_text(ARTIFACTS)
    for tag in ("first", "second"):
        monkeypatch.setenv("RUN_TAG", tag)
        run("benchmarks/test_files.py", "-k", "demo", "-n", "1").assert_outcomes(passed=2)
    (kept,) = archived_runs(pytester.path / "out.json")
    for doc, folder, tag in ((load_results(kept), kept.parent, "first"), (results_of(pytester), pytester.path, "second")):
        assert len(doc["results"]) == 2
        for row in doc["results"]:
            assert (folder / row["metrics"]["file"]).read_text() == tag
            assert Path(row["metrics"]["absolute"]).read_text() == tag
    # A run with no artifacts folder to move keeps the run it replaces all the same.
    second = results_of(pytester)
    shutil.rmtree(pytester.path / "out-artifacts")
    run("benchmarks/test_rows.py", "-k", "demo-digits-cnn", "-n", "1").assert_outcomes(passed=3)
    assert [load_results(p) for p in archived_runs(pytester.path / "out.json")][1:] == [second]


def test_a_killed_runs_journal_is_kept_with_its_run(pytester, run):
    out = pytester.path / "out.json"
    run("benchmarks", "-k", "demo and cnn").assert_outcomes(passed=3)
    doc = results_of(pytester)
    journal_path(out).write_text(json.dumps({"row": dict(doc["results"][0], setting="journaled"),
                                             "model_info": None}) + "\n")  # a row a killed run journaled
    run("benchmarks", "-k", "demo and rbf").assert_outcomes(passed=3)
    (kept,) = archived_runs(out)
    assert "demo-digits-cnn::rows.row::journaled" in keys(load_results(kept)) and len(load_results(kept)["results"]) == 4


def test_a_symlinked_results_path_is_locked_and_written_through(pytester, run):
    target, link = pytester.path / "real.json", pytester.path / "out.json"
    run("benchmarks", "-k", "demo and cnn", f"--securitynet-json={target}").assert_outcomes(passed=3)
    link.symlink_to(target)
    assert lock_path(link) == lock_path(target) and journal_path(link) == journal_path(target)
    holder = ResultsLock(target)  # a run writing the target by its own name
    holder.acquire(holder_info("2026-12-07T07:00:00+00:00"))
    try:
        busy = run("benchmarks", "-k", "demo")  # through the symlink
    finally:
        holder.release()
    assert busy.ret == pytest.ExitCode.USAGE_ERROR
    busy.stderr.fnmatch_lines(["*is being written by another run (host *, started 2026-12-07T07:00:00+00:00*"])
    run("benchmarks", "-k", "demo").assert_outcomes(passed=6)
    assert link.is_symlink() and len(load_results(target)["results"]) == 6  # written through, still a link
    (kept,) = archived_runs(target)
    assert len(load_results(kept)["results"]) == 3


@pytest.mark.parametrize("case", ["under-a-file", "lock-is-a-folder", "path-is-a-folder", "unwritable-folder"])
def test_an_unusable_results_path_is_one_usage_error_before_any_test(pytester, run, case):
    (pytester.path / "afile").write_text("notes")
    path = {"under-a-file": pytester.path / "afile" / "out.json",
            "lock-is-a-folder": pytester.path / "locked.json",
            "path-is-a-folder": pytester.path / "folder.json",
            "unwritable-folder": Path("/proc/securitynet-results/out.json")}[case]
    if case == "lock-is-a-folder":
        lock_path(path).mkdir()
    if case == "path-is-a-folder":
        path.mkdir()
    if case == "unwritable-folder" and not Path("/proc/self").is_dir():
        pytest.skip("needs /proc, a folder no one can write")
    (pytester.path / "benchmarks" / "test_rows.py").write_text(ROWS.replace("record(", "open('ran', 'a').close()\n    record("))
    result = run("benchmarks", "-k", "demo", f"--securitynet-json={path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1 and errors[0].startswith(f"ERROR: cannot write results to {path}"), result.stderr.str()
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert not (pytester.path / "ran").exists()


def test_under_xdist_an_unusable_results_path_is_one_usage_error(pytester, run):
    (pytester.path / "afile").write_text("notes")
    result = run("benchmarks", "-k", "demo", "-n", "1", f"--securitynet-json={pytester.path / 'afile' / 'out.json'}",
                 subprocess=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: cannot write results to {pytester.path}/afile/out.json: "
                                 f"{pytester.path}/afile is a file, not a folder*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_resuming_a_merge_of_other_settings_is_refused(pytester, run, capsys):
    a, b, merged = (pytester.path / name for name in ("a.json", "b.json", "merged.json"))
    run("benchmarks", "-k", "demo and cnn", f"--securitynet-json={a}", "--securitynet-limit=300").assert_outcomes(passed=3)
    run("benchmarks", "-k", "demo and rbf", f"--securitynet-json={b}", "--securitynet-seed=9").assert_outcomes(passed=3)
    assert securitynet(["merge", str(a), str(b), "-o", str(merged)]) == 0
    refused = run("benchmarks", "-k", "demo", f"--securitynet-json={merged}", "--securitynet-resume",
                  "--securitynet-seed=9")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*holds rows measured with other settings (seed: 0 in some rows, 9 now; "
                                  "limit: 300 in some rows, None now)*"])
    # A merge of files with one set of settings keeps them, and resumes like the files it came from.
    assert securitynet(["merge", str(a), "-o", str(merged)]) == 0
    run("benchmarks", "-k", "demo", f"--securitynet-json={merged}", "--securitynet-resume",
        "--securitynet-limit=300").assert_outcomes(passed=3)


TERMINATED_AFTER_ROWS = '''
import os, signal, time
import pytest

@pytest.mark.parametrize("k", [0, 1, 2])
def test_row(catalog_entry, record, k):
    if k == 2:
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler stopping the job
        time.sleep(30)
    record(k=k)
'''


def test_a_sigterm_ends_the_run_as_ctrl_c_does_keeping_its_rows(pytester, run):
    (pytester.path / "benchmarks" / "test_rows.py").write_text(TERMINATED_AFTER_ROWS)
    result = run("benchmarks", "-k", "demo-digits-cnn", subprocess=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    doc = results_of(pytester)
    assert doc["run"]["status"] == "interrupted" and doc["run"]["finished_at"]
    assert {r["setting"] for r in doc["results"]} == {"0", "1"}
    assert not journal_path(pytester.path / "out.json").exists() and not lock_path(pytester.path / "out.json").exists()


SLOW_TEST = '''
import os, time

def test_slow(catalog_entry, record):
    with open(f"worker-{os.getpid()}.pid", "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(120)
'''


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_xdist_workers_stop_soon_after_their_controller_is_killed(pytester, cache_dir, how):
    (pytester.path / "benchmarks").mkdir()
    (pytester.path / "benchmarks" / "test_slow.py").write_text(SLOW_TEST)
    controller = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "benchmarks", "-k", "demo", "-n", "1",
         f"--securitynet-cache={cache_dir}", f"--securitynet-json={pytester.path / 'out.json'}"],
        cwd=pytester.path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(pytester.path.glob("worker-*.pid")) and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = [int(p.read_text()) for p in pytester.path.glob("worker-*.pid")]
        assert workers, "the worker never started its test"
    finally:
        controller.send_signal(how)
    killed = time.monotonic()
    alive = set(workers)
    while alive and time.monotonic() - killed < 4.5:  # execnet alone waits 5 s, then 10 s more
        alive = {pid for pid in alive if _running(pid)}
        time.sleep(0.2)
    for pid in alive:  # leave nothing behind whatever happened
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"workers {sorted(alive)} still ran 4.5 s after their controller got {how.name}"
    assert controller.wait(timeout=60) == (pytest.ExitCode.INTERRUPTED if how == signal.SIGTERM else -signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has ended; its parent (init) reaps it when it likes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def test_the_default_results_path_is_checked_once_benchmarks_are_collected(pytester, run, cache_dir):
    (pytester.path / "securitynet-results.json.lock").mkdir()  # the default path's lock cannot be a file
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_plain.py").write_text("def test_plain():\n    assert True\n")
    argv = ["-p", "no:cacheprovider", f"--securitynet-cache={cache_dir}"]
    pytester.runpytest("tests", *argv).assert_outcomes(passed=1)  # a run without benchmarks writes nothing
    result = pytester.runpytest("benchmarks", "-k", "demo", *argv)
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "INTERNALERROR" not in result.stdout.str()
    result.stderr.fnmatch_lines(["ERROR: cannot write results to *securitynet-results.json: "
                                 "*securitynet-results.json.lock (its lock) is not a regular file*"])
