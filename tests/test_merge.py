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


def test_merge_never_writes_over_one_of_its_inputs_or_a_file_that_is_not_results(tmp_path, capsys):
    a = shard(tmp_path / "a.json", [row("m1", "loss", auc=0.6)])
    b = shard(tmp_path / "b.json", [row("m1", "loss", auc=0.7, at="2026-01-02T00:00:00+00:00")])
    before = a.read_bytes()
    link = tmp_path / "link.json"
    link.symlink_to(a)
    for out in (a, link):  # by its own path or through a symlink
        assert main(["merge", str(a), str(b), "-o", str(out)]) == 2
        assert f"-o {out} is one of the files being merged" in capsys.readouterr().err
        assert a.read_bytes() == before
    notes = tmp_path / "notes.json"
    notes.write_text("my notes\n")
    assert main(["merge", str(a), str(b), "-o", str(notes)]) == 2
    assert f"-o {notes} exists and is not a securitynet results file" in capsys.readouterr().err
    assert notes.read_text() == "my notes\n"


def test_merge_keeps_a_results_file_it_replaces_when_the_merge_would_lose_its_rows(tmp_path, capsys):
    from pytest_securitynet.results.archive import archived_runs

    a = shard(tmp_path / "a.json", [row("m1", "loss")])
    b = shard(tmp_path / "b.json", [row("m2", "loss")])
    out = tmp_path / "merged.json"
    assert main(["merge", str(a), str(b), "-o", str(out)]) == 0
    assert main(["merge", str(a), str(b), "-o", str(out)]) == 0  # merged again: it holds every row already
    assert archived_runs(out) == [] and "kept as" not in capsys.readouterr().out
    earlier = load_results(out)
    assert main(["merge", str(a), "-o", str(out)]) == 0  # would drop m2's row
    (kept,) = archived_runs(out)
    assert load_results(kept) == earlier
    assert f"is kept as {kept}" in capsys.readouterr().out


def test_a_merge_records_the_settings_its_inputs_share_else_each_rows(tmp_path):
    def settings(seed, limit):
        return {"seed": seed, "members": 5000, "limit": limit, "dataset_overrides": {}, "budgets": {}, "device": None}

    def shard_with(path, rows, values):
        writer = ResultsWriter(path, run_info(["benchmarks"], values))
        for r in rows:
            writer.add(r, {"dataset": "digits"})
        writer.finish("complete")
        return path

    a = shard_with(tmp_path / "a.json", [row("m1", "loss")], settings(0, 300))
    b = shard_with(tmp_path / "b.json", [row("m2", "loss")], settings(0, 300))
    c = shard_with(tmp_path / "c.json", [row("m3", "loss")], settings(9, None))
    assert main(["merge", str(a), str(b), "-o", str(tmp_path / "ab.json")]) == 0
    same = load_results(tmp_path / "ab.json")
    assert same["run"]["settings"]["seed"] == 0 and same["run"]["settings"]["limit"] == 300
    assert all("run_settings" not in r for r in same["results"])
    assert main(["merge", str(a), str(c), "-o", str(tmp_path / "ac.json")]) == 0
    mixed = load_results(tmp_path / "ac.json")
    assert "settings" not in mixed["run"]
    assert {r["model"]: (r["run_settings"]["seed"], r["run_settings"]["limit"]) for r in mixed["results"]} == {
        "m1": (0, 300), "m3": (9, None)}
    assert [s["settings"]["seed"] for s in mixed["run"]["merged_from"]] == [0, 9]
