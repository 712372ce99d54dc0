"""Benchmark specs: the dataclass and its JSON, the built-in snapshot against the benchmark files,
which spec the report takes, the generic section, and end to end: the attack of
docs/adding-an-attack.md dropped into a project gets a report section and regression checks."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from pytest_securitynet.report import build_report
from pytest_securitynet.results.merge import load_and_merge, merge_files
from pytest_securitynet.results.rows import SCHEMA
from pytest_securitynet.results.spec import (
    BASELINE, REPORTED, BenchmarkSpec, Metric, builtin_specs, implied_spec, module_specs, ordered, register_spec,
    resolve_specs, specs, specs_from_block,
)

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "adding-an-attack.md"
DPI = 60
GAP = "confidence_gap.confidence_gap"
SECTION = "confidence-gap-confidence-gap"


def doc_example() -> str:
    return re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# --- the dataclass ---------------------------------------------------------------------------

def test_spec_normalises_its_fields_and_round_trips_through_json():
    spec = BenchmarkSpec(id="gap.gap", title="Gap", metrics=[Metric("gap", baseline=0.01, reported=0.02), "queries"],
                         settings=["3", "1"], highlights=["3 gap"])
    assert spec.metrics[1] == Metric("queries") and spec.settings == ("3", "1") and spec.group_by == ("setting",)
    assert spec.headline == ("gap", "queries") and spec.short == "gap" and spec.slug == "gap-gap"
    assert spec.tolerances(BASELINE) == {"gap": 0.01} and spec.tolerances(REPORTED) == {"gap": 0.02}
    assert spec.metric("absent") == Metric("absent")
    data = json.loads(json.dumps(spec.as_dict()))
    assert BenchmarkSpec.from_dict(data) == spec
    assert BenchmarkSpec.from_dict({**data, "added_in_a_later_version": 1}) == spec
    hash(spec)  # frozen and hashable: every field is a tuple or a scalar


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"id": ""}, "benchmark id"),
    ({"metrics": ["gap", "gap"]}, "declared twice"),
    ({"metrics": [{"name": "gap", "baseline": -0.1}]}, "must be a number >= 0"),
    ({"metrics": "gap"}, "must be a list"),
])
def test_bad_specs_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BenchmarkSpec.from_dict({"id": "gap.gap", "title": "Gap", **kwargs})


def test_order_and_main_setting():
    spec = BenchmarkSpec(id="a.b", title="t", settings=("budget50", "budget10"), main_setting="budget10")
    assert ordered(["z", "budget10", "a", "budget50", "a"], spec.settings) == ["budget50", "budget10", "a", "z"]
    assert spec.default_setting(["budget50", "x"]) == "budget50"  # the main one is absent: first in order
    assert spec.default_setting(["budget50", "budget10"]) == "budget10"
    assert BenchmarkSpec(id="a.b", title="t").default_setting([]) is None


# --- where specs come from -------------------------------------------------------------------

def test_builtin_snapshot_is_what_the_benchmark_files_declare():
    declared = {s.id: s for path in sorted((REPO / "benchmarks").glob("test_*.py")) for s in module_specs(path)}
    assert declared == builtin_specs(), "rewrite it: python -m pytest_securitynet.results.spec benchmarks/test_*.py"
    assert [s.section for s in sorted(declared.values(), key=lambda s: s.position)] == [
        "task", "stealing", "membership", "backdoor", "evasion", None]  # AutoAttack: the generic section
    from pytest_securitynet.attacks.membership import ALL_ATTACKS
    assert declared["membership_inference.membership_inference"].settings == ALL_ATTACKS  # not a copy


def test_a_results_block_wins_then_the_registry_then_the_builtin_specs():
    stealing = builtin_specs()["model_stealing.model_stealing"]
    block = {"model_stealing.model_stealing": {**stealing.as_dict(), "main_setting": "budget10"},
             "broken.spec": {"id": "broken.spec", "title": "x", "metrics": 3}}
    assert set(specs_from_block(block)) == {"model_stealing.model_stealing"}  # what does not parse is skipped
    register_spec(BenchmarkSpec(id="registered.only", title="Registered"))
    assert "registered.only" in specs()
    got = {s.id: s for s in resolve_specs(["model_stealing.model_stealing", "task_performance.accuracy",
                                           "registered.only", "never.declared"], block)}
    assert got["model_stealing.model_stealing"].main_setting == "budget10"
    assert got["task_performance.accuracy"] == builtin_specs()["task_performance.accuracy"]
    assert got["registered.only"].title == "Registered"
    assert got["never.declared"] == implied_spec("never.declared") and got["never.declared"].section is None
    assert [s.id for s in resolve_specs(got)][:2] == ["task_performance.accuracy", "model_stealing.model_stealing"]


# --- the report ------------------------------------------------------------------------------

def row(model: str, benchmark: str, setting: str, metrics: dict) -> dict:
    return {"model": model, "benchmark": benchmark, "setting": setting, "params": {}, "metrics": metrics,
            "dataset": "digits", "dataset_source": "digits", "device": "cpu", "seed": 0, "outcome": "passed",
            "finished_at": "2026-01-01T00:00:00+00:00"}


def write_doc(path: Path, rows: list[dict], benchmarks: dict | None = None) -> Path:
    doc = {"schema": SCHEMA, "run": {"status": "complete", "argv": ["pytest"]},
           "models": {r["model"]: {"dataset": "digits", "annotations": {"purpose": "benchmark"}} for r in rows},
           "results": rows}
    if benchmarks is not None:
        doc["benchmarks"] = benchmarks
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_merged_files_keep_every_shards_specs(tmp_path):
    a = BenchmarkSpec(id="a.a", title="A", metrics=["x"])
    b = BenchmarkSpec(id="b.b", title="B", metrics=["y"])
    first = write_doc(tmp_path / "1.json", [row("m0", a.id, "default", {"x": 1.0})], {a.id: a.as_dict()})
    second = write_doc(tmp_path / "2.json", [row("m0", b.id, "default", {"y": 2.0})], {b.id: b.as_dict()})
    merge_files([first, second], tmp_path / "merged.json")
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert specs_from_block(merged["benchmarks"]) == {a.id: a, b.id: b}
    assert specs_from_block(load_and_merge([tmp_path / "merged.json"]).benchmarks) == {a.id: a, b.id: b}


def test_generic_section_from_a_spec_in_the_results_file(tmp_path):
    spec = BenchmarkSpec(id="probe.probe", title="Probe attack", settings=("weak", "strong"),
                         metrics=[Metric("success", higher_is_better=True), Metric("cost_s", headline=False)])
    rows = [row(f"m{i}", spec.id, setting, {"success": 0.1 * i + (0.5 if setting == "strong" else 0.0),
                                            "cost_s": 1.0})
            for i in range(4) for setting in ("strong", "weak")]
    report = build_report([write_doc(tmp_path / "r.json", rows, {spec.id: spec.as_dict()})], tmp_path / "out",
                          use_reported=False, dpi=DPI)
    assert "probe-probe" in report.sections
    table = read_csv(tmp_path / "out" / "probe-probe.csv")
    assert [(r["setting"], r["model"]) for r in table][:4] == [("weak", "m3"), ("weak", "m2"), ("weak", "m1"),
                                                              ("weak", "m0")]  # spec order, best first
    assert "cost_s" not in table[0]
    summary = {r["setting"]: r for r in read_csv(tmp_path / "out" / "probe-probe-summary.csv")}
    assert float(summary["strong"]["mean"]) == pytest.approx(0.65) and int(summary["strong"]["n"]) == 4
    assert (tmp_path / "out" / "probe-probe.png").read_bytes()[:4] == b"\x89PNG"
    page = report.index.read_text(encoding="utf-8")
    assert '<section id="probe-probe"><details class="section" open><summary><h2>Probe attack</h2>' in page
    per_model = read_csv(tmp_path / "out" / "per-model.csv")
    assert float(per_model[0]["probe weak success"]) == pytest.approx(0.0)


def test_a_benchmark_without_any_spec_still_gets_a_section(tmp_path):
    rows = [row(f"m{i}", "mystery.attack", "default", {"score": i / 10, "n_queries": 5}) for i in range(3)]
    report = build_report([write_doc(tmp_path / "r.json", rows)], tmp_path / "out", use_reported=False, dpi=DPI)
    assert "mystery-attack" in report.sections
    assert list(read_csv(tmp_path / "out" / "mystery-attack.csv")[0]) == ["model", "data", "setting", "score"]


def test_report_takes_orders_and_main_settings_from_the_specs(tmp_path):
    stealing = builtin_specs()["model_stealing.model_stealing"]
    rows = [row(f"m{i}", stealing.id, setting, {"attack_accuracy": 0.5 + i / 10 + shift, "agreement": 0.6,
                                                "target_accuracy": 0.9})
            for i in range(3) for setting, shift in (("budget10", -0.2), ("budget50", 0.0))]
    first = build_report([write_doc(tmp_path / "a.json", rows)], tmp_path / "a", use_reported=False, dpi=DPI)
    assert {r["setting"] for r in read_csv(first.out_dir / "stealing-accuracy-vs-target.csv")} == {"budget50"}
    changed = {stealing.id: {**stealing.as_dict(), "main_setting": "budget10", "title": "Stealing, changed"}}
    second = build_report([write_doc(tmp_path / "b.json", rows, changed)], tmp_path / "b", use_reported=False, dpi=DPI)
    assert {r["setting"] for r in read_csv(second.out_dir / "stealing-accuracy-vs-target.csv")} == {"budget10"}
    assert "<h2>Stealing, changed</h2>" in second.index.read_text(encoding="utf-8")


# --- end to end: the documented attack ---------------------------------------------------------

@pytest.fixture
def project(pytester, cache_dir, monkeypatch):
    """A temporary project holding the attack of docs/adding-an-attack.md; `run` runs pytest in a subprocess."""
    monkeypatch.delenv("SECURITYNET_DATASET", raising=False)
    (pytester.path / "benchmarks").mkdir()
    (pytester.path / "benchmarks" / "test_confidence_gap.py").write_text(doc_example())

    def run(json_name: str, *args: str):
        return pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "benchmarks", "-k", "demo", "--securitynet-limit", "200",
            f"--securitynet-cache={cache_dir}", f"--securitynet-json={pytester.path / json_name}", *args)

    return run


@pytest.mark.slow
def test_documented_attack_gets_a_report_section_and_regression_checks(pytester, project, tmp_path):
    first = project("first.json", "-n", "2")  # xdist: the controller collects nothing, the specs travel
    first.assert_outcomes(passed=4)
    doc = json.loads((pytester.path / "first.json").read_text())
    assert list(doc["benchmarks"]) == [GAP]
    assert BenchmarkSpec.from_dict(doc["benchmarks"][GAP]).tolerances(BASELINE) == {"confidence_gap": 0.01}

    report = build_report([pytester.path / "first.json"], tmp_path / "report", use_reported=False, dpi=DPI)
    assert SECTION in report.sections
    table = read_csv(tmp_path / "report" / f"{SECTION}.csv")
    measured = {(r["model"], r["setting"]): r["metrics"]["confidence_gap"] for r in doc["results"]}
    assert {(r["model"], r["setting"]): float(r["confidence_gap"]) for r in table} == pytest.approx(measured)
    assert (tmp_path / "report" / f"{SECTION}.png").is_file()
    assert "<h2>Confidence gap</h2>" in report.index.read_text(encoding="utf-8")

    again = project("again.json", f"--securitynet-compare={pytester.path / 'first.json'}")
    again.assert_outcomes(passed=4)
    again.stdout.fnmatch_lines(["*4 test(s) compared, 0 drifted*"])

    tampered = json.loads(json.dumps(doc))
    shifted = next(r for r in tampered["results"] if r["setting"] == "3")
    shifted["metrics"]["confidence_gap"] += 0.05
    (pytester.path / "tampered.json").write_text(json.dumps(tampered))
    drift = project("drift.json", "--securitynet-compare=tampered.json")
    drift.assert_outcomes(passed=3, failed=1)
    drift.stdout.fnmatch_lines([f"*securitynet regression: 1 of 1 metric(s) of {shifted['model']} {GAP} [[]3[]]*",
                                "*confidence_gap*-0.0500*0.0500*0.0100*DRIFT*", "*4 test(s) compared, 1 drifted*"])
    wider = project("wider.json", "--securitynet-compare=tampered.json", "--securitynet-tolerance", "confidence_gap=0.1")
    wider.assert_outcomes(passed=4)  # the option overrides the SPEC's tolerance


@pytest.mark.slow
def test_a_spec_naming_no_test_of_its_file_is_flagged(pytester, project):
    example = doc_example().replace('id="confidence_gap.confidence_gap"', 'id="confidence_gap"')
    (pytester.path / "benchmarks" / "test_confidence_gap.py").write_text(example)
    result = project("out.json", "-k", "demo-digits-cnn-1")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*SpecWarning*SPEC id 'confidence_gap' names none of this file's benchmarks*"])
