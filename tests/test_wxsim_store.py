"""
The reference bot's Redis connection (ClusterStore) on its lifecycle, driven
by a Clock and a fake connect function.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from webtesting.wxsim.config import RedisConfig, RedisNodeConfig
from webtesting.wxsim.store import ClusterStore, StoreUnavailable

RETRY = 2.0


class FakeCluster:
    """Fake enough of a connected RedisCluster for ClusterStore: answers commands, records disconnects."""

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []
        self.disconnected = 0

    def execute(self, *args: Any) -> Deferred[Any]:
        self.commands.append(args)
        return defer.succeed("OK")

    def pipeline(self, commands: Any) -> Deferred[list[Any]]:
        return defer.succeed(["OK" for _ in commands])

    def disconnect(self) -> Deferred[None]:
        self.disconnected += 1
        return defer.succeed(None)


class Connects:
    """Fake enough of rediscluster.connect: each call is an attempt the test ends."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []

    def __call__(self, reactor: Any, nodes: Any, *, timeout: float) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d

    def fail(self, why: str = "Connection refused") -> None:
        self.pending.pop(0).errback(Failure(ConnectionRefusedError(why)))

    def succeed(self, cluster: Any) -> None:
        self.pending.pop(0).callback(cluster)


class ClusterStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.connects = Connects()
        config = RedisConfig(nodes=[RedisNodeConfig("127.0.0.1", 7000)], timeout=1.0, retry_interval=RETRY)
        self.store = ClusterStore(config, self.clock, connect=self.connects)
        self.store._dialer._rand = lambda: 0.5  # no jitter: retries exactly RETRY apart

    def tearDown(self) -> None:
        if self.store.running:
            self.successResultOf(self.store.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unreachable_then_connected(self) -> None:
        """While Redis is unreachable calls fail at once saying why; it retries every retry_interval and then serves."""
        self.store.startService()
        self.connects.fail()
        failure = self.failureResultOf(self.store.execute("GET", "k"), StoreUnavailable)
        self.assertIn("Connection refused", str(failure.value))
        self.assertEqual(self.store.lifecycle.health.code, "redis_unreachable")
        self.assertEqual(self.connects.pending, [])
        self.clock.advance(RETRY)
        self.connects.fail()
        self.assertEqual(self.store.failures, 2)
        self.clock.advance(RETRY)
        cluster = FakeCluster()
        self.connects.succeed(cluster)
        self.assertTrue(self.store.available)
        self.assertEqual(self.successResultOf(self.store.execute("GET", "k")), "OK")
        self.assertEqual(cluster.commands, [("GET", "k")])
        self.assertEqual(self.store.failures, 0)

    def test_long_outage_logs_rarely(self) -> None:
        """Thirty failed attempts with one reason log four lines: the first, the tenth, the twentieth and the
        thirtieth."""
        with capturedLogs() as events:
            self.store.startService()
            for i in range(30):
                if i:
                    self.clock.advance(RETRY)
                self.connects.fail()
        lines = [e for e in events if "down" in e.get("log_format", "")]
        self.assertEqual([e["attempt"] for e in lines], [1, 10, 20, 30])

    def test_stop_while_up_disconnects(self) -> None:
        """Stopping a connected store disconnects the client, and later calls fail at once."""
        self.store.startService()
        cluster = FakeCluster()
        self.connects.succeed(cluster)
        self.successResultOf(self.store.stopService())
        self.assertEqual(cluster.disconnected, 1)
        self.failureResultOf(self.store.execute("GET", "k"), StoreUnavailable)

    def test_stop_during_attempt_closes_a_late_connection(self) -> None:
        """Stopping while an attempt is under way waits for it and disconnects what it still opens."""
        self.store.startService()
        stopped = self.store.stopService()
        self.assertNoResult(stopped)
        cluster = FakeCluster()
        self.connects.succeed(cluster)
        self.successResultOf(stopped)
        self.assertEqual(cluster.disconnected, 1)
        self.assertFalse(self.store.available)

    def test_stop_while_backing_off_cancels_the_retry(self) -> None:
        """Stopping between attempts cancels the retry timer and makes no more attempts."""
        self.store.startService()
        self.connects.fail()
        self.successResultOf(self.store.stopService())
        self.clock.advance(RETRY * 10)
        self.assertEqual(self.connects.pending, [])

    def test_synchronous_failure_is_retried(self) -> None:
        """A connect function that raises at once is one failed attempt, retried."""
        calls: list[int] = []

        def broken(reactor: Any, nodes: Any, *, timeout: float) -> Deferred[Any]:
            calls.append(1)
            raise OSError("no route")

        store = ClusterStore(RedisConfig(retry_interval=RETRY), self.clock, connect=broken)
        store.startService()
        self.clock.advance(RETRY * 1.2)
        self.assertEqual(len(calls), 2)
        self.assertIn("no route", store.reason)
        self.successResultOf(store.stopService())
