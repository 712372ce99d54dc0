"""Weights and data files: cache, local mirrors, checksums and (online only) downloads.

A `Need` describes one file (or folder) by name; `FileStore.get` is the one lookup every loader,
`catalog prefetch` and every offline message goes through. Its order: the cache, each mirror
directory by file name, an archive holding the file (in the cache or a mirror, then unpacked into
the cache), the URL. Every copy is checked against its checksum before use; a corrupt copy is
reported and the next one tried. Downloads and unpacking go to temporary paths in the cache and are
renamed into place, so a killed download never leaves a bad file.

Reading needs no write access: files already in the cache (or a mirror) and verified are used
without lock files, so a read-only shared cache works; locks are taken only to write. Every network
call has a timeout, and a host that could not be reached is remembered for the rest of the process,
so later downloads from it fail at once with the same reason instead of waiting on the network again.

Files the cache creates get the permissions of any file the user creates (0666 less the umask), so
a cache a group shares stays readable (and, under umask 002, writable) by the group. A write that
fails (a full disk, a read-only folder) removes its temporary file and says which folder it could
not write, whatever raised it (torch reports a full disk as a RuntimeError).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from filelock import FileLock

from pytest_securitynet.errors import CacheError, CatalogError, ChecksumError, MissingFileError

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 30  # per connect and per read: a silent server ends a download, never hangs it
_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """The user cache directory (e.g. ~/.cache/securitynet); `SECURITYNET_CACHE` is read by the settings."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("securitynet"))


def sha256_of(path: Path) -> str:
    return hash_of(path, "sha256")


def hash_of(path: Path, algorithm: str) -> str:
    """Hex digest of a file's bytes with a `hashlib` algorithm, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- what a file is -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Digest:
    """A checksum other than the catalog's sha256: the upstream project's own (md5, sha1), or the
    sha256 prefix a torch.hub file name carries (`prefix=True`). `downloads_only`: checked on what
    this store downloads, not on local copies, as the upstream library does (MedMNIST)."""

    algorithm: str
    hexdigest: str
    prefix: bool = False
    downloads_only: bool = False

    def check(self, path: Path, origin: str) -> None:
        actual = hash_of(path, self.algorithm)
        expected = self.hexdigest.lower()
        if actual.startswith(expected) if self.prefix else actual == expected:
            return
        promise = f"to start with {expected}" if self.prefix else expected
        raise ChecksumError(
            f"{self.algorithm} mismatch for {path.name} from {origin}: expected {promise}, got {actual}. "
            f"The file at {path} is corrupt or not the one its source names; delete or replace it."
        )


@dataclass(frozen=True)
class Archive:
    """A download (or mirror copy) that holds the needed file or folder; unpacked into the cache."""

    name: str
    sha256: str | None = None  # of the archive itself
    subdir: str = "downloads"  # where a downloaded copy is kept until it is unpacked


@dataclass(frozen=True)
class Need:
    """One file (or folder) a catalog entry needs: its name, where it lives in the cache, how to get
    it, and how to check it. Mirrors are searched by `name` (and `aliases`)."""

    name: str
    purpose: str = ""  # e.g. "weights of cifar10-resnet20-akamaster"
    subdir: str = "files"  # cache subdirectory ("" for the cache root)
    urls: tuple[str, ...] = ()  # tried in order; empty: no download
    sha256: str | None = None
    digest: Digest | None = None  # used where the catalog records no sha256
    aliases: tuple[str, ...] = ()  # other names accepted in the cache or a mirror
    archive: Archive | None = None  # the URL serves this archive, which holds `name`
    folder: bool = False  # a directory rather than a file
    at: Path | None = None  # a fixed local path (`file:` sources): no cache, mirror or download
    hint: str = ""  # how to get it by hand, where no URL says

    def __post_init__(self) -> None:
        for name in (self.name, *self.aliases, *([self.archive.name] if self.archive else [])):
            if not name or name in (".", "..") or "/" in name or "\\" in name:
                raise CatalogError(f"{self.purpose or 'a catalog entry'}: {name!r} is not a plain file name")

    @property
    def source(self) -> str:
        """Where to get it, in words: its URLs, else the hint."""
        return ", ".join(self.urls) or self.hint or "no public URL is known"

    def verify(self, path: Path, origin: str, downloaded: bool = False) -> None:
        """Raise `ChecksumError` unless `path` matches the recorded sha256 (else the digest)."""
        if self.folder:
            return
        if self.sha256 is not None:
            verify_file(path, self.sha256, origin)
        elif self.digest is not None and (downloaded or not self.digest.downloads_only):
            self.digest.check(path, origin)


def verify_file(path: Path, sha256: str | None, origin: str) -> None:
    if sha256 is None:
        return
    actual = sha256_of(path)
    if actual != sha256.lower():
        raise ChecksumError(
            f"sha256 mismatch for {path.name} from {origin}: expected {sha256}, got {actual}. "
            f"The file at {path} is corrupt or not the one the catalog names; delete or replace it."
        )


# --- where files are ----------------------------------------------------------------------------

@dataclass
class FileStore:
    """Where files come from: a cache directory, mirror directories, and whether to download.

    A store also remembers, for its process, the hosts it could not reach and the URLs that failed,
    so each is tried once.
    """

    cache_dir: Path = field(default_factory=default_cache_dir)
    mirrors: list[Path] = field(default_factory=list)
    offline: bool = False
    _unreachable: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)
    _failed_urls: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.cache_dir = Path(self.cache_dir)
        blocker = next((p for p in (self.cache_dir, *self.cache_dir.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise CacheError(f"the cache directory {self.cache_dir} cannot be used: {blocker} is a file, not a "
                             f"directory. Point SECURITYNET_CACHE (or --securitynet-cache) at a directory.")

    def path(self, *parts: str) -> Path:
        """A path inside the cache, with its parent directory created (`CacheError` if it cannot be)."""
        target = self.cache_dir.joinpath(*parts)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self.unwritable(target.parent, exc) from None
        return target

    def lock(self, *parts: str) -> FileLock:
        """An inter-process lock, so parallel workers fill one cache entry once. Only writers lock:
        the lock file is created here, and a cache that cannot hold it raises `CacheError` at once
        (a lock library would otherwise wait forever on a read-only directory)."""
        lock_path = self.path("locks", *parts[:-1], parts[-1] + ".lock")
        try:
            os.close(os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666))
        except OSError as exc:
            raise self.unwritable(lock_path, exc) from None
        return FileLock(str(lock_path))

    def write(self, target: Path, write: Callable[[Path], None]) -> None:
        """Write a cache file atomically through `write(temporary path)`. A failure (an `OSError`,
        or torch's `RuntimeError` for a full disk) removes the temporary file and raises `CacheError`."""
        try:
            with atomic_path(target) as tmp:
                write(tmp)
        except (OSError, RuntimeError) as exc:
            raise self.unwritable(target, exc) from None

    def replace_version(self, target: Path, write: Callable[[Path], None], older: re.Pattern[str]) -> None:
        """Write a cache file atomically through `write(temporary path)` (`write`), then delete the
        older versions beside it (names `older` matches in full): one cached file per id, whatever key it had."""
        self.write(target, write)
        for old in target.parent.iterdir():
            if old != target and older.fullmatch(old.name):
                old.unlink(missing_ok=True)

    def unwritable(self, path: Path, exc: Exception) -> CacheError:
        """The error for a write the cache refused: where, why, and what to do."""
        if disk_full(Path(path).parent, exc):
            return CacheError(
                f"cannot write {path} in the cache {self.cache_dir} (No space left on device: the disk of "
                f"{Path(path).parent} is full). Free space there, or point SECURITYNET_CACHE (or "
                f"--securitynet-cache) at a directory on a disk with room.")
        text = str(exc).strip()
        reason = getattr(exc, "strerror", None) or (text.splitlines()[0] if text else type(exc).__name__)
        return CacheError(
            f"cannot write {path} in the cache {self.cache_dir} ({reason}). Files already in a "
            f"read-only cache are read without writing; to add files, point SECURITYNET_CACHE (or "
            f"--securitynet-cache) at a writable directory, or fill this one where it is writable "
            f"(`securitynet catalog prefetch`) and keep using it, or list it in SECURITYNET_MIRROR."
        )

    def cache_path(self, need: Need) -> Path:
        """Where `need` lives in the cache (or its fixed path); nothing is created."""
        return need.at if need.at is not None else self.cache_dir / need.subdir / need.name

    def find(self, need: Need) -> Path | None:
        """The first copy (or archive) `get` would try, without checking it; None when there is none."""
        found = self._copies(need) or self._archives(need)
        return found[0][0] if found else None

    def get(self, need: Need) -> Path:
        """A verified local copy of `need`: the cache, each mirror, an archive holding it, the URL.

        A copy that fails its checksum is passed over (with a warning naming it once a good copy is
        found); `ChecksumError`, naming every bad copy, only when no good copy is left. Offline or
        without a URL, a missing file is a `MissingFileError` whose message says what is missing,
        where to get it and where to put it. Nothing is written unless an archive is unpacked or a
        file downloaded (then under a lock, so parallel workers fill one cache entry once).
        """
        bad: list[ChecksumError] = []
        for path, origin in self._copies(need):
            try:
                need.verify(path, origin)
                return _used(path, bad)
            except ChecksumError as exc:
                bad.append(exc)
        archives = self._archives(need)
        if need.at is None and (archives or (need.urls and not self.offline)):
            known = [self._known_failure(url) for url in need.urls]
            if not archives and all(known):  # every URL failed before: no lock, no network
                raise self._unavailable(need, bad) if bad else MissingFileError(
                    self.missing_message(need, reason="; ".join(known)))
            return self._fill(need, bad)
        raise self._unavailable(need, bad)

    def fetch(self, filename: str, sha256: str | None, url: str | None = None, subdir: str = "files") -> Path:
        """`get` for a plain file named by its name, sha256 and URL."""
        return self.get(Need(filename, subdir=subdir, urls=(url,) if url else (), sha256=sha256))

    def missing_message(self, need: Need, reason: str | None = None) -> str:
        """What is missing, why, where to get it and where to put it, in one line."""
        purpose = f" ({need.purpose})" if need.purpose else ""
        if need.at is not None:
            return f"missing file {need.at}{purpose}: the local file does not exist ({need.hint})"
        mirrors = os.pathsep.join(str(m) for m in self.mirrors) or "(none set)"
        if need.folder and not need.urls and need.archive is None:
            searched = ", ".join(str(r) for r in (self.cache_dir, *self.mirrors))
            return (f"{need.purpose or need.name}: read from a local folder only, and no `{need.name}` folder "
                    f"was found in {searched}. {need.hint}")
        if reason is None:
            reason = "offline mode is on" if self.offline and need.urls else "it is not in the cache or any mirror"
        if need.urls:
            unpack = f" (the archive {need.archive.name}; unpack it)" if need.archive else ""
            where = f"from {' or '.join(need.urls)}{unpack}"
        else:
            where = need.hint or "(no public URL is known)"
        kind = "folder" if need.folder else "file"
        elsewhere = ("" if not need.urls else
                     " Without network access: run `securitynet catalog prefetch` for these models on a connected "
                     "machine and copy its cache here or list it in SECURITYNET_MIRROR" +
                     ("" if self.offline else "; --securitynet-offline (SECURITYNET_OFFLINE=1) stops all downloads")
                     + ".")
        return (f"missing {kind} {need.name!r}{purpose}: {reason}. Get it {where} and either put it at "
                f"{self.cache_path(need)} or into a directory listed in SECURITYNET_MIRROR (now: {mirrors})."
                f"{elsewhere}")

    # -- lookup order ------------------------------------------------------------------------------

    def _copies(self, need: Need) -> list[tuple[Path, str]]:
        """Existing copies of the need itself, in lookup order: the cache, then each mirror."""
        if need.at is not None:
            return [(need.at, str(need.at))] if need.at.is_file() else []
        names = (need.name, *need.aliases)
        places = [(self.cache_dir / need.subdir, "the cache"), *((m, f"mirror {m}") for m in self.mirrors)]
        found = [(root / name, origin) for root, origin in places for name in names]
        return [(p, origin) for p, origin in found if (p.is_dir() if need.folder else p.is_file())]

    def _archives(self, need: Need) -> list[tuple[Path, str]]:
        """Existing copies of the archive that holds the need: the cache, then each mirror."""
        if need.archive is None:
            return []
        places = [(self.cache_dir / need.archive.subdir, "the cache"), *((m, f"mirror {m}") for m in self.mirrors)]
        return [(root / need.archive.name, origin) for root, origin in places
                if (root / need.archive.name).is_file()]

    def _fill(self, need: Need, bad: list[ChecksumError]) -> Path:
        """Unpack a local archive or download: the steps that write, under the need's lock."""
        final = self.cache_path(need)
        with self.lock(need.subdir, need.name):
            if final.exists():  # filled by another process while this one waited?
                try:
                    need.verify(final, "the cache")
                    return _used(final, bad)
                except ChecksumError:
                    pass  # the corrupt copy reported above; replaced below
            for path, origin in self._archives(need):
                try:
                    return _used(self._unpack(need, path, origin), bad)
                except ChecksumError as exc:
                    bad.append(exc)
            if not need.urls or self.offline:
                raise self._unavailable(need, bad)
            try:
                downloaded = self._download(need)
            except MissingFileError as exc:
                if not bad:
                    raise
                # The bad local copies are the news; the failed download says why none replaced them.
                raise ChecksumError("\n".join([*(str(e) for e in bad), f"no good copy downloaded either: {exc}"])) from None
            if need.archive is None:
                return _used(downloaded, bad)
            try:
                return _used(self._unpack(need, downloaded, downloaded.name), bad)
            finally:
                downloaded.unlink(missing_ok=True)

    def _download(self, need: Need) -> Path:
        """Download `need` (or its archive) into the cache from the first URL that answers; a URL whose
        host (or itself) failed earlier in this process is not tried again."""
        name, subdir = (need.archive.name, need.archive.subdir) if need.archive else (need.name, need.subdir)
        dest = self.path(subdir, name)
        failures = []
        for url in need.urls:
            known = self._known_failure(url)
            if known:
                failures.append(known)
                continue
            try:
                self._fetch_url(url, dest)
            except MissingFileError as exc:
                failures.append(str(exc))
                continue
            try:
                if need.archive is None:
                    need.verify(dest, url, downloaded=True)
                else:
                    verify_file(dest, need.archive.sha256, url)
            except ChecksumError:
                dest.unlink(missing_ok=True)
                raise
            return dest
        raise MissingFileError(self.missing_message(need, reason="; ".join(failures)))

    def _fetch_url(self, url: str, dest: Path) -> None:
        """One download; a failure is remembered by host when the host did not answer, else by URL."""
        host = urlparse(url).netloc
        try:
            _download(url, dest, self)
            return
        except urllib.error.HTTPError as exc:  # the server answered: this file, not the host, failed
            reason, unreachable = f"HTTP {exc.code} {exc.reason}", False
        except (urllib.error.URLError, OSError) as exc:  # refused, timed out, no route, no name
            cause = getattr(exc, "reason", exc)
            reason, unreachable = _describe(cause), bool(host) and isinstance(cause, OSError)
        except (http.client.HTTPException, ValueError) as exc:  # a broken answer, an unknown scheme
            reason, unreachable = _describe(exc), False
        detail = f"could not download {dest.name} from {url}: {reason}"
        if unreachable:
            self._unreachable[host] = (f"not downloaded: {host} could not be reached earlier in this run "
                                       f"({reason}), so it is not tried again")
        else:
            self._failed_urls[url] = detail
        raise MissingFileError(detail)

    def _known_failure(self, url: str) -> str | None:
        """Why `url` will not download, if this process already failed on it or on its host."""
        return self._failed_urls.get(url) or self._unreachable.get(urlparse(url).netloc)

    def _unpack(self, need: Need, archive: Path, origin: str) -> Path:
        """Unpack `need` out of a (verified) archive into the cache, renamed into place when complete."""
        verify_file(archive, need.archive.sha256 if need.archive else None, origin)
        final = self.cache_path(need)
        final.parent.mkdir(parents=True, exist_ok=True)
        log.info("unpacking %s from %s into %s", need.name, archive, final.parent)
        with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{need.name}.") as tmp:
            unpack_archive(archive, Path(tmp))
            unpacked = Path(tmp) / need.name
            if not (unpacked.is_dir() if need.folder else unpacked.is_file()):
                raise MissingFileError(f"{archive.name} from {origin} does not hold {need.name!r} ({need.purpose})")
            need.verify(unpacked, f"{archive.name} from {origin}")
            if final.is_dir() and not final.is_symlink():
                shutil.rmtree(final)
            os.replace(unpacked, final)
        return final

    def _unavailable(self, need: Need, bad: list[ChecksumError]) -> Exception:
        if bad:
            return ChecksumError("\n".join(str(exc) for exc in bad))
        return MissingFileError(self.missing_message(need))


def _used(path: Path, bad: list[ChecksumError]) -> Path:
    """`path`, after warning about the corrupt copies passed over to reach it."""
    for exc in bad:
        warnings.warn(f"{exc} Used {path} instead.", UserWarning, stacklevel=3)
    return path


def unpack_archive(archive: Path, dest: Path) -> None:
    """Unpack a zip or tar archive into `dest`; members cannot land outside it."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)  # zipfile drops absolute paths and `..` components
        return
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(dest, filter="data")
    except tarfile.TarError as exc:
        raise MissingFileError(f"{archive} is neither a zip nor a tar archive: {exc}") from exc


def _download(url: str, dest: Path, store: FileStore) -> None:
    """Fetch `url` into a temporary file beside `dest`, renamed onto it when complete. Network errors
    propagate as raised; a write the cache refuses is a `CacheError`."""
    log.info("downloading %s -> %s", url, dest)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
        os.fchmod(fd, new_file_mode())
    except OSError as exc:
        raise store.unwritable(dest.parent, exc) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                _copy_with_progress(resp, out, dest.name, lambda exc: store.unwritable(tmp, exc))
            try:
                out.flush()
                os.replace(tmp, dest)
            except OSError as exc:
                raise store.unwritable(dest, exc) from None
    finally:
        tmp.unlink(missing_ok=True)


def _copy_with_progress(resp, out, label: str, unwritable) -> None:
    from tqdm import tqdm

    total = int(resp.headers.get("Content-Length") or 0) or None
    with tqdm(total=total, unit="B", unit_scale=True, desc=label, leave=False) as bar:
        while chunk := resp.read(_CHUNK):
            try:
                out.write(chunk)
            except OSError as exc:  # a full disk: the cache's fault, not the network's
                raise unwritable(exc) from None
            bar.update(len(chunk))


def _describe(reason: object) -> str:
    """A network error in a few words: `[Errno 111] Connection refused`, `timed out`."""
    if isinstance(reason, OSError) and reason.strerror:
        return f"[Errno {reason.errno}] {reason.strerror}" if reason.errno is not None else reason.strerror
    text = str(reason).strip()
    return text.splitlines()[0] if text else type(reason).__name__


FULL_DISK_FREE_BYTES = 1 << 20
"""A write that failed with less than this free on its device is reported as a full disk (torch's
errors for it carry no errno)."""


def disk_full(folder: Path, exc: BaseException) -> bool:
    """Whether a failed write into `folder` failed for lack of space."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_FREE_BYTES
    except OSError:
        return False


def new_file_mode() -> int:
    """0666 less the umask: the mode `open` gives a new file (`mkstemp` alone gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(dest: Path):
    """Yield a temporary path beside `dest`; rename it onto `dest` only if the block succeeds. The file
    gets the umask's mode, as if created by `open`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        os.fchmod(fd, new_file_mode())
    finally:
        os.close(fd)
    try:
        yield Path(tmp_name)
        os.replace(tmp_name, dest)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def link_into(path: Path, directory: Path, name: str | None = None) -> Path:
    """Make `path` visible as `directory/name` (a symlink), for libraries that read from one folder."""
    target = directory / (name or path.name)
    if target.resolve() != path.resolve():
        target.unlink(missing_ok=True)
        target.symlink_to(path.resolve())
    return target
