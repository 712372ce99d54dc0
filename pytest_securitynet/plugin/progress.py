"""What a benchmark is doing while it runs: its phases, live in a terminal and in the test report.

A benchmark calls the `progress` fixture when it enters a phase (`progress("training the
surrogate", total=20, unit="epoch")`) and hands `progress.step` to an attack as its per-epoch
callback. Every test keeps its phases with their start times and attaches them to its report as
the section "securitynet phases", shown with a failure (and by `-rA`), on the xdist controller too.

In a terminal, and only there, one status after the test's name shows the phase, the epoch and
the seconds elapsed beside the expected time, redrawn every second and erased before pytest writes
the outcome. It stays off when the output is not a terminal, under CI (`CI` set), with `-s`, and on
xdist workers (their output is not a terminal).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

import pytest

SECTION = "securitynet phases"
SAVE, RESTORE, CLEAR = "\x1b7", "\x1b8", "\x1b[K"  # DEC save / restore cursor, erase to end of line
SHOW_AFTER_S = 1.0


class Phases:
    """The phases of one test, in order, with the time each began; `__call__` starts one, `step` counts."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.started = clock()
        self.clock = clock
        self.entries: list[tuple[float, str]] = []
        self.phase = ""
        self.done: int | None = None
        self.total: int | None = None
        self.unit = ""

    def __call__(self, phase: str, total: int | None = None, unit: str = "step") -> None:
        """Enter `phase`; `total` steps of `unit` (e.g. 20 epochs) follow through `step`."""
        self.phase, self.total, self.unit = phase, total, unit
        self.done = 0 if total else None
        self.entries.append((self.clock() - self.started, phase))

    def step(self, done: int, total: int | None = None) -> None:
        """`done` of `total` steps of the current phase (an attack's per-epoch callback)."""
        self.done = done
        if total is not None:
            self.total = total

    def counted(self, call: Callable, phase: str, total: int, unit: str = "step") -> Callable:
        """`call`, entering `phase` at its first call and counting every call as one of `total` steps.

        For work a library does in a loop it does not report, e.g. reference models trained one by one
        through a `train` function: the status then reads `training 8 reference models, model 3/8`."""
        calls = 0

        def counted_call(*args, **kwargs):
            nonlocal calls
            if calls == 0:
                self(phase, total=total, unit=unit)
            calls += 1
            self.step(calls)
            return call(*args, **kwargs)

        return counted_call

    def status(self) -> str:
        """The current phase and its count, e.g. `training the surrogate, epoch 12/20`."""
        if self.done is None or not self.total:
            return self.phase
        return f"{self.phase}, {self.unit} {self.done}/{self.total}"

    def report(self) -> str:
        """One line per phase with its start and length in seconds (the last phase runs to now)."""
        if not self.entries:
            return ""
        now = self.clock() - self.started
        ends = [start for start, _ in self.entries[1:]] + [now]
        return "\n".join(f"{start:8.1f}s  {end - start:7.1f}s  {phase}"
                         for (start, phase), end in zip(self.entries, ends))


def live_enabled(config: pytest.Config) -> bool:
    """A live status only where a person watches: the terminal of the process that runs the tests."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or hasattr(config, "workerinput") or getattr(config.option, "numprocesses", None):
        return False
    if os.environ.get("CI") or os.environ.get("TERM") == "dumb" or config.getoption("capture") == "no":
        return False
    return bool(reporter.isatty)


class LiveStatus:
    """The status after the current test's name, redrawn by a background thread.

    Writes go to a duplicate of the terminal's file descriptor, taken before capture starts, so
    they reach the screen while pytest captures the test's output. The cursor is saved before and
    restored after every draw: pytest's own output continues where it left off.
    """

    def __init__(self, fd: int, width: Callable[[], int], column: Callable[[], int], interval: float = 1.0):
        self.fd = fd
        self.width = width
        self.column = column
        self.interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._text: Callable[[], str] = lambda: ""
        self._since = 0.0
        self._expected: float | None = None
        self._drawn = False

    @classmethod
    def for_terminal(cls, reporter) -> LiveStatus | None:
        """A status on `reporter`'s terminal, or None when its file has no descriptor."""
        try:
            fd = os.dup(reporter._tw._file.fileno())
        except (AttributeError, OSError, ValueError):
            return None
        return cls(fd, lambda: reporter._tw.fullwidth, lambda: reporter._tw.width_of_current_line)

    def start(self, text: Callable[[], str], expected_s: float | None) -> None:
        self.stop()
        self._text, self._since, self._expected = text, time.monotonic(), expected_s
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="securitynet-status", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop redrawing and erase the status (before pytest writes the test's outcome)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        with self._lock:
            if self._drawn:
                self._write(SAVE + CLEAR + RESTORE)
                self._drawn = False

    def close(self) -> None:
        self.stop()
        os.close(self.fd)

    def line(self) -> str:
        """`[12s of ~40s] phase` fitted to the room left on the terminal's current line."""
        elapsed = time.monotonic() - self._since
        # An expected time under a second says nothing (`[3s of ~0s]`): the clock alone is shown.
        clock = f"{elapsed:.0f}s" + (f" of ~{self._expected:.0f}s" if self._expected and self._expected >= 1 else "")
        text = f" [{clock}] {self._text()}".rstrip()
        room = self.width() - self.column() - 1
        return text[:room] if room >= 12 else ""

    def _run(self) -> None:
        if self._stop.wait(SHOW_AFTER_S):
            return
        while True:
            with self._lock:
                self._write(SAVE + CLEAR + self.line() + RESTORE)
                self._drawn = True
            if self._stop.wait(self.interval):
                return

    def _write(self, text: str) -> None:
        try:
            os.write(self.fd, text.encode("utf-8", "replace"))
        except OSError:
            self._stop.set()


PHASES = pytest.StashKey[Phases]()
CPU_START = pytest.StashKey[float]()
CPU_SECONDS = pytest.StashKey[float]()


def phases_of(item: pytest.Item) -> Phases:
    """The test's phase record, created on first use."""
    if PHASES not in item.stash:
        item.stash[PHASES] = Phases()
    return item.stash[PHASES]


class ProgressPlugin:
    """Phases and CPU seconds of every benchmark test; the live status where there is a terminal.

    `is_benchmark(item)` says which tests to follow; `expected(item)` gives a test's expected
    seconds (or None) for the status.
    """

    def __init__(self, config: pytest.Config, is_benchmark: Callable[[pytest.Item], bool],
                 expected: Callable[[pytest.Item], float | None]):
        self.is_benchmark = is_benchmark
        self.expected = expected
        self.live: LiveStatus | None = None

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """The terminal reporter exists from here on (not yet while plugins configure)."""
        config = session.config
        if live_enabled(config):
            self.live = LiveStatus.for_terminal(config.pluginmanager.get_plugin("terminalreporter"))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item):
        if not self.is_benchmark(item):
            return (yield)
        item.stash[CPU_START] = time.process_time()
        phases = phases_of(item)
        phases("setup: the model and its data (loaded once per model; a demo model trains on first use)")
        self._show(item, phases)
        try:
            return (yield)
        finally:
            self._hide()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item):
        if not self.is_benchmark(item):
            return (yield)
        phases = phases_of(item)
        phases("running")
        self._show(item, phases)
        try:
            return (yield)
        finally:
            self._hide()
            item.stash[CPU_SECONDS] = time.process_time() - item.stash.get(CPU_START, time.process_time())
            item.add_report_section("call", SECTION, phases.report())

    @pytest.hookimpl
    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.live is not None:
            self.live.close()
            self.live = None

    def _show(self, item: pytest.Item, phases: Phases) -> None:
        if self.live is not None:
            self.live.start(phases.status, self.expected(item))

    def _hide(self) -> None:
        if self.live is not None:
            self.live.stop()
