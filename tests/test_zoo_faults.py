"""Faults in the zoo (weights, datasets, cache, network) end in one clear line, never in a traceback,
a stale result or a hang."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import socket
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pytest_securitynet.catalog.entries import BUILTIN_CATALOG, load_catalog
from pytest_securitynet.errors import CacheError, CatalogError, MissingFileError, UnreadableFileError
from pytest_securitynet.harness.harness import Harness
from pytest_securitynet.harness.settings import Settings
from pytest_securitynet.zoo import datasets, resolver, store as store_module
from pytest_securitynet.zoo.architectures import build
from pytest_securitynet.zoo.datasets import decoded_path, load_dataset
from pytest_securitynet.zoo.demo import demo_network
from pytest_securitynet.zoo.store import FileStore, Need
from pytest_securitynet.zoo.weights import load_model

from conftest import model_toml

CATALOG = load_catalog([BUILTIN_CATALOG])
BUILDER = 'builder = "demo_cnn"\nbuilder_args = { num_classes = 2, in_channels = 3, width = 4 }'


def tiny_model_toml(model_id: str, source: str, extra: str) -> str:
    """A two-class model of the `tinyjpeg` dataset below."""
    return model_toml(model_id, source, dataset="tinyjpeg", extra=extra, classes=2)


def dataset_toml(sha256: str) -> str:
    return f"""
[datasets.tinyjpeg]
source = "image-folder-archive"
file = "tiny.tar.gz"
sha256 = "{sha256}"
archive_root = "tiny"
num_classes = 2
input_size = [3, 8, 8]
train_size = 4
test_size = 2
"""


def write_archive(path: Path, value: int) -> str:
    """A tiny image-folder tarball whose every pixel is `value`; returns its sha256."""
    with tarfile.open(path, "w:gz") as tar:
        for split, count in (("train", 2), ("test", 1)):
            for label in ("a", "b"):
                for i in range(count):
                    buffer = io.BytesIO()
                    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
                    member = tarfile.TarInfo(f"tiny/{split}/{label}/{i}.png")
                    member.size = len(buffer.getvalue())
                    tar.addfile(member, io.BytesIO(buffer.getvalue()))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def catalog_of(tmp_path: Path, text: str):
    path = tmp_path / "mine.toml"
    path.write_text(text)
    return load_catalog([BUILTIN_CATALOG, path])


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_one_line(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message and "During handling" not in message


@pytest.fixture
def tiny(tmp_path):
    """A mirror with a tiny dataset archive and a demo_cnn checkpoint; a store with an empty cache."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    sha = write_archive(mirror / "tiny.tar.gz", 10)
    torch.manual_seed(0)
    net = build("demo_cnn", num_classes=2, in_channels=3, width=4)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    return mirror, sha, net, FileStore(cache_dir=tmp_path / "cache", mirrors=[mirror], offline=True)


# --- point 4: the decoded-dataset cache follows its source --------------------------------------

def test_decoded_dataset_cache_follows_the_sources_checksum_and_the_decoder_version(tmp_path, tiny, monkeypatch):
    mirror, sha, _, store = tiny
    old = load_dataset(catalog_of(tmp_path, dataset_toml(sha)).dataset("tinyjpeg"), store)
    assert int(old.train_images[0, 0, 0, 0]) == 10
    new_sha = write_archive(mirror / "tiny.tar.gz", 200)  # the upstream file changed, and the catalog with it
    entry = catalog_of(tmp_path, dataset_toml(new_sha)).dataset("tinyjpeg")
    new = load_dataset(entry, store)
    assert int(new.train_images[0, 0, 0, 0]) == 200
    assert [p.name for p in (store.cache_dir / "datasets").glob("*.pt")] == [decoded_path(entry, store).name]
    monkeypatch.setattr(datasets, "DECODER_VERSION", datasets.DECODER_VERSION + 1)
    assert decoded_path(entry, store).name != [p.name for p in (store.cache_dir / "datasets").glob("*.pt")][0]


# --- point 6: weights that cannot be read or do not fit -----------------------------------------

def test_a_truncated_checkpoint_is_one_line_naming_the_entry_and_the_file(tmp_path, tiny):
    *_, store = tiny
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "w.pt").write_bytes(data[: len(data) // 2])
    catalog = catalog_of(tmp_path, dataset_toml("0" * 64) + tiny_model_toml("tiny-cut", "file:w.pt", BUILDER))
    with pytest.raises(UnreadableFileError) as info:
        load_model(catalog.model("tiny-cut"), catalog, store)
    message = str(info.value)
    assert_one_line(message)
    assert str(tmp_path / "w.pt") in message and "weights of tiny-cut" in message and "truncated or damaged" in message


@pytest.mark.parametrize(("change", "expected"), [
    (lambda sd: {k: v for k, v in sd.items() if k != "0.weight"}, r"1 keys missing from the checkpoint \(0\.weight\)"),
    (lambda sd: {**sd, "extra.bias": torch.zeros(2)}, r"1 unexpected keys in it \(extra\.bias\)"),
    (lambda sd: {**sd, "7.weight": torch.zeros(3, 128)}, r"1 tensors of another shape \(7\.weight: checkpoint \(3, 128\), model \(2, 128\)\)"),
])
def test_a_builder_that_does_not_fit_names_the_entry_the_builder_and_the_keys(tmp_path, tiny, change, expected):
    *_, net, store = tiny
    torch.save(change(net.state_dict()), tmp_path / "w.pt")
    catalog = catalog_of(tmp_path, dataset_toml("0" * 64) + tiny_model_toml("tiny-misfit", "file:w.pt", BUILDER))
    with pytest.raises(CatalogError, match=expected) as info:
        load_model(catalog.model("tiny-misfit"), catalog, store)
    message = str(info.value)
    assert_one_line(message)
    assert "'tiny-misfit'" in message and "builder 'demo_cnn' (num_classes=2, in_channels=3, width=4)" in message
    assert str(tmp_path / "w.pt") in message


def test_a_fitting_checkpoint_still_loads(tmp_path, tiny):
    *_, net, store = tiny
    catalog = catalog_of(tmp_path, dataset_toml("0" * 64) + tiny_model_toml("tiny-fit", "file:w.pt", BUILDER))
    model = load_model(catalog.model("tiny-fit"), catalog, store)
    assert all(torch.equal(a, b) for a, b in zip(model.net.state_dict().values(), net.state_dict().values()))


# --- point 6: damaged cache files are rebuilt ---------------------------------------------------

def test_a_truncated_decoded_dataset_is_decoded_again_with_a_warning(tmp_path, tiny):
    _, sha, _, store = tiny
    entry = catalog_of(tmp_path, dataset_toml(sha)).dataset("tinyjpeg")
    first = load_dataset(entry, store)
    cached = decoded_path(entry, store)
    cached.write_bytes(cached.read_bytes()[:100])
    with pytest.warns(UserWarning, match=rf"cannot read {cached} \(decoded tensors of dataset tinyjpeg\).*again"):
        again = load_dataset(entry, store)
    assert torch.equal(again.train_images, first.train_images)
    assert torch.equal(torch.load(cached, weights_only=True)["train_images"], first.train_images)  # repaired


def test_a_truncated_demo_model_is_trained_again_with_a_warning(tmp_path):
    text = model_toml("tiny-demo", "demo", extra='builder = "demo_cnn"\nbuilder_args = { num_classes = 10, in_channels = 1, width = 2 }\n'
                      'train = { epochs = 1, lr = 0.01, batch_size = 256 }', dataset="digits", classes=10, channels=1)
    catalog = catalog_of(tmp_path, text)
    store = FileStore(cache_dir=tmp_path / "cache", offline=True)
    first = demo_network(catalog.model("tiny-demo"), catalog, store)
    (cached,) = (store.cache_dir / "weights" / "demo").glob("tiny-demo-*.pt")
    cached.write_bytes(cached.read_bytes()[:50])
    with pytest.warns(UserWarning, match=rf"cannot read {cached} \(trained weights of demo model tiny-demo\).*again"):
        again = demo_network(catalog.model("tiny-demo"), catalog, store)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), first.state_dict().values()))
    assert demo_network(catalog.model("tiny-demo"), catalog, store) is not None  # repaired: no warning now


# --- point 6: read-only caches and unusable cache paths -----------------------------------------

def test_a_read_only_cache_is_read_without_lock_files(tmp_path, tiny, monkeypatch):
    mirror, sha, _, store = tiny
    weights = tmp_path / "w.pt"
    url = f"http://127.0.0.1:{closed_port()}/tiny-0123.pt"
    text = dataset_toml(sha) + tiny_model_toml("tiny-url", url, f'{BUILDER}\nsha256 = "{hashlib.sha256(weights.read_bytes()).hexdigest()}"')
    catalog = catalog_of(tmp_path, text)
    (store.cache_dir / "weights").mkdir(parents=True)
    (store.cache_dir / "weights" / "tiny-0123.pt").write_bytes(weights.read_bytes())
    load_dataset(catalog.dataset("tinyjpeg"), store)  # fills the cache while it is writable
    store.mirrors = []
    before = sorted(p.relative_to(store.cache_dir) for p in store.cache_dir.rglob("*"))

    def no_writes(*parts):
        raise AssertionError(f"a read took the lock {parts}")

    monkeypatch.setattr(FileStore, "lock", lambda self, *parts: no_writes(*parts))
    for path in (*store.cache_dir.rglob("*"), store.cache_dir):
        path.chmod(0o555 if path.is_dir() else 0o444)  # read-only (root ignores it: the patched lock still checks)
    try:
        model = load_model(catalog.model("tiny-url"), catalog, store)
        data = load_dataset(catalog.dataset("tinyjpeg"), store)
    finally:
        for path in (store.cache_dir, *store.cache_dir.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert model(torch.rand(1, 3, 8, 8)).shape == (1, 2) and len(data.train_labels) == 4
    assert sorted(p.relative_to(store.cache_dir) for p in store.cache_dir.rglob("*")) == before


@pytest.mark.timeout(60)
@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, a directory no one can write")
def test_a_write_to_an_unwritable_cache_fails_at_once_naming_the_path(tmp_path):
    """A lock library waits forever for a lock file it cannot create; the store names the path instead."""
    store = FileStore(cache_dir=Path("/proc/securitynet-cache"), offline=True)
    with pytest.raises(CacheError, match=r"cannot write /proc/securitynet-cache/locks.* in the cache /proc/securitynet-cache") as info:
        load_dataset(CATALOG.dataset("digits"), store)
    assert_one_line(str(info.value))


def test_a_cache_path_under_a_file_is_refused_at_start_naming_it(tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    with pytest.raises(CacheError, match=rf"cache directory {tmp_path}/afile/cache cannot be used: {tmp_path}/afile is a file"):
        FileStore(cache_dir=tmp_path / "afile" / "cache")
    with pytest.raises(CacheError, match="afile is a file"):
        Harness(Settings(cache_dir=tmp_path / "afile" / "cache"), lambda: torch.device("cpu"))


# --- issue 15, point 7: no network ---------------------------------------------------------------

@pytest.fixture
def urlopen_calls(monkeypatch) -> list[str]:
    """Every URL the store really asks the network for."""
    calls: list[str] = []
    real = urllib.request.urlopen

    def counting(url, *args, **kwargs):
        calls.append(url)
        return real(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", counting)
    return calls


def test_an_unreachable_host_is_tried_once_then_fails_at_once(tmp_path, urlopen_calls):
    base = f"http://127.0.0.1:{closed_port()}"
    store = FileStore(cache_dir=tmp_path / "cache", offline=False)
    start = time.monotonic()
    with pytest.raises(MissingFileError) as first:
        store.get(Need("a.pt", "weights of model-a", "weights", (f"{base}/a.pt",)))
    with pytest.raises(MissingFileError) as second:
        store.get(Need("b.pt", "weights of model-b", "weights", (f"{base}/b.pt",)))
    assert time.monotonic() - start < 10
    assert urlopen_calls == [f"{base}/a.pt"]  # the second file did not go to the network
    for info, name in ((first, "a.pt"), (second, "b.pt")):
        message = str(info.value)
        assert_one_line(message)
        assert message.count("missing file") == 1 and f"missing file '{name}'" in message
        assert "securitynet catalog prefetch" in message and "SECURITYNET_MIRROR" in message
        assert "--securitynet-offline" in message and str(tmp_path / "cache" / "weights" / name) in message
    assert "Connection refused" in str(first.value)
    assert "127.0.0.1" in str(second.value) and "could not be reached earlier in this run" in str(second.value)
    locks = [p.relative_to(tmp_path / "cache") for p in (tmp_path / "cache").rglob("*.lock")]
    assert locks == [Path("locks/weights/a.pt.lock")]  # only the first attempt took a lock


def test_a_silent_server_times_out_instead_of_hanging(tmp_path, monkeypatch, urlopen_calls):
    monkeypatch.setattr(store_module, "DOWNLOAD_TIMEOUT_S", 0.5)
    with socket.socket() as server:  # accepts connections (the kernel's backlog) and never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        base = f"http://127.0.0.1:{server.getsockname()[1]}"
        store = FileStore(cache_dir=tmp_path / "cache", offline=False)
        start = time.monotonic()
        with pytest.raises(MissingFileError, match="timed out"):
            store.get(Need("a.pt", "weights of model-a", "weights", (f"{base}/a.pt",)))
        with pytest.raises(MissingFileError, match="could not be reached earlier"):
            store.get(Need("b.pt", "weights of model-b", "weights", (f"{base}/b.pt",)))
        assert time.monotonic() - start < 10 and len(urlopen_calls) == 1


def test_pytorchcv_models_without_network_end_in_the_same_clear_message(tmp_path, monkeypatch, urlopen_calls):
    monkeypatch.setattr(resolver, "PYTORCHCV_REPO", f"http://127.0.0.1:{closed_port()}/osmr/imgclsmob")
    store = FileStore(cache_dir=tmp_path / "cache", offline=False)
    messages = []
    for model_id in ("cifar10-resnet20-pytorchcv", "cifar10-resnet56-pytorchcv"):
        with pytest.raises(MissingFileError) as info:
            load_model(CATALOG.model(model_id), CATALOG, store)
        messages.append(str(info.value))
    assert len(urlopen_calls) == 1
    for message, model_id in zip(messages, ("cifar10-resnet20-pytorchcv", "cifar10-resnet56-pytorchcv")):
        assert_one_line(message)
        assert f"weights of {model_id}" in message and "requests" not in message


def test_a_benchmark_run_without_network_shows_each_message_once(pytester, tmp_path, monkeypatch):
    """Through pytest: every test of a model whose weights cannot be fetched errors with the message once."""
    monkeypatch.delenv("SECURITYNET_OFFLINE", raising=False)
    monkeypatch.delenv("SECURITYNET_MIRROR", raising=False)
    url = f"http://127.0.0.1:{closed_port()}/w/tiny-0123.pt"
    catalog = tmp_path / "net.toml"
    builder = 'builder = "demo_cnn"\nbuilder_args = { num_classes = 10, in_channels = 1, width = 4 }'
    catalog.write_text(model_toml("tiny-net", url, extra=f'{builder}\nsha256 = "{"0" * 64}"', dataset="digits", channels=1))
    (pytester.path / "test_two.py").write_text(
        "def test_one(target_model):\n    pass\n\ndef test_two(target_model):\n    pass\n")
    args = ("-p", "no:cacheprovider", "-k", "tiny-net", f"--securitynet-catalog={catalog}",
            f"--securitynet-cache={tmp_path / 'cache'}", f"--securitynet-json={tmp_path / 'out.json'}", "test_two.py")
    stopped = pytester.runpytest(*args)  # the host is down before the run: one line, no test
    assert stopped.ret == pytest.ExitCode.USAGE_ERROR
    stopped.stderr.fnmatch_lines(["ERROR: 1 of 1 selected models need weights *127.0.0.1:* cannot be reached*"])
    # A host that answers the check and then fails: each test's error says so, once.
    monkeypatch.setattr("pytest_securitynet.plugin.missing._reachable", lambda host: True)
    result = pytester.runpytest(*args)
    result.assert_outcomes(errors=2)
    out = result.stdout.str()
    errors = out.split("= securitynet =")[0]  # the end-of-run table repeats each row's reason, shortened
    assert errors.count("missing file 'tiny-0123.pt'") == 2, out
    assert "During handling" not in out and "Connection refused" in out and "could not be reached earlier" in out


def test_a_full_disk_while_downloading_is_the_caches_fault_not_the_networks(tmp_path, monkeypatch):
    source = tmp_path / "w.pt"
    source.write_bytes(b"weights" * 1000)
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fdopen(fd, mode="r", *args, **kwargs):
        handle = real_fdopen(fd, mode, *args, **kwargs)
        return FullDisk(handle) if "w" in mode else handle

    monkeypatch.setattr(os, "fdopen", fdopen)
    store = FileStore(cache_dir=tmp_path / "cache", offline=False)
    with pytest.raises(CacheError, match=r"cannot write .*w\.pt\..*\.part in the cache .*No space left on device"):
        store.get(Need("w.pt", "weights of m", "weights", (source.as_uri(),)))
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    assert store.get(Need("w.pt", "weights of m", "weights", (source.as_uri(),))).read_bytes() == source.read_bytes()
