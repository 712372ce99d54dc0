"""Resolve, then load: each source kind's plan (files, URLs, checksums), and loading and
`catalog prefetch` asking the store for exactly the same files."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pytest_securitynet.catalog.entries import BUILTIN_CATALOG, load_catalog
from pytest_securitynet.errors import CatalogError, MissingFileError
from pytest_securitynet.zoo import prefetch
from pytest_securitynet.zoo.architectures import build
from pytest_securitynet.zoo.datasets import load_dataset
from pytest_securitynet.zoo.resolver import resolve_dataset, resolve_model
from pytest_securitynet.zoo.store import Digest, FileStore
from pytest_securitynet.zoo.weights import load_model

from conftest import model_toml

CATALOG = load_catalog([BUILTIN_CATALOG])


def catalog_with(tmp_path: Path, text: str):
    path = tmp_path / "mine.toml"
    path.write_text(text)
    return load_catalog([BUILTIN_CATALOG, path])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- plans, one per source kind -----------------------------------------------------------------

def test_url_source_plans_the_file_named_by_its_url_with_the_catalog_sha256():
    entry = CATALOG.model("cifar10-resnet20-akamaster")
    plan = resolve_model(entry)
    (need,) = plan.needs
    assert plan.loader == "builder" and need.name == "resnet20-12fca82f.th" and need.subdir == "weights"
    assert need.urls == (entry.source,) and need.sha256 == entry.raw["sha256"] and need.digest is None
    assert need.purpose == "weights of cifar10-resnet20-akamaster"


def test_pytorchcv_source_plans_its_release_zip_checked_by_pytorchcvs_sha1():
    plan = resolve_model(CATALOG.model("cifar10-resnet20-pytorchcv"))
    (need,) = plan.needs
    assert plan.loader == "pytorchcv" and need.name == "resnet20_cifar10-0597-9b0024ac.pth"
    assert need.urls == ("https://github.com/osmr/imgclsmob/releases/download/v0.0.163/"
                         "resnet20_cifar10-0597-9b0024ac.pth.zip",)
    assert need.archive.name == "resnet20_cifar10-0597-9b0024ac.pth.zip" and need.subdir == "weights/pytorchcv"
    assert need.sha256 is None and need.digest.algorithm == "sha1" and need.digest.hexdigest.startswith("9b0024ac")


def test_torchvision_source_checks_the_hash_prefix_unless_the_catalog_has_a_sha256(tmp_path):
    full = "f37072fd" + "0" * 56
    catalog = catalog_with(tmp_path, model_toml("tv-plain", "torchvision:resnet18:ResNet18_Weights.IMAGENET1K_V1")
                           + model_toml("tv-pinned", "torchvision:resnet18:ResNet18_Weights.IMAGENET1K_V1",
                                        extra=f'sha256 = "{full}"'))
    (plain,) = resolve_model(catalog.model("tv-plain")).needs
    assert plain.name == "resnet18-f37072fd.pth" and plain.urls == ("https://download.pytorch.org/models/resnet18-f37072fd.pth",)
    assert plain.sha256 is None and (plain.digest.algorithm, plain.digest.hexdigest, plain.digest.prefix) == ("sha256", "f37072fd", True)
    (pinned,) = resolve_model(catalog.model("tv-pinned")).needs
    assert pinned.sha256 == full and pinned.digest is None


def test_timm_source_plans_the_hub_file_accepts_either_suffix_and_keeps_the_sha256(tmp_path):
    digest = "ab" * 32
    catalog = catalog_with(tmp_path, model_toml("timm-r18", "timm:resnet18.a1_in1k", extra=f'sha256 = "{digest}"'))
    plan = resolve_model(catalog.model("timm-r18"))
    (need,) = plan.needs
    assert plan.loader == "timm" and need.name == "resnet18.a1_in1k.safetensors" and need.aliases == ("resnet18.a1_in1k.pth",)
    assert need.urls == ("https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors",)
    assert need.sha256 == digest


def test_file_source_is_a_fixed_path_beside_its_catalog_and_demo_needs_no_file(tmp_path):
    catalog = catalog_with(tmp_path, model_toml("local", "file:sub/w.pt", extra='builder = "demo_cnn"'))
    (need,) = resolve_model(catalog.model("local")).needs
    assert need.at == tmp_path / "sub" / "w.pt" and need.urls == ()
    demo = resolve_model(CATALOG.model("demo-digits-cnn"))
    assert demo.loader == "demo" and demo.needs == ()


def test_unavailable_entries_do_not_resolve():
    with pytest.raises(CatalogError, match="cannot be loaded: .*resnet18_l2_eps0.ckpt"):
        resolve_model(CATALOG.model("imagenet1k-resnet18_l2_eps0-robusttransfer"))


@pytest.mark.parametrize(("dataset", "names", "urls"), [
    ("digits", [], []),
    ("cifar10-jpeg", ["cifar10-jpeg.tar.gz"], [()]),
    ("cifar10", ["cifar-10-python.tar.gz"], [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)]),
    ("svhn", ["train_32x32.mat", "test_32x32.mat"], [("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",),
                                                    ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",)]),
    ("breastmnist", ["breastmnist.npz"], [("https://zenodo.org/records/10519652/files/breastmnist.npz",)]),
    ("cub200", ["CUB_200_2011"], [("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",)]),
    ("imagenet1k", ["imagenet"], [()]),
])
def test_dataset_plans_name_their_raw_files_and_urls(dataset, names, urls):
    plan = resolve_dataset(CATALOG.dataset(dataset))
    assert plan.loader == CATALOG.dataset(dataset).source
    assert [n.name for n in plan.needs] == names and [n.urls for n in plan.needs] == urls


def test_dataset_checksums_come_from_the_catalog_or_torchvision():
    (jpeg,) = resolve_dataset(CATALOG.dataset("cifar10-jpeg")).needs
    assert jpeg.sha256 == CATALOG.dataset("cifar10-jpeg").raw["sha256"]
    (cifar,) = resolve_dataset(CATALOG.dataset("cifar10")).needs
    assert (cifar.digest.algorithm, cifar.digest.hexdigest) == ("md5", "c58f30108f718f92721af3b95e74349a")
    (cub,) = resolve_dataset(CATALOG.dataset("cub200")).needs
    assert cub.folder and cub.archive.name == "CUB_200_2011.tgz" and cub.subdir == ""
    pytest.importorskip("medmnist")
    (breast,) = resolve_dataset(CATALOG.dataset("breastmnist")).needs
    assert breast.digest == Digest("md5", "750601b1f35ba3300ea97c75c52ff8f6", downloads_only=True)
    (imagenet,) = resolve_dataset(CATALOG.dataset("imagenet1k")).needs
    assert imagenet.folder and imagenet.archive is None and "layout: train-val" in imagenet.hint


# --- loading and prefetch ask for the same files ------------------------------------------------

@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A catalog of tiny entries whose files all sit in a mirror: one model and one dataset per kind
    that can be built offline."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    net = build("demo_cnn", num_classes=2, in_channels=3, width=4)
    torch.save({"state_dict": net.state_dict()}, mirror / "tiny-0123.pt")
    torch.save(net.state_dict(), tmp_path / "w.pt")

    rng = np.random.default_rng(0)
    with tarfile.open(mirror / "tiny.tar.gz", "w:gz") as tar:
        for split, count in (("train", 2), ("test", 1)):
            for label in ("a", "b"):
                for i in range(count):
                    buffer = io.BytesIO()
                    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buffer, format="PNG")
                    member = tarfile.TarInfo(f"tiny/{split}/{label}/{i}.png")
                    member.size = len(buffer.getvalue())
                    tar.addfile(member, io.BytesIO(buffer.getvalue()))

    cub = tmp_path / "src" / "TINY_CUB"
    for i in (1, 2, 3):
        path = cub / "images" / f"00{1 + i % 2}.x" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((10, 12, 3), 30 * i, dtype=np.uint8)).save(path)
    (cub / "images.txt").write_text("".join(f"{i} 00{1 + i % 2}.x/{i}.png\n" for i in (1, 2, 3)))
    (cub / "image_class_labels.txt").write_text("".join(f"{i} {1 + i % 2}\n" for i in (1, 2, 3)))
    (cub / "train_test_split.txt").write_text("1 1\n2 1\n3 0\n")
    with tarfile.open(mirror / "TINY_CUB.tgz", "w:gz") as tar:
        tar.add(cub, arcname="TINY_CUB")

    arrays = {f"{s}_images": rng.integers(0, 255, (n, 28, 28), dtype=np.uint8) for s, n in (("train", 3), ("val", 1), ("test", 2))}
    arrays |= {f"{s}_labels": rng.integers(0, 2, (n, 1), dtype=np.uint8) for s, n in (("train", 3), ("val", 1), ("test", 2))}
    np.savez(mirror / "tinybreast.npz", **arrays)

    import scipy.io
    import torchvision

    split_list = {}
    for split, n in (("train", 3), ("test", 2)):
        name = f"tiny_{split}_32x32.mat"
        scipy.io.savemat(mirror / name, {"X": rng.integers(0, 255, (32, 32, 3, n), dtype=np.uint8),
                                         "y": np.arange(1, n + 1, dtype=np.uint8).reshape(n, 1)})
        split_list[split] = [f"http://invalid.example/{name}", name, hashlib.md5((mirror / name).read_bytes()).hexdigest()]
    monkeypatch.setattr(torchvision.datasets.SVHN, "split_list", split_list)

    text = f"""
[datasets.tinyjpeg]
source = "image-folder-archive"
file = "tiny.tar.gz"
sha256 = "{sha256(mirror / 'tiny.tar.gz')}"
archive_root = "tiny"
num_classes = 2
input_size = [3, 8, 8]
train_size = 4
test_size = 2

[datasets.tinycub]
source = "image-folder"
layout = "cub200"
folder = "TINY_CUB"
file = "TINY_CUB.tgz"
sha256 = "{sha256(mirror / 'TINY_CUB.tgz')}"
resize = 8
num_classes = 2
input_size = [3, 8, 8]
train_size = 2
test_size = 1

[datasets.tinybreast]
source = "medmnist"
flag = "breastmnist"
file = "tinybreast.npz"
num_classes = 2
input_size = [1, 28, 28]
train_size = 3
test_size = 2

[datasets.tinysvhn]
source = "torchvision"
torchvision_class = "SVHN"
num_classes = 10
input_size = [3, 32, 32]
train_size = 3
test_size = 2
"""
    builder = 'builder = "demo_cnn"\nbuilder_args = { num_classes = 2, in_channels = 3, width = 4 }'
    text += model_toml("tiny-url", "https://example.org/w/tiny-0123.pt", dataset="tinyjpeg", classes=2,
                       extra=f'sha256 = "{sha256(mirror / "tiny-0123.pt")}"\n{builder}\ncheckpoint = {{ state_dict_key = "state_dict" }}')
    text += model_toml("tiny-file", "file:w.pt", dataset="tinycub", extra=builder, classes=2)
    text += model_toml("tiny-demo", "demo", dataset="tinybreast", extra=f"{builder}\ntrain = {{ epochs = 1, lr = 0.01 }}", classes=2)
    text += model_toml("tiny-file-svhn", "file:w.pt", dataset="tinysvhn", extra=builder)
    catalog = catalog_with(tmp_path, text)
    store = FileStore(cache_dir=tmp_path / "cache", mirrors=[mirror], offline=True)
    return catalog, store


@pytest.mark.parametrize("model_id", ["tiny-url", "tiny-file", "tiny-file-svhn"])
def test_load_and_prefetch_ask_for_the_same_files(tiny, monkeypatch, model_id):
    catalog, store = tiny
    entry = catalog.model(model_id)
    planned, _ = prefetch.needs_of([entry], catalog, store)
    asked = []
    original = FileStore.get

    def recording(self, need):
        asked.append(need)
        return original(self, need)

    monkeypatch.setattr(FileStore, "get", recording)
    load_model(entry, catalog, store)
    data = load_dataset(catalog.dataset(entry.dataset), store)
    assert asked == planned and planned
    assert len(data.train_labels) == catalog.dataset(entry.dataset).train_size
    statuses, _ = prefetch.plan([entry], catalog, store)  # decoded now: only the weights are still needed
    assert [s.need for s in statuses] == list(resolve_model(entry).needs) and all(s.present for s in statuses)


def test_demo_and_medmnist_plans_agree_with_loading(tiny, monkeypatch):
    pytest.importorskip("medmnist")
    catalog, store = tiny
    entry = catalog.model("tiny-demo")
    planned, _ = prefetch.needs_of([entry], catalog, store)
    asked = []
    original = FileStore.get
    monkeypatch.setattr(FileStore, "get", lambda self, need: asked.append(need) or original(self, need))
    data = load_dataset(catalog.dataset("tinybreast"), store)
    assert asked == planned and [n.name for n in planned] == ["tinybreast.npz"]
    assert data.train_images.shape == (3, 1, 28, 28)


def test_an_archive_in_a_mirror_is_unpacked_into_the_cache_once(tiny):
    catalog, store = tiny
    (need,) = resolve_dataset(catalog.dataset("tinycub")).needs
    assert store.find(need) == store.mirrors[0] / "TINY_CUB.tgz"
    path = store.get(need)
    assert path == store.cache_dir / "TINY_CUB" and (path / "images.txt").is_file()
    assert store.find(need) == path and not list(store.cache_dir.glob(".TINY_CUB.*"))


def test_offline_messages_come_from_the_plan(tmp_path):
    store = FileStore(cache_dir=tmp_path / "cache", mirrors=[tmp_path], offline=True)
    entry = CATALOG.model("cifar10-resnet20-pytorchcv")
    (need,) = resolve_model(entry).needs
    with pytest.raises(MissingFileError) as info:
        load_model(entry, CATALOG, store)
    message = str(info.value)
    assert need.name in message and need.urls[0] in message and "offline mode is on" in message
    assert str(store.cache_path(need)) in message and "SECURITYNET_MIRROR" in message
    statuses, _ = prefetch.plan([entry], CATALOG, store)
    listing = prefetch.missing_message([s for s in statuses if not s.present], store)
    assert f"{need.name} (weights of {entry.id}): {need.urls[0]}" in listing
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))  # nothing written offline
