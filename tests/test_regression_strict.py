"""Regression checks end to end on small offline models: what used to pass silently now fails
under --securitynet-compare-strict (a renamed setting, a misspelled tolerance, the run's own file),
a weights swap is named as a provenance change, baselines hold no local paths, and `reported`
works with a catalog folder that ships its paper rows. Resume compares provenance too: rows of
other weights, of a changed catalog entry or of an older version are not mixed with new ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pytest_securitynet.zoo.architectures import build

from conftest import model_toml

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / "benchmarks" / "test_task_performance.py"
MODEL = "ci-net"


@pytest.fixture
def project(pytester, cache_dir, monkeypatch, single_thread):
    """A project with the task benchmark and a user catalog folder holding one `file:` model (an
    untrained 8x8 CNN on the bundled digits) and a `reported/` folder."""
    monkeypatch.delenv("SECURITYNET_DATASET", raising=False)
    monkeypatch.delenv("SECURITYNET_CATALOG", raising=False)
    (pytester.path / "benchmarks").mkdir()
    shutil.copy(TASK, pytester.path / "benchmarks" / TASK.name)
    catalog = pytester.path / "catalog"
    (catalog / "reported").mkdir(parents=True)
    (catalog / "models.toml").write_text(
        model_toml(MODEL, "file:ci-net.pt", dataset="digits", channels=1, extra='builder = "demo_cnn"'))
    save_weights(catalog / "ci-net.pt", seed=0)

    def run(*args: str, keyword: str = MODEL):
        return pytester.runpytest(
            "-p", "no:cacheprovider", "benchmarks", "-k", keyword, f"--securitynet-cache={cache_dir}",
            f"--securitynet-catalog={catalog}", f"--securitynet-json={pytester.path / 'out.json'}",
            "--securitynet-bootstrap=200", *args)

    run.catalog = catalog
    return run


def save_weights(path: Path, seed: int, nudge: float = 0.0) -> None:
    torch.manual_seed(seed)
    state = build("demo_cnn").state_dict()
    if nudge:
        key = next(k for k in state if k.endswith("bias"))
        state[key] = state[key] + nudge
    torch.save(state, path)


def strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def test_a_baseline_records_provenance_and_no_local_paths(pytester, project):
    project("--securitynet-save-baseline=base.json", "-p", "no:randomly").assert_outcomes(passed=1)
    doc = json.loads((pytester.path / "base.json").read_text())
    (row,) = doc["results"]
    provenance = row["provenance"]
    assert len(provenance["weights_sha256"]) == len(provenance["dataset_sha256"]) == 64
    assert {"catalog_entry_sha256", "budgets", "seed", "limit", "members", "code_version"} <= set(provenance)
    assert doc["models"][MODEL]["weights_sha256"] == provenance["weights_sha256"]
    assert row["metrics"]["intervals"]["test_accuracy"]["resamples"] == 200
    assert "argv" not in doc["run"] and set(doc["run"]["settings"]) <= {
        "seed", "members", "limit", "dataset_overrides", "budgets", "bootstrap"}
    local = [s for s in strings(doc) if s.startswith("/") or str(pytester.path) in s or "no:randomly" in s]
    assert not local


def test_a_weights_swap_fails_naming_the_weights_first(pytester, project):
    project("--securitynet-save-baseline=base.json").assert_outcomes(passed=1)
    save_weights(project.catalog / "ci-net.pt", seed=0, nudge=1e-4)  # other weights, the same numbers
    result = project("--securitynet-compare=base.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        f"*securitynet regression: {MODEL} task_performance.accuracy [[]default[]] was produced by something else*",
        f"*weights of {MODEL} changed: sha256 *.. -> *..",
        "*not compared: regenerate the baseline*--securitynet-accept-provenance*",
    ])
    result.stdout.fnmatch_lines(["*0 test(s) compared, 0 drifted, 1 with other provenance*"])
    accepted = project("--securitynet-compare=base.json", "--securitynet-accept-provenance")
    accepted.assert_outcomes(passed=1)
    accepted.stdout.fnmatch_lines([f"*note: {MODEL} [[]default[]]: compared despite weights of {MODEL} changed*"])


def test_silent_passes_are_notes_and_errors_under_strict(pytester, project):
    project("--securitynet-save-baseline=base.json").assert_outcomes(passed=1)
    doc = json.loads((pytester.path / "base.json").read_text())
    doc["results"][0]["setting"] = "sigma0.2"  # a setting renamed since the baseline was written
    (pytester.path / "renamed.json").write_text(json.dumps(doc))
    args = ("--securitynet-compare=renamed.json", "--securitynet-tolerance", "test_acuracy=0.5")
    lenient = project(*args)
    assert lenient.ret == 0
    lenient.stdout.fnmatch_lines([
        "*0 test(s) compared*1 without a reference row*",
        f"*note: 1 test(s) without a reference row in renamed.json: {MODEL}::task_performance.accuracy::default "
        f"(an error under --securitynet-compare-strict)",
    ])
    lenient.stdout.fnmatch_lines([
        f"*note: 1 row(s) of renamed.json were not compared: {MODEL}::task_performance.accuracy::sigma0.2 (not run)*"])
    lenient.stdout.fnmatch_lines(["*note: --securitynet-tolerance test_acuracy=0.5: no benchmark, reference row or "
                                  "test of this run has a metric 'test_acuracy'*"])
    strict = project(*args, "--securitynet-compare-strict")
    assert strict.ret == 1
    strict.stdout.fnmatch_lines([
        "*error (--securitynet-compare-strict): 1 test(s) without a reference row*",
        "*error (--securitynet-compare-strict): 1 row(s) of renamed.json were not compared*sigma0.2 (not run)*",
        "*error (--securitynet-compare-strict): --securitynet-tolerance test_acuracy=0.5*",
    ])
    clean = project("--securitynet-compare=base.json", "--securitynet-compare-strict",
                    "--securitynet-tolerance", "test_accuracy=0.5")
    assert clean.ret == 0, clean.stdout.str()
    clean.stdout.fnmatch_lines(["*1 test(s) compared, 0 drifted*",
                                "*note: --securitynet-tolerance test_accuracy=0.5 loosens task_performance.accuracy's "
                                "baseline tolerance of test_accuracy (0.01)*"])
    assert "(--securitynet-compare-strict)" not in clean.stdout.str()


def test_comparing_with_the_file_the_run_writes_is_refused(pytester, project):
    project().assert_outcomes(passed=1)
    result = project(f"--securitynet-compare={pytester.path / 'out.json'}")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--securitynet-compare *out.json: that is the results file this run writes*"])
    assert "Traceback" not in result.stderr.str()


def test_reported_numbers_of_a_catalog_folder_are_compared_end_to_end(pytester, project):
    csv = project.catalog / "reported" / "paper.csv"
    header = "model,benchmark,setting,metric,value,database_column\n"
    csv.write_text(header + f"{MODEL},task_performance.accuracy,default,test_accuracy,0.99,test_accuracy\n")
    far = project("--securitynet-compare=reported")
    far.assert_outcomes(failed=1)
    far.stdout.fnmatch_lines([
        f"*securitynet regression: 1 of 1 metric(s) of {MODEL} task_performance.accuracy [[]default[]] are outside "
        f"the tolerance against reported (SecurityNet database, catalog/reported/paper.csv)*",
        "*metric*measured*reported*delta*gap*tolerance*",
        "*test_accuracy*0.*±0.*0.9900*0.0200*DRIFT*",
    ])
    measured = json.loads((pytester.path / "out.json").read_text())["results"][0]["metrics"]["test_accuracy"]
    csv.write_text(header + f"{MODEL},task_performance.accuracy,default,test_accuracy,{measured + 0.015},x\n")
    near = project("--securitynet-compare=reported")
    near.assert_outcomes(passed=1)
    near.stdout.fnmatch_lines(["*against reported (SecurityNet database, catalog/reported/paper.csv): 1 test(s) "
                               "compared, 0 drifted*"])


# --- resume compares what produced the rows ---------------------------------------------------

TWO_TESTS = """
def test_first(target, test_set, record):
    record(n=len(test_set))

def test_second(target, test_set, record):
    record(n=len(test_set))
"""


def test_resume_after_a_weights_change_stops_before_mixing_two_models(pytester, project):
    (pytester.path / "benchmarks" / "test_two.py").write_text(TWO_TESTS)
    project(keyword=f"{MODEL} and first").assert_outcomes(passed=1)
    save_weights(project.catalog / "ci-net.pt", seed=0, nudge=1e-4)  # a retrained model under the same id
    result = project("--securitynet-resume", keyword=f"{MODEL} and (first or second)")
    assert result.ret == 4
    result.stdout.fnmatch_lines([f"*--securitynet-resume: *out.json holds rows of {MODEL} produced by something "
                                 f"else (weights of {MODEL} changed: sha256 *); this run stops before mixing*"])
    assert [r["setting"] for r in json.loads((pytester.path / "out.json").read_text())["results"]] == ["default"]
    assert "first" in json.loads((pytester.path / "out.json").read_text())["results"][0]["nodeid"]


def test_resume_refuses_a_changed_catalog_entry_and_an_older_file(pytester, project):
    project().assert_outcomes(passed=1)
    entry = project.catalog / "models.toml"
    entry.write_text(entry.read_text().replace('model_type = "cnn"', 'model_type = "cnn"\ntags = ["retrained"]'))
    changed = project("--securitynet-resume")
    assert changed.ret == 4
    changed.stderr.fnmatch_lines([f"*--securitynet-resume: *out.json holds rows produced by something else "
                                  f"(catalog entry of {MODEL} changed: sha256 *)*"])
    doc = json.loads((pytester.path / "out.json").read_text())
    for row in doc["results"]:
        del row["provenance"]  # as the project's first version wrote them
    (pytester.path / "out.json").write_text(json.dumps(doc))
    older = project("--securitynet-resume")
    assert older.ret == 4
    older.stderr.fnmatch_lines(["*--securitynet-resume: *out.json holds 1 row(s) written by an older version that "
                                "records no provenance*run without --securitynet-resume (the file is then kept, "
                                "numbered, in out-runs/)*"])
    assert "Traceback" not in older.stderr.str() + older.stdout.str()
