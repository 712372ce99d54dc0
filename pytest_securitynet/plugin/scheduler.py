"""The xdist scheduler behind `--gpus N` and `--dist loadgroup`: one model's tests run on one worker.

xdist's own `loadgroup` reads a test's group from an `@group` suffix its workers append to node
ids; pytest 9.2 derives node ids elsewhere, the suffix never reaches the controller, and one
model's tests spread over workers (each loading the model again). This scheduler finds the model
in the node id itself (the catalog is loaded on the controller too), so the grouping holds on
every pytest and pytest-xdist version the package admits. It implements xdist's scheduler
protocol (`pytest_xdist_make_scheduler`), not its internals.

A dead worker: the test it was running is reported as crashed and not run again (as with plain
`-n`); its other unfinished tests go back to the front of the queue, still as one unit, for the
replacement worker. A worker is never sent an empty unit, so the run cannot stall waiting for it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


class ModelScheduling:
    """Hands out work units (all tests of one group, in collection order) to xdist workers.

    `group_of(nodeid)` names a test's unit: its catalog model, else its `xdist_group`, else the
    test itself. A worker runs its last assigned test only once it gets more work or a shutdown,
    so a worker with at most one test left gets the next unit, or a shutdown when none is left.
    """

    def __init__(self, numnodes: int, group_of: Callable[[str], str],
                 report: Callable[[str, str], None] | None = None):
        self.numnodes = numnodes
        self.group_of = group_of
        self.report = report or (lambda worker, message: log.error("%s: %s", worker, message))
        self.collection: list[str] | None = None
        self.registered: dict[Any, list[str]] = {}
        self.pending: dict[Any, list[int]] = {}  # per worker: indices sent and not yet finished
        self.queue: OrderedDict[str, list[int]] = OrderedDict()  # group -> indices not yet sent

    # --- xdist's scheduler protocol ------------------------------------------------------------

    @property
    def nodes(self) -> list[Any]:
        return list(self.pending)

    @property
    def collection_is_completed(self) -> bool:
        return len(self.registered) >= self.numnodes

    @property
    def tests_finished(self) -> bool:
        """Nothing left to hand out, and every worker can finish once told to shut down."""
        if not self.collection_is_completed or self.queue:
            return False
        return all(len(indices) < 2 for indices in self.pending.values())

    @property
    def has_pending(self) -> bool:
        return bool(self.queue) or any(self.pending.values())

    def add_node(self, node: Any) -> None:
        self.pending[node] = []

    def add_node_collection(self, node: Any, collection: Sequence[str]) -> None:
        if self.collection is not None and list(collection) != self.collection:
            self.report(node.gateway.id, _difference(self.collection, list(collection), "the others") + "; it gets no work")
            node.shutdown()
            return
        self.registered[node] = list(collection)

    def mark_test_complete(self, node: Any, item_index: int, duration: float = 0) -> None:
        if item_index in self.pending[node]:
            self.pending[node].remove(item_index)
        self._reschedule(node)

    def mark_test_pending(self, item: str) -> None:
        """Queue a test again (a plugin's `pytest_handlecrashitem` may ask for a rerun)."""
        assert self.collection is not None
        self._requeue([self.collection.index(item)])
        for node in self.nodes:
            self._reschedule(node)

    def remove_pending_tests_from_node(self, node: Any, indices: Sequence[int]) -> None:
        # Only xdist's worksteal scheduler asks workers to hand tests back; this one never does,
        # so a call here means a caller mixed schedulers.
        raise NotImplementedError("model scheduling never asks a worker to give tests back")

    def remove_node(self, node: Any) -> str | None:
        """Forget a worker; if it died mid-unit, return the test it was running and requeue the rest."""
        pending = self.pending.pop(node)
        if not pending:
            return None
        assert self.collection is not None
        crashed, rest = pending[0], pending[1:]
        if rest:
            self._requeue(rest)
        for other in self.nodes:
            self._reschedule(other)
        return self.collection[crashed]

    def schedule(self) -> None:
        """First call: split the collection into units. Later calls (a new worker): hand out work."""
        if self.collection is None:
            (first, collection), *others = self.registered.items()
            differing = [(node, other) for node, other in others if other != collection]
            for node, other in differing:
                self.report(node.gateway.id, f"{_difference(collection, other, first.gateway.id)}; nothing is scheduled")
            if differing:
                for node in self.nodes:
                    node.shutdown()
                return
            self.collection = collection
            for index, nodeid in enumerate(self.collection):
                self.queue.setdefault(self.group_of(nodeid), []).append(index)
        for node in self.nodes:
            self._reschedule(node)

    # --- internals -----------------------------------------------------------------------------

    def _requeue(self, indices: list[int]) -> None:
        """Put tests back at the front of the queue, grouped as before."""
        assert self.collection is not None
        groups: OrderedDict[str, list[int]] = OrderedDict()
        for index in indices:
            groups.setdefault(self.group_of(self.collection[index]), []).append(index)
        for group, items in reversed(groups.items()):
            self.queue[group] = items + self.queue.pop(group, [])
            self.queue.move_to_end(group, last=False)

    def _reschedule(self, node: Any) -> None:
        if node.shutting_down or node not in self.registered or self.collection is None:
            return
        if not self.queue:
            node.shutdown()
            return
        if len(self.pending[node]) <= 1:
            _, indices = self.queue.popitem(last=False)
            self.pending[node].extend(indices)
            node.send_runtest_some(indices)


def _difference(expected: list[str], got: list[str], other: str) -> str:
    got_set, expected_set = set(got), set(expected)
    missing = [n for n in expected if n not in got_set]
    extra = [n for n in got if n not in expected_set]
    first = (f"e.g. it lacks {missing[0]}" if missing else f"e.g. it adds {extra[0]}" if extra
             else "in another order")
    return f"collected {len(got)} tests, not the same {len(expected)} as {other} ({first})"


def worker_count(tx_specs: Sequence[str]) -> int:
    """How many workers xdist starts for `--tx` specs such as `2*popen` (what `-n 2` becomes)."""
    count = 0
    for spec in tx_specs:
        number, star, _ = spec.partition("*")
        count += int(number) if star and number.isdigit() else 1
    return count
