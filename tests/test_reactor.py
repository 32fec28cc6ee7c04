"""
webtesting.reactor: Twisted's epoll reactor with a cheaper way into each
ready descriptor's log context.

Twisted's own reactor conformance suites (TCP clients, servers, connections,
aborts, adopted sockets, descriptor sets, system events, time) run here
against it, as Twisted runs them against each reactor it ships; then what
the dispatch itself promises: the handler runs in the log context
C{callWithLogger} gives it, an error is logged in that context and ends the
connection, a read that ends the connection ends it, and a broken
C{logPrefix} is logged and the descriptor still handled, as Twisted does.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import error, main
from twisted.internet.abstract import FileDescriptor
from twisted.internet.test import test_core, test_fdset, test_process, test_socket, test_tcp, test_threads, test_time
from twisted.python import context, log
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from webtesting.reactor import ShortDispatchEPollReactor

OURS = ["webtesting.reactor.ShortDispatchEPollReactor"]


def _on_ours(builder: type, **overrides: Any) -> dict[str, type]:
    """Twisted's test cases of C{builder}, for this reactor only."""
    ours = type("ShortDispatch" + builder.__name__, (builder,),
                {"_reactors": OURS, "__module__": __name__, **overrides})
    return ours.makeTestCaseClasses()  # type: ignore[attr-defined,no-any-return]


def test_lostFileDescriptor(self: Any) -> None:
    """
    As with Twisted's epoll reactor (Twisted skips this test for it by its
    class name): a descriptor closed under its reader leaves the epoll set
    without a word, so the reader is never told; but it is never read
    either, not even when a new socket gets the same number.
    """
    reactor = self.buildReactor()
    ours, theirs = socket.socketpair()
    reader = _Reader(reactor, ours, lambda r: None)
    reactor.addReader(reader)
    number = ours.fileno()
    ours.close()
    again = [socket.socketpair() for _ in range(3)]
    for pair in again:
        self.addCleanup(pair[0].close)
        self.addCleanup(pair[1].close)
    self.addCleanup(theirs.close)
    reused = [pair for pair in again if pair[0].fileno() == number]
    for _ours, b in again:
        b.send(b"x")
    for _ in range(3):
        reactor.doIteration(0)
    self.assertEqual(reader.reads, 0)
    self.assertTrue(reused, "the closed descriptor's number was not taken again; the test proves nothing")
    # Removing it now fails in epoll (it dropped the descriptor at the close), as
    # with Twisted's epoll reactor, halfway through the reactor's bookkeeping.
    self.assertRaises(FileNotFoundError, reactor.removeReader, reader)
    reactor._reads.discard(number)


for _builder in (
    test_tcp.TCP4ClientTestsBuilder,
    test_tcp.TCPPortTestsBuilder,
    test_tcp.TCPFDPortTestsBuilder,
    test_tcp.TCPConnectionTestsBuilder,
    test_tcp.TCP4ConnectorTestsBuilder,
    test_tcp.TCPTransportTestsBuilder,
    test_tcp.AdoptStreamConnectionTestsBuilder,
    test_tcp.AbortConnectionTests,
    test_core.SystemEventTestsBuilder,
    test_time.TimeTestsBuilder,
    test_socket.AdoptStreamPortErrorsTestsBuilder,
    test_threads.ThreadTestsBuilder,  # callFromThread, which the database threads use
):
    globals().update(_on_ours(_builder))


def test_changeUID(self: Any) -> None:
    """
    Twisted's test switches the child to uid 1, which cannot run this
    checkout's Python on these machines (it fails on Twisted's own epoll
    reactor too): here the child is given the uid this test runs as, through
    the same spawnProcess argument, and must report it.
    """
    import os
    import sys

    from twisted.internet.protocol import ProcessProtocol

    ended: list[Failure] = []
    reactor = self.buildReactor()

    class Ended(ProcessProtocol):
        def processEnded(self, reason: Failure) -> None:
            ended.append(reason)
            reactor.stop()

    uid = os.getuid()
    reactor.callWhenRunning(reactor.spawnProcess, Ended(), sys.executable,
                            [sys.executable, "-c", f"import os; raise SystemExit(os.getuid() != {uid})"], uid=uid)
    self.runReactor(reactor)
    self.assertEqual(ended[0].value.exitCode, 0)  # type: ignore[union-attr]


globals().update(_on_ours(test_fdset.ReactorFDSetTestsBuilder, test_lostFileDescriptor=test_lostFileDescriptor))
# The workers' spawnProcess with childFDs.
globals().update(_on_ours(test_process.ProcessTestsBuilder, test_changeUID=test_changeUID))


class _Reader(FileDescriptor):
    """One end of a socket pair, read by the reactor; what happens to it is kept."""

    def __init__(self, reactor: Any, sock: socket.socket, read: Any) -> None:
        super().__init__(reactor)
        self.socket = sock
        self.read = read
        self.lost: list[Failure] = []
        self.reads = 0

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:
        return "test-reader"

    def doRead(self) -> Any:
        self.reads += 1
        return self.read(self)

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)
        super().connectionLost(reason)


class ShortWayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = ShortDispatchEPollReactor()
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.addCleanup(self.ours.close)
        self.addCleanup(self.theirs.close)
        self.events: list[dict[str, Any]] = []
        log.addObserver(self.events.append)
        self.addCleanup(log.removeObserver, self.events.append)

    def reader(self, read: Any) -> _Reader:
        reader = _Reader(self.reactor, self.ours, read)
        self.reactor.addReader(reader)
        self.addCleanup(self.reactor.removeAll)
        return reader

    def test_a_read_event_reads_in_the_log_context_of_the_descriptor(self) -> None:
        got: list[bytes] = []
        systems: list[str] = []

        def read(r: _Reader) -> None:
            got.append(r.socket.recv(100))
            systems.append(context.get(log.ILogContext)["system"])

        reader = self.reader(read)
        self.theirs.send(b"hello")
        self.reactor.doIteration(1)
        self.assertEqual((got, reader.reads, reader.lost), ([b"hello"], 1, []))
        self.assertEqual(systems, ["test-reader"])
        self.assertEqual(context.get(log.ILogContext)["system"], "-")  # and out of it again
        self.reactor.doIteration(0)
        self.assertEqual(reader.reads, 1)  # nothing more to read: no more reads

    def test_an_error_in_a_read_is_logged_in_context_and_ends_the_connection(self) -> None:
        def fail(r: _Reader) -> None:
            raise ZeroDivisionError("in doRead")

        reader = self.reader(fail)
        self.theirs.send(b"x")
        self.reactor.doIteration(1)
        errors = [e for e in self.events if e.get("isError")]
        self.assertEqual(len(errors), 1)
        self.assertTrue(errors[0]["failure"].check(ZeroDivisionError))
        self.assertEqual(errors[0]["system"], "test-reader")
        self.assertEqual(len(reader.lost), 1)
        self.assertTrue(reader.lost[0].check(ZeroDivisionError))
        self.assertNotIn(reader, self.reactor.getReaders())
        self.flushLoggedErrors(ZeroDivisionError)

    def test_a_read_that_ends_the_connection_ends_it(self) -> None:
        reader = self.reader(lambda r: main.CONNECTION_DONE)
        self.theirs.send(b"x")
        self.reactor.doIteration(1)
        self.assertEqual(len(reader.lost), 1)
        self.assertTrue(reader.lost[0].check(error.ConnectionDone))
        self.assertNotIn(reader, self.reactor.getReaders())

    def test_a_hang_up_goes_twisteds_way(self) -> None:
        reader = self.reader(lambda r: main.CONNECTION_DONE if not r.socket.recv(100) else None)
        self.theirs.close()
        self.reactor.doIteration(1)
        self.assertEqual(len(reader.lost), 1)
        self.assertTrue(reader.lost[0].check(error.ConnectionDone))

    def test_a_closed_descriptor_still_registered_is_dropped(self) -> None:
        reader = self.reader(lambda r: None)
        reader.fileno = lambda: -1  # type: ignore[method-assign]
        # Registered under its real number; it now says it is closed.
        self.reactor._selectables[self.ours.fileno()] = reader
        self.theirs.send(b"x")
        self.reactor.doIteration(1)
        self.assertEqual(reader.reads, 0)
        self.assertEqual(len(reader.lost), 1)

    def test_a_reader_removed_by_an_earlier_event_is_not_read(self) -> None:
        other_ours, other_theirs = socket.socketpair()
        self.addCleanup(other_ours.close)
        self.addCleanup(other_theirs.close)
        readers: list[_Reader] = []

        def read_and_remove_the_other(r: _Reader) -> None:
            r.socket.recv(100)
            for other in readers:
                if other is not r:
                    self.reactor.removeReader(other)

        readers.append(self.reader(read_and_remove_the_other))
        readers.append(_Reader(self.reactor, other_ours, read_and_remove_the_other))
        self.reactor.addReader(readers[1])
        self.theirs.send(b"x")
        other_theirs.send(b"y")
        self.reactor.doIteration(1)
        # epoll reports both in one poll; whichever is read first removes the other, which is not read.
        self.assertEqual(sorted(r.reads for r in readers), [0, 1])

    def record_call_with_logger(self) -> list[Any]:
        """Each call of log.callWithLogger from now on (which still does its work)."""
        calls: list[Any] = []
        real = log.callWithLogger

        def recording(*args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            return real(*args, **kwargs)

        self.patch(log, "callWithLogger", recording)
        return calls

    def test_a_read_takes_the_short_way(self) -> None:
        """No log.callWithLogger for a read: what this reactor is for (the rest would pass on Twisted's)."""
        calls = self.record_call_with_logger()
        reader = self.reader(lambda r: r.socket.recv(100))
        self.theirs.send(b"x")
        self.reactor.doIteration(1)
        self.assertEqual((reader.reads, calls), (1, []))

    def test_another_context_tracker_takes_twisteds_way(self) -> None:
        calls = self.record_call_with_logger()
        self.patch(context, "theContextTracker", context.ContextTracker())
        reader = self.reader(lambda r: r.socket.recv(100))
        self.theirs.send(b"x")
        self.reactor.doIteration(1)
        self.assertEqual((reader.reads, len(calls)), (1, 1))

    def test_the_outer_log_context_reaches_the_handler(self) -> None:
        seen: list[dict[str, Any]] = []

        def read(r: _Reader) -> None:
            r.socket.recv(100)
            seen.append(dict(context.get(log.ILogContext)))

        self.reader(read)
        self.theirs.send(b"x")
        log.callWithContext({"request": "r1"}, self.reactor.doIteration, 1)
        self.assertEqual(seen, [{"system": "test-reader", "request": "r1"}])

    def test_a_nested_iteration_keeps_the_context_stack(self) -> None:
        stack = context.theContextTracker.currentContext().contexts
        depth = len(stack)
        seen: list[str] = []

        def read(r: _Reader) -> None:
            r.socket.recv(100)
            if len(seen) == 0:
                seen.append(context.get(log.ILogContext)["system"])
                self.theirs.send(b"again")
                self.reactor.doIteration(1)  # a handler that runs the reactor (as a test helper may)
            else:
                seen.append(context.get(log.ILogContext)["system"])

        self.reader(read)
        self.theirs.send(b"x")
        self.reactor.doIteration(1)
        self.assertEqual(seen, ["test-reader", "test-reader"])
        self.assertEqual(len(stack), depth)

    def test_an_interrupt_in_log_prefix_is_raised(self) -> None:
        """As callWithLogger: KeyboardInterrupt goes through, after one call."""
        reader = self.reader(lambda r: r.socket.recv(100))
        calls: list[int] = []

        def interrupted() -> str:
            calls.append(1)
            raise KeyboardInterrupt()

        reader.logPrefix = interrupted  # type: ignore[method-assign]
        self.theirs.send(b"x")
        self.assertRaises(KeyboardInterrupt, self.reactor.doIteration, 1)
        self.assertEqual((calls, reader.reads), ([1], 0))

    def test_a_broken_log_prefix_is_logged_and_the_read_still_done(self) -> None:
        got: list[bytes] = []
        reader = self.reader(lambda r: got.append(r.socket.recv(100)))

        def broken() -> str:
            raise ValueError("no prefix")

        reader.logPrefix = broken  # type: ignore[method-assign]
        self.theirs.send(b"x")
        self.reactor.doIteration(1)
        self.assertEqual(got, [b"x"])
        errors = [e for e in self.events if e.get("isError")]
        self.assertEqual([e["system"] for e in errors], ["(buggy logPrefix method)"])
        self.flushLoggedErrors(ValueError)

    def test_an_error_while_ending_a_connection_is_logged_with_its_prefix(self) -> None:
        reader = self.reader(lambda r: main.CONNECTION_DONE)

        def broken_lost(reason: Failure) -> None:
            raise RuntimeError("in connectionLost")

        reader.connectionLost = broken_lost  # type: ignore[method-assign]
        self.theirs.send(b"x")
        self.reactor.doIteration(1)
        errors = [e for e in self.events if e.get("isError")]
        self.assertEqual([(e["system"], e["failure"].type) for e in errors], [("test-reader", RuntimeError)])
        self.assertEqual(context.get(log.ILogContext)["system"], "-")
        self.flushLoggedErrors(RuntimeError)


class ChosenTests(SynchronousTestCase):
    def test_workers_run_the_reactor_worker_0_runs(self) -> None:
        from twisted.internet.epollreactor import EPollReactor

        from webtesting.workers import _same_reactor

        self.assertEqual(_same_reactor(object.__new__(ShortDispatchEPollReactor)), ["--reactor=webtesting-epoll"])
        self.assertEqual(_same_reactor(object.__new__(EPollReactor)), [])

    def test_twisteds_suites_build_this_reactor(self) -> None:
        """ReactorBuilder skips a suite whose reactor cannot be built: these are built."""
        case = globals()["ShortDispatchTCP4ClientTestsBuilder_ShortDispatchEPollReactorTests"]("test_logPrefix")
        reactor = case.buildReactor()
        self.assertIs(type(reactor), ShortDispatchEPollReactor)
        case._unbuildReactor(reactor)

    def test_twistd_finds_it_by_name(self) -> None:
        from twisted.application.reactors import getReactorTypes

        from webtesting.reactor import NAME

        found = {r.shortName: r.moduleName for r in getReactorTypes()}
        self.assertEqual(found.get(NAME), "webtesting.reactor")
