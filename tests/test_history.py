"""
Conversation history (webtesting.web.history): recorded as turns pass the
relay, written in batches to the real registry database (SQLite and
MariaDB), trimmed to the last turns, read back per bot user and account;
and end to end, through the real product, across a web server restart.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.support import mariadb
from tests.support.browser import PASSWORD, PagesSystem
from tests.support.wait import eventually
from webtesting.config import MySQLConfig, RegistryConfig
from webtesting.protocol import LOGGED_IN, LOGGED_OUT, ROUTE, routed_frame
from webtesting.web.history import History
from webtesting.web.registry import open_registry
from webtesting.web.sessions import Relay

SID = 3
USER = (SID, "1.00002", "alice")


def state(new_memory: list[dict[str, str]] = (), cur_topic: int = 0, *, cur_memory: Any = None) -> bytes:
    message = {
        "method": "getUserStatusResp", "serviceId": SID, "appid": "1.00002", "uuid": "u",
        "tag": {"curTags": [], "newTags": [], "deletedTags": []},
        "curTopic": {"id": cur_topic, "desc": "", "prevId": 0, "prevDesc": ""},
        "curTopicList": {"curTopics": [], "newTopics": [], "deletedTopics": []},
        "memory": {"cur": cur_memory or list(new_memory), "new": list(new_memory), "deleted": []},
        "result": 1, "msg": "ok",
    }
    return json.dumps(message, separators=(",", ":")).encode()


def reply(content: str, action: str = "") -> bytes:
    return json.dumps({"method": "aichatResp", "serviceId": SID, "appid": "1.00002", "content": content,
                       "action": action, "result": 1, "msg": "ok"}, separators=(",", ":")).encode()


class HistoryStoreMixin:
    """The recorder on a real database; subclasses give the registry configuration."""

    def registry_config(self) -> RegistryConfig:
        raise NotImplementedError

    async def history(self, **options: Any) -> History:
        registry = open_registry(self.registry_config(), reactor)
        registry.db.startService()
        self.addCleanup(registry.db.stopService)  # type: ignore[attr-defined]
        await registry.db.ready()
        history = History(registry.db, registry.dialect_name, reactor, **options)
        history.startService()
        self.addCleanup(history.stopService)  # type: ignore[attr-defined]
        return history

    async def test_turns_are_kept_as_they_passed(self) -> None:
        """A login, its first state whole, a chat, its replies, what the state changed and a logout."""
        history = await self.history(flush_interval=60)
        history.record(*USER, "tess", "login", {})
        history.record(*USER, "tess", "state", state(cur_memory=[{"key": "city", "value": "Paris"}]))
        history.record(*USER, "tess", "say", "my name is Alice")
        history.record(*USER, "tess", "reply", reply("Nice to meet you, Alice!"))
        history.record(*USER, "tess", "state", state([{"key": "name", "value": "Alice"}]))
        history.record(*USER, "tess", "state", state())  # nothing moved: not kept
        history.record(*USER, "tess", "state", state(cur_topic=7))  # only the topic moved: kept
        history.record(*USER, "tess", "reply", {"result": 504, "code": "timeout", "msg": "no answer"})
        history.record(*USER, "tess", "logout", {})
        events = await history.read(*USER)
        self.assertEqual([e["kind"] for e in events],
                         ["login", "state", "say", "reply", "state", "state", "reply", "logout"])
        first = events[1]
        self.assertTrue(first["first"])
        self.assertEqual(first["memory"]["cur"], [{"key": "city", "value": "Paris"}])
        self.assertEqual(events[2]["content"], "my name is Alice")
        self.assertEqual((events[3]["content"], events[3]["action"]), ("Nice to meet you, Alice!", ""))
        self.assertEqual(events[4]["memory"]["new"], [{"key": "name", "value": "Alice"}])
        self.assertNotIn("cur", events[4]["memory"])  # only the first state is kept whole
        self.assertEqual(events[5]["curTopic"]["id"], 7)
        self.assertEqual(events[6]["code"], "timeout")
        self.assertTrue(all(e["account"] == "tess" for e in events))
        self.assertEqual(sorted(events, key=lambda e: e["id"]), events)

    async def test_only_the_last_turns_are_kept(self) -> None:
        """With turns: 5, the sixth chat deletes the first turn, its replies with it."""
        history = await self.history(turns=5, flush_interval=60)
        for i in range(12):
            history.record(*USER, "tess", "say", f"chat {i}")
            history.record(*USER, "tess", "reply", reply(f"answer {i}"))
            await history.flush()
        events = await history.read(*USER)
        self.assertEqual([e["content"] for e in events if e["kind"] == "say"], [f"chat {i}" for i in range(7, 12)])
        self.assertEqual(len(events), 10)
        fewer = await history.read(*USER, turns=2)
        self.assertEqual([e["content"] for e in fewer], ["chat 10", "answer 10", "chat 11", "answer 11"])

    async def test_a_tester_reads_their_own(self) -> None:
        """Events are read per bot user, and per account unless the reader is an admin."""
        history = await self.history()
        history.record(*USER, "tess", "say", "from tess")
        history.record(*USER, "tom", "say", "from tom")
        history.record(SID, "1.00002", "bob", "tess", "say", "another user")
        self.assertEqual([e["content"] for e in await history.read(*USER, account="tess")], ["from tess"])
        self.assertEqual([e["content"] for e in await history.read(*USER)], ["from tess", "from tom"])
        users = await history.bot_users("tess")
        self.assertEqual([(u["uname"], u["serviceId"]) for u in users], [("bob", SID), ("alice", SID)])

    async def test_writes_are_batched(self) -> None:
        """Events wait for the timer, or go at once when a batch is full; one transaction each."""
        history = await self.history(flush_interval=60, batch=3)
        runs: list[int] = []
        real_run = history.db.run
        history.db.run = lambda work: runs.append(1) or real_run(work)  # count transactions
        history.record(*USER, "tess", "say", "one")
        history.record(*USER, "tess", "say", "two")
        self.assertEqual(runs, [])
        history.record(*USER, "tess", "say", "three")  # a full batch
        await eventually(lambda: history.describe()["written"] == 3, what="the batch written")
        self.assertEqual(len(runs), 1)

    async def test_stopping_writes_what_waits(self) -> None:
        """Events recorded just before the server stops are written before the database closes."""
        history = await self.history(flush_interval=60)
        history.record(*USER, "tess", "say", "last words")
        await history.stopService()
        self.assertEqual(history.describe()["written"], 1)

    async def test_kept_while_the_database_is_away(self) -> None:
        """A write that fails keeps its events for the next one; beyond max_buffer the oldest go."""
        registry = open_registry(self.registry_config(), reactor)
        history = History(registry.db, registry.dialect_name, reactor, flush_interval=60, max_buffer=100)
        history.startService()
        for i in range(150):
            history.record(*USER, "tess", "say", f"chat {i}")
        await history.flush()  # the database is not started: unavailable
        self.assertEqual(history.describe(), {"waiting": 100, "recorded": 150, "written": 0, "dropped": 50})
        registry.db.startService()
        self.addCleanup(registry.db.stopService)  # type: ignore[attr-defined]
        await registry.db.ready()
        events = await history.read(*USER)
        self.assertEqual(events[0]["content"], "chat 50")
        self.assertEqual(len(events), 100)
        await history.stopService()


class SQLiteHistoryTests(HistoryStoreMixin, unittest.TestCase):
    def registry_config(self) -> RegistryConfig:
        if not hasattr(self, "_path"):
            self._path = self.mktemp() + ".sqlite3"
        return RegistryConfig(sqlite_path=self._path)


class MariaDBHistoryTests(HistoryStoreMixin, unittest.TestCase):
    def registry_config(self) -> RegistryConfig:
        if not hasattr(self, "_database"):
            self._database = mariadb.temporary_database(self)
        return RegistryConfig(mysql=MySQLConfig(host=mariadb.HOST, port=mariadb.PORT, user=mariadb.USER,
                                                password=mariadb.PASSWORD, database=self._database))


class Recorded:
    """What the relay hands to history, kept in a list."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def record(self, *event: Any) -> None:
        self.events.append(event)


class FakeLink:
    service_id = SID
    up = connected = True
    reason = code = ""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


class RelayRecordsTests(unittest.TestCase):
    """The relay hands each event of a conversation to history as it passes."""

    def test_a_conversation_is_recorded(self) -> None:
        clock = Clock()
        relay = Relay({SID: FakeLink()}, new_uuid=lambda: "a" * 32, clock=clock, deadline=5)
        relay.history = recorded = Recorded()
        delivered: list[bytes] = []
        session = relay.open_session(delivered.append, "tess")
        relay.from_browser(session, b'{"method":"loginReq","serviceId":3,"appid":"1.00002","uname":"alice"}')
        relay.from_agent(SID, routed_frame(session.uuid, LOGGED_IN, {
            "method": "loginResp", "serviceId": SID, "appid": "1.00002", "strUid": "1", "result": 1, "msg": "ok"}))
        relay.from_agent(SID, session.uuid.encode() + ROUTE + state())
        relay.from_browser(session, b'{"method":"aichatReq","serviceId":3,"appid":"1.00002","content":"hi"}')
        relay.from_agent(SID, session.uuid.encode() + ROUTE + reply("hello"))
        relay.from_browser(session, b'{"method":"aichatReq","serviceId":3,"appid":"1.00002","content":"again"}')
        clock.advance(5)  # no answer: the chat times out, and that is part of the conversation
        relay.from_browser(session, b'{"method":"logoutReq","serviceId":3,"appid":"1.00002"}')
        relay.from_agent(SID, routed_frame(session.uuid, LOGGED_OUT, {
            "method": "logoutResp", "serviceId": SID, "appid": "1.00002", "result": 1, "msg": "ok"}))
        kinds = [(e[4], e[3]) for e in recorded.events]
        self.assertEqual(kinds, [("login", "tess"), ("state", "tess"), ("say", "tess"), ("reply", "tess"),
                                 ("say", "tess"), ("reply", "tess"), ("logout", "tess")])
        self.assertEqual(recorded.events[2][5], "hi")
        self.assertEqual(json.loads(recorded.events[3][5])["content"], "hello")
        self.assertEqual(recorded.events[5][5]["code"], "timeout")
        self.assertTrue(all(e[:3] == USER for e in recorded.events))


class HistoryEndToEndTests(unittest.TestCase):
    """Through the real product: a chat's history is read over HTTP, also after the web server restarts."""

    timeout = 120

    async def test_history_survives_a_restart(self) -> None:
        from webtesting.client import Client, ServerError

        system = PagesSystem(self)
        await system.start()
        system.add_user("tess", "tester")
        system.add_user("tom", "tester")
        sid = await system.add_service()
        await system.wait_status(sid, 1)
        url = f"http://127.0.0.1:{system.http_port}"
        client = Client(url, timeout=10)
        await client.login("tess", PASSWORD)
        conn = await client.connect()
        bot = await conn.login(sid, "1.00002", "alice")
        await bot.next_push()
        await bot.chat("my name is Alice")
        await bot.next_push(lambda m: bool(m["memory"]["new"]))
        events = await client.history(sid, "1.00002", "alice")
        self.assertEqual([e["kind"] for e in events][:3], ["login", "state", "say"])
        self.assertIn({"key": "name", "value": "Alice"},
                      [m for e in events if e["kind"] == "state" for m in e["memory"]["new"]])
        await conn.close()

        await system.restart_web()
        again = Client(url, timeout=10)
        await again.login("tess", PASSWORD)
        after = await again.history(sid, "1.00002", "alice")
        self.assertEqual([e["id"] for e in after][:len(events)], [e["id"] for e in events])
        self.assertEqual(after[-1]["kind"], "logout")  # the closed page ended the login

        tom = Client(url, timeout=10)
        await tom.login("tom", PASSWORD)
        self.assertEqual(await tom.history(sid, "1.00002", "alice"), [])
        with self.assertRaises(ServerError) as refused:
            await tom.history(sid, "1.00002", "alice", account="tess")
        self.assertEqual(refused.exception.result, 403)
        with self.assertRaises(ServerError) as bad:
            await tom.history(sid, "1.00002", "")
        self.assertEqual(bad.exception.result, 400)
