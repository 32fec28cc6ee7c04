"""
The reference bot's Redis Cluster: L{StateStore}, the small interface the bot
writes user state through (C{execute} and C{pipeline}); L{ClusterStore}, the
real one, kept connected to the configured cluster by a L{Lifecycle}; and
L{UidAllocator}, one stable C{uid} per (appid, uname).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from webtesting.lifecycle import Backoff, DeferredDialer, Health, Lifecycle, Reason
from webtesting.wxsim.config import RedisConfig


class StoreUnavailable(Exception):
    """The bot's Redis Cluster cannot be reached now."""


class StateStore(Protocol):
    """Where the bot writes user state: enough of a Redis Cluster client."""

    def execute(self, *args: Any) -> Deferred[Any]:
        """Run one command, routed by its key (C{args[1]})."""

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> Deferred[list[Any]]:
        """Run commands of one hash slot together; failures come back in place."""


class ClusterStore(service.Service):
    """
    The bot's Redis Cluster, via L{webtesting.rediscluster}, kept connected
    by a L{Lifecycle}: an attempt is one C{rediscluster.connect}, retried
    every C{retry_interval} seconds (spread by 10%) until it works. Until
    then every call fails at once with L{StoreUnavailable}. Once connected,
    the cluster client itself reconnects single nodes and follows failovers.

    The client gives every batch a deadline of C{timeout} seconds; a call
    that still has no answer after twice that (a redirect, a retry after a
    failover) fails here with a timeout, as a backstop.
    """

    _log = Logger()

    def __init__(
        self,
        config: RedisConfig,
        reactor: Any,
        connect: Callable[..., Deferred[Any]] | None = None,
    ) -> None:
        self._nodes = [(n.host, n.port) for n in config.nodes]
        self._timeout = config.timeout
        self._reactor = reactor
        self._connect = connect or _cluster_connect
        self._client: Any = None
        # Attempts and disconnects still under way: stopping waits for them,
        # so that nothing is left open behind a stopped bot.
        self._pending: set[Deferred[Any]] = set()
        self.lifecycle = Lifecycle(
            f"Redis Cluster {_nodes_text(self._nodes)}", self._health,
            initial=Health(False, "redis_unreachable", "not connected yet"),
        )
        self._dialer: DeferredDialer[Any] = DeferredDialer(
            self.lifecycle, self._attempt, self._classify, clock=reactor,
            backoff=Backoff(initial=config.retry_interval, maximum=config.retry_interval, factor=1.0, jitter=0.1),
            on_open=self._opened, close=self._close,
        )

    @property
    def available(self) -> bool:
        return self.lifecycle.is_up

    @property
    def reason(self) -> str:
        return self.lifecycle.health.msg

    @property
    def failures(self) -> int:
        """Failed attempts since the cluster was last connected."""
        return self.lifecycle.failures

    def startService(self) -> None:
        super().startService()
        self.lifecycle.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.lifecycle.stop()  # cancels the attempt or timer, closes the client
        self._client = None
        pending = list(self._pending)
        return defer.DeferredList(pending).addCallback(lambda _: None)

    def _health(self, health: Health) -> None:
        # The lifecycle logs the change (quietly while down).
        if not health.up:
            self._client = None

    def _attempt(self) -> Deferred[Any]:
        """One connection attempt; cancelling it closes whatever it still opens."""
        # maybeDeferred: whatever goes wrong is one failed attempt, retried.
        inner: Deferred[Any] = defer.maybeDeferred(self._connect, self._reactor, self._nodes, timeout=self._timeout)
        self._pending.add(inner)
        outer: Deferred[Any] = Deferred(lambda _: None)

        def settled(result: Any) -> Any:
            if outer.called:  # cancelled: an attempt given up on that still connected
                if not isinstance(result, Failure):
                    return self._close(result)
                return None
            if isinstance(result, Failure):
                outer.errback(result)
            else:
                outer.callback(result)
            return None

        inner.addBoth(settled)
        inner.addErrback(lambda f: self._log.failure("connecting to Redis", f))
        inner.addBoth(lambda _: self._pending.discard(inner))
        return outer

    def _classify(self, failure: Failure) -> Reason:
        return Reason("redis_unreachable", reason_text(failure.value))

    def _opened(self, client: Any) -> None:
        self._client = client

    def _close(self, client: Any) -> Deferred[None]:
        if client is self._client:
            self._client = None
        d: Deferred[Any] = defer.maybeDeferred(client.disconnect)
        d.addErrback(lambda f: self._log.failure("disconnecting from Redis", f))
        self._pending.add(d)
        d.addBoth(lambda _: self._pending.discard(d))
        return d.addCallback(lambda _: None)

    def execute(self, *args: Any) -> Deferred[Any]:
        if self._client is None:
            return defer.fail(StoreUnavailable(f"Redis Cluster unavailable: {self.reason}"))
        d: Deferred[Any] = self._client.execute(*args)
        return d.addTimeout(self._timeout * 2 + 0.5, self._reactor)

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> Deferred[list[Any]]:
        if self._client is None:
            return defer.fail(StoreUnavailable(f"Redis Cluster unavailable: {self.reason}"))
        d: Deferred[list[Any]] = self._client.pipeline(commands)
        return d.addTimeout(self._timeout * 2 + 0.5, self._reactor)


def _cluster_connect(reactor: Any, nodes: Sequence[tuple[str, int]], *, timeout: float) -> Deferred[Any]:
    from webtesting import rediscluster  # type: ignore[attr-defined,unused-ignore]

    d: Deferred[Any] = rediscluster.connect(reactor, nodes, timeout=timeout)
    return d


def _nodes_text(nodes: Sequence[tuple[str, int]]) -> str:
    return ",".join(f"{h}:{p}" for h, p in nodes)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class UidAllocator:
    """
    One uid per (appid, uname), the same at every login: a hash per appid
    (C{uid_map_key}) maps uname -> uid; new unames take the next value of a
    counter (C{uid_counter_key}). C{HSETNX} makes two simultaneous first
    logins of one uname agree.
    """

    def __init__(self, store: StateStore, config: RedisConfig) -> None:
        self._store = store
        self._counter_key = config.uid_counter_key
        self._map_key = config.uid_map_key

    async def uid_for(self, appid: str, uname: str) -> str:
        key = self._map_key.format(appid=appid)
        existing = await self._store.execute("HGET", key, uname)
        if existing is not None:
            return _text(existing)
        number = await self._store.execute("INCR", self._counter_key)
        await self._store.execute("HSETNX", key, uname, _text(number))
        final = await self._store.execute("HGET", key, uname)
        if final is None:
            raise StoreUnavailable(f"uid of {uname!r} vanished from {key}")
        return _text(final)


def reason_text(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    if isinstance(error, defer.TimeoutError):
        return "no answer in time"
    return str(error) or type(error).__name__
