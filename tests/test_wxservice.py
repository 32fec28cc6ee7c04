"""
The WxService protocol end to end over real loopback sockets: the reference
bot (webtesting.wxsim) against the agent's adapter (webtesting.agent.wxservice),
writing to a real Redis Cluster and a real MariaDB.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from tests.support import mariadb
from webtesting.agent import wxservice
from webtesting.agent.wxservice import WxServiceConnection, WxServiceError
from webtesting.config import from_mapping
from webtesting.statelayout import StateLayout
from webtesting.wxsim import tap
from webtesting.wxsim.bot import (
    TAG_DICT,
    TAG_GREETED,
    TAG_TOLD_NAME,
    TOPIC_DICT,
    TOPIC_GREETINGS,
    TOPIC_WEATHER,
    memory_from_reply,
)
from webtesting.wxsim.config import WxsimConfig

FOLLOWUP_DELAY = 0.2


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll C{predicate} every 10 ms until it holds; fail naming C{what} after C{timeout}."""
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await task.deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


class Recorder:
    """A WxServiceListener that keeps everything it is told."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []
        self.errors: list[WxServiceError] = []
        self.lost: list[str] = []

    def bot_message(self, content: str, action: str) -> None:
        self.messages.append((content, action))

    def bot_error(self, error: WxServiceError) -> None:
        self.errors.append(error)

    def connection_lost(self, reason: str) -> None:
        self.lost.append(reason)


class RawClient(WebSocketClientProtocol):
    """A misbehaving client: sends whatever frames a test gives it, keeps every answer."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict[str, Any]] = []
        self.done = False

    def onOpen(self) -> None:
        self.factory.opened.callback(self)  # type: ignore[attr-defined]

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append(json.loads(payload.decode("utf-8")))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.done = True
        if not self.factory.closed.called:  # type: ignore[attr-defined]
            self.factory.closed.callback(code)  # type: ignore[attr-defined]


class WxServiceTests(TestCase):
    timeout = 60

    async def start_bot(self, redis_nodes: list[tuple[str, int]] | None = None, **overrides: Any) -> int:
        """
        Start the bot on a free loopback port with its own database and (unless
        C{redis_nodes} are given) a Redis Cluster of its own; return the port.
        """
        self.database = mariadb.temporary_database(self, "wt_wxsim")
        wait_redis = redis_nodes is None
        if redis_nodes is None:
            redis_nodes = self.redis_nodes()
        raw: dict[str, Any] = {
            "websocket": {"listen": "tcp:0:interface=127.0.0.1"},
            "mysql": {"host": mariadb.HOST, "port": mariadb.PORT, "user": mariadb.USER,
                      "password": mariadb.PASSWORD, "database": self.database},
            "redis": {"nodes": [{"host": h, "port": p} for h, p in redis_nodes], "retry_interval": 0.2},
            "bot": {"followup_delay": FOLLOWUP_DELAY},
        }
        for section, values in overrides.items():
            raw.setdefault(section, {}).update(values)
        self.config = from_mapping(WxsimConfig, raw)
        self.bot = tap.makeService(tap.Options.loaded(self.config), reactor)
        self.bot.startService()
        self.addCleanup(lambda: self.bot.stopService() if self.bot.running else None)
        port = await self.bot.getServiceNamed("websocket").listening()  # type: ignore[attr-defined]
        self.assertTrue(await self.bot.getServiceNamed("mysql").ready(),  # type: ignore[attr-defined]
                        "the bot could not prepare its MariaDB database")
        redis = self.bot.getServiceNamed("redis")
        if wait_redis:
            await wait_until(lambda: redis.available,  # type: ignore[attr-defined]
                             "the bot to connect to the Redis Cluster")
        self.port = port.getHost().port
        return self.port

    def redis_nodes(self) -> list[tuple[str, int]]:
        """Start a real 3-master Redis Cluster for this test; its master nodes."""
        from tests.support.rediscluster import start_cluster

        self.cluster = start_cluster(self)
        self.cluster_nodes: list[tuple[str, int]] = list(self.cluster.nodes)
        return self.cluster_nodes

    async def connect(self, recorder: Recorder | None = None) -> tuple[WxServiceConnection, Recorder]:
        recorder = recorder or Recorder()
        conn = await wxservice.connect(reactor, f"ws://127.0.0.1:{self.port}/5.00034", recorder)
        self.addCleanup(conn.close)
        return conn, recorder

    async def test_connections_share_a_factory(self) -> None:
        """Users of one bot share one lean factory (no per-user factory, no copied options), each with its own
        listener; a user whose connection ends leaves the others alone."""
        await self.start_bot()
        (first, one), (second, two) = await self.connect(), await self.connect()
        self.assertIs(first._protocol.factory, second._protocol.factory)
        self.assertNotIn("maxMessagePayloadSize", vars(first._protocol))
        await first.login("1.00002", "ann")
        await first.close()
        self.assertTrue(second.open)
        await second.login("1.00002", "bob")
        second.chat("my name is Bob")
        await wait_until(lambda: two.messages, "the second user's answer")
        self.assertEqual(one.messages, [])

    async def raw(self) -> RawClient:
        factory = WebSocketClientFactory(f"ws://127.0.0.1:{self.port}/5.00034", reactor=reactor)
        factory.protocol = RawClient
        factory.opened = Deferred()  # type: ignore[attr-defined]
        factory.closed = Deferred()  # type: ignore[attr-defined]
        await TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(factory)  # type: ignore[arg-type]
        client: RawClient = await factory.opened  # type: ignore[attr-defined]

        def close() -> Deferred[Any]:
            if not client.done and client.state == client.STATE_OPEN:
                client.sendClose()
            return factory.closed  # type: ignore[attr-defined, no-any-return]

        self.addCleanup(close)
        return client

    async def send_raw(self, client: RawClient, payload: bytes, binary: bool = False) -> dict[str, Any]:
        before = len(client.received)
        client.sendMessage(payload, isBinary=binary)
        await wait_until(lambda: len(client.received) > before, "an answer")
        return client.received[-1]

    # -- tests --------------------------------------------------------------

    async def test_login_chat_logout(self) -> None:
        """A user logs in, chats, gets the answer and the unprompted follow-up, and logs out."""
        await self.start_bot()
        conn, recorder = await self.connect()
        uid = await conn.login("1.00002", "alice")
        self.assertTrue(uid)
        conn.chat("hello, my name is Alice")
        await wait_until(lambda: len(recorder.messages) >= 1, "the answer")
        self.assertEqual(recorder.messages[0], ("Nice to meet you, Alice!", "remember"))
        conn.chat("what's the weather like?")
        await wait_until(lambda: len(recorder.messages) >= 3, "the answer and the follow-up")
        self.assertEqual([a for _, a in recorder.messages], ["remember", "topic", "followUp"])
        await conn.logout()
        self.assertIsNone(conn.uid)
        self.assertEqual(recorder.errors, [])

    async def test_follow_up_dropped_at_logout(self) -> None:
        """An unprompted message still pending when the user logs out is never sent."""
        await self.start_bot(bot={"followup_delay": 0.3})
        # The bot's timers run on a Clock, so the logout surely comes first
        # however slow the machine is.
        clock = task.Clock()
        self.bot.getServiceNamed("websocket").factory.clock = clock  # type: ignore[attr-defined]
        conn, recorder = await self.connect()
        await conn.login("1.00002", "rae")
        conn.chat("why is the sky blue?")
        await wait_until(lambda: recorder.messages != [], "the answer")
        self.assertEqual([c.getTime() for c in clock.getDelayedCalls()], [0.3], "the follow-up is pending")
        await conn.logout()
        self.assertEqual(clock.getDelayedCalls(), [], "logout cancels the follow-up")
        clock.advance(1)
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual([a for _, a in recorder.messages], ["answer"])

    async def test_uid_stable(self) -> None:
        """The same (appid, uname) gets the same uid at every login; another uname gets another."""
        await self.start_bot()
        conn, _ = await self.connect()
        first = await conn.login("1.00002", "bob")
        await conn.logout()
        again = await conn.login("1.00002", "bob")
        other, _ = await self.connect()
        carol = await other.login("1.00002", "carol")
        self.assertEqual(first, again)
        self.assertNotEqual(first, carol)

    async def test_errors_and_bot_survives(self) -> None:
        """Bad frames, unknown methods and chat before login get error answers, and the bot keeps serving others."""
        await self.start_bot()
        client = await self.raw()
        answers = {
            "bad json": await self.send_raw(client, b"{nope"),
            "not an object": await self.send_raw(client, b"[1,2]"),
            "no method": await self.send_raw(client, b'{"content":"x"}'),
            "unknown": await self.send_raw(client, b'{"method":"danceReq"}'),
            "binary": await self.send_raw(client, b"\x00\x01", binary=True),
            "too large": await self.send_raw(
                client, json.dumps({"method": "chatReq", "content": "x" * 70000}).encode()),
            "chat first": await self.send_raw(client, b'{"method":"chatReq","content":"hi"}'),
            "logout first": await self.send_raw(client, b'{"method":"logoutReq"}'),
            "login no uname": await self.send_raw(client, b'{"method":"loginReq","appid":"1.00002"}'),
            "login bad type": await self.send_raw(client, b'{"method":"loginReq","appid":"1.00002","uname":5}'),
            "login extra": await self.send_raw(client, b'{"method":"loginReq","appid":"1.00002","uname":"u","x":1}'),
            "login surrogate": await self.send_raw(
                client, b'{"method":"loginReq","appid":"1.00002","uname":"\\ud800"}'),
            "method surrogate": await self.send_raw(client, b'{"method":"\\udc00"}'),
        }
        expected = {
            "bad json": ("error", 400), "not an object": ("error", 400), "no method": ("error", 400),
            "unknown": ("error", 404), "binary": ("error", 400), "too large": ("error", 413),
            "chat first": ("chatResp", 401), "logout first": ("logoutResp", 401),
            "login no uname": ("loginResp", 400), "login bad type": ("loginResp", 400),
            "login extra": ("loginResp", 400), "login surrogate": ("loginResp", 400),
            "method surrogate": ("error", 400),
        }
        for name, (method, result) in expected.items():
            self.assertEqual((answers[name]["method"], answers[name]["result"]), (method, result), name)
            self.assertTrue(answers[name]["msg"], name)
        self.assertIn("uname", answers["login no uname"]["msg"])
        self.assertTrue(answers["login surrogate"]["msg"].startswith("uname: "))
        # The misbehaving connection still works ...
        login = await self.send_raw(client, b'{"method":"loginReq","appid":"1.00002","uname":"raw"}')
        self.assertEqual(login["result"], 1)
        again = await self.send_raw(client, b'{"method":"loginReq","appid":"1.00002","uname":"raw"}')
        self.assertEqual((again["method"], again["result"]), ("loginResp", 400))
        chat = await self.send_raw(client, '{"method":"chatReq","content":"你好"}'.encode())
        self.assertEqual((chat["method"], chat["result"], chat["content"]), ("chatResp", 1, "你好！"))
        # Answers keep the order of the requests, errors included.
        before = len(client.received)
        for frame in [b'{"method":"chatReq","content":"one"}', b"{bad", b'{"method":"chatReq","content":"two"}']:
            client.sendMessage(frame)
        await wait_until(lambda: len(client.received) >= before + 3, "three answers")
        self.assertEqual([(m["method"], m.get("content")) for m in client.received[before:]],
                         [("chatResp", "I hear you: one"), ("error", None), ("chatResp", "I hear you: two")])
        # ... and so do others.
        conn, recorder = await self.connect()
        await conn.login("1.00002", "dave")
        conn.chat("ok")
        await wait_until(lambda: recorder.messages != [], "an answer on a good connection")

    async def test_adapter_error_answers(self) -> None:
        """The adapter fails a bad login with the bot's result and msg, and reports a chat before login as an error."""
        await self.start_bot()
        conn, recorder = await self.connect()
        conn.chat("too early")
        await wait_until(lambda: recorder.errors != [], "the error answer")
        self.assertEqual((recorder.errors[0].method, recorder.errors[0].result), ("chatResp", 401))
        with self.assertRaises(WxServiceError) as caught:
            await conn.login("not a valid appid!", "eve")
        self.assertEqual(caught.exception.result, 400)
        self.assertIn("appid", caught.exception.msg)

    async def test_oversized_frame_closes(self) -> None:
        """A frame beyond the hard limit makes the bot close that connection with 1009, and others go on."""
        await self.start_bot(websocket={"max_message_bytes": 1024})
        client = await self.raw()
        client.sendMessage(b"x" * (1024 * 16 + 1))
        code = await client.factory.closed  # type: ignore[attr-defined]
        self.assertEqual(code, 1009)
        conn, _ = await self.connect()
        self.assertTrue(await conn.login("1.00002", "frank"))

    async def test_connection_lost_reported(self) -> None:
        """When the bot stops, the adapter fails nothing silently: the listener hears the connection was lost."""
        await self.start_bot()
        conn, recorder = await self.connect()
        await conn.login("1.00002", "gina")
        await self.bot.stopService()
        await wait_until(lambda: recorder.lost != [], "the connection-lost callback")
        self.assertFalse(conn.open)
        with self.assertRaises(wxservice.NotOpen):
            conn.chat("anyone?")

    async def test_connect_refused(self) -> None:
        """Connecting to a port nobody listens on fails with WxServiceUnavailable."""
        await self.start_bot()
        port = self.port
        await self.bot.stopService()
        with self.assertRaises(wxservice.WxServiceUnavailable):
            await wxservice.connect(reactor, f"ws://127.0.0.1:{port}/x", Recorder())

    async def test_state_written(self) -> None:
        """After a short chat the user's Redis keys hold the tags, topics and memory, and MariaDB the dictionary."""
        await self.start_bot()
        conn, recorder = await self.connect()
        uid = await conn.login("1.00002", "ivy")
        conn.chat("hello, my name is Ivy")
        conn.chat("how is the weather?")
        await wait_until(lambda: len(recorder.messages) >= 2, "two answers")
        keys = self.config.state.keys("1.00002", uid)
        tags, topic, topics, memory = [await self.cluster_hgetall(k) for k in keys]
        self.assertEqual(memory, {"name": "Ivy"})
        self.assertEqual(topic, {"cur": str(TOPIC_WEATHER), "prev": str(TOPIC_GREETINGS)})
        self.assertEqual(set(topics), {str(TOPIC_GREETINGS), str(TOPIC_WEATHER)})
        self.assertIn("endTime", json.loads(topics[str(TOPIC_WEATHER)]))
        greeted = json.loads(tags[str(TAG_GREETED)])
        self.assertEqual(set(greeted), {"beginTime", "endTime", "isInUse"})
        self.assertFalse(greeted["isInUse"])  # momentary: only on the turn that set it
        self.assertTrue(json.loads(tags[str(TAG_TOLD_NAME)])["isInUse"])
        # A new login starts a new session: no tags or topics, the memory kept.
        await conn.logout()
        self.assertEqual(await conn.login("1.00002", "ivy"), uid)
        tags, topic, topics, memory = [await self.cluster_hgetall(k) for k in keys]
        self.assertEqual((tags, topic, topics, memory), ({}, {}, {}, {"name": "Ivy"}))
        conn.chat("what is my name?")
        await wait_until(lambda: len(recorder.messages) >= 3, "the recall answer")
        self.assertEqual(recorder.messages[2], ("Your name is Ivy.", "recall"))
        # The dictionary tables.
        for table, expected in ((self.config.state.tag_table, TAG_DICT), (self.config.state.topic_table, TOPIC_DICT)):
            rows = mariadb.execute(self.database, f"SELECT id, content FROM `{table}`")
            self.assertEqual(dict(rows), dict(expected))

    async def test_redis_down(self) -> None:
        """With its Redis Cluster unreachable the bot keeps serving: login answers 503 saying why, and it keeps
        retrying."""
        probe = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory())
        dead = probe.getHost().port
        await probe.stopListening()
        await self.start_bot(redis_nodes=[("127.0.0.1", dead)])
        conn, _ = await self.connect()
        with self.assertRaises(WxServiceError) as caught:
            await conn.login("1.00002", "jay")
        self.assertEqual((caught.exception.method, caught.exception.result), ("loginResp", 503))
        self.assertIn("Redis", caught.exception.msg)
        # Still retrying: a later attempt is scheduled, and the bot still answers.
        redis = self.bot.getServiceNamed("redis")
        await wait_until(lambda: redis.failures >= 2, "a second connection attempt")  # type: ignore[attr-defined]
        with self.assertRaises(WxServiceError):
            await conn.login("1.00002", "jay")

    async def test_master_killed(self) -> None:
        """When the master holding a user's keys dies, that user still gets answers and users on other masters are
        still written."""
        from webtesting.rediscluster import key_slot

        await self.start_bot()
        users = {}
        for name in ("lee", "max", "ned", "oli", "pat", "quinn"):
            conn, recorder = await self.connect()
            uid = await conn.login("1.00002", name)
            users[name] = (conn, recorder, self.config.state.keys("1.00002", uid))
        owners = {name: self.cluster.owner(key_slot(keys[0])) for name, (_, _, keys) in users.items()}
        victim = owners["lee"]
        survivors = [name for name, node in owners.items() if node != victim]
        self.assertTrue(survivors, "all test users landed on one master; pick other names")
        self.cluster.kill(victim)
        for conn, _, _ in users.values():
            conn.chat("I like tea")
        await wait_until(lambda: all(r.messages for _, r, _ in users.values()), "an answer for every user")
        for name in survivors:
            memory = await self.cluster_hgetall(users[name][2][3])
            self.assertEqual(memory, {"likes": "tea"}, name)

    async def cluster_hgetall(self, key: str) -> dict[str, str]:
        """Read one hash back from the test's Redis Cluster with a client of our own."""
        if getattr(self, "reader", None) is None:
            from webtesting import rediscluster

            self.reader = await rediscluster.connect(reactor, self.cluster_nodes)
            self.addCleanup(lambda: defer.maybeDeferred(self.reader.disconnect))
        return memory_from_reply(await self.reader.execute("HGETALL", key))


class FlakyStore:
    """
    Fake enough of a Redis Cluster client for the bot's failure paths: keeps
    hashes in memory, and fails the pipelines a test asks it to.
    """

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, str]] = {}
        self.counter = 0
        self.fail_next: BaseException | None = None
        self.raise_next: BaseException | None = None
        self.pipelines: list[list[list[Any]]] = []

    def execute(self, *args: Any) -> Deferred[Any]:
        return defer.succeed(self._run(list(args)))

    def pipeline(self, commands: Any) -> Deferred[list[Any]]:
        if self.raise_next is not None:
            error, self.raise_next = self.raise_next, None
            raise error
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            return defer.fail(error)
        self.pipelines.append([list(c) for c in commands])
        return defer.succeed([self._run(list(c)) for c in commands])

    def _run(self, command: list[Any]) -> Any:
        name, key, *args = command
        h = self.hashes.setdefault(key, {})
        if name == "DEL":
            self.hashes.pop(key, None)
            return 1
        if name == "HGETALL":
            return dict(h)
        if name == "HGET":
            return h.get(args[0])
        if name in ("HSET", "HSETNX"):
            if name == "HSETNX" and args[0] in h:
                return 0
            h.update(zip(args[0::2], args[1::2], strict=False))
            return 1
        if name == "HDEL":
            for f in args:
                h.pop(f, None)
            return 1
        if name == "INCR":
            self.counter += 1
            return self.counter
        raise AssertionError(f"unexpected command {command}")


class StoreFailureTests(TestCase):
    timeout = 30

    async def start(self) -> tuple[WxServiceConnection, Recorder, FlakyStore]:
        from twisted.internet.endpoints import serverFromString

        from webtesting.wxsim.server import make_bot_service

        database = mariadb.temporary_database(self, "wt_wxsim")
        config = from_mapping(WxsimConfig, {"mysql": {"database": database}, "bot": {"followup_delay": 0}})
        store = FlakyStore()
        bot = make_bot_service(config, reactor, serverFromString(reactor, "tcp:0:interface=127.0.0.1"), store)
        bot.startService()
        self.addCleanup(bot.stopService)
        port = await bot.getServiceNamed("websocket").listening()  # type: ignore[attr-defined]
        recorder = Recorder()
        conn = await wxservice.connect(reactor, f"ws://127.0.0.1:{port.getHost().port}/x", recorder)
        self.addCleanup(conn.close)
        await conn.login("1.00002", "kim")
        return conn, recorder, store

    async def test_failed_write_then_rewrite(self) -> None:
        """When a state write fails the user still gets the answer, and the next write rewrites the user's keys
        whole."""
        conn, recorder, store = await self.start()
        store.fail_next = ConnectionError("node went away")
        conn.chat("hello")
        await wait_until(lambda: len(recorder.messages) == 1, "the answer despite the failed write")
        conn.chat("I like music")
        await wait_until(lambda: len(recorder.messages) == 2, "the second answer")
        last = store.pipelines[-1]
        keys = StateLayout().keys("1.00002", conn.uid or "")
        self.assertEqual([c for c in last if c[0] == "DEL"], [["DEL", k] for k in keys])
        self.assertEqual(store.hashes[f"wt:{{1.00002:{conn.uid}}}:memory"], {"likes": "music"})

    async def test_bug_answers_500(self) -> None:
        """An unexpected exception while handling a chat is logged and answered 500, and the next chat works."""
        conn, recorder, store = await self.start()
        store.raise_next = TypeError("a bug")
        conn.chat("hello")
        await wait_until(lambda: recorder.errors != [], "the 500 answer")
        self.assertEqual((recorder.errors[0].method, recorder.errors[0].result), ("chatResp", 500))
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        conn.chat("hello again")
        await wait_until(lambda: recorder.messages != [], "an answer after the bug")



class AdapterTests(TestCase):
    """The adapter against servers that are not WxServices at all."""

    timeout = 30

    async def listen(self, answer: bytes) -> int:
        """A loopback server that answers any request with C{answer} and closes."""
        from twisted.internet.protocol import Protocol

        class Answer(Protocol):
            def dataReceived(self, data: bytes) -> None:
                transport: Any = self.transport
                transport.write(answer)
                transport.loseConnection()

        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Answer))
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    async def test_upgrade_refused(self) -> None:
        """An HTTP server that refuses the WebSocket upgrade makes connect fail with WxServiceUnavailable."""
        port = await self.listen(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        with self.assertRaises(wxservice.WxServiceUnavailable) as caught:
            await wxservice.connect(reactor, f"ws://127.0.0.1:{port}/5.00034", Recorder())
        self.assertIn("handshake", str(caught.exception))

    async def test_bad_url(self) -> None:
        """A malformed address fails with ValueError, not a connection attempt."""
        with self.assertRaises(ValueError):
            await wxservice.connect(reactor, "http://127.0.0.1:1443/x", Recorder())

    async def test_cancel_connect(self) -> None:
        """Cancelling connect gives up the attempt and leaves nothing open."""
        # A server that accepts but never answers the upgrade.
        from twisted.internet.protocol import Protocol

        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        d = wxservice.connect(reactor, f"ws://127.0.0.1:{port.getHost().port}/x", Recorder())
        await task.deferLater(reactor, 0.1, lambda: None)
        d.cancel()
        with self.assertRaises(defer.CancelledError):
            await d
        await task.deferLater(reactor, 0.05, lambda: None)

    async def test_login_timeout(self) -> None:
        """A login the bot never answers fails with WxServiceTimeout after the given time."""
        from twisted.internet.protocol import Protocol

        class Silent(Protocol):
            """Fake enough of a WebSocket server for a login timeout: upgrades, then says nothing."""

            def dataReceived(self, data: bytes) -> None:
                if b"\r\n\r\n" in data and not getattr(self, "upgraded", False):
                    self.upgraded = True
                    import base64
                    import hashlib

                    key = [line.split(b":", 1)[1].strip() for line in data.split(b"\r\n")
                           if line.lower().startswith(b"sec-websocket-key:")][0]
                    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
                    transport: Any = self.transport
                    transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")

        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Silent))
        self.addCleanup(port.stopListening)
        conn = await wxservice.connect(reactor, f"ws://127.0.0.1:{port.getHost().port}/x", Recorder())
        with self.assertRaises(wxservice.WxServiceTimeout):
            await conn.login("1.00002", "hank", timeout=0.2)
        conn._protocol.dropConnection(abort=True)
        await conn._when_closed()

    async def test_bot_text_without_utf8_form(self) -> None:
        """A bot answer holding a lone surrogate fails its login at once, and such a chat answer becomes an error."""
        from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

        class Garbler(WebSocketServerProtocol):
            """Fake enough of a WxService to send text with no UTF-8 form."""

            def onMessage(self, payload: bytes, isBinary: bool) -> None:
                method = json.loads(payload)["method"]
                answer = {"loginReq": rb'{"method":"loginResp","uid":"\ud800","result":1,"msg":"ok"}',
                          "chatReq": rb'{"method":"chatResp","content":"hi \udc00","action":"","result":1,"msg":"ok"}'}
                self.sendMessage(answer[method])

        factory = WebSocketServerFactory()
        factory.protocol = Garbler
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        recorder = Recorder()
        conn = await wxservice.connect(reactor, f"ws://127.0.0.1:{port.getHost().port}/x", recorder)
        self.addCleanup(conn.close)
        with self.assertRaises(WxServiceError) as caught:
            await conn.login("1.00002", "ivy", timeout=5)
        self.assertEqual((caught.exception.method, caught.exception.result), ("loginResp", 500))
        self.assertIn("uid", caught.exception.msg)
        conn.chat("hello")
        await wait_until(lambda: recorder.errors != [], "the chat error")
        self.assertEqual((recorder.errors[0].method, recorder.errors[0].result), ("chatResp", 500))
        self.assertEqual(recorder.messages, [])

class LinkRecorder(Recorder):
    """A wxservice.LinkListener that keeps everything it is told."""

    def __init__(self) -> None:
        super().__init__()
        self.logins: list[str] = []
        self.downs: list[Any] = []
        self.refused: list[WxServiceError] = []

    def logged_in(self, uid: str) -> None:
        self.logins.append(uid)

    def link_down(self, health: Any) -> None:
        self.downs.append(health)

    def login_refused(self, error: WxServiceError) -> None:
        self.refused.append(error)


class LinkTests(TestCase):
    """One user's WxServiceLink against the reference bot: logged in, kept logged in, told why not."""

    timeout = 60
    start_bot = WxServiceTests.start_bot
    redis_nodes = WxServiceTests.redis_nodes

    def link(self, url: str | None = None, **settings: Any) -> tuple[wxservice.WxServiceLink, LinkRecorder]:
        from webtesting.lifecycle import Backoff

        recorder = LinkRecorder()
        settings.setdefault("backoff", Backoff(initial=0.2, maximum=1.0))
        link = wxservice.WxServiceLink(reactor, lambda: url or f"ws://127.0.0.1:{self.port}/5.00034", recorder,
                                       "1.00002", "lena", wxservice.LinkSettings(**settings))
        self.addCleanup(link.stop)
        link.start()
        return link, recorder

    async def test_link_logs_in_again_after_bot_restart(self) -> None:
        """The bot stopping makes the link down once (bot_unreachable); back, the user is logged in again with the same
        uid."""
        from tests.support.system import Bot

        bot = Bot(self, self.redis_nodes(), mariadb.temporary_database(self, "wt_wxsim"))
        await bot.start()
        link, recorder = self.link(bot.url)
        await wait_until(lambda: recorder.logins, "the first login")
        self.assertTrue(link.up)
        link.chat("hello, my name is Lena")
        await wait_until(lambda: recorder.messages, "an answer")
        await bot.stop()
        await wait_until(lambda: recorder.downs, "the link down")
        self.assertEqual(recorder.downs[0].code, "bot_unreachable")
        with self.assertRaises(wxservice.NotOpen):
            link.chat("anyone?")
        await bot.start()
        await wait_until(lambda: len(recorder.logins) == 2, "logged in again", timeout=5)
        self.assertEqual(recorder.logins[0], recorder.logins[1])
        self.assertEqual(recorder.refused, [])

    async def freezing_bot(self) -> tuple[str, list[Any]]:
        """A fake WxService that accepts a login, then reads nothing (no pongs): its URL and its connections."""
        from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

        frozen: list[Any] = []

        class Freezing(WebSocketServerProtocol):
            def onOpen(self) -> None:
                frozen.append(self)

            def onMessage(self, payload: bytes, isBinary: bool) -> None:
                self.sendMessage(b'{"method":"loginResp","uid":"7","result":1,"msg":"ok"}')
                reactor.callLater(0, self.transport.pauseProducing)  # type: ignore[attr-defined,union-attr]

        factory = WebSocketServerFactory()
        factory.protocol = Freezing
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: [p.dropConnection(abort=True) for p in frozen])
        return f"ws://127.0.0.1:{port.getHost().port}/x", frozen

    async def test_frozen_bot_found_by_ping(self) -> None:
        """A bot that stops answering (no pongs) makes the link down as bot_not_responding within ping interval +
        timeout."""
        url, _ = await self.freezing_bot()
        link, recorder = self.link(url, ping_interval=0.5, ping_timeout=0.5)
        await wait_until(lambda: recorder.logins, "the login")
        started = reactor.seconds()
        await wait_until(lambda: recorder.downs, "the frozen bot noticed", timeout=5)
        self.assertLess(reactor.seconds() - started, 2.5)
        self.assertEqual(recorder.downs[0].code, "bot_not_responding")

    async def test_check_alive(self) -> None:
        """Asked to check, a link pinged seldom is dropped within ping_timeout by a frozen bot, and kept by a live
        one."""
        url, _ = await self.freezing_bot()
        link, recorder = self.link(url, ping_interval=60, ping_timeout=0.5)
        await wait_until(lambda: recorder.logins, "the login")
        await task.deferLater(reactor, 0.1, lambda: None)  # the fake bot freezes after its answer
        started = reactor.seconds()
        link.check_alive()
        link.check_alive()  # one check at a time
        await wait_until(lambda: recorder.downs, "the frozen bot noticed", timeout=3)
        self.assertLess(reactor.seconds() - started, 1.2)
        self.assertEqual(recorder.downs[0].code, "bot_not_responding")

        await self.start_bot()
        live, live_recorder = self.link(ping_interval=60, ping_timeout=0.3)
        await wait_until(lambda: live_recorder.logins, "the login")
        live.check_alive()
        await task.deferLater(reactor, 0.8, lambda: None)
        self.assertEqual(live_recorder.downs, [])
        self.assertTrue(live.up)
        live.logout()
        await task.deferLater(reactor, 1.2, lambda: None)  # Autobahn's closing timers end

    async def test_watch_pings(self) -> None:
        """The health check's connection, pinged, tells of a bot that froze within ping interval + timeout."""
        url, frozen = await self.freezing_bot()
        gone: list[str] = []
        conn = await wxservice.watch(reactor, url, gone.append, 1.0, ping=(0.3, 0.3))
        self.addCleanup(conn.abort)
        frozen[0].transport.pauseProducing()
        await wait_until(lambda: gone, "the frozen bot noticed", timeout=3)
        self.assertIn("ping", gone[0])

    async def test_refused_login_stops_the_link(self) -> None:
        """A login the bot refuses is told once, and the link stops trying."""
        await self.start_bot()
        recorder = LinkRecorder()
        link = wxservice.WxServiceLink(reactor, lambda: f"ws://127.0.0.1:{self.port}/5.00034", recorder,
                                       "not a valid appid!", "lena")
        self.addCleanup(link.stop)
        link.start()
        await wait_until(lambda: recorder.refused, "the refusal")
        self.assertEqual(recorder.refused[0].result, 400)
        self.assertEqual(link.lifecycle.state, "stopped")
        self.assertEqual(recorder.downs, [])

    async def test_unusable_address(self) -> None:
        """An address that cannot parse is down as bot_address_invalid and not dialled again."""
        link, recorder = self.link("http://127.0.0.1:1/x")
        await wait_until(lambda: recorder.downs, "the address refused")
        self.assertEqual(recorder.downs[0].code, "bot_address_invalid")
        self.assertEqual(link.lifecycle.state, "unusable")
