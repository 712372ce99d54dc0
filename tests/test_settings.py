"""Settings: one parse of options, ini values and environment; budgets; usage errors; row hooks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_securitynet.harness.settings import (
    Settings, SettingsError, budget, declared_budgets, parse_budgets, settings_from,
)


@budget("toy")
@dataclass(frozen=True)
class ToyBudget:
    epochs: int = 50
    rate: float = 0.1
    sequential: bool = False
    mode: str = "paper"


def test_options_win_over_ini_over_environment(tmp_path):
    env = {"SECURITYNET_CACHE": str(tmp_path / "env-cache"), "SECURITYNET_MIRROR": f"{tmp_path}/a:{tmp_path}/b",
           "SECURITYNET_OFFLINE": "1", "SECURITYNET_CATALOG": str(tmp_path / "env.toml"),
           "SECURITYNET_DATASET": "cifar10=cifar10-jpeg", "SECURITYNET_BUDGET": "toy.epochs=7 toy.rate=0.5"}
    s = settings_from({"catalog": ["opt.toml"], "budget": ["toy.epochs=3"], "seed": 4},
                      {"budget": ["toy.mode=all"]}, env)
    assert s.cache_dir == tmp_path / "env-cache"
    assert s.mirrors == (tmp_path / "a", tmp_path / "b")
    assert s.offline is True
    assert s.catalogs == (str(tmp_path / "env.toml"), "opt.toml")
    assert dict(s.dataset_overrides) == {"cifar10": "cifar10-jpeg"}
    assert s.budget(ToyBudget) == ToyBudget(epochs=3, rate=0.5, mode="all")
    assert (s.seed, s.members, s.limit, s.batch_size, s.gpus) == (4, 5000, None, 256, 0)


def test_settings_are_frozen_and_recorded_as_plain_values(tmp_path):
    s = settings_from({"budget": ["toy.sequential=yes"]}, {}, {"SECURITYNET_CACHE": str(tmp_path)})
    with pytest.raises(AttributeError):
        s.seed = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.budgets["toy"]["epochs"] = "1"  # type: ignore[index]
    recorded = json.loads(json.dumps(s.as_dict()))
    assert recorded["budgets"] == {"toy": {"sequential": "yes"}} and recorded["cache_dir"] == str(tmp_path)
    assert s.budget(ToyBudget).sequential is True


@pytest.mark.parametrize("options, message", [
    ({"members": 0}, "--securitynet-members 0"),
    ({"members": -3}, "--securitynet-members -3"),
    ({"limit": -5}, "--securitynet-limit -5"),
    ({"limit": 0}, "--securitynet-limit 0"),
    ({"batch_size": 0}, "--securitynet-batch-size 0"),
    ({"gpus": -1}, "--gpus -1"),
    ({"seed": -1}, "--securitynet-seed -1: give a seed from 0"),
    ({"seed": 2**32}, "--securitynet-seed 4294967296"),
    ({"device": "nonsense"}, "--securitynet-device 'nonsense'"),
    ({"budget": ["toy"]}, "write NAME.FIELD=VALUE"),
    ({"budget": ["toy.epochs="]}, "write NAME.FIELD=VALUE"),
])
def test_bad_values_name_the_option(options, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace("'", ".")):
        settings_from(options, {}, {})


def test_budget_values_are_typed_and_fields_checked():
    assert parse_budgets(["a.b=1,a.c=x", "d.e=2"]) == {"a": {"b": "1", "c": "x"}, "d": {"e": "2"}}
    with pytest.raises(SettingsError, match="toy.epochs='ten': not a int"):
        Settings(budgets={"toy": {"epochs": "ten"}}).budget(ToyBudget)
    with pytest.raises(SettingsError, match="toy has no 'epoch'; its fields are epochs, mode, rate, sequential"):
        Settings(budgets={"toy": {"epoch": "1"}}).budget(ToyBudget)
    with pytest.raises(SettingsError, match="toy.sequential='maybe': write true or false"):
        Settings(budgets={"toy": {"sequential": "maybe"}}).budget(ToyBudget)
    assert declared_budgets()["toy"] is ToyBudget


BENCH = '''
from dataclasses import dataclass
import pytest
from pytest_securitynet.harness.settings import budget

@budget("tiny")
@dataclass(frozen=True)
class TinyBudget:
    steps: int = 5

def test_tiny(catalog_entry, securitynet, record):
    record(steps=securitynet.settings.budget(TinyBudget).steps)
'''

HOOK = '''
def pytest_securitynet_row(item, row):
    row["extra"] = {"node": item.name}

def pytest_securitynet_run_info(config, run):
    run["cluster"] = "test-cluster"
'''


def _run(pytester, tmp_path, *args):
    pytester.makepyfile(test_tiny=BENCH)
    pytester.makeconftest(HOOK)
    out = tmp_path / "results.json"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "demo-digits-cnn", "--securitynet-json",
                                           str(out), "--securitynet-cache", str(tmp_path / "cache"),
                                           "--securitynet-offline", *args)
    return result, out


def test_budget_option_reaches_the_benchmark_and_hooks_extend_rows(pytester, tmp_path, monkeypatch):
    monkeypatch.delenv("SECURITYNET_BUDGET", raising=False)
    result, out = _run(pytester, tmp_path, "--securitynet-budget", "tiny.steps=2")
    result.assert_outcomes(passed=1)
    doc = json.loads(out.read_text(encoding="utf-8"))
    row = doc["results"][0]
    assert row["metrics"]["steps"] == 2 and row["extra"] == {"node": "test_tiny[demo-digits-cnn]"}
    assert doc["run"]["settings"]["budgets"] == {"tiny": {"steps": "2"}} and doc["run"]["cluster"] == "test-cluster"


@pytest.mark.parametrize("args, message", [
    (("--securitynet-budget", "tiny.step=2"), "tiny has no 'step'"),
    (("--securitynet-members", "0"), "--securitynet-members 0: give a number >= 1"),
    (("--securitynet-device", "nonsense"), "not a torch device"),
])
def test_bad_settings_are_usage_errors_before_any_test(pytester, tmp_path, monkeypatch, args, message):
    monkeypatch.delenv("SECURITYNET_BUDGET", raising=False)
    result, out = _run(pytester, tmp_path, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])
    assert not Path(out).exists()


class _Node:
    def __init__(self, worker_id):
        self.gateway = type("Gateway", (), {"id": worker_id})()
        self.workerinput = {}


def test_workers_per_gpu_pins_k_workers_to_each_inherited_gpu():
    """--gpus 2 --workers-per-gpu 3 with CUDA_VISIBLE_DEVICES=3,5: six workers, three on each GPU,
    spread over both first; a crashed worker's replacement takes its slot."""
    from pytest_securitynet.plugin import gpus

    hooks = gpus.XdistHooks(gpus.GpuPool(2, ["3", "5"], per_gpu=3), [], True)
    nodes = [_Node(f"gw{i}") for i in range(6)]
    for node in nodes:
        hooks.pytest_configure_node(node)
    assert [n.workerinput[gpus.GPU_ID_KEY] for n in nodes] == ["3", "5", "3", "5", "3", "5"]
    assert [n.workerinput[gpus.GPU_KEY] for n in nodes] == [0, 1, 0, 1, 0, 1]
    hooks.pytest_testnodedown(nodes[3], error="crashed")
    replacement = _Node("gw6")
    hooks.pytest_configure_node(replacement)
    assert replacement.workerinput[gpus.GPU_ID_KEY] == "5"
    with pytest.raises(SettingsError, match="--workers-per-gpu 0"):
        settings_from({"gpus": 2, "workers_per_gpu": 0}, {}, {})


def test_workers_per_gpu_starts_n_times_k_xdist_workers(pytester, tmp_path):
    pytester.makepyfile(test_one="def test_worker(worker_id):\n    assert worker_id.startswith('gw')\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--gpus", "1", "--workers-per-gpu", "2",
                                           "--securitynet-json", str(tmp_path / "r.json"), "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*2 workers*"])


def test_benchmark_timeout_is_a_setting():
    assert settings_from({"timeout": "90"}, {}, {}).timeout == 90.0
    assert settings_from({}, {"timeout": "3600"}, {}).timeout == 3600.0
    assert settings_from({}, {"timeout": ""}, {}).timeout is None
    with pytest.raises(SettingsError, match="--securitynet-timeout 'soon': give seconds"):
        settings_from({"timeout": "soon"}, {}, {})
    with pytest.raises(SettingsError, match="--securitynet-timeout -1: give seconds >= 0"):
        settings_from({"timeout": -1}, {}, {})
