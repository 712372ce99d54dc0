"""`securitynet merge`: shards of one sweep become one results file, by row key."""

from __future__ import annotations

import json

from pytest_securitynet.cli import main
from pytest_securitynet.results.rows import ResultsWriter, load_results, run_info


def row(model: str, setting: str, outcome: str = "passed", auc: float = 0.6, at: str = "2026-01-01T00:00:00+00:00"):
    return {"model": model, "benchmark": "membership_inference.membership_inference", "setting": setting,
            "outcome": outcome, "metrics": {"auc": auc} if outcome == "passed" else {}, "finished_at": at}


def shard(path, rows):
    writer = ResultsWriter(path, run_info(["benchmarks"], {}))
    for r in rows:
        writer.add(r, {"dataset": "digits"})
    writer.finish("finished")
    return path


def test_shards_merge_by_key_and_the_passed_rerun_wins(tmp_path, capsys):
    a = shard(tmp_path / "a.json", [row("m1", "loss"), row("m2", "loss", "failed", at="2026-01-02T00:00:00+00:00")])
    b = shard(tmp_path / "b.json", [row("m1", "loss"), row("m2", "loss", auc=0.7), row("m3", "loss", auc=0.8)])
    out = tmp_path / "merged.json"
    assert main(["merge", str(a), str(b), "-o", str(out)]) == 0
    doc = load_results(out)
    got = {(r["model"], r["setting"]): (r["outcome"], r["metrics"].get("auc")) for r in doc["results"]}
    # m1 identical in both shards folds into one; m2 failed in a, passed in b (the rerun) keeps b.
    assert got == {("m1", "loss"): ("passed", 0.6), ("m2", "loss"): ("passed", 0.7), ("m3", "loss"): ("passed", 0.8)}
    assert doc["run"]["status"] == "merged" and [s["path"] for s in doc["run"]["merged_from"]] == [str(a), str(b)]
    assert doc["run"]["conflicts"] == ["m2::membership_inference.membership_inference::loss"]
    assert set(doc["models"]) == {"m1", "m2", "m3"}
    captured = capsys.readouterr()
    assert "3 rows from 2 file(s), 1 identical duplicate(s) folded, 1 conflict(s)" in captured.out
    assert "outcome: passed vs failed" in captured.err


def test_a_file_that_is_not_a_results_file_exits_2_naming_it(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "something-else"}))
    good = shard(tmp_path / "a.json", [row("m1", "loss")])
    out = tmp_path / "merged.json"
    assert main(["merge", str(good), str(bad), "-o", str(out)]) == 2
    assert f"{bad}: not a securitynet-results/1 file" in capsys.readouterr().err
    assert not out.exists()
    assert main(["merge", str(tmp_path / "missing.json"), "-o", str(out)]) == 2
    assert "no such results file" in capsys.readouterr().err
