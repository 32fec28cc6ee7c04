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

# Allocations before a young collection; collections of the younger generation before an older one.
THRESHOLDS = (50_000, 20, 100)


def tune() -> None:
    gc.set_threshold(*THRESHOLDS)


def started() -> None:
    """The daemon has started: what it holds now stays, and need not be walked again."""
    gc.collect()
    gc.freeze()


class GCTuning(Service):
    """Last in a daemon's service tree: tunes the collector once the daemon has started."""

    def startService(self) -> None:
        super().startService()
        tune()
        started()
