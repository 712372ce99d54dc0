"""Cache, mirror, checksum and offline behaviour of file fetching."""

from __future__ import annotations

import hashlib

import pytest

from pytest_securitynet.errors import ChecksumError, MissingFileError
from pytest_securitynet.zoo.store import FileStore


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
