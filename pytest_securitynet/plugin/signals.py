"""How a run ends when it is told to: SIGTERM is Ctrl-C, and xdist workers do not outlive their controller.

A scheduler (Slurm, systemd, `kill`, a CI runner's timeout) stops a job with SIGTERM, whose default
action ends Python at once: no `finally`, no final compaction, a results file that says "running"
forever. Raised as `KeyboardInterrupt` instead, it ends the run as Ctrl-C does: the test in progress
stops, every finished row is kept and the file says "interrupted".

An xdist worker reports to its controller only when a test ends, so a worker whose controller was
killed would finish its test (minutes of training) before it noticed. Each worker watches its
parent process and, when the parent is gone, stops itself the same way, and exits for good a few
seconds later if a long native call keeps it from stopping sooner.
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


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"terminated by signal {signum} (SIGTERM)")


def install(config: pytest.Config) -> None:
    """Handle SIGTERM as Ctrl-C in this process (unless something else already handles it); on an
    xdist worker, also stop when the controller is gone."""
    main = threading.current_thread() is threading.main_thread()  # only it may set signal handlers
    if main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)
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
