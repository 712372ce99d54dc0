"""Weights and data files: cache, local mirror, checksums and (online only) downloads.

A file is looked up in this order: the cache, every mirror directory (by file name), the URL.
Every file is checked against its sha256 before use. Downloads go to a temporary file in the
cache directory and are renamed into place, so a killed download never leaves a bad file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from pytest_securitynet.errors import ChecksumError, MissingFileError

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 30
_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """`SECURITYNET_CACHE`, else the user cache directory (e.g. ~/.cache/securitynet)."""
    env = os.environ.get("SECURITYNET_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("securitynet"))


def mirrors_from_env() -> list[Path]:
    """Directories in `SECURITYNET_MIRROR`, separated by `os.pathsep`."""
    raw = os.environ.get("SECURITYNET_MIRROR", "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]


def offline_from_env() -> bool:
    return os.environ.get("SECURITYNET_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class FileStore:
    """Where files come from: a cache directory, mirror directories, and whether to download."""

    cache_dir: Path = field(default_factory=default_cache_dir)
    mirrors: list[Path] = field(default_factory=mirrors_from_env)
    offline: bool = field(default_factory=offline_from_env)

    def path(self, *parts: str) -> Path:
        """A path inside the cache, with its parent directory created."""
        target = self.cache_dir.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def lock(self, *parts: str) -> FileLock:
        """An inter-process lock, so parallel workers fill one cache entry once."""
        return FileLock(str(self.path("locks", *parts)) + ".lock")

    def fetch(self, filename: str, sha256: str | None, url: str | None = None, subdir: str = "files") -> Path:
        """Return a verified local copy of `filename`: cache, then mirrors, then `url`."""
        cached = self.path(subdir, filename)
        with self.lock(subdir, filename):
            if cached.exists():
                verify_file(cached, sha256, origin="the cache")
                return cached
            for mirror in self.mirrors:
                candidate = mirror / filename
                if candidate.is_file():
                    verify_file(candidate, sha256, origin=f"mirror {mirror}")
                    return candidate
            if url is None or self.offline:
                raise MissingFileError(self._missing_message(filename, url, cached))
            self._download(url, cached, sha256)
            return cached

    def _download(self, url: str, dest: Path, sha256: str | None) -> None:
        log.info("downloading %s -> %s", url, dest)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                _copy_with_progress(resp, out, dest.name)
            verify_file(tmp, sha256, origin=url)
            os.replace(tmp, dest)
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise MissingFileError(
                f"could not download {dest.name} from {url}: {exc}.\n"
                + self._missing_message(dest.name, url, dest)
            ) from exc
        finally:
            tmp.unlink(missing_ok=True)

    def _missing_message(self, filename: str, url: str | None, cached: Path) -> str:
        where = f"from {url}" if url else "(no public URL is known)"
        mode = "offline mode is on" if self.offline and url else "it is not in the cache or any mirror"
        mirrors = os.pathsep.join(str(m) for m in self.mirrors) or "(none set)"
        return (
            f"missing file {filename!r}: {mode}. Get it {where} and either put it at {cached} "
            f"or into a directory listed in SECURITYNET_MIRROR (now: {mirrors})."
        )


def verify_file(path: Path, sha256: str | None, origin: str) -> None:
    if sha256 is None:
        return
    actual = sha256_of(path)
    if actual != sha256.lower():
        raise ChecksumError(
            f"sha256 mismatch for {path.name} from {origin}: expected {sha256}, got {actual}. "
            f"The file at {path} is corrupt or not the one the catalog names; delete or replace it."
        )


def _copy_with_progress(resp, out, label: str) -> None:
    from tqdm import tqdm

    total = int(resp.headers.get("Content-Length") or 0) or None
    with tqdm(total=total, unit="B", unit_scale=True, desc=label, leave=False) as bar:
        while chunk := resp.read(_CHUNK):
            out.write(chunk)
            bar.update(len(chunk))


@contextmanager
def atomic_path(dest: Path):
    """Yield a temporary path beside `dest`; rename it onto `dest` only if the block succeeds."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp_name)
        os.replace(tmp_name, dest)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
