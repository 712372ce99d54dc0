"""The report's robust-vs-standard section: RobustBench's scatter from AutoAttack rows, and the other
benchmarks split by robust and standard models, on planted rows with known answers."""

from __future__ import annotations

import csv

import pytest

from pytest_securitynet.report import build_report
from pytest_securitynet.report.sections.robustness import robustness_of

from test_report import DPI, PNG_MAGIC, row, write_doc

RB_MODEL = "cifar10-linf-andriushchenko2020understanding-robustbench"  # annotated in the built-in catalog only
# model: (annotations, clean, robust at 2/255, membership auc, stealing agreement, neural-cleanse flags)
MODELS = {
    "std-a": ({"purpose": "benchmark", "training": "standard"}, 0.94, 0.02, 0.70, 0.90, True),
    "std-b": ({"purpose": "benchmark"}, 0.90, 0.06, 0.60, 0.80, False),
    "rob-a": ({"purpose": "security", "training": "adversarial", "threat_model": "Linf"}, 0.80, 0.60, 0.52, 0.60, True),
    "rob-b": ({"purpose": "security"}, 0.84, 0.64, 0.56, 0.70, True),
    "rob-c": ({"purpose": "security", "training": "adversarial"}, 0.79, 0.62, 0.54, 0.65, True),
}


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def planted(tmp_path, planted_models=MODELS):
    rows, models = [], {}
    for model, (notes, clean, robust, auc, agreement, flagged) in planted_models.items():
        models[model] = {"dataset": "cifar10", "architecture": "a", "model_type": "resnet", "source": "demo",
                         **({"annotations": {**notes, "num_classes": 10}} if notes else {})}
        for setting, eps, rob in (("autoattack-linf-2of255", 2 / 255, robust), ("autoattack-linf-1of255", 1 / 255,
                                                                               (robust + clean) / 2)):
            rows.append(row(model, "evasion.autoattack", setting,
                            {"norm": "Linf", "eps": eps, "clean_accuracy": clean, "robust_accuracy": rob,
                             "accuracy_drop": clean - rob, "n_points": 100, "unreliable": model == "std-b"}))
        rows.append(row(model, "membership_inference.membership_inference", "mentropy-global", {"auc": auc}))
        rows.append(row(model, "membership_inference.membership_inference", "correctness", {"auc": 0.99}))
        rows.append(row(model, "model_stealing.model_stealing", "budget50", {"agreement": agreement,
                                                                             "attack_accuracy": agreement - 0.05}))
        rows.append(row(model, "backdoor_detection.detection", "neural-cleanse",
                        {"detector": "neural-cleanse", "flagged": flagged, "score": 1.0, "runtime_s": 1.0}))
    return write_doc(tmp_path / "results.json", rows, models)


def test_robustness_comes_from_training_else_purpose():
    assert robustness_of({"training": "adversarial", "purpose": "benchmark"})[0] == "robust"
    assert robustness_of({"training": "standard", "purpose": "security"})[0] == "standard"  # RobustBench's baselines
    assert robustness_of({"purpose": "security"}) == ("robust", "purpose = security")
    assert robustness_of({})[0] is None


def test_robust_vs_standard_section_known_answers(tmp_path):
    report = build_report([planted(tmp_path)], tmp_path / "out", use_reported=False, dpi=DPI)
    out = report.out_dir
    assert "robustness" in report.sections
    groups = {r["model"]: r for r in read_csv(out / "robustness-models.csv")}
    assert {m: g["robustness"] for m, g in groups.items()} == {
        "std-a": "standard", "std-b": "standard", "rob-a": "robust", "rob-b": "robust", "rob-c": "robust"}
    assert groups["rob-b"]["robustness_basis"] == "purpose = security"

    scatter = read_csv(out / "robustness-autoattack.csv")
    assert len(scatter) == 10
    two = {r["model"]: r for r in scatter if r["setting"] == "autoattack-linf-2of255"}
    assert float(two["rob-b"]["robust_accuracy"]) == pytest.approx(0.64)
    assert float(two["rob-b"]["clean_accuracy"]) == pytest.approx(0.84)
    assert two["std-b"]["unreliable"] == "True" and two["rob-a"]["unreliable"] == "False"
    assert (out / "robustness-autoattack.png").read_bytes()[:8] == PNG_MAGIC

    split = {(r["metric"], r["setting"], r["robustness"]): r for r in read_csv(out / "robustness-split.csv")}
    assert float(split[("auc", "mentropy-global", "standard")]["mean"]) == pytest.approx(0.65)  # the main setting only
    assert float(split[("auc", "mentropy-global", "robust")]["mean"]) == pytest.approx(0.54)
    assert int(split[("auc", "mentropy-global", "robust")]["n"]) == 3
    assert float(split[("agreement", "budget50", "robust")]["mean"]) == pytest.approx(0.65)
    assert float(split[("flagged", "neural-cleanse", "standard")]["mean"]) == pytest.approx(0.5)
    assert float(split[("flagged", "neural-cleanse", "robust")]["mean"]) == pytest.approx(1.0)
    assert not any(setting == "correctness" for _, setting, _ in split)
    assert (out / "robustness-split.png").read_bytes()[:8] == PNG_MAGIC
    page = (out / "index.html").read_text(encoding="utf-8")
    assert 'id="robustness"' in page and "-0.110" in page  # membership AUC: robust minus standard


def test_no_section_without_robust_models_or_autoattack(tmp_path):
    rows = [row(m, "membership_inference.membership_inference", "mentropy-global", {"auc": 0.6}) for m in ("a", "b")]
    models = {m: {"dataset": "cifar10", "annotations": {"purpose": "benchmark"}} for m in ("a", "b")}
    report = build_report([write_doc(tmp_path / "r.json", rows, models)], tmp_path / "out", use_reported=False, dpi=DPI)
    assert "robustness" not in report.sections


def test_models_the_results_file_does_not_annotate_are_looked_up_in_the_catalog(tmp_path):
    only = {"std-a": MODELS["std-a"], RB_MODEL: ({}, 0.79, 0.62, 0.54, 0.65, True)}
    path = planted(tmp_path, only)
    doc = path.read_text(encoding="utf-8")
    report = build_report([path], tmp_path / "out", use_reported=False, dpi=DPI)
    assert '"annotations"' in doc and doc.count('"annotations"') == 1  # only std-a records annotations
    groups = {r["model"]: r for r in read_csv(report.out_dir / "robustness-models.csv")}
    assert groups[RB_MODEL]["robustness"] == "robust"
    assert groups[RB_MODEL]["robustness_basis"] == "training = adversarial (catalog)"


def test_database_security_models_say_how_they_were_trained():
    from pytest_securitynet.catalog.entries import load_catalog

    models = load_catalog().models
    assert robustness_of(models["imagenet1k-resnet50_l2_eps0-robusttransfer"].annotations)[0] == "standard"
    eps3 = models["imagenet1k-resnet50_l2_eps3-robusttransfer"].annotations
    assert robustness_of(eps3)[0] == "robust" and eps3["threat_model"] == "L2"
    landscape = [e for e in models.values() if "losslandscape" in e.tags]
    assert len(landscape) == 72 and all(e.annotations["training"] == "adversarial" for e in landscape)
