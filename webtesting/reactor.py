"""
Twisted's epoll reactor, handing each ready descriptor to its handler in
the same log context as Twisted does, for less.

Twisted calls C{log.callWithLogger} for every ready descriptor, which sets
the legacy log context's C{system} to the descriptor's C{logPrefix()}: a
thread-local lookup, two dict copies and two more calls, about 2 µs of every
message's ~40 in each of a relay's processes. Here the same context (the
outer log context with C{system} set to the prefix) is pushed on the
reactor thread's context stack directly, C{_doReadOrWrite} is called in it
as before, and an exception that escapes it is logged with the prefix as
C{callWithLogger} logs it (a C{logPrefix} that raises too). Nothing else
differs: Twisted's own reactor test suites run against it in
C{tests/test_reactor.py}. A context tracker other than Twisted's takes
Twisted's way.

Chosen with C{twistd --reactor webtesting-epoll} (the plugin in
C{twisted/plugins/webtesting_plugins.py}); the shipped systemd units,
C{./wt run} and the worker processes use it.
"""

from __future__ import annotations

import errno

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import installReactor
from twisted.python import context, log
from twisted.python.log import ILogContext

NAME = "webtesting-epoll"


class ShortDispatchEPollReactor(EPollReactor):
    """L{EPollReactor} with a cheaper way into the log context of each ready descriptor (see the module)."""

    def doPoll(self, timeout: float | None) -> None:
        tracker = context.theContextTracker
        if type(tracker) is not context.ThreadedContextTracker:
            super().doPoll(timeout)  # someone installed their own: theirs to keep
            return
        if timeout is None:
            timeout = -1  # wait until something happens
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as e:
            if e.errno == errno.EINTR:
                return
            raise
        stack = tracker.currentContext().contexts
        outer = tracker.getContext(ILogContext)  # as callWithContext finds it: every push below is popped
        selectables = self._selectables
        handle = self._doReadOrWrite
        for fd, event in events:
            # Looked up for each event: an earlier one may have removed it.
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                prefix = selectable.logPrefix()
            except KeyboardInterrupt:
                raise
            except BaseException:  # noqa: BLE001 - as callWithLogger: logged, and the descriptor still handled
                prefix = "(buggy logPrefix method)"
                log.err(system=prefix)
            # What log.callWithLogger(selectable, ...) pushes.
            stack.append({ILogContext: {**outer, "system": prefix}})
            try:
                handle(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:  # noqa: BLE001 - logged with its traceback, as callWithLogger does
                log.err(system=prefix)
            finally:
                stack.pop()

    doIteration = doPoll


def install() -> None:
    """Install it as the reactor (what C{twistd --reactor webtesting-epoll} calls)."""
    installReactor(ShortDispatchEPollReactor())


__all__ = ["NAME", "ShortDispatchEPollReactor", "install"]
