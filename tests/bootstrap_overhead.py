"""The CPU time the bootstrap intervals add to benchmark tests, per benchmark (docs/regression.md).

    python3 tests/bootstrap_overhead.py [PYTEST ARGS...]     # default: benchmarks/ -k demo

Runs pytest in this process with every `Bootstrap` statistic timed (process CPU time), and prints,
per benchmark, the tests' CPU time (the rows' `cpu_time_s`) and the part spent computing intervals.
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pytest

from pytest_securitynet.results.intervals import Bootstrap

STATISTICS = ("mean", "proportion", "difference", "balanced_accuracy", "roc", "auc", "tpr_at_fpr")


class Timer:
    """Wraps the statistics of `Bootstrap` and charges their CPU time to the running test."""

    def __init__(self):
        self.current: str | None = None
        self.seconds: dict[str, float] = defaultdict(float)
        self.depth = 0  # auc and tpr_at_fpr call roc: time the outer call only
        for name in STATISTICS:
            setattr(Bootstrap, name, self._timed(getattr(Bootstrap, name)))

    def _timed(self, method):
        @functools.wraps(method)
        def timed(*args, **kwargs):
            start = time.process_time()
            self.depth += 1
            try:
                return method(*args, **kwargs)
            finally:
                self.depth -= 1
                if self.depth == 0:
                    self.seconds[self.current] += time.process_time() - start
        return timed

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item):
        self.current = item.nodeid


def main(argv: list[str]) -> int:
    out = Path(tempfile.mkdtemp()) / "overhead.json"
    timer = Timer()
    args = argv or ["benchmarks/", "-k", "demo"]
    code = pytest.main(["-p", "no:cacheprovider", "-q", f"--securitynet-json={out}", *args], plugins=[timer])
    rows = json.loads(out.read_text())["results"]
    per: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for row in rows:
        if row.get("outcome") != "passed" or row.get("cpu_time_s") is None:
            continue
        cell = per[row["benchmark"]]
        cell[0] += row["cpu_time_s"]
        cell[1] += timer.seconds.get(row["nodeid"], 0.0)
        cell[2] += 1
    print(f"\n{'benchmark':45} {'tests':>5} {'test CPU s':>10} {'intervals s':>11} {'share':>6}")
    total = [0.0, 0.0, 0]
    for name, (cpu, boot, n) in sorted(per.items()):
        print(f"{name:45} {n:>5} {cpu:>10.2f} {boot:>11.3f} {boot / cpu:>6.1%}")
        total = [total[0] + cpu, total[1] + boot, total[2] + n]
    print(f"{'all':45} {total[2]:>5} {total[0]:>10.2f} {total[1]:>11.3f} {total[1] / max(total[0], 1e-9):>6.1%}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
