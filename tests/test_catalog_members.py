"""Catalog entries that name their training members (`members_file`): checked on load, used for `members`."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch

from pytest_securitynet.catalog.entries import BUILTIN_CATALOG, load_catalog
from pytest_securitynet.errors import CatalogError
from pytest_securitynet.harness.harness import Harness
from pytest_securitynet.harness.settings import Settings
from pytest_securitynet.zoo.members import member_indices
from pytest_securitynet.zoo.store import FileStore, sha256_of

SUBSET_RBF = """
[[models]]
id = "digits-rbf-subset"
dataset = "digits"
architecture = "rbfnet"
model_type = "rbf"
source = "demo"
builder = "demo_rbf"
builder_args = {{ num_classes = 10, num_centers = {n}, input_dim = 64 }}
train = {{ epochs = 200, lr = 0.01, weight_decay = 0.0, batch_size = 0, seed = 0, width_factor = 0.4 }}
preprocess = {{ input_size = [1, 8, 8], mean = [0.0], std = [1.0] }}
members_file = "{members}"
annotations = {{ topic_category = "handwritten digits", training_set_size = {n}, num_classes = 10, input_dims = "8x8x1", purpose = "benchmark" }}
"""


def subset_catalog(tmp_path: Path, lines: list[str], n: int = 400) -> Path:
    (tmp_path / "members.txt").write_text("\n".join(lines) + "\n")
    catalog = tmp_path / "subset.toml"
    catalog.write_text(SUBSET_RBF.format(n=n, members="members.txt"))
    return catalog


def named(n: int = 400, seed: int = 0) -> list[int]:
    return sorted(torch.randperm(898, generator=torch.Generator().manual_seed(seed))[:n].tolist())


def test_members_file_is_read_relative_to_its_catalog_file(tmp_path):
    lines = ["# the 400 digits the model was trained on", *map(str, named()), ""]
    entry = load_catalog([BUILTIN_CATALOG, subset_catalog(tmp_path, lines)]).model("digits-rbf-subset")
    assert entry.members == named()
    assert entry.raw["members_path"] == str((tmp_path / "members.txt").resolve())


@pytest.mark.parametrize(("line", "why"), [("898", "'898' is not in the train split"),
                                           ("-1", "'-1' is not in the train split"),
                                           ("cat/0001.jpg", "is not in the train split"),
                                           ("5", "listed twice")])
def test_a_sample_not_in_the_split_fails_naming_file_line_and_sample(tmp_path, line, why):
    lines = ["5", "7", line]
    with pytest.raises(CatalogError, match=why) as info:
        load_catalog([BUILTIN_CATALOG, subset_catalog(tmp_path, lines)])
    assert f"{(tmp_path / 'members.txt').resolve()}:3" in str(info.value)
    assert "digits-rbf-subset" in str(info.value)


def test_missing_or_empty_members_file(tmp_path):
    catalog = subset_catalog(tmp_path, ["# nothing"])
    with pytest.raises(CatalogError, match="lists no samples"):
        load_catalog([BUILTIN_CATALOG, catalog])
    (tmp_path / "members.txt").unlink()
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog([BUILTIN_CATALOG, catalog])


def test_cached_catalog_notices_an_edited_members_file(tmp_path):
    catalog = subset_catalog(tmp_path, ["1", "2"])
    cache = tmp_path / "cache"
    assert load_catalog([BUILTIN_CATALOG, catalog], cache).model("digits-rbf-subset").members == [1, 2]
    (tmp_path / "members.txt").write_text("1\n2\n3\n")
    assert load_catalog([BUILTIN_CATALOG, catalog], cache).model("digits-rbf-subset").members == [1, 2, 3]
    (tmp_path / "members.txt").write_text("1\n2\n9999\n")
    with pytest.raises(CatalogError, match="9999"):
        load_catalog([BUILTIN_CATALOG, catalog], cache)


def test_members_are_drawn_only_from_the_named_samples(tmp_path, cache_dir):
    """400 named training digits: `members` and the `train` set are exactly them; non-members stay the test split."""
    h = Harness(Settings(cache_dir=cache_dir, catalogs=(str(subset_catalog(tmp_path, list(map(str, named())))),)),
                lambda: torch.device("cpu"))
    loaded = h.loaded(h.catalog.model("digits-rbf-subset"))
    assert loaded.sets["members"].indices.tolist() == named()
    assert loaded.sets["train"].indices.tolist() == named()
    assert loaded.sets["nonmembers"].split == "test" and len(loaded.sets["nonmembers"]) == 400
    h2 = Harness(Settings(cache_dir=cache_dir, members=100,
                          catalogs=(str(subset_catalog(tmp_path, list(map(str, named())))),)),
                 lambda: torch.device("cpu"))
    fewer = h2.loaded(h2.catalog.model("digits-rbf-subset")).sets["members"].indices.tolist()
    assert len(fewer) == 100 and set(fewer) <= set(named())


def _archive(tmp_path: Path) -> Path:
    """A two-class image-folder archive with 3 training images per class."""
    from PIL import Image

    path = tmp_path / "tiny.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            for label in ("cat", "dog"):
                for i in range(3):
                    blob = io.BytesIO()
                    Image.new("RGB", (4, 4), (i * 40, 0, 0)).save(blob, format="PNG")
                    info = tarfile.TarInfo(f"tiny/{split}/{label}/{i:04d}.png")
                    info.size = len(blob.getvalue())
                    tar.addfile(info, io.BytesIO(blob.getvalue()))
    return path


TINY = """
[datasets.tiny]
source = "image-folder-archive"
file = "tiny.tar.gz"
sha256 = "{sha}"
archive_root = "tiny"
num_classes = 2
class_names = ["cat", "dog"]
input_size = [3, 4, 4]
train_size = 6
test_size = 6

[[models]]
id = "tiny-model"
dataset = "tiny"
architecture = "x"
model_type = "x"
source = "file:tiny.pt"
builder = "demo_cnn"
members_file = "members.txt"
preprocess = {{ input_size = [3, 4, 4], mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }}
annotations = {{ topic_category = "x", training_set_size = 2, num_classes = 2, input_dims = "4x4x3", purpose = "benchmark" }}
"""


def test_archive_members_are_file_names_mapped_to_the_splits_order(tmp_path):
    archive = _archive(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY.format(sha=sha256_of(archive)))
    (tmp_path / "members.txt").write_text("dog/0001.png\ntiny/train/cat/0002.png\n")
    catalog = load_catalog([BUILTIN_CATALOG, tmp_path / "tiny.toml"])
    entry = catalog.model("tiny-model")
    assert entry.members == ["dog/0001.png", "cat/0002.png"]
    store = FileStore(cache_dir=tmp_path / "cache", mirrors=[tmp_path], offline=True)
    # The split loads sorted by (class, file): cat/0000..0002 are 0..2, dog/0000..0002 are 3..5.
    assert member_indices(entry, catalog.dataset("tiny"), store).tolist() == [2, 4]


def test_an_archive_member_not_in_the_split_fails_at_start_up(tmp_path):
    archive = _archive(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY.format(sha=sha256_of(archive)))
    (tmp_path / "members.txt").write_text("dog/0001.png\ndog/0007.png\n")
    settings = Settings(cache_dir=tmp_path / "cache", catalogs=(str(tmp_path / "tiny.toml"),), mirrors=(tmp_path,),
                        offline=True)
    with pytest.raises(CatalogError, match="'dog/0007.png' is not in the train split") as info:
        Harness(settings, lambda: torch.device("cpu"))
    assert str((tmp_path / "members.txt").resolve()) in str(info.value)
