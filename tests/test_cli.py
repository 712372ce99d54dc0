"""The `securitynet` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_securitynet.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_list_filters_and_show(capsys):
    assert main(["catalog", "list", "--dataset", "cifar10", "--tag", "akamaster"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split() == ["model", "dataset", "architecture", "purpose", "source", "state"]
    assert len(lines) == 4 and all("akamaster" in line for line in lines)
    assert main(["catalog", "show", "demo-digits-cnn"]) == 0
    assert json.loads(capsys.readouterr().out)["builder"] == "demo_cnn"


def test_errors_exit_2_with_a_message(capsys, tmp_path):
    assert main(["catalog", "show", "no-such-model"]) == 2
    assert "unknown model id 'no-such-model'" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[[models]]\nid = "x"\n')
    assert main(["catalog", "validate", "--catalog", str(bad)]) == 2
    assert f"{bad}: model 'x'" in capsys.readouterr().err


def test_a_closed_pipe_stops_the_listing_quietly(monkeypatch, capsys):
    """`securitynet catalog list | head -1`: the reader is gone; exit 141 with no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w", buffering=1) as closed_pipe:
        monkeypatch.setattr(sys, "stdout", closed_pipe)
        assert main(["catalog", "list"]) == 141
        monkeypatch.undo()
    assert capsys.readouterr().err == ""


def test_help_describes_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("catalog", "report", "bench", "merge", "sweep"):
        assert any(line.split()[:1] == [command] and len(line.split()) > 3 for line in text.splitlines()), command
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    bench_help = capsys.readouterr().out
    assert "Time the default benchmark suite on one catalog model" in bench_help


def test_stats_labels_datasets_by_their_ids(capsys):
    assert main(["catalog", "stats"]) == 0
    out = capsys.readouterr().out
    labels = {line.split()[0] for line in out.splitlines() if line and line.split()[-1].isdigit()}
    assert {"cifar10", "imagenet1k", "cifar-100", "svhn"} <= labels
    assert "CIFAR-10" not in out and "ImageNet1k" not in out


def test_prefetch_takes_the_runs_k_expression(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SECURITYNET_CACHE", str(tmp_path))
    monkeypatch.delenv("SECURITYNET_MIRROR", raising=False)
    assert main(["catalog", "prefetch", "-k", "resnet20 and akamaster and not pgd50", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "1 model(s) selected" in captured.err
    assert any(line.split()[:2] == ["missing", "resnet20-12fca82f.th"] for line in captured.out.splitlines())
    assert main(["catalog", "prefetch", "-k", "cifar10 and demo", "--dry-run"]) == 2  # no model is both
    assert main(["catalog", "prefetch", "--dry-run"]) == 2
    assert "give model id patterns" in capsys.readouterr().err


def test_bench_output_folder_is_ignored_by_git():
    done = subprocess.run(["git", "check-ignore", "securitynet-bench/bench.json"], cwd=REPO, capture_output=True, text=True)
    assert done.stdout.split() == ["securitynet-bench/bench.json"]


def test_the_budget_option_help_names_a_real_budget(pytester):
    from pytest_securitynet.harness.settings import declared_budgets

    pytester.syspathinsert(REPO / "benchmarks")
    __import__("test_backdoor_detection")  # declares the `backdoor` budget
    out = pytester.runpytest("--help").stdout.str()
    example = out[out.index("--securitynet-budget"):].split("e.g.", 1)[1].split()[0]
    name, field = example.split("=")[0].split(".")
    assert example == "backdoor.nc_epochs=10" and field in {f for f in declared_budgets()[name].__dataclass_fields__}
