"""One writer per results file: a lock file beside it (`x.json` -> `x.json.lock`), held for the run.

The lock is an `flock` on the lock file, so the kernel drops it when the holder exits, however it
exits: a lock file left by a killed run is simply taken over. The file names its holder (host,
pid, start time, command), which is what a second run's error message shows. Releasing unlinks the
file while still holding the lock; a run that opened the old file just before checks, once it
holds the lock, that the path still names the file it locked, and tries again if not.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from pytest_securitynet.errors import SecurityNetError
from pytest_securitynet.results.journal import results_target

try:
    import fcntl
except ImportError:  # not POSIX: results files are not locked
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
ATTEMPTS = 5
"""Tries when the lock file is replaced between opening and locking it (a holder releasing it)."""


class ResultsBusyError(SecurityNetError):
    """Another run holds the results file's lock; the message names it."""


class ResultsPathError(SecurityNetError):
    """The results file cannot be written where the run was told to write it; the message says why."""


def check_results_path(results_path: Path) -> None:
    """Raise `ResultsPathError` unless a run can write `results_path` and its lock: the path is not a
    folder, its folder is one (or can be made) and is writable, the lock beside it is a file."""
    results_path = Path(results_path)
    fix = "give --securitynet-json a path in a folder this user can write"
    lock = lock_path(results_path)
    for path, what in ((results_path, "the results file"), (lock, "its lock")):
        if path.exists() and not path.is_file():
            raise ResultsPathError(f"cannot write results to {results_path}: {path} ({what}) is not a regular file; "
                                   f"remove it or {fix}")
    folder = lock.parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ResultsPathError(f"cannot write results to {results_path}: {existing} is a file, not a folder; {fix}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{results_path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ResultsPathError(f"cannot write results to {results_path}: {exc.strerror or exc} "
                               f"({exc.filename or folder}); {fix}") from None


def lock_path(results_path: Path) -> Path:
    """The lock beside a results file: `out.json` -> `out.json.lock`. For a symlink, beside the file
    it points to: every run writing that file, by any path, takes the same lock."""
    results_path = results_target(results_path)
    return results_path.with_name(results_path.name + LOCK_SUFFIX)


def holder_info(started_at: str) -> dict[str, Any]:
    """What the lock file says about the run holding it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started_at": started_at, "argv": sys.argv}


def describe_holder(info: dict[str, Any] | None) -> str:
    """`host H, pid P, started T` from a lock file's contents (or say it is unknown)."""
    if not info:
        return "a run that has not yet written its name"
    return f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, started {info.get('started_at', '?')}"


class ResultsLock:
    """The lock of one results file. `acquire` raises `ResultsBusyError` naming the holder."""

    def __init__(self, results_path: Path):
        self.results_path = Path(results_path)
        self.path = lock_path(self.results_path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, info: dict[str, Any]) -> None:
        """Take the lock without waiting and write `info` (see `holder_info`) into it."""
        if self._fd is not None:
            return
        check_results_path(self.results_path)
        if fcntl is None:
            log.warning("%s: cannot lock results files on this platform; make sure one run writes it", self.results_path)
            return
        for _ in range(ATTEMPTS):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise ResultsPathError(f"cannot write the lock {self.path}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = read_holder(self.path)
                os.close(fd)
                raise self._busy(holder) from None
            except OSError as exc:  # e.g. ENOLCK on a file system without locks
                os.close(fd)
                log.warning("%s: cannot lock (%s); make sure one run writes it", self.path, exc)
                return
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder released (and unlinked) it between our open and our lock
        else:
            raise ResultsBusyError(f"{self.path}: the lock file keeps changing; is another run starting?")
        data = json.dumps(info).encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        self._fd = fd

    def check_free(self) -> None:
        """Raise `ResultsBusyError` naming the holder if another run holds the lock; take nothing.

        For a run that cannot yet tell whether it will write (an xdist controller seeing node ids):
        it stops at start when the file is busy without leaving a lock file of its own."""
        if self._fd is not None or fcntl is None:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:  # no lock file: nobody holds it
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._busy(read_holder(self.path)) from None
        except OSError:
            return
        finally:
            os.close(fd)  # closing drops the probe's lock

    def _busy(self, holder: dict[str, Any] | None) -> ResultsBusyError:
        return ResultsBusyError(
            f"{self.results_path} is being written by another run ({describe_holder(holder)}; "
            f"lock {self.path}): wait for it to end, or write this run's results elsewhere")

    def release(self) -> None:
        """Remove the lock file and drop the lock (in that order: see the module docstring)."""
        if self._fd is None:
            return
        try:
            if _same_file(self._fd, self.path):
                self.path.unlink()
        except OSError as exc:
            log.warning("%s: cannot remove the lock file (%s)", self.path, exc)
        finally:
            os.close(self._fd)
            self._fd = None


def read_holder(path: Path) -> dict[str, Any] | None:
    """The contents of a lock file, or None when it is empty or unreadable (being written)."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)
