"""The `securitynet catalog` subcommands for the SecurityNet database: list filters, show, stats,
import-csv, annotate and prefetch (offline)."""

from __future__ import annotations

import json

from pytest_securitynet.cli import main

from conftest import SHARED, needs_shared

DATABASE = SHARED / "reference" / "securitynet-models.csv"


def lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_list_filters_by_dataset_purpose_type_year_and_tag(capsys, monkeypatch):
    from pytest_securitynet.zoo import robustbench

    monkeypatch.setattr(robustbench, "robustbench_installed", lambda: True)  # --available keeps its models
    assert main(["catalog", "list", "--dataset", "cifar-100"]) == 0
    assert len(lines(capsys)) == 1 + 45 + 50  # the header, the database's and RobustBench's CIFAR-100 models
    assert main(["catalog", "list", "--purpose", "security", "--year", "2020"]) == 0
    assert len(lines(capsys)) == 1 + 92 + 44  # the header, the database's and RobustBench's robust models of 2020
    assert main(["catalog", "list", "--dataset", "imagenet1k", "--type", "vgg", "--purpose", "benchmark"]) == 0
    assert len(lines(capsys)) == 1 + 12  # the header; RobustBench has no VGG
    assert main(["catalog", "list", "--tag", "akamaster"]) == 0
    assert len(lines(capsys)) == 1 + 4
    assert main(["catalog", "list", "--dataset", "cifar10", "--available"]) == 0
    out = lines(capsys)
    assert len(out) == 1 + 4 + 47 + 1 + 111 and not any("unavailable" in line for line in out)


def test_show_adds_computed_annotations_and_reported_numbers(capsys):
    assert main(["catalog", "show", "cifar10-resnet20-pytorchcv"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["source"] == "pytorchcv:resnet20_cifar10" and shown["database"]["row"] == 175
    assert shown["computed"]["parameters"] == "272474"
    assert shown["reported"]["task_performance.accuracy [default]"]["test_accuracy"] == 0.9384


def test_stats_prints_tables_and_writes_plots(capsys, tmp_path):
    assert main(["catalog", "stats", "--plots", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Models per dataset and table" in out and f"wrote {tmp_path / 'years.png'}" in out
    assert main(["catalog", "stats", "--all"]) == 0
    assert "742 models" in capsys.readouterr().out  # 535, pyautoattack's ResNet-18 and RobustBench's 206


@needs_shared(DATABASE)
def test_import_csv_writes_a_valid_catalog(capsys, tmp_path):
    out = tmp_path / "securitynet"
    assert main(["catalog", "import-csv", str(DATABASE), "--out", str(out), "--reported", str(tmp_path / "r.csv")]) == 0
    assert "529 models imported" in capsys.readouterr().out
    assert (tmp_path / "r.csv").is_file() and len(list(out.glob("*.toml"))) == 9


def test_annotate_a_selection_into_a_csv(capsys, tmp_path):
    out = tmp_path / "computed.csv"
    assert main(["catalog", "annotate", "cifar10-resnet20-*", "--out", str(out)]) == 0
    assert "2 architectures measured" in capsys.readouterr().out
    text = out.read_text().splitlines()
    assert text[0].startswith("id,built_with") and {t.split(",")[0] for t in text[1:]} == {
        "cifar10-resnet20-akamaster", "cifar10-resnet20-pytorchcv"}


def test_prefetch_offline_fails_at_once_naming_every_missing_file(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("SECURITYNET_MIRROR", raising=False)
    cache = tmp_path / "cache"
    code = main(["catalog", "prefetch", "--offline", "--cache", str(cache),
                 "cifar10-resnet20-pytorchcv", "svhn-resnet20-pytorchcv", "imagenet1k-resnet18_l2_eps0-robusttransfer"])
    captured = capsys.readouterr()
    assert code == 2
    assert "skipped imagenet1k-resnet18_l2_eps0-robusttransfer (unavailable)" in captured.out
    assert "offline mode is on and 5 file(s) are missing" in captured.err  # SVHN is two files
    for name in ("resnet20_cifar10-0597-9b0024ac.pth", "resnet20_svhn-0343-8232e6e4.pth",
                 "https://github.com/osmr/imgclsmob/releases/download/v0.0.163/resnet20_cifar10-0597-9b0024ac.pth.zip",
                 "cifar-10-python.tar.gz", "train_32x32.mat (data of svhn)", "test_32x32.mat (data of svhn)"):
        assert name in captured.err
    assert not any(p.is_file() for p in cache.rglob("*"))  # nothing downloaded or written


def test_prefetch_dry_run_finds_files_in_a_mirror(capsys, tmp_path, monkeypatch):
    (tmp_path / "resnet20_cifar10-0597-9b0024ac.pth").write_bytes(b"x")
    monkeypatch.setenv("SECURITYNET_MIRROR", str(tmp_path))
    assert main(["catalog", "prefetch", "--dry-run", "--cache", str(tmp_path / "cache"), "cifar10-resnet20-pytorchcv"]) == 0
    out = lines(capsys)
    assert out[0].startswith("present  resnet20_cifar10-0597-9b0024ac.pth")
    assert out[1].startswith("missing  cifar-10-python.tar.gz")
    assert main(["catalog", "prefetch", "no-such-*"]) == 2
    assert "no catalog model matches" in capsys.readouterr().err
