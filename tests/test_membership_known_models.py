"""The CIFAR-10 known-answer script (scripts/membership_known_models.py): its checks, and the GPU run itself."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import needs_shared

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "membership_known_models.py"
DATA_DIR = Path("/work/shared/data")

spec = importlib.util.spec_from_file_location("membership_known_models", SCRIPT)
known = importlib.util.module_from_spec(spec)
spec.loader.exec_module(known)


def rows(overfit: dict[str, float], general: dict[str, float]) -> list[dict]:
    made = []
    for model, tprs in ((known.OVERFIT, overfit), (known.GENERAL, general)):
        for setting, tpr in tprs.items():
            made.append({"model": model, "setting": setting, "metrics": {
                "tpr_at_fpr_1e-2": tpr, "intervals": {"tpr_at_fpr_1e-2": {"low": tpr / 2, "high": tpr * 1.5}}}})
    return made


PAPER = {name: 0.05 for name in known.PAPER_ATTACKS} | {"mentropy-classwise": 0.12}


def test_check_holds_at_twice_the_best_paper_attack_and_near_one_percent():
    results = known.check(rows({**PAPER, "rmia-offline": 0.25, "rmia-online": 0.40},
                               {"rmia-offline": 0.02, "rmia-online": 0.005}))
    assert [held for _, held, _ in results] == [True, True, True, True]
    assert "mentropy-classwise" in results[0][0] and "[0.1250, 0.3750]" in results[0][2]


@pytest.mark.parametrize(("overfit", "general", "failing"), [
    ({"rmia-offline": 0.23, "rmia-online": 0.40}, {"rmia-offline": 0.01, "rmia-online": 0.01}, "overfit rmia-offline"),
    ({"rmia-offline": 0.30, "rmia-online": 0.40}, {"rmia-offline": 0.01, "rmia-online": 0.045}, "general rmia-online"),
])
def test_check_fails_below_the_factor_or_off_one_percent(overfit, general, failing, tmp_path):
    results = known.check(rows({**PAPER, **overfit}, general))
    assert [what for what, held, _ in results if not held] == [
        next(what for what, _, _ in results if all(word in what for word in failing.split()))]
    out = tmp_path / "rows.json"
    out.write_text(json.dumps({"results": rows({**PAPER, **overfit}, general)}))
    assert known.main(["check", str(out)]) == 1


def test_check_command_prints_each_check_and_refuses_a_file_without_rows(tmp_path, capsys):
    out = tmp_path / "rows.json"
    out.write_text(json.dumps({"results": rows({**PAPER, "rmia-offline": 0.3, "rmia-online": 0.3},
                                               {"rmia-offline": 0.01, "rmia-online": 0.02})}))
    assert known.main(["check", str(out)]) == 0
    assert capsys.readouterr().out.count("ok  ") == 4
    out.write_text(json.dumps({"results": []}))
    assert known.main(["check", str(out)]) == 1
    assert "no rows of known-resnet20-overfit" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CIFAR-10 known answer trains ResNet-20s: needs a GPU")
@needs_shared(DATA_DIR / "cifar10-jpeg.tar.gz")
def test_known_answer_on_cifar10_resnets_at_the_default_budget(tmp_path, cache_dir):
    """The documented GPU command: make both models, run the benchmark on them, check the known answers."""
    out = tmp_path / "known"
    subprocess.run([sys.executable, str(SCRIPT), "make", "--out", str(out), "--device", "cuda",
                    "--cache", str(cache_dir), "--mirror", str(DATA_DIR)], check=True)
    subprocess.run([sys.executable, "-m", "pytest", str(REPO / "benchmarks" / "test_membership_inference.py"),
                    "-p", "no:cacheprovider", "--securitynet-catalog", str(out / "known-models.toml"),
                    "-k", "known-resnet20 and not logp and not logit", "--securitynet-device", "cuda:0",
                    f"--securitynet-cache={cache_dir}", "--securitynet-json", str(out / "results.json")],
                   check=True, env={**__import__("os").environ, "SECURITYNET_MIRROR": str(DATA_DIR)})
    done = subprocess.run([sys.executable, str(SCRIPT), "check", str(out / "results.json")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
