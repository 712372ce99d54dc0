"""End to end through pytest: collection per model, fixtures, selection, xdist, crash safety, errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from pytest_securitynet.catalog.entries import BUILTIN_CATALOG, load_catalog
from pytest_securitynet.plugin.missing import MissingFiles
from pytest_securitynet.results.rows import load_results

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "adding-an-attack.md"
TASK = REPO / "benchmarks" / "test_task_performance.py"

CRASHING = '''
import os, signal

def test_first(target, test_set, record):
    record(n=len(test_set))

def test_second(target, record, catalog_entry):
    if catalog_entry.id == "demo-digits-rbf-overfit":
        os.kill(os.getpid(), signal.SIGKILL)
    record(ok=1)
'''


def doc_example() -> str:
    return re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)


@pytest.fixture
def bench(pytester, cache_dir, monkeypatch):
    """A temporary project with a `benchmarks/` folder; runs use the session's cache."""
    monkeypatch.delenv("SECURITYNET_DATASET", raising=False)
    (pytester.path / "benchmarks").mkdir()
    shutil.copy(TASK, pytester.path / "benchmarks" / TASK.name)

    def run(*args, subprocess=False, json_name="out.json"):
        argv = ["-p", "no:cacheprovider", f"--securitynet-cache={cache_dir}",
                f"--securitynet-json={pytester.path / json_name}", *args]
        return (pytester.runpytest_subprocess if subprocess else pytester.runpytest)(*argv)

    return run


def rows(pytester, name="out.json") -> list[dict]:
    return json.loads((pytester.path / name).read_text())["results"]


def test_dropped_in_attack_is_collected_per_model_and_recorded(pytester, bench):
    (pytester.path / "benchmarks" / "test_confidence_gap.py").write_text(doc_example())
    result = bench("benchmarks/test_confidence_gap.py", "-k", "demo")
    result.assert_outcomes(passed=4)
    got = {(r["model"], r["setting"]): r for r in rows(pytester)}
    assert set(got) == {(m, s) for m in ("demo-digits-cnn", "demo-digits-rbf-overfit") for s in ("1", "3")}
    for row in got.values():
        assert row["benchmark"] == "confidence_gap.confidence_gap" and row["outcome"] == "passed"
        assert row["metrics"]["queries"] == 2 * 898 and row["params"] == {"top_k": row["metrics"]["queries"] and int(row["setting"])}
        assert row["dataset_source"] == "digits" and row["device"] == "cpu"
    # The overfit model is more confident on its members than the one that generalises.
    assert got[("demo-digits-rbf-overfit", "1")]["metrics"]["confidence_gap"] > got[("demo-digits-cnn", "1")]["metrics"]["confidence_gap"] + 0.1
    assert "securitynet" in result.stdout.str() and "confidence_gap" in result.stdout.str()


def catalog_count(predicate) -> int:
    return sum(1 for entry in load_catalog([BUILTIN_CATALOG]).models.values() if predicate(entry))


@pytest.mark.parametrize(("selection", "expected"), [
    (["-k", "cifar10 and akamaster"], lambda e: "akamaster" in e.tags),
    (["-k", "resnet20 and akamaster"], lambda e: e.id == "cifar10-resnet20-akamaster"),
    (["-k", "cifar10 and not security"], lambda e: e.dataset == "cifar10" and e.purpose == "benchmark"),
    (["-k", "demo"], lambda e: "demo" in e.tags),
    (["-m", "security_models"], lambda e: e.purpose == "security"),
    (["-m", "benchmark_models", "-k", "cifar10"], lambda e: e.dataset == "cifar10" and e.purpose == "benchmark"),
])
def test_selection_by_keyword_and_marker(bench, selection, expected):
    result = bench("--collect-only", "-q", "benchmarks", *selection)
    collected = [line for line in result.outlines if "::test_accuracy[" in line]
    assert len(collected) == catalog_count(expected) > 0


def test_a_selection_that_matches_nothing_says_so(bench):
    result = bench("benchmarks", "-k", "resnet9999")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(["*no benchmark matched the selection -k 'resnet9999'*models*demo-digits-cnn*"])


def test_xdist_writes_the_same_rows_as_a_single_process(pytester, bench):
    bench("benchmarks", "-k", "demo", "-n", "0", json_name="n0.json").assert_outcomes(passed=2)
    bench("benchmarks", "-k", "demo", "-n", "2", subprocess=True, json_name="n2.json").assert_outcomes(passed=2)
    def comparable(name):
        return sorted((r["model"], r["benchmark"], r["setting"], r["outcome"], json.dumps(r["metrics"], sort_keys=True))
                      for r in rows(pytester, name))
    assert comparable("n0.json") == comparable("n2.json")
    assert {r["worker"] for r in rows(pytester, "n2.json")} <= {"gw0", "gw1"}


def test_a_killed_run_leaves_valid_json_with_every_finished_row(pytester, bench):
    (pytester.path / "benchmarks" / "test_crash.py").write_text(CRASHING)
    result = bench("benchmarks/test_crash.py", "-k", "demo", subprocess=True)
    assert result.ret != 0
    json.loads((pytester.path / "out.json").read_text())  # valid JSON; rows since its last compaction are in the journal
    doc = load_results(pytester.path / "out.json")
    finished = {(r["model"], r["benchmark"]) for r in doc["results"]}
    # Tests run model by model: both of the CNN's, then the overfit model's first, then the kill.
    assert finished == {("demo-digits-cnn", "crash.first"), ("demo-digits-cnn", "crash.second"),
                        ("demo-digits-rbf-overfit", "crash.first")}
    assert doc["run"]["status"] == "running"


def test_a_crashed_xdist_worker_loses_no_other_row(pytester, bench):
    (pytester.path / "benchmarks" / "test_crash.py").write_text(CRASHING)
    bench("benchmarks/test_crash.py", "-k", "demo", "-n", "2", "--max-worker-restart=1", subprocess=True)
    got = {(r["model"], r["benchmark"]): r["outcome"] for r in rows(pytester)}
    assert got == {("demo-digits-cnn", "crash.first"): "passed", ("demo-digits-cnn", "crash.second"): "passed",
                   ("demo-digits-rbf-overfit", "crash.first"): "passed", ("demo-digits-rbf-overfit", "crash.second"): "failed"}


def test_resume_skips_finished_rows_and_keeps_them(pytester, bench):
    bench("benchmarks", "-k", "demo").assert_outcomes(passed=2)
    first = rows(pytester)
    result = bench("benchmarks", "-k", "demo", "--securitynet-resume")
    result.assert_outcomes(deselected=2)  # the two finished rows; -k leaves the other models ungenerated
    assert rows(pytester) == first


def test_missing_file_offline_fails_at_once_naming_file_and_url(pytester, bench, monkeypatch, tmp_path):
    monkeypatch.delenv("SECURITYNET_MIRROR", raising=False)
    # Missing before the run: it stops at once (tests/test_first_run.py). Here the file goes missing after the check.
    monkeypatch.setattr("pytest_securitynet.plugin.hooks.missing_files",
                        lambda *args, **kwargs: MissingFiles(selected=0))
    result = bench("benchmarks", "-k", "resnet20 and akamaster", "--securitynet-offline", f"--securitynet-cache={tmp_path}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*missing file 'resnet20-12fca82f.th' (weights of cifar10-resnet20-akamaster): offline mode is on*"
                                 "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/resnet20-12fca82f.th*"])
    row = rows(pytester)[0]
    assert row["outcome"] == "error" and "offline mode is on" in row["message"]


def test_checksum_mismatch_in_a_mirror_fails_the_model(pytester, bench, monkeypatch, tmp_path):
    (tmp_path / "resnet20-12fca82f.th").write_bytes(b"truncated download")
    monkeypatch.setenv("SECURITYNET_MIRROR", str(tmp_path))
    # CIFAR-10 is missing too, which would stop the run before its first test: this test is about the weights.
    monkeypatch.setattr("pytest_securitynet.plugin.hooks.missing_files", lambda *args, **kwargs: MissingFiles(selected=0))
    result = bench("benchmarks", "-k", "resnet20 and akamaster", f"--securitynet-cache={tmp_path / 'cache'}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*sha256 mismatch for resnet20-12fca82f.th from mirror*"])


@pytest.mark.parametrize("given_by", ["option", "environment"])
def test_bad_user_catalog_stops_the_run_with_file_and_field(pytester, bench, monkeypatch, given_by):
    bad = pytester.path / "bad.toml"
    bad.write_text('[[models]]\nid = "x"\ndataset = "digits"\n')
    if given_by == "environment":
        monkeypatch.setenv("SECURITYNET_CATALOG", str(bad))
    result = bench("benchmarks", *([f"--securitynet-catalog={bad}"] if given_by == "option" else []))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{bad}: model 'x': *field (entry): 'architecture' is a required property*"])


def test_dataset_override_must_be_a_copy_of_the_same_dataset(bench):
    result = bench("benchmarks", "--securitynet-dataset", "cifar10=digits")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*cifar10=digits*not a copy of 'cifar10'*"])


def test_gpus_without_a_gpu_runs_workers_on_the_cpu(pytester, bench):
    result = bench("benchmarks", "-k", "demo", "--gpus", "2", subprocess=True)
    result.assert_outcomes(passed=2)
    assert {r["device"] for r in rows(pytester)} == {"cpu"}
    assert {r["worker"] for r in rows(pytester)} <= {"gw0", "gw1"}
