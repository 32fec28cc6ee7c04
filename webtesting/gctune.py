"""
Python's garbage collector, tuned for servers that hold many sessions.

CPython collects its youngest generation every 700 container allocations.
A state poll of 10,000 users allocates tens of thousands of short-lived
containers, and every collection in the middle of a poll promotes those
still alive; promoted garbage then makes full collections come often. A
full collection walks every object the process holds: with 10,000
sessions, 0.3-0.5 s during which nothing is answered (measured:
webtesting_gc_pause_seconds; bench/relay/run --idle reports the pauses).

L{tune} raises the young generation's threshold, so that a poll's
temporaries are mostly gone before a collection sees them, and moves what
the daemon holds once it has started (modules, classes, configuration)
out of the collector's walk (C{gc.freeze}).
"""

from __future__ import annotations

import gc

from twisted.application.service import Service

# Allocations before a young collection; then, as CPython's defaults, 10 young collections before a
# middle one and 10 middle ones before a full one may run. (A review found that raising the last two
# as well left full collections so rare that closed connections, which are cyclic garbage, piled up.)
THRESHOLDS = (50_000, 10, 10)


class GCTuning(Service):
    """
    Last in a daemon's service tree: tunes the collector once the daemon
    has started, and puts it back as it was when the tree stops (a test
    process starts many trees).
    """

    _before: tuple[int, ...] | None = None

    def startService(self) -> None:
        super().startService()
        self._before = gc.get_threshold()
        gc.set_threshold(*THRESHOLDS)
        # What the daemon holds now stays, and need not be walked again.
        gc.collect()
        gc.freeze()

    def stopService(self) -> None:
        super().stopService()
        if self._before is not None:
            gc.set_threshold(*self._before)
            self._before = None
            gc.unfreeze()
