"""
The Redis Cluster client against a real 3-master cluster started per test.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.trial import unittest

from tests.support.rediscluster import RedisCluster as TestCluster
from tests.support.rediscluster import start_cluster
from webtesting import rediscluster
from webtesting.rediscluster import (
    ClusterError,
    NodeTimeout,
    NodeUnavailable,
    RedisCluster,
    RedisReplyError,
    key_slot,
)


def key_on(cluster: TestCluster, node: tuple[str, int], prefix: str = "k") -> str:
    """A key whose slot C{node} serves."""
    for i in range(100000):
        key = f"{prefix}{i}"
        if cluster.owner(key_slot(key)) == node:
            return key
    raise AssertionError(f"no key found for {node}")


class KeySlotTests(unittest.TestCase):
    """Slots computed here agree with Redis's own."""

    def test_known_value(self) -> None:
        """The slot of a key is CRC16/XMODEM of it modulo 16384."""
        self.assertEqual(key_slot("123456789"), 0x31C3 % 16384)
        self.assertEqual(key_slot(b"123456789"), key_slot("123456789"))

    def test_hash_tags(self) -> None:
        """Only a non-empty first {...} is hashed, as the cluster specification says."""
        self.assertEqual(key_slot("{user1000}.following"), key_slot("user1000"))
        self.assertEqual(key_slot("foo{}{bar}"), key_slot("foo{}{bar}"))
        self.assertNotEqual(key_slot("foo{}{bar}"), key_slot("bar"))
        self.assertEqual(key_slot("foo{{bar}}zap"), key_slot("{bar"))
        self.assertEqual(key_slot("foo{bar}{zap}"), key_slot("bar"))
        self.assertEqual(key_slot("wt:{1.00002:42}:tags"), key_slot("wt:{1.00002:42}:memory"))

    def test_agrees_with_server(self) -> None:
        """For plain, tagged, odd and non-ASCII keys the slot equals CLUSTER KEYSLOT of a real node."""
        cluster = start_cluster(self)
        keys = [
            "", "a", "foo", "123456789", "{user1000}.following", "foo{}{bar}", "foo{{bar}}zap",
            "foo{bar}{zap}", "{}", "}{", "{a", "a}", "wt:{1.00002:42}:tags", "用户{标签}", "键",
            *[f"key:{i}" for i in range(200)],
        ]
        node = cluster.nodes[0]
        for key in keys:
            self.assertEqual(key_slot(key), cluster.command(node, "CLUSTER", "KEYSLOT", key), key)


class ClusterClientTests(unittest.TestCase):
    """Routing, redirections and node failures against a real cluster."""

    def setUp(self) -> None:
        self.cluster = start_cluster(self)

    async def client(self, timeout: float = 2.0) -> RedisCluster:
        client = await rediscluster.connect(reactor, self.cluster.nodes[:1], timeout=timeout)
        self.addCleanup(client.disconnect)
        return client

    async def test_connect_reads_the_map(self) -> None:
        """Connecting through one seed finds all three masters and who serves each key."""
        client = await self.client()
        self.assertEqual(sorted(client.masters), sorted(self.cluster.nodes))
        for key in ("a", "b", "{x}y"):
            self.assertEqual(client.node_for(key), self.cluster.owner(key_slot(key)))

    async def test_connect_fails_naming_the_nodes(self) -> None:
        """When no seed answers, connecting fails with an error naming each node tried."""
        probe = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory())
        dead = probe.getHost().port
        await probe.stopListening()
        with self.assertRaises(ClusterError) as caught:
            await rediscluster.connect(reactor, [("127.0.0.1", dead)], timeout=1.0)
        self.assertIn(f"127.0.0.1:{dead}", str(caught.exception))
        self.assertIn("refused", str(caught.exception))

    async def test_execute_and_pipeline(self) -> None:
        """Commands reach the node of their key, and a pipeline answers in order with errors in place."""
        client = await self.client()
        keys = [key_on(self.cluster, node) for node in self.cluster.nodes]
        for i, key in enumerate(keys):
            self.assertEqual(await client.execute("SET", key, f"v{i}"), "OK")
            self.assertEqual(self.cluster.command(self.cluster.owner(key_slot(key)), "GET", key), f"v{i}")
        results = await client.pipeline(
            [("GET", keys[0]), ("HGETALL", keys[1]), ("GET", keys[2]), ("HSET", "h{t}", "f", 1),
             ("HGETALL", "h{t}"), ("GET", "missing"), ("PING",)]
        )
        self.assertEqual(results[0], "v0")
        self.assertIsInstance(results[1], RedisReplyError)
        self.assertIn("WRONGTYPE", str(results[1]))
        self.assertEqual(results[2:], ["v2", 1, ["f", "1"], None, "PONG"])
        with self.assertRaises(RedisReplyError):
            await client.execute("NOSUCHCOMMAND", "x")

    async def test_one_pipeline_per_node(self) -> None:
        """A pipeline of many keys is sent as exactly one batch to each node, in parallel."""
        client = await self.client()
        sends: list[tuple[tuple[str, int], int]] = []
        for address in client.masters:
            node = client._node(address)
            real = node.send

            def spy(commands: Any, real: Any = real, address: tuple[str, int] = address) -> Any:
                sends.append((address, len(commands)))
                return real(commands)

            node.send = spy  # type: ignore[method-assign]
        keys = [f"many:{i}" for i in range(300)]
        results = await client.pipeline([("SET", k, k) for k in keys] + [("GET", k) for k in keys])
        self.assertEqual(results, ["OK"] * 300 + keys)
        self.assertEqual(sorted(a for a, _ in sends), sorted(self.cluster.nodes))
        self.assertEqual(sum(n for _, n in sends), 600)

    async def test_bad_argument_fails_alone(self) -> None:
        """An argument that cannot be sent fails its own command and no other."""
        client = await self.client()
        results = await client.pipeline([("SET", "a", object()), ("SET", "a", "1"), ("GET", "a")])
        self.assertIsInstance(results[0], ClusterError)
        self.assertEqual(results[1:], ["OK", "1"])

    async def test_moved(self) -> None:
        """After a slot moves to another node, the client follows MOVED and updates its map."""
        client = await self.client()
        key = "moving{slot}"
        await client.execute("SET", key, "here")
        slot = key_slot(key)
        source = self.cluster.owner(slot)
        target = self.cluster.other(source)
        self.cluster.move_slot(slot, target)
        self.assertEqual(client.node_for(key), source)  # stale on purpose
        self.assertEqual(await client.execute("GET", key), "here")
        self.assertEqual(client.node_for(key), target)
        results = await client.pipeline([("GET", key), ("SET", key, "there"), ("GET", key)])
        self.assertEqual(results, ["here", "OK", "there"])

    async def test_prepared_and_scripts(self) -> None:
        """A Prepared command and a script call are routed by their key, MOVED included."""
        client = await self.client()
        key = "{prep}k"
        get = rediscluster.Prepared("GET", key)
        script = ("EVAL", "return redis.call('GET', KEYS[1])", 1, key)
        await client.execute("SET", key, "v")
        self.assertEqual(await client.pipeline([get, script, ("GET", key)]), ["v", "v", "v"])
        slot = key_slot(key)
        self.cluster.move_slot(slot, self.cluster.other(self.cluster.owner(slot)))
        self.assertEqual(await client.pipeline([get, script]), ["v", "v"])
        # A script with no keys goes to any master.
        self.assertEqual(await client.execute("EVAL", "return 7", 0), 7)

    async def test_ask_during_migration(self) -> None:
        """While a slot is migrating, moved keys are read from the new node via ASK, the rest from the old."""
        client = await self.client()
        moved, stays = "{mig}moved", "{mig}stays"
        await client.pipeline([("SET", moved, "1"), ("SET", stays, "2")])
        slot = key_slot(moved)
        target = self.cluster.other(self.cluster.owner(slot))
        source = self.cluster.begin_migration(slot, target)
        self.cluster.migrate_keys(slot, source, target, [moved])
        self.assertEqual(await client.execute("GET", moved), "1")
        self.assertEqual(await client.pipeline([("GET", stays), ("GET", moved), ("GET", stays)]),
                         ["2", "1", "2"])
        # ASK is a one-off: the map still says the old node.
        self.assertEqual(client.node_for(moved), source)
        self.cluster.finish_migration(slot, target)

    async def test_killed_master(self) -> None:
        """With one master killed, its keys get an error naming it while the other keys still work."""
        client = await self.client()
        victim = self.cluster.nodes[1]
        dead_key = key_on(self.cluster, victim, "dead")
        live_keys = [key_on(self.cluster, n, "live") for n in self.cluster.nodes if n != victim]
        await client.pipeline([("SET", k, k) for k in [dead_key, *live_keys]])
        self.cluster.kill(victim)
        for _ in range(2):  # the second time round the node is known to be down
            results = await client.pipeline([("GET", dead_key), *[("GET", k) for k in live_keys]])
            self.assertIsInstance(results[0], NodeUnavailable)
            self.assertEqual(results[0].node, victim)
            self.assertIn(f"{victim[0]}:{victim[1]}", str(results[0]))
            self.assertEqual(results[1:], live_keys)
        with self.assertRaises(NodeUnavailable):
            await client.execute("GET", dead_key)

    async def test_frozen_node_times_out(self) -> None:
        """A frozen master makes its commands fail after the timeout while the others answer."""
        client = await self.client(timeout=0.5)
        victim = self.cluster.nodes[2]
        frozen_key = key_on(self.cluster, victim, "frozen")
        live_key = key_on(self.cluster, self.cluster.nodes[0], "live")
        await client.pipeline([("SET", frozen_key, "x"), ("SET", live_key, "y")])
        self.cluster.freeze(victim)
        self.addCleanup(self.cluster.thaw, victim)
        started = time.monotonic()
        results = await client.pipeline([("GET", frozen_key), ("GET", live_key)])
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertIsInstance(results[0], NodeTimeout)
        self.assertIn(f"{victim[0]}:{victim[1]}", str(results[0]))
        self.assertEqual(results[1], "y")
        # Right after, the node is given up on for a while: fail fast.
        started = time.monotonic()
        with self.assertRaises(NodeUnavailable):
            await client.execute("GET", frozen_key)
        self.assertLess(time.monotonic() - started, 0.4)
        self.cluster.thaw(victim)
        await _sleep(1.1)  # past retry_interval: the node is tried again
        self.assertEqual(await client.execute("GET", frozen_key), "x")

    async def test_disconnect(self) -> None:
        """After disconnect every call fails with a clear error and no connection stays open."""
        client = await rediscluster.connect(reactor, self.cluster.nodes)
        await client.pipeline([("SET", key_on(self.cluster, n), "1") for n in self.cluster.nodes])
        await client.disconnect()
        with self.assertRaises(ClusterError) as caught:
            await client.execute("GET", "a")
        self.assertIn("disconnected", str(caught.exception))


def _sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]
