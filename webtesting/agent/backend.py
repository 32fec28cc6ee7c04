"""
One service's backends at the agent: its Redis Cluster and its MySQL (the
users' state), connected from the settings of an ``agentInfoReq`` and kept
connected, and the round of health checks of the whole service (WxService,
every Redis master, MySQL) that L{webtesting.agent.health.HealthMonitor} runs.

The Redis Cluster connection is a L{webtesting.lifecycle.Lifecycle} with a
L{webtesting.lifecycle.DeferredDialer}: its backoff retries a cluster whose
map cannot be read, and a check that finds every master down counts as the
connection lost (it is made again from the seeds). MySQL is a
L{webtesting.dbpool.Database}, which keeps itself connected; when it comes
back, the tag/topic text cache forgets its failures so that descriptions are
filled in again at the next poll.

The reading is L{webtesting.agent.statereader}'s, the differences L{webtesting.agent.snapshot}'s.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from webtesting import dbpool, rediscluster
from webtesting.agent import wxservice
from webtesting.agent.health import Finding
from webtesting.agent.statereader import Dictionary, ReadError, StateReader
from webtesting.agent.status import StatusPoller
from webtesting.lifecycle import Backoff, DeferredDialer, Fault, Health, Lifecycle, Reason
from webtesting.statelayout import StateLayout

DEFAULT_BACKOFF = Backoff(initial=0.5, maximum=4.0)

# on_health(part, ok, why): something noticed without a check (a sign, not a verdict).
Signs = Callable[[str, bool, str], None]


def _ranges(ranges: Sequence[tuple[int, int]]) -> str:
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges)


class ServiceState:
    """
    The L{webtesting.agent.server.StateSource} of one service: a
    L{StatusPoller} over a L{StateReader} whose store is this object, so that
    a read while Redis is not connected answers each user with the reason
    instead of waiting for a connection.
    """

    _log = Logger()

    def __init__(
        self,
        service: dict[str, Any],
        reactor: Any,
        layout: StateLayout,
        on_health: Signs,
        *,
        timeout: float = 2.0,
        backoff: Backoff = DEFAULT_BACKOFF,
        poll_interval: float = 1.0,
        watch_ping: tuple[float, float] | None = None,
    ) -> None:
        self._reactor = reactor
        self._watch_ping = watch_ping
        self._layout = layout
        self._signs = on_health
        self._timeout = timeout
        self._nodes = [(n["host"], int(n["port"])) for n in service["redisCluster"]]
        self._service_id = service["serviceId"]
        self._closed = False
        self._watch: wxservice.WxServiceConnection | None = None
        self._redis_tried: Deferred[None] = Deferred()  # fires when the first attempt ended
        self.db = dbpool.Database(
            f"bot MySQL of service {self._service_id}",
            dbpool.mysql_connector(
                service["mysqlAddr"], service["mysqlPort"], service["mysqlUser"], service["mysqlPwd"],
                service["mysqlDbname"], connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout,
            ),
            reactor,
            is_fault=dbpool.mysql_is_fault,
            threads=2,
            request_timeout=timeout,
            retry_interval=backoff.initial,
            on_state=self._mysql_state,
        )
        self.dictionary = Dictionary(self.db, layout, reactor, timeout=timeout, retry_interval=backoff.initial)
        self.redis = Lifecycle(f"Redis Cluster of service {self._service_id}", self._redis_health)
        self._dialer: DeferredDialer[rediscluster.RedisCluster] = DeferredDialer(
            self.redis, self._open_redis, _classify_redis, clock=reactor, backoff=backoff,
            close=lambda cluster: cluster.disconnect(),
        )
        reader = StateReader(self, self.dictionary, layout, reactor, timeout=timeout)
        self.poller = StatusPoller(reader, reactor, interval=poll_interval)
        # What the link uses: watch, unwatch, set_auto, current.
        self.watch = self.poller.watch
        self.unwatch = self.poller.unwatch
        self.set_auto = self.poller.set_auto
        self.current = self.poller.current
        self.db.startService()
        self.poller.start()
        self.redis.start()

    @property
    def cluster(self) -> rediscluster.RedisCluster | None:
        return self._dialer.connection if self.redis.is_up else None

    # -- signs ---------------------------------------------------------------

    def _mysql_state(self, available: bool, reason: str) -> None:
        if self._closed:
            return  # replaced by a newer source: its word is the one that counts
        if available:
            # Texts that failed while MySQL was away are asked again now.
            self.dictionary.refresh()
        self._signs("mysql", available, "ok" if available else f"bot MySQL unreachable: {reason}")

    def _redis_health(self, health: Health) -> None:
        if not self._redis_tried.called:
            self._redis_tried.callback(None)
        if not self._closed:
            self._signs("redis", health.up, health.msg)

    def _open_redis(self) -> Deferred[rediscluster.RedisCluster]:
        return rediscluster.connect(self._reactor, self._nodes, timeout=self._timeout)

    # -- the reader's store -------------------------------------------------------

    def pipeline(self, commands: Any) -> Deferred[list[Any]]:
        cluster = self.cluster
        if cluster is None:
            return defer.fail(ReadError(self.redis.health.msg))
        d = cluster.pipeline(commands)

        def signs(results: list[Any]) -> list[Any]:
            if any(isinstance(r, rediscluster.NodeUnavailable) for r in results):
                self._signs("redis", False, "a read failed")
            return results

        return d.addCallback(signs)

    # -- health checks ------------------------------------------------------------

    def check(self, wx_url: str) -> Deferred[Sequence[Finding]]:
        """
        Ask the WxService, every Redis master and MySQL at once; one
        L{Finding} each. The first round waits (for at most the timeout) for
        the first connection attempts to end, so that "still connecting" is
        never reported as down.
        """
        return defer.ensureDeferred(self._check(wx_url))

    async def _check(self, wx_url: str) -> Sequence[Finding]:
        first: Deferred[Any] = defer.DeferredList([_waiter(self._redis_tried), self.db.ready()],
                                                  consumeErrors=True)
        first.addTimeout(self._timeout, self._reactor)
        with contextlib.suppress(defer.TimeoutError):
            await first
        parts = [self._check_wxservice(wx_url), self._check_redis(), self._check_mysql()]
        return await defer.gatherResults(parts, consumeErrors=True)

    def _check_wxservice(self, url: str) -> Deferred[Finding]:
        # The check's connection stays open until the next check: if it
        # drops in between (the bot died), the monitor hears it at once.
        self._unwatch()
        d = wxservice.watch(self._reactor, url, self._bot_gone, self._timeout, ping=self._watch_ping)

        def opened(conn: wxservice.WxServiceConnection) -> Finding:
            if self._closed:
                conn.abort()
            else:
                self._watch = conn
            return Finding("wxservice", True)

        def failed(failure: Failure) -> Finding:
            e = failure.value
            if isinstance(e, ValueError):
                return Finding("wxservice", False, "bot_address_invalid", f"WxService address not usable: {e}")
            if isinstance(e, wxservice.WxServiceUnavailable):
                return Finding("wxservice", False, e.code, f"WxService unreachable: {e}")
            return Finding("wxservice", False, "bot_unreachable", f"WxService unreachable: {failure.getErrorMessage()}")

        return d.addCallbacks(opened, failed)

    def _bot_gone(self, reason: str) -> None:
        self._watch = None
        if not self._closed:
            self._signs("wxservice", False, f"the bot's connection closed: {reason}")

    def _unwatch(self) -> None:
        if self._watch is not None:
            conn, self._watch = self._watch, None
            conn.abort()  # nothing to say to the bot: no closing handshake, no timers

    def _check_redis(self) -> Deferred[Finding]:
        return defer.ensureDeferred(self._redis_finding())

    async def _redis_finding(self) -> Finding:
        cluster = self.cluster
        if cluster is None:
            return Finding("redis", False, "redis_unreachable", self.redis.health.msg)
        # The masters now (after a failover, say); when no node answers,
        # every PING below says so.
        with contextlib.suppress(rediscluster.ClusterError):
            await cluster.refresh()
        ranges = cluster.slot_ranges()
        masters = cluster.masters
        # consumeErrors: a check cancelled on stop must not leave unhandled failures.
        replies = await defer.gatherResults([cluster.ping(m) for m in masters], consumeErrors=True)
        down = [(m, r) for m, r in zip(masters, replies, strict=False) if isinstance(r, Exception)]
        if not down:
            return Finding("redis", True)
        if len(down) == len(masters) and cluster is self.cluster:
            # Nothing answers: start over from the seeds, with backoff.
            self._dialer.forget()
            cluster.disconnect()
            why = f"Redis Cluster unreachable: every master is down ({down[0][1]})"
            self.redis.lost(Reason("redis_unreachable", why))
            return Finding("redis", False, "redis_unreachable", why)
        parts = []
        for (host, port), error in down:
            reason = getattr(error, "reason", str(error))
            parts.append(f"{host}:{port} (slots {_ranges(ranges.get((host, port), []))}): {reason}")
        code = "redis_partial" if len(down) < len(masters) else "redis_unreachable"
        return Finding("redis", False, code, "Redis Cluster nodes unavailable: " + "; ".join(parts))

    def _check_mysql(self) -> Deferred[Finding]:
        d: Deferred[Any] = defer.maybeDeferred(self.db.run, _select_one)
        d.addTimeout(self._timeout, self._reactor)

        def failed(failure: Failure) -> Finding:
            if failure.check(defer.TimeoutError):
                why = f"no answer within {self._timeout:g} s"
            else:
                why = failure.getErrorMessage()
            return Finding("mysql", False, "mysql_unreachable", f"bot MySQL unreachable: {why}")

        return d.addCallbacks(lambda _: Finding("mysql", True), failed)

    # -- end --------------------------------------------------------------------

    def close(self) -> Deferred[None]:
        self._closed = True
        self._unwatch()
        cluster = self._dialer.connection
        self._dialer.forget()  # closed here, to wait for it
        self.redis.stop()  # cancels an attempt or a retry
        closing = [self.poller.stop(), self.db.stopService()]
        if cluster is not None:
            closing.append(cluster.disconnect())
        d = defer.gatherResults(closing, consumeErrors=True)
        d.addErrback(lambda f: self._log.failure("closing service {service_id}'s state source", f,
                                                 service_id=self._service_id))
        return d.addCallback(lambda _: None)


def _waiter(d: Deferred[None]) -> Deferred[None]:
    """A Deferred that fires when C{d} has (C{d} itself is left alone)."""
    if d.called:
        return defer.succeed(None)
    w: Deferred[None] = Deferred()

    def fire(result: Any) -> Any:
        w.callback(None)
        return result

    d.addBoth(fire)
    return w


def _select_one(cursor: Any) -> None:
    cursor.execute("SELECT 1")
    cursor.fetchall()


def _classify_redis(failure: Failure) -> Reason:
    text = failure.getErrorMessage()
    if failure.check(rediscluster.ClusterError) and "no Redis Cluster nodes" in text:
        return Reason("redis_unreachable", f"Redis Cluster not usable: {text}", Fault.UNUSABLE)
    return Reason("redis_unreachable", f"Redis Cluster unreachable: {text}")


def state_source_factory(
    timeout: float = 2.0, retry_interval: float = 0.5, retry_max: float = 4.0,
    watch_ping: tuple[float, float] | None = None,
) -> Any:
    """
    A L{webtesting.agent.server.StateSourceFactory} making L{ServiceState}s.

    @param retry_interval: the first delay before Redis or MySQL is tried again.
    @param retry_max: the longest one.
    @param watch_ping: (interval, timeout) of the ping on the connection the
        health check keeps open to the bot: a frozen bot is noticed within
        their sum, and then every user's connection is asked for a pong.
    """
    backoff = Backoff(initial=retry_interval, maximum=max(retry_max, retry_interval))

    def make(
        service: dict[str, Any], reactor: Any, layout: StateLayout, on_health: Signs, poll_interval: float
    ) -> ServiceState:
        return ServiceState(service, reactor, layout, on_health, timeout=timeout,
                            backoff=backoff, poll_interval=poll_interval, watch_ping=watch_ping)

    return make
