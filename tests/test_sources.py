"""Cache, mirror, checksum and offline behaviour of file fetching."""

from __future__ import annotations

import hashlib
import zipfile

import pytest
import torch

from pytest_securitynet.errors import ChecksumError, MissingFileError
from pytest_securitynet.zoo.store import Archive, Digest, FileStore, Need


@pytest.fixture
def blob(tmp_path):
    source = tmp_path / "upstream"
    source.mkdir()
    path = source / "weights-1234.pt"
    path.write_bytes(b"not really weights" * 100)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_mirror_is_used_before_any_download(tmp_path, blob):
    path, sha = blob
    store = FileStore(cache_dir=tmp_path / "cache", mirrors=[tmp_path / "nowhere", path.parent], offline=True)
    assert store.fetch(path.name, sha, url="http://invalid.example/never-fetched") == path


def test_download_goes_through_a_temp_file_and_is_verified(tmp_path, blob):
    path, sha = blob
    store = FileStore(cache_dir=tmp_path / "cache", mirrors=[], offline=False)
    got = store.fetch(path.name, sha, url=path.as_uri())  # file:// goes through the same download code
    assert got.parent == tmp_path / "cache" / "files" and got.read_bytes() == path.read_bytes()
    assert not list(got.parent.glob("*.part"))


def test_checksum_mismatch_is_refused_and_nothing_is_cached(tmp_path, blob):
    path, _ = blob
    store = FileStore(cache_dir=tmp_path / "cache", mirrors=[], offline=False)
    with pytest.raises(ChecksumError, match=f"sha256 mismatch for {path.name}.*expected 0{{64}}"):
        store.fetch(path.name, "0" * 64, url=path.as_uri())
    assert not (tmp_path / "cache" / "files" / path.name).exists()
    assert not list((tmp_path / "cache" / "files").glob("*.part"))
    store.mirrors = [path.parent]
    with pytest.raises(ChecksumError, match="from mirror"):
        store.fetch(path.name, "0" * 64)


def test_missing_file_offline_names_file_url_and_where_to_put_it(tmp_path):
    store = FileStore(cache_dir=tmp_path / "cache", mirrors=[tmp_path], offline=True)
    url = "https://example.org/models/resnet20-12fca82f.th"
    with pytest.raises(MissingFileError) as info:
        store.fetch("resnet20-12fca82f.th", "a" * 64, url=url)
    message = str(info.value)
    assert "resnet20-12fca82f.th" in message and url in message and "offline" in message
    assert str(tmp_path / "cache" / "files" / "resnet20-12fca82f.th") in message and "SECURITYNET_MIRROR" in message


def test_unreachable_url_fails_fast_with_the_same_advice(tmp_path):
    store = FileStore(cache_dir=tmp_path / "cache", mirrors=[], offline=False)
    with pytest.raises(MissingFileError, match="(?s)could not download w.pt .*SECURITYNET_MIRROR"):
        store.fetch("w.pt", None, url=(tmp_path / "absent" / "w.pt").as_uri())


def test_a_corrupt_copy_in_the_first_mirror_is_passed_over_naming_it(tmp_path, blob):
    path, sha = blob
    bad_mirror = tmp_path / "bad"
    bad_mirror.mkdir()
    (bad_mirror / path.name).write_bytes(b"truncated")
    store = FileStore(cache_dir=tmp_path / "cache", mirrors=[bad_mirror, path.parent], offline=True)
    with pytest.warns(UserWarning, match=f"sha256 mismatch for {path.name} from mirror {bad_mirror}.*Used {path}"):
        assert store.fetch(path.name, sha) == path
    store.mirrors = [bad_mirror]
    with pytest.raises(ChecksumError, match=f"from mirror {bad_mirror}"):
        store.fetch(path.name, sha)


def test_a_corrupt_mirror_copy_is_named_when_the_download_fails_too(tmp_path, blob):
    path, sha = blob
    bad_mirror = tmp_path / "bad"
    bad_mirror.mkdir()
    (bad_mirror / path.name).write_bytes(b"truncated")
    store = FileStore(cache_dir=tmp_path / "cache", mirrors=[bad_mirror], offline=False)
    with pytest.raises(ChecksumError, match=f"(?s)sha256 mismatch for {path.name} from mirror {bad_mirror}.*"
                                            f"no good copy downloaded either: .*could not download {path.name}"):
        store.fetch(path.name, sha, url=(tmp_path / "absent" / path.name).as_uri())


def test_an_archive_download_is_unpacked_checked_by_its_digest_and_removed(tmp_path, blob):
    path, _ = blob
    archive = tmp_path / "upstream" / f"{path.name}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(path, path.name)
    sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
    store = FileStore(cache_dir=tmp_path / "cache", mirrors=[], offline=False)
    need = Need(path.name, "weights of x", "weights/zoo", (archive.as_uri(),), digest=Digest("sha1", sha1),
                archive=Archive(archive.name))
    got = store.get(need)
    assert got == tmp_path / "cache" / "weights" / "zoo" / path.name and got.read_bytes() == path.read_bytes()
    assert not (tmp_path / "cache" / "downloads" / archive.name).exists()
    wrong = Need(f"other-{path.name}", "weights of y", "weights/zoo", (archive.as_uri(),),
                 digest=Digest("sha1", "0" * 40), archive=Archive(archive.name))
    with pytest.raises(MissingFileError, match=f"does not hold 'other-{path.name}'"):
        store.get(wrong)
    renamed = Need(path.name, "weights of z", "weights/other", (archive.as_uri(),),
                   digest=Digest("sha1", "0" * 40), archive=Archive(archive.name))
    with pytest.raises(ChecksumError, match="sha1 mismatch"):
        store.get(renamed)
    assert not (tmp_path / "cache" / "weights" / "other" / path.name).exists()


TIMM_NAME = "test_resnet.r160_in1k"


def timm_entry(tmp_path, sha256: str):
    from pytest_securitynet.catalog.entries import BUILTIN_CATALOG, load_catalog

    (tmp_path / "timm.toml").write_text(f"""
[[models]]
id = "timm-test-resnet"
dataset = "imagenet1k"
architecture = "test_resnet"
model_type = "resnet"
source = "timm:{TIMM_NAME}"
sha256 = "{sha256}"
preprocess = {{ input_size = [3, 160, 160], mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225] }}
annotations = {{ topic_category = "natural scenery", training_set_size = 1, num_classes = 1000, input_dims = "160x160x3", purpose = "benchmark" }}
""")
    catalog = load_catalog([BUILTIN_CATALOG, tmp_path / "timm.toml"])
    return catalog.model("timm-test-resnet"), catalog


def test_timm_weights_from_a_mirror_are_checked_against_the_entrys_sha256(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    from pytest_securitynet.zoo.weights import load_model

    net = timm.create_model(TIMM_NAME, pretrained=False)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    save_file(net.state_dict(), mirror / f"{TIMM_NAME}.safetensors")
    good = hashlib.sha256((mirror / f"{TIMM_NAME}.safetensors").read_bytes()).hexdigest()
    store = FileStore(cache_dir=tmp_path / "cache", mirrors=[mirror], offline=True)
    entry, catalog = timm_entry(tmp_path, "0" * 64)
    with pytest.raises(ChecksumError, match=f"sha256 mismatch for {TIMM_NAME}.safetensors from mirror"):
        load_model(entry, catalog, store)
    entry, catalog = timm_entry(tmp_path, good)
    model = load_model(entry, catalog, store)
    assert all(torch.equal(a, b) for a, b in zip(model.net.state_dict().values(), net.state_dict().values()))


def test_a_downloads_only_digest_checks_downloads_and_trusts_local_copies(tmp_path, blob):
    path, _ = blob
    wrong = Digest("md5", "0" * 32, downloads_only=True)
    store = FileStore(cache_dir=tmp_path / "cache", mirrors=[path.parent], offline=True)
    assert store.get(Need(path.name, digest=wrong)) == path
    store = FileStore(cache_dir=tmp_path / "cache", mirrors=[], offline=False)
    with pytest.raises(ChecksumError, match="md5 mismatch"):
        store.get(Need(path.name, urls=(path.as_uri(),), digest=wrong))
    right = Digest("md5", hashlib.md5(path.read_bytes()).hexdigest(), downloads_only=True)
    assert store.get(Need(path.name, urls=(path.as_uri(),), digest=right)).read_bytes() == path.read_bytes()
