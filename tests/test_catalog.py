"""The catalog: built-in content loads, and every kind of bad entry names file, entry and field."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pytest_securitynet.catalog.entries import BUILTIN_CATALOG, load_catalog
from pytest_securitynet.errors import CatalogError

from conftest import AKAMASTER_DIR, needs_shared

GOOD_MODEL = """
[[models]]
id = "digits-local-cnn"
dataset = "digits"
architecture = "democnn"
model_type = "cnn"
source = "file:weights.pt"
builder = "demo_cnn"
preprocess = { input_size = [1, 8, 8], mean = [0.5], std = [0.5] }
annotations = { topic_category = "handwritten digits", training_set_size = 898, num_classes = 10, input_dims = "8x8x1", purpose = "security" }
"""


def write(tmp_path: Path, text: str, name: str = "mine.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_builtin_catalog_has_akamaster_demo_and_datasets():
    catalog = load_catalog([BUILTIN_CATALOG])
    assert {"cifar10", "cifar10-jpeg", "digits"} <= set(catalog.datasets)
    assert {f"cifar10-resnet{d}-akamaster" for d in (20, 32, 44, 56)} <= set(catalog.models)
    assert {"demo-digits-cnn", "demo-digits-rbf-overfit"} <= set(catalog.models)
    assert catalog.dataset("cifar10-jpeg").family == "cifar10"


@needs_shared(AKAMASTER_DIR)
def test_akamaster_checksums_match_the_shared_files():
    catalog = load_catalog([BUILTIN_CATALOG])
    for depth in (20, 32, 44, 56):
        entry = catalog.model(f"cifar10-resnet{depth}-akamaster")
        file = AKAMASTER_DIR / entry.source.rsplit("/", 1)[1]
        assert hashlib.sha256(file.read_bytes()).hexdigest() == entry.raw["sha256"]


def test_user_catalog_adds_a_model(tmp_path):
    catalog = load_catalog([BUILTIN_CATALOG, write(tmp_path, GOOD_MODEL)])
    entry = catalog.model("digits-local-cnn")
    assert entry.source_kind == "file" and entry.purpose == "security"
    assert {"digits", "security", "file"} <= entry.keywords()


@pytest.mark.parametrize(("bad", "field"), [
    ('source = "file:weights.pt"', "builder"),                     # a local file needs a builder
    ('model_type = 3', "model_type"),                              # wrong type
    ('id = "Has Spaces@"', "id"),                                  # ids must work in -k and xdist groups
    ('source = "ftp://example.org/w.pt"', "source"),               # unsupported scheme
    ('source = "https://example.org/w.pt"', "sha256"),             # a URL needs a checksum
])
def test_bad_model_entry_names_file_entry_and_field(tmp_path, bad, field):
    text = GOOD_MODEL.replace('builder = "demo_cnn"\n', "") if field == "builder" else GOOD_MODEL
    key = bad.split(" = ")[0]
    lines = [line for line in text.splitlines() if not line.startswith(f"{key} =")]
    lines.insert(2, bad)
    path = write(tmp_path, "\n".join(lines))
    with pytest.raises(CatalogError) as info:
        load_catalog([BUILTIN_CATALOG, path])
    message = str(info.value)
    assert str(path) in message and "model" in message and field in message


def test_unknown_dataset_and_class_mismatch_are_reported(tmp_path):
    path = write(tmp_path, GOOD_MODEL.replace('dataset = "digits"', 'dataset = "no-such-set"'))
    with pytest.raises(CatalogError, match=r"digits-local-cnn.*field dataset: unknown dataset 'no-such-set'"):
        load_catalog([BUILTIN_CATALOG, path])
    path = write(tmp_path, GOOD_MODEL.replace("num_classes = 10", "num_classes = 100"))
    with pytest.raises(CatalogError, match="annotations.num_classes"):
        load_catalog([BUILTIN_CATALOG, path])


def test_duplicate_id_and_bad_toml(tmp_path):
    path = write(tmp_path, GOOD_MODEL + GOOD_MODEL)
    with pytest.raises(CatalogError, match="already defined"):
        load_catalog([BUILTIN_CATALOG, path])
    with pytest.raises(CatalogError, match="not valid TOML"):
        load_catalog([write(tmp_path, "[[models]\n", "broken.toml")])


def test_bad_dataset_entry(tmp_path):
    path = write(tmp_path, '[datasets.svhn-local]\nsource = "image-folder-archive"\nnum_classes = 10\n'
                           'input_size = [3, 32, 32]\ntrain_size = 1\ntest_size = 1\n')
    with pytest.raises(CatalogError, match=r"dataset 'svhn-local'.*(file|sha256|archive_root)"):
        load_catalog([path])


def test_the_validated_catalog_is_cached_and_rebuilt_when_a_file_changes(tmp_path):
    user = tmp_path / "user.toml"
    user.write_text(GOOD_MODEL)
    cache = tmp_path / "cache"
    first = load_catalog([BUILTIN_CATALOG, user], cache)
    assert len(list((cache / "catalog").glob("*.json"))) == 1
    again = load_catalog([BUILTIN_CATALOG, user], cache)  # from the cache file
    assert again.models == first.models and again.datasets == first.datasets
    assert again.model("digits-local-cnn").raw == first.model("digits-local-cnn").raw
    # An edit (new size and time) is seen at once: the broken file is validated, not served stale.
    user.write_text(GOOD_MODEL.replace('builder = "demo_cnn"\n', ""))
    with pytest.raises(CatalogError, match="builder"):
        load_catalog([BUILTIN_CATALOG, user], cache)
