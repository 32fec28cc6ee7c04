"""
Python's garbage collector, tuned for servers that hold many sessions.

CPython collects its youngest generation every 700 container allocations.
A state poll of 10,000 users allocates tens of thousands of short-lived
containers, and every collection in the middle of a poll promotes those
still alive; promoted garbage then makes full collections come often. A
full collection walks every object the process holds: with 10,000
sessions, 0.3-0.5 s during which nothing is answered (measured:
webtesting_gc_pause_seconds; bench/relay/run --idle reports the pauses).

L{GCTuning} raises the young generation's threshold, so that a poll's
temporaries are mostly gone before a collection sees them, moves what the
daemon holds once it has started (modules, classes, configuration) out of
the collector's walk (C{gc.freeze}), and runs a full collection at least
every ten minutes.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

# Allocations before a young collection; then, as CPython's defaults, 10 young collections before a
# middle one and 10 middle ones before a full one may run. (A review found that raising the last two
# as well left full collections so rare that closed connections, which are cyclic garbage, piled up.)
THRESHOLDS = (50_000, 10, 10)


# Seconds between two full collections at least. An idle daemon allocates little, so its collections
# may not come for hours, while sessions that lived long and then closed (cyclic garbage: Autobahn's
# connections are) wait in the oldest generation for one. One pause every ten minutes bounds that.
FULL_EVERY = 600.0


class GCTuning(Service):
    """
    Last in a daemon's service tree: tunes the collector once the daemon
    has started, runs a full collection every L{FULL_EVERY} seconds, and
    puts it all back as it was when the tree stops (a test process starts
    many trees).
    """

    _before: tuple[int, ...] | None = None

    def __init__(self, clock: Any = None) -> None:
        self._clock = clock
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._before = gc.get_threshold()
        gc.set_threshold(*THRESHOLDS)
        # What the daemon holds now stays, and need not be walked again.
        gc.collect()
        gc.freeze()
        self._loop = LoopingCall(gc.collect)
        if self._clock is not None:
            self._loop.clock = self._clock
        self._loop.start(FULL_EVERY, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._before is not None:
            gc.set_threshold(*self._before)
            self._before = None
            gc.unfreeze()
