"""
dbpool.Database on its lifecycle, driven by a Clock, fake workers and a fake
DB-API connection: probing, failing fast, recovering, deadlines and the
rollback of an abandoned write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest

from webtesting.dbpool import Database, DatabaseBusy, DatabaseUnavailable

TIMEOUT = 1.0
RETRY = 2.0
QUEUE = 10.0


class Workers:
    """
    Fake enough of a thread pool for a Database: submitted work waits until
    the test lets a "thread" pick it up (L{run_next}), then runs at once in
    the test's thread; the reactor is the same thread.
    """

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[[], Any], Callable[[bool, Any], None]]] = []
        self.stopped = False

    def start(self) -> None:
        pass

    def submit(self, work: Callable[[], Any], done: Callable[[bool, Any], None]) -> None:
        self.queue.append((work, done))

    def to_reactor(self, f: Callable[..., None], *args: Any) -> None:
        f(*args)

    def stop(self) -> Deferred[None]:
        self.stopped = True
        self.run_all()
        return defer.succeed(None)

    def run_next(self) -> None:
        work, done = self.queue.pop(0)
        try:
            result, ok = work(), True
        except BaseException:  # noqa: BLE001 - the fake pool hands every outcome on, as the real one does
            result, ok = Failure(), False
        done(ok, result)

    def run_all(self) -> None:
        while self.queue:
            self.run_next()


class ServerAway(ConnectionResetError):
    """What the fake driver raises while the fake server is away."""


class Server:
    """Fake enough of a database server and its DB-API driver for a Database."""

    def __init__(self) -> None:
        self.up = True
        self.refusal = "connection refused"
        self.rows: list[str] = []
        self.opened = 0
        self.rollbacks = 0
        self.on_commit: Callable[[], None] = lambda: None

    def connect(self) -> Connection:
        if not self.up:
            raise ServerAway(self.refusal)
        self.opened += 1
        return Connection(self)


class Connection:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.pending: list[str] = []
        self.closed = False

    def cursor(self) -> Cursor:
        return Cursor(self)

    def commit(self) -> None:
        self.server.on_commit()
        if not self.server.up:
            raise ServerAway("lost connection")
        self.server.rows.extend(self.pending)
        self.pending = []

    def rollback(self) -> None:
        self.server.rollbacks += 1
        self.pending = []

    def close(self) -> None:
        self.closed = True


class Cursor:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def execute(self, statement: str, params: Any = None) -> None:
        if not self.conn.server.up or self.conn.closed:
            raise ServerAway("server has gone away")
        if statement.startswith("INSERT"):
            self.conn.pending.append(statement)

    def fetchall(self) -> list[Any]:
        return []

    def close(self) -> None:
        pass


def insert(cursor: Any) -> str:
    cursor.execute("INSERT one")
    return "inserted"


class DatabaseTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = Server()
        self.workers = Workers()
        self.states: list[tuple[bool, str]] = []
        self.db = Database(
            "test", self.server.connect, self.clock,
            is_fault=lambda e: isinstance(e, ServerAway),
            request_timeout=TIMEOUT, retry_interval=RETRY, queue_timeout=QUEUE,
            on_state=lambda available, reason: self.states.append((available, reason)),
            code="registry_unavailable", runner=self.workers,
        )
        # No jitter, so that the retry is exactly RETRY seconds away.
        self.db._dialer._rand = lambda: 0.5

    def tearDown(self) -> None:
        self.db.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def start_up(self) -> None:
        self.db.startService()
        self.workers.run_next()
        self.assertTrue(self.db.available)

    def go_away(self) -> None:
        """Make a request meet the server away, so the database knows."""
        self.server.up = False
        d = self.db.run(insert)
        self.workers.run_next()
        self.failureResultOf(d, DatabaseUnavailable)

    def test_first_probe_makes_it_available(self) -> None:
        """A probe that works makes the database available, reported once, and ready() says so."""
        self.db.startService()
        ready = self.db.ready()
        self.assertNoResult(ready)
        self.workers.run_next()
        self.assertIs(self.successResultOf(ready), True)
        self.assertEqual(self.states, [(True, "ok")])
        d = self.db.run(lambda c: 7)
        self.workers.run_next()
        self.assertEqual(self.successResultOf(d), 7)

    def test_down_at_start_fails_fast_then_recovers(self) -> None:
        """Away at start, every request fails at once with nothing queued; a later probe recovers by itself."""
        self.server.up = False
        self.db.startService()
        self.workers.run_next()
        self.assertIs(self.successResultOf(self.db.ready()), False)
        self.assertEqual(self.states, [(False, "connection refused")])
        self.assertEqual(self.db.health.code, "registry_unavailable")
        self.failureResultOf(self.db.run(insert), DatabaseUnavailable)
        self.assertEqual(self.workers.queue, [])
        self.server.up = True
        self.clock.advance(RETRY)
        self.workers.run_next()
        self.assertTrue(self.db.available)
        self.assertEqual(self.states[-1], (True, "ok"))

    def test_same_reason_reported_once(self) -> None:
        """Probes failing again and again for one reason report one change; a new reason reports again."""
        self.server.up = False
        self.db.startService()
        for _ in range(3):
            self.workers.run_next()
            self.clock.advance(RETRY)
        self.server.refusal = "access denied"
        self.workers.run_next()
        self.assertEqual(self.states, [(False, "connection refused"), (False, "access denied")])

    def test_fault_in_request_makes_it_away(self) -> None:
        """A connection fault in a request fails it, reports the reason, and later requests fail at once."""
        self.start_up()
        self.go_away()
        self.assertEqual(self.states[-1], (False, "server has gone away"))
        self.assertFalse(self.db.available)
        self.failureResultOf(self.db.run(insert), DatabaseUnavailable)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the next probe

    def test_error_in_work_is_passed_on(self) -> None:
        """An error in the work itself is the caller's, rolled back, and leaves the database available."""
        self.start_up()

        def bad(cursor: Any) -> None:
            cursor.execute("INSERT one")
            raise KeyError("no such thing")

        d = self.db.run(bad)
        self.workers.run_next()
        self.failureResultOf(d, KeyError)
        self.assertTrue(self.db.available)
        self.assertEqual(self.server.rows, [])
        self.assertEqual(self.server.rollbacks, 1)

    def test_no_connection_from_before_an_outage(self) -> None:
        """After an outage and recovery, requests use new connections, never one from before."""
        self.start_up()
        before = self.server.opened
        self.go_away()
        self.server.up = True
        self.clock.advance(RETRY)
        self.workers.run_next()
        d = self.db.run(insert)
        self.workers.run_next()
        self.assertEqual(self.successResultOf(d), "inserted")
        self.assertEqual(self.server.opened, before + 1)

    def test_deadline_starts_when_a_thread_picks_the_work_up(self) -> None:
        """Requests that wait for a thread longer than the deadline, then run quickly, all succeed."""
        self.start_up()
        waiting = [self.db.run(insert) for _ in range(5)]
        for _ in waiting:
            self.clock.advance(TIMEOUT * 0.9)  # each one waits, the later ones longer than the deadline
            self.workers.run_next()
        self.assertEqual([self.successResultOf(d) for d in waiting], ["inserted"] * 5)
        self.assertEqual(len(self.server.rows), 5)
        self.assertTrue(self.db.available)

    def test_write_past_its_deadline_is_rolled_back(self) -> None:
        """A write whose deadline passes while it runs answers 'unavailable' then and is rolled back, never
        committed."""
        self.start_up()

        def slow_insert(cursor: Any) -> str:
            cursor.execute("INSERT one")
            self.clock.advance(TIMEOUT + 0.1)  # the reactor's deadline fires meanwhile
            return "inserted"

        d = self.db.run(slow_insert)
        self.workers.run_next()
        self.assertIn("no answer within 1 s", str(self.failureResultOf(d, DatabaseUnavailable).value))
        self.assertEqual(self.server.rows, [])
        self.assertEqual(self.server.rollbacks, 1)
        self.assertFalse(self.db.available)

    def test_commit_outliving_the_deadline_answers_the_truth(self) -> None:
        """When the deadline passes during the commit itself, the caller waits and learns it succeeded."""
        self.start_up()
        results: list[Any] = []
        d = self.db.run(insert)
        d.addBoth(results.append)

        def slow_commit() -> None:
            self.clock.advance(TIMEOUT + 0.5)
            self.assertEqual(results, [], "the caller must not be answered before the commit ends")

        self.server.on_commit = slow_commit
        self.workers.run_next()
        self.assertEqual(results, ["inserted"])
        self.assertEqual(len(self.server.rows), 1)

    def test_queued_requests_fail_when_the_database_goes_away(self) -> None:
        """Requests waiting for a thread fail at once when the database goes away, and never run."""
        self.start_up()
        self.server.up = False
        first = self.db.run(insert)
        ran: list[int] = []
        second = self.db.run(lambda c: ran.append(1))
        self.workers.run_next()
        self.failureResultOf(first, DatabaseUnavailable)
        self.failureResultOf(second, DatabaseUnavailable)
        self.workers.run_next()
        self.assertEqual(ran, [])

    def test_no_thread_within_queue_timeout(self) -> None:
        """A request no thread picks up within queue_timeout fails as busy, never runs, and the database stays
        available."""
        self.start_up()
        ran: list[int] = []
        d = self.db.run(lambda c: ran.append(1))
        self.clock.advance(QUEUE)
        self.failureResultOf(d, DatabaseBusy)
        self.assertTrue(self.db.available)
        self.workers.run_next()
        self.assertEqual(ran, [])

    def test_stop_ends_everything(self) -> None:
        """Stopping fails waiting requests, ends retries, answers ready() and reports nothing more."""
        self.server.up = False
        self.db.startService()
        self.workers.run_next()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        reports = len(self.states)
        self.successResultOf(self.db.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.db.reason, "stopped")
        self.assertEqual(len(self.states), reports)
        self.assertIs(self.successResultOf(self.db.ready()), False)

    def test_stop_during_first_probe(self) -> None:
        """Stopping while the first probe waits answers ready() with False and leaves no timer."""
        self.db.startService()
        ready = self.db.ready()
        self.successResultOf(self.db.stopService())
        self.assertIs(self.successResultOf(ready), False)
        self.assertFalse(self.db.available)
