"""`securitynet bench`: the command it runs and the table it prints from real rows."""

from __future__ import annotations

import json

import pytest

from pytest_securitynet.bench import format_table
from pytest_securitynet.cli import main


def test_table_has_every_row_its_phases_tflops_and_memory():
    rows = [
        {"benchmark": "model_stealing.model_stealing", "setting": "budget50", "outcome": "passed", "wall_time_s": 8.0,
         "setup_time_s": 2.0, "phases": {"queries": 0.5, "training": 7.0}, "peak_gpu_memory_gib": 3.25,
         "metrics": {"train_tflop_per_s": 41.26}, "device": "cuda:0"},
        {"benchmark": "evasion.evasion", "setting": "pgd10-eps0.03", "outcome": "failed", "wall_time_s": 1.0,
         "metrics": {}},
    ]
    table = format_table(rows)
    lines = table.splitlines()
    assert lines[2] == "| evasion.evasion [pgd10-eps0.03] | failed | 1.00 |  |  |  |"
    assert lines[3] == ("| model_stealing.model_stealing [budget50] | passed | 10.00 | queries 0.50, training 7.00 "
                        "| 41.3 | 3.25 |")
    assert "| **all 2 tests** | | 11.0 |" in table and "device: cuda:0" in table


@pytest.mark.slow
def test_bench_runs_the_suite_on_a_demo_model(tmp_path, monkeypatch, capsys):
    """The whole command on the small demo model, task performance only (the rest is too slow for CI)."""
    monkeypatch.delenv("SECURITYNET_BUDGET", raising=False)
    out = tmp_path / "bench"
    code = main(["bench", "--model", "demo-digits-cnn", "--device", "cpu", "--out", str(out),
                 "-k", "task_performance", "--", "--securitynet-offline"])
    assert code == 0
    rows = json.loads((out / "bench.json").read_text())["results"]
    assert rows and {r["model"] for r in rows} == {"demo-digits-cnn"}
    printed = capsys.readouterr().out
    assert printed.strip() == (out / "bench.md").read_text().strip()
    assert f"**all {len(rows)} tests**" in printed
