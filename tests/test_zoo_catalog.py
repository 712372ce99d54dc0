"""The SecurityNet database in the catalog: the importer reproduces the committed files, ids select
what they should, every pytorchcv architecture builds offline with the right output width, and the
extra dataset loaders read local folders."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pytest_securitynet.catalog.annotate import COMPUTED_CSV, build_architecture, compute, output_width, read_computed
from pytest_securitynet.catalog.entries import BUILTIN_CATALOG, load_catalog
from pytest_securitynet.zoo.datasets_extra import balanced_subset, load_image_folder, load_medmnist
from pytest_securitynet.errors import MissingFileError
from pytest_securitynet.results.regression import REPORTED_CSV
from pytest_securitynet.zoo.store import FileStore
from pytest_securitynet.catalog.importer import run_import

from conftest import SHARED, needs_shared

DATABASE = SHARED / "reference" / "securitynet-models.csv"
GENERATED = BUILTIN_CATALOG / "securitynet"
CATALOG = load_catalog([BUILTIN_CATALOG])
FROM_DATABASE = [e for e in CATALOG.models.values() if "database" in e.raw]
PYTORCHCV = [e for e in FROM_DATABASE if e.source_kind == "pytorchcv"]


@needs_shared(DATABASE)
def test_importer_reproduces_the_committed_catalog_and_reported_file(tmp_path):
    written, items = run_import(DATABASE, tmp_path / "securitynet", tmp_path / "reported.csv")
    assert len(items) == 529
    generated = sorted(p.name for p in (tmp_path / "securitynet").glob("*.toml"))
    assert generated == sorted(p.name for p in GENERATED.glob("*.toml"))
    for name in generated:
        assert (tmp_path / "securitynet" / name).read_text() == (GENERATED / name).read_text(), name
    assert (tmp_path / "reported.csv").read_text() == REPORTED_CSV.read_text()


def test_every_database_row_is_one_entry_with_a_unique_readable_id():
    assert len(FROM_DATABASE) == 529
    rows = sorted(e.raw["database"]["row"] for e in FROM_DATABASE)
    assert rows == list(range(1, 530))
    for entry in FROM_DATABASE:
        assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*", entry.id) and "@" not in entry.id
        assert entry.id.startswith(f"{entry.dataset}-")
    zoos = {zoo: sum(e.id.endswith(f"-{zoo}") for e in FROM_DATABASE)
            for zoo in ("pytorchcv", "medmnist", "losslandscape", "robusttransfer")}
    assert zoos == {"pytorchcv": 263, "medmnist": 174, "losslandscape": 72, "robusttransfer": 20}


def test_keyword_cifar10_selects_cifar10_models_only():
    """`-k` matches substrings of ids and keywords: no other dataset's model may contain `cifar10`."""
    for entry in CATALOG.models.values():
        words = [entry.id, *entry.keywords()]
        selected = any("cifar10" in w.lower() for w in words)
        assert selected == (entry.dataset == "cifar10"), entry.id
    assert sum(e.dataset == "cifar10" for e in CATALOG.models.values()) == 4 + 1 + 114 + 47 + 72  # akamaster, fra31, robustbench, database


def test_every_entry_carries_the_codebook():
    for entry in FROM_DATABASE:
        notes = entry.annotations
        for field in ("dataset", "topic_category", "training_set_size", "num_classes", "input_dims", "venue",
                      "venue_type", "year", "num_authors", "country", "purpose", "listed_purpose", "paper"):
            assert field in notes, (entry.id, field)
        assert notes["purpose"] == entry.raw["database"]["table"]
        channels, *spatial = entry.preprocess["input_size"]
        assert notes["input_dims"] == "x".join(map(str, [*spatial, channels]))


def test_unavailable_entries_say_what_is_missing_and_the_rest_are_loadable_kinds():
    for entry in FROM_DATABASE:
        reason = entry.raw.get("unavailable")
        if entry.source_kind == "pytorchcv":
            assert reason is None
        else:
            assert reason and len(reason) > 60, entry.id
    robust = CATALOG.model("imagenet1k-resnet50_l2_eps3-robusttransfer")
    assert robust.raw["builder"] == "torchvision.models:resnet50" and "sha256" in robust.raw["unavailable"]


def test_pytorchcv_names_exist_in_pytorchcvs_own_store():
    from pytorchcv.models.common import model_store

    table = model_store.get_model_metainfo_dict()
    for entry in PYTORCHCV:
        assert entry.source.removeprefix("pytorchcv:") in table, entry.id


def test_reported_file_is_keyed_by_catalog_ids_and_holds_no_zeros():
    with open(REPORTED_CSV, newline="") as fh:
        records = list(csv.DictReader(fh))
    assert records and {r["model"] for r in records} <= set(CATALOG.models)
    assert all(float(r["value"]) != 0 for r in records)
    keys = [(r["model"], r["benchmark"], r["setting"], r["metric"]) for r in records]
    assert len(keys) == len(set(keys))


def test_computed_annotations_agree_with_pytorchcv_and_the_entries():
    from pytorchcv.models.common import model_store

    computed = read_computed(COMPUTED_CSV)
    table = model_store.get_model_metainfo_dict()
    for entry in PYTORCHCV:
        row = computed[entry.id]
        assert int(row["parameters"]) == table[entry.source.removeprefix("pytorchcv:")][0], entry.id
        assert int(row["output_width"]) == entry.annotations["num_classes"]
        assert row["architecture_input_size"] == "x".join(map(str, entry.preprocess["input_size"][1:]))
        assert int(row["flops"]) > 0 and row["has_batchnorm"] in ("true", "false")
    assert set(computed) <= set(CATALOG.models)


def test_compute_measures_a_small_architecture():
    result = compute(CATALOG.model("cifar10-resnet20-pytorchcv"))
    assert (result.parameters, result.output_width, result.has_batchnorm, result.has_dropout) == (272474, 10, True, False)
    assert result.flops == 81_626_368  # convolutions and the classifier: 40.8M multiply-adds, 2 FLOPs each


@pytest.mark.slow
@pytest.mark.parametrize("entry", PYTORCHCV, ids=[e.id for e in PYTORCHCV])
def test_pytorchcv_architecture_builds_offline_with_the_entrys_classes(entry):
    # pretrained=False: no file is read or downloaded. On the meta device nothing is allocated or
    # initialised, and the forward pass only propagates shapes.
    net, _ = build_architecture(entry, "meta")
    assert output_width(net, entry.preprocess["input_size"], "meta") == entry.annotations["num_classes"]
    assert tuple(getattr(net, "in_size", entry.preprocess["input_size"][1:])) == tuple(entry.preprocess["input_size"][1:])


# --- dataset loaders --------------------------------------------------------------------------

def _image(path: Path, size: tuple[int, int], value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def _dataset_entry(tmp_path: Path, body: str):
    path = tmp_path / "data.toml"
    path.write_text(body)
    return load_catalog([path]).datasets


def test_cub200_folder_loads_with_its_split_resized_and_cropped(tmp_path):
    root = tmp_path / "mirror" / "CUB_200_2011"
    lines, labels, split = [], [], []
    for i in range(1, 7):
        cls = 1 + (i - 1) % 2
        name = f"{cls:03d}.bird/img{i}.jpg"
        _image(root / "images" / name, (60, 40), 40 * i)
        lines.append(f"{i} {name}")
        labels.append(f"{i} {cls}")
        split.append(f"{i} {1 if i <= 4 else 0}")
    for file, content in (("images.txt", lines), ("image_class_labels.txt", labels), ("train_test_split.txt", split)):
        (root / file).write_text("\n".join(content) + "\n")
    datasets = _dataset_entry(tmp_path, """
[datasets.tinycub]
source = "image-folder"
layout = "cub200"
folder = "CUB_200_2011"
resize = 24
num_classes = 2
input_size = [3, 16, 16]
train_size = 4
test_size = 2
""")
    store = FileStore(cache_dir=tmp_path / "cache", mirrors=[tmp_path / "mirror"], offline=True)
    out = load_image_folder(datasets["tinycub"], store)
    assert out["train_images"].shape == (4, 3, 16, 16) and out["test_images"].shape == (2, 3, 16, 16)
    assert out["train_labels"].tolist() == [0, 1, 0, 1] and out["test_labels"].tolist() == [0, 1]
    assert out["train_images"][1].float().mean().item() == pytest.approx(80, abs=1)


def test_imagenet_folder_is_local_only_and_subsampled_per_class(tmp_path):
    body = """
[datasets.tinynet]
source = "image-folder"
layout = "train-val"
folder = "imagenet"
max_train = 4
num_classes = 2
input_size = [3, 8, 8]
train_size = 4
test_size = 2
"""
    store = FileStore(cache_dir=tmp_path / "cache", mirrors=[], offline=False)
    entry = _dataset_entry(tmp_path, body)["tinynet"]
    with pytest.raises(MissingFileError, match="local folder only, and no `imagenet` folder was found"):
        load_image_folder(entry, store)
    for split, count in (("train", 5), ("val", 1)):
        for wnid in ("n01", "n02"):
            for i in range(count):
                _image(tmp_path / "cache" / "imagenet" / split / wnid / f"{i}.JPEG", (10, 12), 9)
    out = load_image_folder(entry, store)
    assert out["train_labels"].tolist() == [0, 0, 1, 1] and out["test_labels"].tolist() == [0, 1]
    assert out["train_images"].shape == (4, 3, 8, 8)


def test_balanced_subset_is_seeded_and_per_class():
    labels = [0] * 10 + [1] * 10 + [2] * 1
    keep = balanced_subset(labels, 6, 3, seed=0)
    assert keep == balanced_subset(labels, 6, 3, seed=0) and keep != balanced_subset(labels, 6, 3, seed=1)
    assert sorted(labels[i] for i in keep) == [0, 0, 1, 1, 2]


def test_medmnist_offline_without_the_file_names_it(tmp_path):
    entry = CATALOG.dataset("breastmnist")
    store = FileStore(cache_dir=tmp_path, mirrors=[], offline=True)
    with pytest.raises(MissingFileError, match="medmnist|breastmnist.npz"):
        load_medmnist(entry, store)


def test_medmnist_npz_from_a_mirror_loads(tmp_path):
    pytest.importorskip("medmnist")
    entry = CATALOG.dataset("breastmnist")
    rng = np.random.default_rng(0)
    arrays = {}
    for split in ("train", "val", "test"):
        n = entry.train_size if split == "train" else entry.test_size if split == "test" else 3
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1), dtype=np.uint8)
    (tmp_path / "mirror").mkdir()
    np.savez(tmp_path / "mirror" / "breastmnist.npz", **arrays)
    store = FileStore(cache_dir=tmp_path / "cache", mirrors=[tmp_path / "mirror"], offline=True)
    out = load_medmnist(entry, store)
    assert out["train_images"].shape == (entry.train_size, 1, 28, 28) and out["train_images"].dtype == torch.uint8
    assert torch.equal(out["test_labels"], torch.from_numpy(arrays["test_labels"][:, 0].astype(np.int64)))
