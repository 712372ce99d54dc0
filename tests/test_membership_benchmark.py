"""The membership benchmark end to end with the new attacks, on a model that names its training members."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pytest_securitynet.harness import reference

from test_catalog_members import named, subset_catalog

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "test_membership_inference.py"
SETTINGS = ("mentropy-global", "mentropy-logp-global", "rmia-offline", "lira-offline")

pytestmark = pytest.mark.usefixtures("single_thread")


def run(pytester, catalog: Path, cache: Path, out: Path):
    return pytester.runpytest(
        "benchmarks", "-k", "digits-rbf-subset and (" + " or ".join(SETTINGS) + ")", "-p", "no:cacheprovider",
        "--securitynet-offline", "--securitynet-device=cpu", f"--securitynet-cache={cache}",
        f"--securitynet-catalog={catalog}", f"--securitynet-json={out}")


def test_rows_record_output_reference_models_and_explicit_members(pytester, tmp_path, monkeypatch):
    """An RBF network trained on 400 named digits: members are those 400, RMIA and LiRA find them.

    Reference models train once (on the 1,397 digits not scored), are read back from the cache
    directory by the next run, and give the same numbers.
    """
    monkeypatch.delenv("SECURITYNET_DATASET", raising=False)
    (pytester.path / "benchmarks").mkdir()
    shutil.copy(BENCHMARK, pytester.path / "benchmarks" / BENCHMARK.name)
    catalog = subset_catalog(tmp_path, [str(i) for i in named()])
    cache = tmp_path / "cache"
    reference._IN_MEMORY.clear()
    run(pytester, catalog, cache, tmp_path / "first.json").assert_outcomes(passed=4)
    reference._IN_MEMORY.clear()  # a new process would start without them
    run(pytester, catalog, cache, tmp_path / "second.json").assert_outcomes(passed=4)
    first, second = ({r["setting"]: r["metrics"] for r in json.loads((tmp_path / name).read_text())["results"]}
                     for name in ("first.json", "second.json"))
    assert set(first) == set(SETTINGS)
    for setting, metrics in first.items():
        assert metrics["explicit_members"] is True and metrics["training_members"] == 400
        assert metrics["members_held"] == metrics["nonmembers_held"] == 400
        assert metrics["n_members"] == 200
        assert metrics["attacker_output"] == ("posteriors" if setting == "mentropy-global" else "log-probs")
    for setting in ("rmia-offline", "lira-offline"):
        metrics = first[setting]
        assert metrics["reference_models"] == 4 and metrics["reference_pool_size"] == 1797 - 400
        assert metrics["population_size"] == 1397 and metrics["queries"] == 800 + 1397
        assert 0.5 < metrics["reference_test_accuracy"] <= 1.0
        assert metrics["reference_recipe"]["like"] == "digits-rbf-subset"
        assert {k: v for k, v in second[setting].items() if k not in ("reference_source", "reference_time_s")} == \
            {k: v for k, v in metrics.items() if k not in ("reference_source", "reference_time_s")}
    # The first attack of a run trains (or loads) the models, the second finds them in memory.
    assert {first[s]["reference_source"] for s in ("rmia-offline", "lira-offline")} == {"trained", "memory"}
    assert {second[s]["reference_source"] for s in ("rmia-offline", "lira-offline")} == {"disk", "memory"}
    assert first["rmia-offline"]["tpr_at_fpr_1e-2"] > 0.3 and first["lira-offline"]["auc"] > 0.9


def test_online_attacks_run_on_models_with_named_members_and_skip_the_others(pytester, tmp_path, monkeypatch,
                                                                           cache_dir):
    """RMIA and LiRA online on the RBF network trained on 400 named digits: K = 4 on a CPU, each IN for 2.

    The reference models train on halves of the 400 + 400 held digits; the demo CNN (no members
    file) skips them, saying why.
    """
    monkeypatch.delenv("SECURITYNET_DATASET", raising=False)
    (pytester.path / "benchmarks").mkdir()
    shutil.copy(BENCHMARK, pytester.path / "benchmarks" / BENCHMARK.name)
    catalog = subset_catalog(tmp_path, [str(i) for i in named()])
    reference._IN_MEMORY.clear()
    result = pytester.runpytest(
        "benchmarks", "-k", "(digits-rbf-subset or demo-digits-cnn) and online", "-p", "no:cacheprovider", "-rs",
        "--securitynet-offline", "--securitynet-device=cpu", f"--securitynet-cache={cache_dir}",
        f"--securitynet-catalog={catalog}", f"--securitynet-json={tmp_path / 'online.json'}")
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines(["*online attacks need the training members*"])
    rows = {r["setting"]: r["metrics"] for r in json.loads((tmp_path / "online.json").read_text())["results"]
            if r["model"] == "digits-rbf-subset"}
    assert set(rows) == {"rmia-online", "lira-online"}
    for metrics in rows.values():
        assert metrics["reference_mode"] == "online" and metrics["reference_models"] == 4
        assert metrics["reference_pool_size"] == 800 and sum(metrics["reference_train_sizes"]) == 2 * 800
        assert metrics["population_size"] == 200 and metrics["reference_match"] == "target"
        assert metrics["reference_recipe"]["mode"] == "online"
        assert 0.5 < metrics["reference_test_accuracy"] <= 1.0
    assert rows["rmia-online"]["tpr_at_fpr_1e-2"] > 0.3 and rows["lira-online"]["auc"] > 0.9
