"""sha256 pins (catalog/pins.py): `securitynet catalog pin`, pin-on-first-download, the robustness
library's checkpoint layout. Offline, with synthetic checkpoints in temporary folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pytest_securitynet.catalog.entries import BUILTIN_CATALOG, load_catalog
from pytest_securitynet.catalog.pins import PINS_FILE, apply_pins, pin_by_hand, pins_path, read_pins
from pytest_securitynet.cli import main
from pytest_securitynet.errors import CatalogError, ChecksumError
from pytest_securitynet.harness.settings import settings_from
from pytest_securitynet.zoo.architectures import build
from pytest_securitynet.zoo.resolver import resolve_model
from pytest_securitynet.zoo.store import FileStore
from pytest_securitynet.zoo.weights import load_model

from conftest import model_toml

ROBUST_ID = "imagenet1k-resnet18_l2_eps3-robusttransfer"
MEDMNIST_ID = "bloodmnist-resnet18_28_1-medmnist"


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    """The built-in catalog, loaded once through the validated-catalog cache."""
    cache = tmp_path_factory.mktemp("catalog-cache")
    return lambda: load_catalog([BUILTIN_CATALOG], cache)


def robustness_checkpoint(net: torch.nn.Module, path: Path) -> None:
    """A checkpoint in the robustness library's layout: `model` holds the DataParallel-wrapped
    AttackerModel, i.e. the normaliser, the model and the attacker's copy of the model."""
    state = {}
    for key, value in net.state_dict().items():
        state[f"module.model.{key}"] = value
        state[f"module.attacker.model.{key}"] = value.clone()
    state["module.normalizer.new_mean"] = torch.zeros(3, 1, 1)
    state["module.normalizer.new_std"] = torch.ones(3, 1, 1)
    torch.save({"model": state, "optimizer": {}, "schedule": None, "epoch": 90}, path)


def test_robust_transfer_entry_loads_a_robustness_checkpoint_once_pinned(builtin, tmp_path):
    catalog = builtin()
    lock = tmp_path / PINS_FILE
    assert catalog.models[ROBUST_ID].raw.get("unavailable")
    torch.manual_seed(0)
    net = build("torchvision.models:resnet18", num_classes=1000).eval()
    ckpt = tmp_path / "downloaded.ckpt"
    robustness_checkpoint(net, ckpt)

    pin, copy = pin_by_hand(catalog, ROBUST_ID, ckpt, lock, tmp_path / "cache")
    assert copy == tmp_path / "cache" / "weights" / "resnet18_l2_eps3.ckpt"  # the URL's name: a download finds it
    assert read_pins(lock)[ROBUST_ID].sha256 == pin.sha256

    pinned = apply_pins(builtin(), lock)
    entry = pinned.models[ROBUST_ID]
    assert not entry.raw.get("unavailable") and entry.raw["sha256"] == pin.sha256
    model = load_model(entry, pinned, FileStore(cache_dir=tmp_path / "cache", offline=True))
    x = torch.rand(2, 3, 224, 224)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(model(x), net((x - mean) / std), atol=1e-4)

    copy.write_bytes(copy.read_bytes() + b"x")  # a later change to the file is caught on every load
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        load_model(entry, pinned, FileStore(cache_dir=tmp_path / "cache", offline=True))


def tiny_catalog(tmp_path: Path) -> Path:
    """A user catalog with one direct-URL entry in the robust-transfer form: no sha256, unavailable."""
    path = tmp_path / "mine.toml"
    path.write_text(model_toml(
        "digits-tiny-robust", "https://example.invalid/tiny_l2_eps3.ckpt", dataset="digits", channels=1, extra=(
            'builder = "demo_cnn"\nbuilder_args = { num_classes = 10, in_channels = 1, width = 4 }\n'
            'checkpoint = { state_dict_key = "model", strip_prefix = "module.model.", only_prefixed = true }\n'
            'unavailable = "no sha256 recorded"')), encoding="utf-8")
    return path


def test_pin_on_first_download_records_then_checks(tmp_path):
    user = tiny_catalog(tmp_path)
    lock = pins_path([str(user)])
    assert lock == tmp_path / PINS_FILE
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    net = build("demo_cnn", num_classes=10, in_channels=1, width=4)
    robustness_checkpoint(net, mirror / "tiny_l2_eps3.ckpt")
    store = FileStore(cache_dir=tmp_path / "cache", mirrors=[mirror], offline=True)

    plain = apply_pins(load_catalog([BUILTIN_CATALOG, user]), lock)
    with pytest.raises(CatalogError, match="no sha256 recorded"):  # not opted in: stays unavailable
        resolve_model(plain.models["digits-tiny-robust"])

    opted = apply_pins(load_catalog([BUILTIN_CATALOG, user]), lock, pin_on_first_download=True)
    load_model(opted.models["digits-tiny-robust"], opted, store)
    pin = read_pins(lock)["digits-tiny-robust"]
    assert pin.how == "first download" and pin.file == "tiny_l2_eps3.ckpt"

    later = apply_pins(load_catalog([BUILTIN_CATALOG, user]), lock)  # no flag needed once pinned
    assert later.models["digits-tiny-robust"].raw["sha256"] == pin.sha256
    robustness_checkpoint(build("demo_cnn", num_classes=10, in_channels=1, width=4), mirror / "tiny_l2_eps3.ckpt")
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        load_model(later.models["digits-tiny-robust"], later, store)


def test_cli_pin_makes_a_medmnist_entry_runnable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SECURITYNET_CACHE", str(tmp_path / "cache"))
    lock = tmp_path / "pins.toml"
    net = build("cifar_resnet_basic", depth=18, num_classes=8, in_channels=3)
    weights = tmp_path / "resnet18_28_1.pth"
    torch.save({"net": net.state_dict()}, weights)

    assert main(["catalog", "pin", MEDMNIST_ID, str(weights), "--pins", str(lock)]) == 2
    assert "--builder" in capsys.readouterr().err and not lock.exists()  # no architecture: says what to give
    wrong = ["--builder", "cifar_resnet_basic", "--builder-arg", "depth=34", "--builder-arg", "num_classes=8"]
    assert main(["catalog", "pin", MEDMNIST_ID, str(weights), "--pins", str(lock), "--state-dict-key", "net", *wrong]) == 2
    assert not lock.exists() and not (tmp_path / "cache" / "weights" / "resnet18_28_1.pth").exists()
    capsys.readouterr()

    right = ["--builder", "cifar_resnet_basic", "--builder-arg", "depth=18", "--builder-arg", "num_classes=8"]
    assert main(["catalog", "pin", MEDMNIST_ID, str(weights), "--pins", str(lock), "--state-dict-key", "net", *right]) == 0
    assert "pinned bloodmnist-resnet18_28_1-medmnist" in capsys.readouterr().out
    assert (tmp_path / "cache" / "weights" / "resnet18_28_1.pth").is_file()
    assert main(["catalog", "list", "--dataset", "bloodmnist", "--pins", str(lock)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows[MEDMNIST_ID].endswith("pinned") and rows["bloodmnist-resnet18_28_2-medmnist"].endswith("unavailable")


def test_pin_settings_from_options_ini_and_environment(tmp_path):
    assert settings_from({}, environ={}).pin_on_first_download is False
    assert settings_from({"pin_on_first_download": True}, environ={}).pin_on_first_download is True
    assert settings_from({}, {"pin_on_first_download": True}, environ={}).pin_on_first_download is True
    env = {"SECURITYNET_PIN_ON_FIRST_DOWNLOAD": "1", "SECURITYNET_PINS": str(tmp_path / "p.toml")}
    settings = settings_from({}, environ=env)
    assert settings.pin_on_first_download and pins_path(settings.catalogs, settings.pins) == tmp_path / "p.toml"


def test_a_pin_file_inside_a_catalog_folder_is_not_a_catalog_file(tmp_path):
    folder = tmp_path / "catalog"
    folder.mkdir()
    tiny_catalog(folder)
    (folder / PINS_FILE).write_text('[models."x"]\nfile = "a.pt"\nsha256 = "' + "0" * 64 + '"\n', encoding="utf-8")
    assert "digits-tiny-robust" in load_catalog([BUILTIN_CATALOG, folder]).models
    (folder / PINS_FILE).write_text('[models."x"]\nfile = "../a.pt"\nsha256 = "12"\n', encoding="utf-8")
    with pytest.raises(CatalogError, match="models.'x' needs `file`"):
        read_pins(folder / PINS_FILE)


def test_prefetch_pins_on_first_download_only_when_asked(tmp_path, monkeypatch, capsys):
    user = tiny_catalog(tmp_path)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    robustness_checkpoint(build("demo_cnn", num_classes=10, in_channels=1, width=4), mirror / "tiny_l2_eps3.ckpt")
    monkeypatch.setenv("SECURITYNET_MIRROR", str(mirror))
    base = ["catalog", "prefetch", "digits-tiny-robust", "--catalog", str(user), "--cache", str(tmp_path / "cache"),
            "--offline"]
    assert main(base) == 0
    assert "skipped digits-tiny-robust (unavailable)" in capsys.readouterr().out and not (tmp_path / PINS_FILE).exists()
    monkeypatch.setattr("pytest_securitynet.zoo.prefetch.decoded_path", lambda d, s: tmp_path)  # data: not this test's
    assert main([*base, "--pin-on-first-download"]) == 0
    assert "pinned digits-tiny-robust" in capsys.readouterr().out
    assert read_pins(tmp_path / PINS_FILE)["digits-tiny-robust"].file == "tiny_l2_eps3.ckpt"


def test_pin_a_losslandscape_checkpoint_with_its_resnet_layout(builtin, tmp_path):
    model_id = "cifar10-resnet_periodic_cosine_eps8_wd1e-3_max16_100-run1-losslandscape"
    net = build("cifar_resnet_width", width=2)
    keys = set(net.state_dict())
    # AdversaryLossLandscape's CIFAR10_ResNet: blocks conv1/bn1/conv2/bn2/shortcut, a `classifier` head.
    assert {"conv1.weight", "layer2.0.shortcut.0.weight", "layer4.1.bn2.running_var", "classifier.weight"} <= keys
    assert net.state_dict()["classifier.weight"].shape == (10, 64)
    weights = tmp_path / "resnet_periodic_cosine_eps8_wd1e-3_max16_100.ckpt"
    torch.save(net.state_dict(), weights)
    lock = tmp_path / PINS_FILE
    pin_by_hand(builtin(), model_id, weights, lock, tmp_path / "cache", builder="cifar_resnet_width",
                builder_args={"width": 2})
    pinned = apply_pins(builtin(), lock)
    model = load_model(pinned.models[model_id], pinned, FileStore(cache_dir=tmp_path / "cache", offline=True))
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model(x), net.eval()(x), atol=1e-5)  # the entry's preprocessing is the identity


def test_a_run_with_the_option_pins_and_a_later_run_checks(tmp_path):
    from pytest_securitynet.harness.harness import Harness
    from pytest_securitynet.harness.settings import Settings

    user = tiny_catalog(tmp_path)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    robustness_checkpoint(build("demo_cnn", num_classes=10, in_channels=1, width=4), mirror / "tiny_l2_eps3.ckpt")
    settings = dict(catalogs=(str(user),), mirrors=(mirror,), cache_dir=tmp_path / "cache", offline=True)
    cpu = lambda: torch.device("cpu")  # noqa: E731
    assert Harness(Settings(**settings), cpu).catalog.models["digits-tiny-robust"].raw.get("unavailable")
    first = Harness(Settings(**settings, pin_on_first_download=True), cpu)
    first.loaded(first.catalog.models["digits-tiny-robust"])
    assert read_pins(tmp_path / PINS_FILE)["digits-tiny-robust"].how == "first download"
    later = Harness(Settings(**settings), cpu)
    assert later.catalog.models["digits-tiny-robust"].raw["sha256"] == read_pins(tmp_path / PINS_FILE)[
        "digits-tiny-robust"].sha256
