"""How a run ends when it is told to: SIGTERM is Ctrl-C, and xdist workers do not outlive their controller.

A scheduler (Slurm, systemd, `kill`, a CI runner's timeout) stops a job with SIGTERM, whose default
action ends Python at once: no `finally`, no final compaction, a results file that says "running"
forever. Raised as `KeyboardInterrupt` instead, it ends the run as Ctrl-C does: the test in progress
stops, every finished row is kept and the file says "interrupted".

An xdist worker reports to its controller only when a test ends, so a worker whose controller was
killed would finish its test (minutes of training) before it noticed. Each worker watches its
parent process and, when the parent is gone, stops itself the same way, and exits for good a few
seconds later if a long native call keeps it from stopping sooner. A controller that gets SIGTERM
passes it on to its workers, so they stop their tests at once rather than when torn down.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import time
from typing import Any

import pytest

PARENT_POLL_S = 0.5
"""How often a worker checks that its controller is alive."""
EXIT_GRACE_S = 5.0
"""How long a worker whose controller died may take to stop before it exits anyway."""
WORKER_GRACE_S = 1.0
"""How long a worker told to stop may spend in `finally` blocks before it exits: it has no one to
report the interrupted test to, and pytest's own reporting of it takes seconds on a loaded machine."""


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"terminated by signal {signum} (SIGTERM)")


def _worker_terminated(signum: int, frame: Any) -> None:
    threading.Thread(target=_exit_after, args=(WORKER_GRACE_S,), daemon=True).start()
    _terminated(signum, frame)


def _exit_after(seconds: float) -> None:
    time.sleep(seconds)
    os._exit(1)


def _terminated_with_workers(signum: int, frame: Any) -> None:
    """An xdist controller's SIGTERM: its workers get it too (as a terminal's Ctrl-C reaches every
    process of the job), so they stop their tests now instead of when the controller tears them down."""
    for pid in child_processes(os.getpid()):
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    _terminated(signum, frame)


def child_processes(parent: int) -> list[int]:
    """The processes whose parent is `parent` (read from /proc; none where there is no /proc)."""
    children = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            children.append(int(entry))
    return children


def install(config: pytest.Config) -> None:
    """Handle SIGTERM as Ctrl-C in this process (unless something else already handles it); on an
    xdist worker, also stop when the controller is gone."""
    main = threading.current_thread() is threading.main_thread()  # only it may set signal handlers
    if main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        worker = hasattr(config, "workerinput")
        controller = bool(getattr(config.option, "numprocesses", None)) and not worker
        signal.signal(signal.SIGTERM, _worker_terminated if worker else
                      _terminated_with_workers if controller else _terminated)
        config.add_cleanup(lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    if hasattr(config, "workerinput"):
        orphaned = threading.Event()
        watch_parent(os.getppid(), orphaned)
        # Once the run has stopped, leave at once: tearing the interpreter down (collecting every
        # tensor and module) takes seconds more, and there is no controller to tell.
        atexit.register(lambda: os._exit(1) if orphaned.is_set() else None)


def watch_parent(parent: int, orphaned: threading.Event, poll_s: float = PARENT_POLL_S,
                 grace_s: float = EXIT_GRACE_S) -> threading.Thread:
    """A daemon thread that stops this process once `parent` is no longer its parent (it died and
    the process was re-parented), setting `orphaned` first."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        orphaned.set()
        os.kill(os.getpid(), signal.SIGTERM)  # the test in progress stops as with Ctrl-C
        time.sleep(grace_s)
        os._exit(1)  # still running: stuck in native code, or past the test with no controller to report to

    thread = threading.Thread(target=watch, name="securitynet-parent-watch", daemon=True)
    thread.start()
    return thread
