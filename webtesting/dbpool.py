"""
Blocking DB-API work off the reactor, failing fast while the database is away.

Why not ``twisted.enterprise.adbapi``: its pool binds one connection to each
thread for good, so after an outage every thread's dead connection fails one
more request, and each such failure is logged as "Rollback failed" through the
legacy logger. Here connections live in a shared free list tagged with the
*generation* in which they were opened; an outage starts a new generation, so
no request ever runs on a connection from before the outage.

The life of a L{Database}:

- While I{available}, L{Database.run} runs the work in a transaction on a
  thread of its own pool, with a deadline (C{request_timeout}).
- A connection fault (refused, reset, lost, access denied, timed out, or the
  deadline passing) makes it I{unavailable}: from then on every C{run} fails
  at once with L{DatabaseUnavailable}, and a timer probes the database every
  C{retry_interval} seconds. A successful probe makes it available again.

A thread stuck in a read on a frozen server is freed by the driver's own
read/write timeouts; the deadline only stops callers from waiting for it.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, TypeVar

from twisted.application import service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.base import DelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")

Connect = Callable[[], Any]
Work = Callable[[Any], T]


class DatabaseUnavailable(Exception):
    """The database cannot be reached now; a timer keeps trying to reconnect."""


class Database(service.Service):
    """
    A small pool of DB-API connections used from a thread pool.

    @param connect: opens one new DB-API connection (called in a pool thread).
    @param is_fault: tells a connection fault (the database is away) from an
        error in the work itself (a constraint, a bug), which is passed on.
    @param prepare: run in a transaction each time the database becomes
        available, before any request: creating missing tables, for example.
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
        prepare: Callable[[Any], None] | None = None,
        on_state: Callable[[bool, str], None] | None = None,
    ) -> None:
        self.name = name
        self._on_state = on_state
        self._connect = connect
        self._reactor = reactor
        self._is_fault = is_fault
        self._request_timeout = request_timeout
        self._retry_interval = retry_interval
        self._prepare = prepare
        self._pool = ThreadPool(minthreads=0, maxthreads=threads, name=f"db-{name}")
        # Daemon threads: a thread stuck on a frozen server must not keep the
        # process from exiting.
        self._pool.threadFactory = _daemon_thread  # type: ignore[assignment]
        self._lock = threading.Lock()
        self._free: list[tuple[int, Any]] = []
        self._generation = 0
        self.available = False
        self.reason = "not connected yet"
        self._probe_call: DelayedCall | None = None
        self._probing: Deferred[None] | None = None
        self._waiters: list[Deferred[bool]] = []
        self._probed_once = False

    # -- service ----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._pool.start()
        self._probe()

    def stopService(self) -> Deferred[None]:
        if not self.running:
            return defer.succeed(None)
        super().stopService()
        if self._probe_call is not None and self._probe_call.active():
            self._probe_call.cancel()
        self._probe_call = None
        self.available = False
        self.reason = "stopped"
        # Close idle connections on a pool thread (closing talks to the
        # server), then end the pool's threads. Joining them happens on a
        # thread of its own: a thread stuck on a frozen server (until the
        # driver's read timeout) must not block the reactor.
        self._pool.callInThread(self._close_idle)
        done: Deferred[None] = Deferred()
        reactor = self._reactor

        def stop_pool() -> None:
            self._pool.stop()
            if reactor.running:
                reactor.callFromThread(done.callback, None)

        threading.Thread(target=stop_pool, name=f"db-{self.name}-stop", daemon=True).start()
        return done

    def ready(self) -> Deferred[bool]:
        """Fire with C{available} once the first connection attempt has ended."""
        if self._probed_once:
            return defer.succeed(self.available)
        d: Deferred[bool] = Deferred()
        self._waiters.append(d)
        return d

    # -- requests ---------------------------------------------------------

    def run(self, work: Work[T]) -> Deferred[T]:
        """
        Run C{work(cursor)} in a transaction on a pool thread.

        Fails with L{DatabaseUnavailable} at once while the database is away,
        and when the database goes away during this request.
        """
        if not self.available:
            return defer.fail(DatabaseUnavailable(self.reason))
        d = deferToThreadPool(self._reactor, self._pool, self._transaction, work)
        d.addTimeout(self._request_timeout, self._reactor)
        d.addErrback(self._request_failed)
        return d

    def _request_failed(self, failure: Failure) -> Failure:
        if failure.check(defer.TimeoutError):
            self._went_away(f"no answer within {self._request_timeout:g} s")
            return Failure(DatabaseUnavailable(self.reason))
        if failure.check(DatabaseUnavailable):
            return failure
        if self._is_fault(_error(failure)):
            self._went_away(_describe(_error(failure)))
            return Failure(DatabaseUnavailable(self.reason))
        return failure

    def _went_away(self, reason: str) -> None:
        with self._lock:
            self._generation += 1
        if self.available:
            self._log.warn(
                "database {name} unavailable: {reason}; retrying every {interval} s",
                name=self.name, reason=reason, interval=self._retry_interval,
            )
        self._set_state(False, reason)
        self._schedule_probe()

    # -- reconnecting -----------------------------------------------------

    def _schedule_probe(self) -> None:
        if not self.running or self._probing is not None:
            return
        if self._probe_call is not None and self._probe_call.active():
            return
        self._probe_call = self._reactor.callLater(self._retry_interval, self._probe)

    def _probe(self) -> None:
        self._probe_call = None
        if self._probing is not None:
            return
        work = self._prepare or _select_one
        d: Deferred[None] = deferToThreadPool(self._reactor, self._pool, self._transaction, work)
        # Probing may take longer than a request (it may create tables), but
        # it must still end so that the next probe can start.
        d.addTimeout(max(self._request_timeout, 5.0), self._reactor)
        self._probing = d
        d.addCallbacks(self._probe_succeeded, self._probe_failed)
        d.addBoth(self._probe_ended)

    def _probe_succeeded(self, _: object) -> None:
        if not self.available:
            self._log.info("database {name} available", name=self.name)
        self._set_state(True, "ok")

    def _probe_failed(self, failure: Failure) -> None:
        if failure.check(defer.TimeoutError):
            reason = "no answer while connecting"
        elif self._is_fault(_error(failure)):
            reason = _describe(_error(failure))
        else:
            # The database answered but preparing it failed (a permissions
            # or schema problem): not repaired by waiting, but a person may
            # fix it, so keep probing and say why.
            self._log.failure("preparing database {name}", failure, name=self.name)
            reason = f"cannot prepare the database: {_describe(_error(failure))}"
        if reason != self.reason or not self._probed_once:
            self._log.warn(
                "database {name} unavailable: {reason}; retrying every {interval} s",
                name=self.name, reason=reason, interval=self._retry_interval,
            )
        self._set_state(False, reason)

    def _set_state(self, available: bool, reason: str) -> None:
        changed = (available, reason) != (self.available, self.reason) or not self._probed_once
        self.available = available
        self.reason = reason
        if changed and self._on_state is not None:
            try:
                self._on_state(available, reason)
            except Exception:
                self._log.failure("reporting the state of database {name}", name=self.name)

    def _probe_ended(self, _: object) -> None:
        self._probing = None
        self._probed_once = True
        if not self.available:
            with self._lock:
                self._generation += 1
            self._schedule_probe()
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.callback(self.available)

    # -- in pool threads --------------------------------------------------

    def _transaction(self, work: Work[T]) -> T:
        generation, conn = self._take()
        try:
            cursor = conn.cursor()
            try:
                result = work(cursor)
            finally:
                cursor.close()
            conn.commit()
        except BaseException as e:
            if self._is_fault(e):
                _close_quietly(conn)
                raise
            try:
                conn.rollback()
            except BaseException:
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


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    return threading.Thread(*args, daemon=True, **kwargs)


def _select_one(cursor: Any) -> None:
    cursor.execute("SELECT 1")
    cursor.fetchall()


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - the connection is being thrown away
        pass


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
        return sqlite3.connect(path, timeout=busy_timeout, check_same_thread=False)

    return connect
