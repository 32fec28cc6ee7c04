"""
One service's user-state source at the agent: its Redis Cluster and its
MySQL, connected from the settings of an ``agentInfoReq``, kept connected,
and their health reported (``on_health("redis" | "mysql", ok, why)``).

The reading and the differences are L{webtesting.agent.status}'s; this
module owns the connections and their retries.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from webtesting import dbpool, rediscluster
from webtesting.agent.status import Dictionary, ReadError, StateReader, StatusPoller
from webtesting.statelayout import StateLayout

Health = Callable[[str, bool, str], None]


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
        on_health: Health,
        *,
        timeout: float = 2.0,
        retry_interval: float = 2.0,
        poll_interval: float = 1.0,
    ) -> None:
        self._reactor = reactor
        self._layout = layout
        self._on_health = on_health
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._nodes = [(n["host"], int(n["port"])) for n in service["redisCluster"]]
        self._service_id = service["serviceId"]
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
            retry_interval=retry_interval,
            on_state=self._mysql_state,
        )
        self.dictionary = Dictionary(self.db, layout, reactor, timeout=timeout, retry_interval=retry_interval)
        self.cluster: rediscluster.RedisCluster | None = None
        reader = StateReader(self, self.dictionary, layout, reactor, timeout=timeout)
        self.poller = StatusPoller(reader, reactor, interval=poll_interval)
        # What the link uses: watch, unwatch, set_auto, current.
        self.watch = self.poller.watch
        self.unwatch = self.poller.unwatch
        self.set_auto = self.poller.set_auto
        self.current = self.poller.current
        self._redis_reason = "connecting to the Redis Cluster"
        self._redis_ok: bool | None = None
        self._connecting: Deferred[Any] | None = None
        self._retry: Any = None
        self._closed = False
        self.db.startService()  # may report at once: _closed must exist first
        self.poller.start()
        self._connect()

    # -- health ------------------------------------------------------------

    def _mysql_state(self, available: bool, reason: str) -> None:
        if self._closed:
            return  # replaced by a newer source: its word is the one that counts
        self._on_health("mysql", available, "ok" if available else f"bot MySQL unreachable: {reason}")

    def _redis_state(self, ok: bool, why: str) -> None:
        if self._closed:
            return
        if (ok, why) == (self._redis_ok, self._redis_reason):
            return
        self._redis_ok, self._redis_reason = ok, why
        self._on_health("redis", ok, "ok" if ok else why)

    # -- Redis --------------------------------------------------------------

    def _connect(self) -> None:
        self._retry = None
        d = rediscluster.connect(self._reactor, self._nodes, timeout=self._timeout)
        self._connecting = d
        d.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, cluster: rediscluster.RedisCluster) -> None:
        self._connecting = None
        if self._closed:
            cluster.disconnect()
            return
        self.cluster = cluster
        self._log.info("service {service_id}: Redis Cluster connected", service_id=self._service_id)
        self._redis_state(True, "ok")

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        if self._closed or failure.check(defer.CancelledError):
            return
        self._redis_state(False, f"Redis Cluster unreachable: {failure.getErrorMessage()}")
        self._retry = self._reactor.callLater(self._retry_interval, self._connect)

    # -- the reader's store -------------------------------------------------------

    def pipeline(self, commands: Any) -> Deferred[list[Any]]:
        if self.cluster is None:
            return defer.fail(ReadError(self._redis_reason))
        d = self.cluster.pipeline(commands)

        def health(results: list[Any]) -> list[Any]:
            down = [r for r in results if isinstance(r, rediscluster.NodeUnavailable)]
            if results and len(down) == len(results):
                self._redis_state(False, f"Redis Cluster unreachable: {down[0]}")
            elif len(down) < len(results):
                self._redis_state(True, "ok")
            return results

        return d.addCallback(health)

    def close(self) -> Deferred[None]:
        self._closed = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        # A connect under way is disconnected when it completes (_connected).
        closing = [self.poller.stop(), self.db.stopService()]
        if self.cluster is not None:
            closing.append(self.cluster.disconnect())
        d = defer.gatherResults(closing, consumeErrors=True)
        d.addErrback(lambda f: self._log.failure("closing service {service_id}'s state source", f,
                                                 service_id=self._service_id))
        return d.addCallback(lambda _: None)


def state_source_factory(timeout: float = 2.0, retry_interval: float = 2.0) -> Any:
    """A L{webtesting.agent.server.StateSourceFactory} making L{ServiceState}s."""

    def make(
        service: dict[str, Any], reactor: Any, layout: StateLayout, on_health: Health, poll_interval: float
    ) -> ServiceState:
        return ServiceState(service, reactor, layout, on_health, timeout=timeout,
                            retry_interval=retry_interval, poll_interval=poll_interval)

    return make
