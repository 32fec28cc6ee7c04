"""
Blocking DB-API work off the reactor, failing fast while the database is away.

Why not ``twisted.enterprise.adbapi``: its pool binds one connection to each
thread for good, so after an outage every thread's dead connection fails one
more request, and each such failure is logged as "Rollback failed" through the
legacy logger. Here connections live in a shared free list tagged with the
*generation* in which they were opened; an outage starts a new generation, so
no request ever runs on a connection from before the outage.

The life of a L{Database} is a L{webtesting.lifecycle.Lifecycle}: the
attempt is a I{probe} (the C{prepare} work, or C{SELECT 1}) on a pool
thread, retried every C{retry_interval} seconds until it works.

- While the lifecycle is up (I{available}), L{Database.run} runs the work in
  a transaction on a thread of its own pool, with a deadline.
- A connection fault in a request (refused, reset, lost, access denied,
  timed out, or the deadline passing) is the lifecycle's C{lost}: from then
  on every C{run} fails at once with L{DatabaseUnavailable} until a probe
  works again; requests still waiting for a thread fail at once too.

The deadline of a request (C{request_timeout}) starts when a pool thread
picks the work up, not when it is queued: a burst of requests, more than
there are threads, is not failed for waiting its turn. A request waiting for
a thread longer than C{queue_timeout} fails with L{DatabaseBusy}; it never
ran, so nothing was written.

A request whose deadline passes is abandoned and I{rolled back, never
committed}: before it commits, the pool thread checks under the request's
lock whether it was abandoned. So an answer "unavailable" after a deadline
means nothing was written, and the caller may retry without making a
duplicate. If the deadline passes while the commit itself is under way, the
caller waits for the commit's outcome and gets the truth; the driver's
read/write timeouts bound that wait (at most C{request_timeout} plus the
driver's read timeout). Only a connection lost during C{COMMIT} itself
leaves the outcome unknown to the server's client, as with any database.

A thread stuck in a read on a frozen server is freed by the driver's own
read/write timeouts; the deadline only stops callers from waiting for it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.application import service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from webtesting.lifecycle import Backoff, DeferredDialer, Health, Lifecycle, Reason
from webtesting.metrics import DB_FAILURES

T = TypeVar("T")

Connect = Callable[[], Any]
Work = Callable[[Any], T]


class DatabaseUnavailable(Exception):
    """The database cannot be reached now; a timer keeps trying to reconnect."""


class DatabaseBusy(DatabaseUnavailable):
    """Every thread stayed busy for C{queue_timeout}: the request never ran."""


class _Abandoned(Exception):
    """The request's caller was answered already: roll back, do not commit."""


class Runner(Protocol):
    """Where blocking work runs: a thread pool, or a test's fake."""

    def start(self) -> None:
        """Get ready to run work."""

    def submit(self, work: Callable[[], Any], done: Callable[[bool, Any], None]) -> None:
        """Run C{work} on a worker; call C{done(ok, result_or_failure)} on the reactor thread."""

    def to_reactor(self, f: Callable[..., None], *args: Any) -> None:
        """From a worker: have the reactor thread call C{f(*args)}."""

    def stop(self) -> Deferred[None]:
        """End the workers (after queued work); fires on the reactor thread."""


class ThreadRunner:
    """A L{Runner} on a L{ThreadPool} of daemon threads."""

    def __init__(self, reactor: Any, threads: int, name: str) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=threads, name=name)
        # Daemon threads: a thread stuck on a frozen server must not keep the
        # process from exiting.
        self._pool.threadFactory = _daemon_thread  # type: ignore[assignment]
        self._name = name

    def start(self) -> None:
        self._pool.start()

    def submit(self, work: Callable[[], Any], done: Callable[[bool, Any], None]) -> None:
        def finished(ok: bool, result: Any) -> None:
            self._reactor.callFromThread(done, ok, result)

        self._pool.callInThreadWithCallback(finished, work)

    def to_reactor(self, f: Callable[..., None], *args: Any) -> None:
        self._reactor.callFromThread(f, *args)

    def stop(self) -> Deferred[None]:
        # Joining the threads happens on a thread of its own: a thread stuck
        # on a frozen server (until the driver's read timeout) must not block
        # the reactor.
        done: Deferred[None] = Deferred()
        reactor = self._reactor

        def stop_pool() -> None:
            self._pool.stop()
            if reactor.running:
                reactor.callFromThread(done.callback, None)

        threading.Thread(target=stop_pool, name=f"{self._name}-stop", daemon=True).start()
        return done


class _Request:
    """
    One call of L{Database.run}, shared by the reactor and a pool thread.

    C{lock} guards the three moments that race: a thread picking the work up
    (C{started}), the thread about to commit (C{committing}) and the reactor
    answering the caller early (C{abandoned}: queue timeout, deadline, the
    database going away, cancellation).
    """

    def __init__(self, work: Work[Any], deadline: float, queue_timeout: float) -> None:
        self.work = work
        self.deadline = deadline
        self.queue_timeout = queue_timeout
        self.lock = threading.Lock()
        self.started = False
        self.committing = False
        self.abandoned = False
        self.generation = 0
        self.timer: Any = None  # IDelayedCall: queue timeout, then deadline
        self.result: Deferred[Any] = Deferred(self._cancel)
        self.on_cancel: Callable[[_Request], None] = lambda r: None

    def _cancel(self, _: Deferred[Any]) -> None:
        self.on_cancel(self)


class Database(service.Service):
    """
    A small pool of DB-API connections used from a thread pool.

    @param connect: opens one new DB-API connection (called in a pool thread).
    @param is_fault: tells a connection fault (the database is away) from an
        error in the work itself (a constraint, a bug), which is passed on.
    @param prepare: run in a transaction each time the database becomes
        available, before any request: creating missing tables, for example.
    @param on_state: called with C{(available, reason)} exactly when either
        changes (the lifecycle's one health report).
    @param code: the reason code reported while the database is away:
        C{registry_unavailable} for the registry, C{mysql_unreachable} (the
        default) for a bot's MySQL.
    @param queue_timeout: longest wait for a free thread, in seconds.
    @param runner: where the work runs (default: a pool of C{threads}
        threads); tests give a fake.
    """

    _log = Logger()

    def __init__(
        self,
        name: str,
        connect: Connect,
        reactor: Any,
        *,
        is_fault: Callable[[BaseException], bool],
        threads: int = 4,
        request_timeout: float = 1.0,
        retry_interval: float = 2.0,
        queue_timeout: float = 10.0,
        prepare: Callable[[Any], None] | None = None,
        on_state: Callable[[bool, str], None] | None = None,
        code: str = "mysql_unreachable",
        runner: Runner | None = None,
    ) -> None:
        self.name = name
        self._on_state = on_state
        self._connect = connect
        self._reactor = reactor
        self._is_fault = is_fault
        self._request_timeout = request_timeout
        self._queue_timeout = queue_timeout
        self._prepare = prepare
        self._code = code
        self._runner: Runner = runner or ThreadRunner(reactor, threads, f"db-{name}")
        self._lock = threading.Lock()
        self._free: list[tuple[int, Any]] = []
        self._generation = 0
        # Requests answered by no one yet, for failing them when the
        # database goes away or the service stops.
        self._requests: set[_Request] = set()
        self._settled = False
        self._waiters: list[Deferred[bool]] = []
        self._lifecycle = Lifecycle(
            f"database {name}", self._health_changed, initial=Health(False, code, "not connected yet"),
        )
        # A probe is cheap: a fixed interval (spread a little) bounds how
        # long recovery takes after the database is back.
        self._dialer: DeferredDialer[int] = DeferredDialer(
            self._lifecycle, self._probe, self._probe_failed, clock=reactor,
            backoff=Backoff(initial=retry_interval, maximum=retry_interval, factor=1.0, jitter=0.1),
        )

    # -- state --------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._lifecycle.is_up

    @property
    def health(self) -> Health:
        return self._lifecycle.health

    @property
    def reason(self) -> str:
        if self._lifecycle.state == "stopped":
            return "stopped"
        return self._lifecycle.health.msg

    def _health_changed(self, health: Health) -> None:
        # The lifecycle has logged the change already.
        self._settle()
        if self._on_state is not None:
            self._on_state(health.up, health.msg)

    def _settle(self) -> None:
        self._settled = True
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.callback(self.available)

    # -- service ----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._runner.start()
        self._lifecycle.start()

    def stopService(self) -> Deferred[None]:
        if not self.running:
            return defer.succeed(None)
        super().stopService()
        self._lifecycle.stop()
        self._fail_queued(DatabaseUnavailable("stopped"), everything=True)
        self._settle()
        # Close idle connections on a pool thread (closing talks to the
        # server), then end the pool's threads.
        self._runner.submit(self._close_idle, lambda ok, result: None)
        return self._runner.stop()

    def ready(self) -> Deferred[bool]:
        """Fire with C{available} once the first connection attempt has ended."""
        if self._settled:
            return defer.succeed(self.available)
        d: Deferred[bool] = Deferred()
        self._waiters.append(d)
        return d

    # -- requests ---------------------------------------------------------

    def run(self, work: Work[T]) -> Deferred[T]:
        """
        Run C{work(cursor)} in a transaction on a pool thread.

        Fails with L{DatabaseUnavailable} at once while the database is away,
        and when the database goes away during this request; a request that
        fails so was rolled back (see the module's docstring for the one
        exception, a connection lost during the commit).
        """
        if not self.available:
            DB_FAILURES.labels(self.name).inc()
            return defer.fail(DatabaseUnavailable(self.reason))
        d: Deferred[T] = self._submit(work, self._request_timeout, self._queue_timeout)
        d.addErrback(self._request_failed)
        return d

    def _submit(self, work: Work[Any], deadline: float, queue_timeout: float) -> Deferred[Any]:
        request = _Request(work, deadline, queue_timeout)
        request.on_cancel = self._cancelled
        self._requests.add(request)
        request.timer = self._reactor.callLater(queue_timeout, self._queue_timed_out, request)
        self._runner.submit(lambda: self._transaction(request), lambda ok, r: self._finished(request, ok, r))
        return request.result

    def _begin(self, request: _Request) -> None:
        """A pool thread picked the request up: its deadline starts now."""
        if request not in self._requests:
            return  # answered meanwhile (finished, or failed before it ran)
        _cancel_timer(request.timer)
        request.timer = self._reactor.callLater(request.deadline, self._deadline_passed, request)

    def _queue_timed_out(self, request: _Request) -> None:
        request.timer = None
        if self._abandon(request, only_queued=True):
            self._answer(request, Failure(DatabaseBusy(
                f"no free connection within {request.queue_timeout:g} s"
            )))

    def _deadline_passed(self, request: _Request) -> None:
        request.timer = None
        if self._abandon(request, only_queued=False):
            self._answer(request, Failure(defer.TimeoutError(f"no answer within {request.deadline:g} s")))
        else:
            # The commit is under way: the caller waits for its outcome.
            self._log.info("database {name}: a commit outlived its deadline; waiting for its outcome",
                           name=self.name)

    def _cancelled(self, request: _Request) -> None:
        # The caller gave up (Deferred.cancel): roll back unless committing;
        # if committing, Deferred's own CancelledError still answers it.
        self._abandon(request, only_queued=False)
        self._requests.discard(request)
        _cancel_timer(request.timer)

    def _abandon(self, request: _Request, only_queued: bool) -> bool:
        """Mark the request abandoned unless it is committing (or, if C{only_queued}, started)."""
        if request not in self._requests:
            return False
        with request.lock:
            if request.committing or (only_queued and request.started):
                return False
            request.abandoned = True
        return True

    def _finished(self, request: _Request, ok: bool, result: Any) -> None:
        if request not in self._requests:
            return  # its caller was answered already
        self._answer(request, result if not ok else None, value=result if ok else None)

    def _answer(self, request: _Request, failure: Failure | None, value: Any = None) -> None:
        self._requests.discard(request)
        _cancel_timer(request.timer)
        request.timer = None
        if failure is None:
            request.result.callback(value)
            return
        # A fault in a request is the lifecycle's "lost": every later request
        # fails at once until a probe works.
        if failure.check(defer.TimeoutError) or (
            not failure.check(DatabaseUnavailable, _Abandoned) and self._is_fault(_error(failure))
        ):
            self._went_away(request.generation, _describe(_error(failure)))
        request.result.errback(failure)

    def _request_failed(self, failure: Failure) -> Failure:
        DB_FAILURES.labels(self.name).inc()
        if failure.check(DatabaseUnavailable):
            return failure
        if failure.check(defer.TimeoutError) or self._is_fault(_error(failure)):
            return Failure(DatabaseUnavailable(_describe(_error(failure))))
        return failure

    def _went_away(self, generation: int, detail: str) -> None:
        with self._lock:
            if generation != self._generation:
                return  # a fault of an earlier generation: already handled
            self._generation += 1
        if self._lifecycle.is_up:
            self._lifecycle.lost(Reason(self._code, detail))
        self._fail_queued(DatabaseUnavailable(detail), everything=False)

    def _fail_queued(self, error: DatabaseUnavailable, everything: bool) -> None:
        """Answer requests still waiting for a thread (and, on stop, every running one)."""
        for request in list(self._requests):
            if self._abandon(request, only_queued=not everything):
                self._answer(request, Failure(error))

    # -- probing ----------------------------------------------------------

    def _probe(self) -> Deferred[int]:
        # Probing may take longer than a request (it may create tables), but
        # it must still end so that the next probe can start.
        with self._lock:
            self._generation += 1
        limit = max(self._request_timeout, 5.0)
        d: Deferred[int] = self._submit(self._prepare or _select_one, limit, limit)
        return d.addCallback(lambda _: self._generation)

    def _probe_failed(self, failure: Failure) -> Reason:
        if failure.check(DatabaseBusy):
            detail = "no free thread to probe it"
        elif failure.check(defer.TimeoutError):
            detail = "no answer while connecting"
        elif failure.check(DatabaseUnavailable) or self._is_fault(_error(failure)):
            detail = _describe(_error(failure))
        else:
            # The database answered but preparing it failed (a permissions
            # or schema problem): not repaired by waiting, but a person may
            # fix it, so keep probing and say why.
            self._log.failure("preparing database {name}", failure, name=self.name)
            detail = f"cannot prepare the database: {_describe(_error(failure))}"
        return Reason(self._code, detail)

    # -- in pool threads --------------------------------------------------

    def _transaction(self, request: _Request) -> Any:
        with request.lock:
            if request.abandoned:
                raise _Abandoned()
            request.started = True
        # Before the deadline can fire: a fault it reports belongs to this
        # generation even while the thread is still connecting.
        with self._lock:
            request.generation = self._generation
        self._runner.to_reactor(self._begin, request)
        generation, conn = self._take()
        try:
            cursor = conn.cursor()
            try:
                result = request.work(cursor)
            finally:
                cursor.close()
            with request.lock:
                if request.abandoned:
                    raise _Abandoned()
                request.committing = True
            conn.commit()
        except BaseException as e:
            if self._is_fault(e):
                _close_quietly(conn)
                raise
            try:
                conn.rollback()
            except BaseException:  # noqa: BLE001 - the rollback failed too: the connection is closed, the first error raised
                _close_quietly(conn)
                raise e from None
            self._give_back(generation, conn)
            raise
        self._give_back(generation, conn)
        return result

    def _take(self) -> tuple[int, Any]:
        while True:
            with self._lock:
                generation = self._generation
                if not self._free:
                    break
                conn_generation, conn = self._free.pop()
            if conn_generation == generation:
                return generation, conn
            _close_quietly(conn)
        return generation, self._connect()

    def _give_back(self, generation: int, conn: Any) -> None:
        with self._lock:
            if generation == self._generation:
                self._free.append((generation, conn))
                return
        _close_quietly(conn)

    def _close_idle(self) -> None:
        with self._lock:
            free, self._free = self._free, []
            self._generation += 1
        for _, conn in free:
            _close_quietly(conn)


def _cancel_timer(timer: Any) -> None:
    if timer is not None and timer.active():
        timer.cancel()


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    return threading.Thread(*args, daemon=True, **kwargs)


def _select_one(cursor: Any) -> None:
    cursor.execute("SELECT 1")
    cursor.fetchall()


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):  # the connection is being thrown away
        conn.close()


def _error(failure: Failure) -> BaseException:
    assert failure.value is not None
    return failure.value


def _describe(error: BaseException) -> str:
    args: tuple[Any, ...] = getattr(error, "args", ())
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        return f"{args[1]} ({args[0]})"  # pymysql's (code, message)
    return str(error) or type(error).__name__


def mysql_is_fault(error: BaseException) -> bool:
    """Whether a pymysql error means the server is away rather than a bad query."""
    import pymysql

    if isinstance(error, (pymysql.err.InterfaceError, OSError)):
        return True
    if isinstance(error, pymysql.err.OperationalError):
        code = error.args[0] if error.args and isinstance(error.args[0], int) else 0
        # 2000-2999 are the client's own errors (cannot connect, server has
        # gone away, lost connection); the others say the server refuses us.
        return 2000 <= code < 3000 or code in _MYSQL_SERVER_AWAY
    return False


# too many connections, access denied (db/user), unknown database,
# server shutdown, connection killed.
_MYSQL_SERVER_AWAY = frozenset({1040, 1044, 1045, 1049, 1053, 1927})


def mysql_connector(
    host: str,
    port: int,
    user: str,
    password: str,
    database: str | None,
    connect_timeout: float,
    read_timeout: float,
    write_timeout: float,
) -> Connect:
    """A C{connect} for L{Database} that opens pymysql connections with timeouts."""
    import pymysql

    def connect() -> Any:
        return pymysql.connect(
            host=host,
            port=port,
            user=user,
            password=password,
            database=database,
            charset="utf8mb4",
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            autocommit=False,
        )

    return connect


def sqlite_is_fault(error: BaseException) -> bool:
    import sqlite3

    return isinstance(error, (sqlite3.OperationalError, OSError))


def sqlite_connector(path: str, busy_timeout: float) -> Connect:
    import sqlite3

    def connect() -> Any:
        conn = sqlite3.connect(path, timeout=busy_timeout, check_same_thread=False)
        # Write-ahead logging: a commit appends to one log file instead of
        # creating, syncing and deleting a journal (most of a small
        # transaction's cost), and readers never wait for the writer. With
        # synchronous=NORMAL a commit is synced at checkpoints: a power cut
        # may lose the last transactions, never corrupt the file.
        # The mode is kept in the file, so only the first connection ever
        # changes it; that change needs the file to itself, and fails at once
        # ("database is locked") while another process (the web server, when
        # webtesting-account runs) is using it, so it is tried a few times.
        for attempt in range(20):
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                break
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                if attempt == 19:
                    raise
                time.sleep(0.05)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    return connect
