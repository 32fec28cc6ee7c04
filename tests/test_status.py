"""
The agent's user-state reader: pure diffs, the poll timer on a Clock, and
reads from a real Redis Cluster and a real MariaDB dictionary.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.support import mariadb
from tests.support.rediscluster import start_cluster
from webtesting import rediscluster
from webtesting.agent.snapshot import (
    RawState,
    Snapshot,
    TagValue,
    Texts,
    User,
    changed,
    parse_state,
    resolve,
    status_fields,
)
from webtesting.agent.statereader import Dictionary, ReadError, StateReader
from webtesting.agent.status import StatusPoller, StatusUpdate
from webtesting.dbpool import Database, mysql_connector, mysql_is_fault
from webtesting.statelayout import StateLayout

LAYOUT = StateLayout()
TEXTS = Texts(
    tags={1: "likes tea", 2: "in front of camera", 3: "sleepy"},
    topics={10: "small talk", 11: "weather", 12: "music"},
)


def tag(begin: int, end: int, in_use: bool) -> str:
    return json.dumps({"beginTime": begin, "endTime": end, "isInUse": in_use})


def topic(end: int) -> str:
    return json.dumps({"endTime": end})


def snap(
    tags: dict[int, tuple[int, int, bool]] | None = None,
    cur: int | None = None,
    prev: int | None = None,
    topics: dict[int, int] | None = None,
    memory: dict[str, str] | None = None,
    texts: Texts = TEXTS,
) -> Snapshot:
    raw = RawState(
        {i: TagValue(*v) for i, v in (tags or {}).items()},
        cur,
        prev,
        dict(topics or {}),
        dict(memory or {}),
    )
    return resolve(raw, texts)


class ParseTests(unittest.TestCase):
    """Stored hashes become a RawState; nonsense is skipped, never raised."""

    def test_flat_lists_and_mappings(self) -> None:
        """HGETALL replies as flat lists or mappings give the same state."""
        flat = parse_state(
            ["1", tag(5, 9, True)], ["cur", "10", "prev", "11"], ["10", topic(99)], ["name", "Alice"]
        )
        mapped = parse_state(
            {"1": tag(5, 9, True)}, {"cur": "10", "prev": "11"}, {"10": topic(99)}, {"name": "Alice"}
        )
        self.assertEqual(flat, mapped)
        self.assertEqual(flat.tags, {1: TagValue(5, 9, True)})
        self.assertEqual((flat.cur_topic, flat.prev_topic), (10, 11))
        self.assertEqual(flat.topics, {10: 99})
        self.assertEqual(flat.memory, {"name": "Alice"})
        self.assertEqual(flat.topic_ids(), {10, 11})

    def test_empty(self) -> None:
        """A user with no keys has an empty state."""
        state = parse_state([], [], [], [])
        self.assertEqual(state, RawState())

    def test_nonsense_is_skipped(self) -> None:
        """Entries that are not JSON objects or whose id is not a number are skipped and named."""
        state = parse_state(
            ["x", tag(1, 2, True), "2", "not json", "3", "[1]", "4", tag(1, 2, False)],
            ["cur", "abc"],
            ["7", "oops"],
            [b"k", b"v"],
        )
        self.assertEqual(list(state.tags), [4])
        self.assertIsNone(state.cur_topic)
        self.assertEqual(state.topics, {})
        self.assertEqual(state.memory, {"k": "v"})
        self.assertEqual(len(state.problems), 5)


class DiffTests(unittest.TestCase):
    """status_fields and changed compute exactly the SPEC section 3 shape."""

    def test_first_snapshot(self) -> None:
        """The first snapshot lists everything as current and nothing as new or deleted."""
        fields = status_fields(
            None, snap({1: (100, 200, True)}, cur=10, prev=11, topics={10: 300}, memory={"name": "Alice"})
        )
        self.assertEqual(
            fields,
            {
                "tag": {
                    "curTags": [{"id": 1, "desc": "likes tea", "beginTime": 100, "endTime": 200, "isInUse": True}],
                    "newTags": [],
                    "deletedTags": [],
                },
                "curTopic": {"id": 10, "desc": "small talk", "prevId": 11, "prevDesc": "weather"},
                "curTopicList": {
                    "curTopics": [{"id": 10, "desc": "small talk", "endTime": 300}],
                    "newTopics": [],
                    "deletedTopics": [],
                },
                "memory": {"cur": [{"key": "name", "value": "Alice"}], "new": [], "deleted": []},
                "textMissing": {"tagIds": [], "topicIds": [], "reason": ""},
            },
        )
        json.dumps(fields)  # ready for the wire

    def test_no_topic(self) -> None:
        """Without a current or previous topic, their ids are null and their texts empty."""
        fields = status_fields(None, snap())
        self.assertEqual(fields["curTopic"], {"id": None, "desc": "", "prevId": None, "prevDesc": ""})

    def test_tags(self) -> None:
        """Added tags are new, removed ones deleted, and a tag whose times or isInUse changed is new."""
        before = snap({1: (1, 10, True), 2: (1, 10, True), 3: (1, 10, True)})
        after = snap({1: (1, 10, True), 2: (1, 10, False), 4: (5, 15, True)}, texts=TEXTS)
        fields = status_fields(before, after)["tag"]
        self.assertEqual([t["id"] for t in fields["curTags"]], [1, 2, 4])
        self.assertEqual([(t["id"], t["isInUse"]) for t in fields["newTags"]], [(2, False), (4, True)])
        self.assertEqual(fields["deletedTags"], [
            {"id": 3, "desc": "sleepy", "beginTime": 1, "endTime": 10, "isInUse": True}
        ])
        self.assertEqual(fields["newTags"][1]["desc"], "")  # 4 has no text

    def test_topics(self) -> None:
        """The current topic keeps its predecessor's text; list entries are new, changed or deleted."""
        before = snap(cur=10, topics={10: 100, 11: 100})
        after = snap(cur=12, prev=10, topics={10: 100, 11: 200, 12: 300})
        fields = status_fields(before, after)
        self.assertEqual(fields["curTopic"], {"id": 12, "desc": "music", "prevId": 10, "prevDesc": "small talk"})
        lists = fields["curTopicList"]
        self.assertEqual([t["id"] for t in lists["curTopics"]], [10, 11, 12])
        self.assertEqual([(t["id"], t["endTime"]) for t in lists["newTopics"]], [(11, 200), (12, 300)])
        self.assertEqual(lists["deletedTopics"], [])
        gone = status_fields(after, snap(cur=12, prev=10, topics={12: 300}))["curTopicList"]
        self.assertEqual([t["id"] for t in gone["deletedTopics"]], [10, 11])
        self.assertEqual(gone["newTopics"], [])

    def test_memory(self) -> None:
        """A new fact is new, a changed one is new with its value and deleted with the old, a gone one deleted."""
        before = snap(memory={"name": "Alice", "city": "Paris", "pet": "cat"})
        after = snap(memory={"name": "Alice", "city": "Lyon", "food": "tofu"})
        memory = status_fields(before, after)["memory"]
        self.assertEqual(memory["cur"], [
            {"key": "city", "value": "Lyon"}, {"key": "food", "value": "tofu"}, {"key": "name", "value": "Alice"},
        ])
        self.assertEqual(memory["new"], [{"key": "city", "value": "Lyon"}, {"key": "food", "value": "tofu"}])
        self.assertEqual(memory["deleted"], [{"key": "city", "value": "Paris"}, {"key": "pet", "value": "cat"}])

    def test_changed(self) -> None:
        """Only a real difference counts as a change, a tag's isInUse or endTime included."""
        base = snap({1: (1, 10, True)}, cur=10, topics={10: 5}, memory={"a": "b"})
        self.assertTrue(changed(None, base))
        self.assertFalse(changed(base, snap({1: (1, 10, True)}, cur=10, topics={10: 5}, memory={"a": "b"})))
        self.assertTrue(changed(base, snap({1: (1, 10, False)}, cur=10, topics={10: 5}, memory={"a": "b"})))
        self.assertTrue(changed(base, snap({1: (1, 11, True)}, cur=10, topics={10: 5}, memory={"a": "b"})))
        self.assertTrue(changed(base, snap({1: (1, 10, True)}, cur=10, topics={10: 6}, memory={"a": "b"})))
        self.assertTrue(changed(base, snap({1: (1, 10, True)}, cur=11, prev=10, topics={10: 5}, memory={"a": "b"})))
        self.assertTrue(changed(base, snap({1: (1, 10, True)}, cur=10, topics={10: 5}, memory={"a": "c"})))

    def test_text_arriving_later(self) -> None:
        """A text that was missing and arrives later is a change, but nothing becomes new."""
        state = {1: (1, 10, True)}
        before = snap(state, cur=10, texts=Texts(reason="MySQL unavailable: refused"))
        self.assertEqual(before.missing_tags, (1,))
        self.assertEqual(before.missing_topics, (10,))
        after = snap(state, cur=10)
        self.assertTrue(changed(before, after))
        fields = status_fields(before, after)
        self.assertEqual(fields["tag"]["newTags"], [])
        self.assertEqual(fields["tag"]["curTags"][0]["desc"], "likes tea")
        self.assertEqual(status_fields(None, before)["textMissing"],
                         {"tagIds": [1], "topicIds": [10], "reason": "MySQL unavailable: refused"})


# -- the poll timer ---------------------------------------------------------


class ScriptedReader:
    """
    Fake enough of StateReader for the poll timer: each read waits until
    the test answers it.
    """

    def __init__(self) -> None:
        self.reads: list[tuple[list[User], Deferred[dict[User, Snapshot | ReadError]]]] = []
        self.forgotten: list[User] = []

    def read(self, users: Sequence[User]) -> Deferred[dict[User, Snapshot | ReadError]]:
        d: Deferred[dict[User, Snapshot | ReadError]] = Deferred()
        self.reads.append((list(users), d))
        return d

    def forget(self, user: User) -> None:
        self.forgotten.append(user)

    def answer(self, results: dict[User, Snapshot | ReadError]) -> None:
        users, d = self.reads[-1]
        d.callback({u: results[u] for u in users})

    def answer_all(self) -> None:
        """Answer every read still waiting with empty states (test cleanup)."""
        for users, d in self.reads:
            if not d.called:
                d.callback({u: snap() for u in users})


class PollerTests(unittest.TestCase):
    """The poll timer, on a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.reader = ScriptedReader()
        self.poller = StatusPoller(self.reader, self.clock, interval=1.0)  # type: ignore[arg-type]
        self.pushed: dict[str, list[StatusUpdate]] = {"a": [], "b": []}
        self.poller.watch("a", "1.00002", "1", self.pushed["a"].append)
        self.poller.watch("b", "1.00002", "2", self.pushed["b"].append)
        self.poller.start()
        self.addCleanup(self.poller.stop)
        self.addCleanup(self.reader.answer_all)  # runs first: lets stop() end

    def test_skip_while_running(self) -> None:
        """A tick that comes while the last poll is still running is skipped, not queued."""
        self.clock.advance(1)
        self.assertEqual(len(self.reader.reads), 1)
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(len(self.reader.reads), 1)
        self.assertEqual(self.poller.skipped, 2)
        self.reader.answer({("1.00002", "1"): snap(), ("1.00002", "2"): snap()})
        self.clock.advance(1)
        self.assertEqual(len(self.reader.reads), 2)
        self.assertEqual(self.reader.reads[1][0], [("1.00002", "1"), ("1.00002", "2")])

    def test_pushes_changes_only(self) -> None:
        """The first state is pushed, an unchanged one is not, a changed one is with its diff."""
        a, b = ("1.00002", "1"), ("1.00002", "2")
        self.clock.advance(1)
        self.reader.answer({a: snap(memory={"x": "1"}), b: snap()})
        self.clock.advance(1)
        self.reader.answer({a: snap(memory={"x": "1"}), b: snap(memory={"y": "2"})})
        self.assertEqual(len(self.pushed["a"]), 1)
        self.assertEqual(len(self.pushed["b"]), 2)
        fields = self.pushed["b"][1].fields
        assert fields is not None
        self.assertEqual(fields["memory"]["new"], [{"key": "y", "value": "2"}])

    def test_errors(self) -> None:
        """A read error is pushed once, a user's error does not stop the others, and recovery is pushed."""
        a, b = ("1.00002", "1"), ("1.00002", "2")
        for _ in range(2):
            self.clock.advance(1)
            self.reader.answer({a: ReadError("Redis node 127.0.0.1:1 unavailable"), b: snap()})
        self.assertEqual(self.pushed["a"], [StatusUpdate(None, "Redis node 127.0.0.1:1 unavailable")])
        self.assertEqual(len(self.pushed["b"]), 1)
        self.clock.advance(1)
        self.reader.answer({a: snap(), b: snap()})
        self.assertEqual(len(self.pushed["a"]), 2)
        self.assertIsNotNone(self.pushed["a"][1].fields)

    def test_failing_push(self) -> None:
        """A watcher whose push raises does not stop the pushes to the others, nor the timer."""
        def broken(update: StatusUpdate) -> None:
            raise RuntimeError("browser gone")

        self.poller.watch("a", "1.00002", "1", broken)
        a, b = ("1.00002", "1"), ("1.00002", "2")
        self.clock.advance(1)
        self.reader.answer({a: snap(), b: snap()})
        self.assertEqual(len(self.pushed["b"]), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.reader.reads), 2)

    def test_unwatch_and_pause(self) -> None:
        """Unwatched or paused watchers get nothing, even from a poll that was already running."""
        self.clock.advance(1)
        self.poller.unwatch("a")
        self.poller.set_auto("b", False)
        self.reader.answer({("1.00002", "1"): snap(), ("1.00002", "2"): snap()})
        self.assertEqual(self.pushed, {"a": [], "b": []})
        self.assertEqual(self.reader.forgotten, [("1.00002", "1")])
        self.clock.advance(1)
        self.assertEqual(len(self.reader.reads), 1)  # nobody to poll

    def test_slow_poll_is_measured_and_logged(self) -> None:
        """A poll that outlasts its interval is timed and logged, and the tick that came meanwhile is skipped."""
        logged: list[str] = []
        observer = lambda event: logged.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.clock.advance(1)
        self.clock.advance(1.5)
        self.reader.answer({("1.00002", "1"): snap(), ("1.00002", "2"): snap()})
        self.assertEqual((self.poller.last_seconds, self.poller.slowest, self.poller.skipped), (1.5, 1.5, 1))
        self.assertTrue(any("state poll of 2 users took 1.50 s" in line for line in logged), logged)

    def test_chunks(self) -> None:
        """Many users are read a chunk at a time, the next chunk once the last one answered."""
        self.poller.chunk = 2
        users = [("1.00002", str(i)) for i in range(1, 6)]
        for user in users[2:]:
            self.poller.watch(user[1], *user, lambda update: None)
        self.clock.advance(1)
        self.assertEqual([r[0] for r in self.reader.reads], [users[0:2]])
        self.reader.answer({u: snap() for u in users})
        self.assertEqual(len(self.pushed["a"]), 1)  # pushed before the rest is read
        self.assertEqual([r[0] for r in self.reader.reads], [users[0:2], users[2:4]])
        self.clock.advance(1)
        self.assertEqual(self.poller.skipped, 1)  # still the same poll
        self.reader.answer({u: snap() for u in users})
        self.reader.answer({u: snap() for u in users})
        self.assertEqual([r[0] for r in self.reader.reads], [users[0:2], users[2:4], users[4:]])
        self.clock.advance(1)
        self.assertEqual(len(self.reader.reads), 4)  # the next poll

    def test_current(self) -> None:
        """Asking for the state reads at once and the answer's diff is against the last one sent."""
        d = self.poller.current("a")
        self.reader.answer({("1.00002", "1"): snap(memory={"k": "v"})})
        first = self.successResultOf(d)
        assert first.fields is not None
        self.assertEqual(first.fields["memory"]["new"], [])
        d = self.poller.current("a")
        self.reader.answer({("1.00002", "1"): snap(memory={"k": "w"})})
        second = self.successResultOf(d)
        assert second.fields is not None
        self.assertEqual(second.fields["memory"]["new"], [{"key": "k", "value": "w"}])
        self.failureResultOf(self.poller.current("nobody"), KeyError)


# -- real servers -----------------------------------------------------------


class CountingStore:
    """Counts the pipeline calls made to the real cluster client it wraps."""

    def __init__(self, client: rediscluster.RedisCluster) -> None:
        self.client = client
        self.calls: list[int] = []
        self.replies: list[list[Any]] = []

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> Deferred[list[Any]]:
        self.calls.append(len(commands))

        def seen(replies: list[Any]) -> list[Any]:
            self.replies.append(replies)
            return replies

        return self.client.pipeline(commands).addCallback(seen)


class RealServersTests(unittest.TestCase):
    """State written into a real Redis Cluster, texts from a real MariaDB."""

    def setUp(self) -> None:
        self.cluster = start_cluster(self)

    async def client(self) -> rediscluster.RedisCluster:
        client = await rediscluster.connect(reactor, self.cluster.nodes, timeout=1.0)
        self.addCleanup(client.disconnect)
        return client

    async def database(self, port: int = mariadb.PORT, name: str | None = None) -> Database:
        if name is None:
            name = mariadb.temporary_database(self)
            mariadb.execute(name, f"CREATE TABLE {LAYOUT.tag_table} (id INT PRIMARY KEY, content VARCHAR(255))")
            mariadb.execute(name, f"CREATE TABLE {LAYOUT.topic_table} (id INT PRIMARY KEY, content VARCHAR(255))")
            mariadb.execute(name, f"INSERT INTO {LAYOUT.tag_table} VALUES (1, 'likes tea'), (2, '在镜头前')")
            mariadb.execute(name, f"INSERT INTO {LAYOUT.topic_table} VALUES (10, 'small talk'), (11, 'weather')")
        db = Database(
            "dictionary",
            mysql_connector(mariadb.HOST, port, mariadb.USER, mariadb.PASSWORD, name, 1.0, 2.0, 2.0),
            reactor,
            is_fault=mysql_is_fault,
            threads=2,
            request_timeout=2.0,
            retry_interval=0.5,
        )
        db.startService()
        self.addCleanup(db.stopService)
        await db.ready()
        return db

    async def write(self, client: rediscluster.RedisCluster, appid: str, uid: str,
                    tags: dict[int, str], topic_fields: dict[str, str], topics: dict[int, str],
                    memory: dict[str, str]) -> None:
        keys = LAYOUT.keys(appid, uid)
        commands: list[list[Any]] = [["DEL", k] for k in keys]
        hashes: tuple[dict[Any, str], ...] = (tags, topic_fields, topics, memory)
        for key, values in zip(keys, hashes, strict=False):
            if values:
                commands.append(["HSET", key, *[x for pair in values.items() for x in pair]])
        for result in await client.pipeline(commands):
            self.assertNotIsInstance(result, Exception)

    async def test_read_and_diff(self) -> None:
        """State written into the cluster is read back with its texts, and a change gives the right diff."""
        client = await self.client()
        db = await self.database()
        store = CountingStore(client)
        dictionary = Dictionary(db, LAYOUT, reactor)
        reader = StateReader(store, dictionary, LAYOUT, reactor)
        users = [("1.00002", str(i)) for i in range(30)]
        for appid, uid in users:
            await self.write(client, appid, uid, {1: tag(1, 2, True), 2: tag(3, 4, False)},
                             {"cur": "10", "prev": "11"}, {10: topic(5), 11: topic(6)}, {"uid": uid})
        results = await reader.read(users)
        # One pipeline call for everyone, and once more with the script's
        # text, which this new cluster had not seen.
        self.assertEqual(store.calls, [len(users), len(users)])
        self.assertEqual(dictionary.queries, 1)  # one query for every unknown id
        first = results[users[7]]
        assert isinstance(first, Snapshot)
        fields = status_fields(None, first)
        self.assertEqual(fields["tag"]["curTags"], [
            {"id": 1, "desc": "likes tea", "beginTime": 1, "endTime": 2, "isInUse": True},
            {"id": 2, "desc": "在镜头前", "beginTime": 3, "endTime": 4, "isInUse": False},
        ])
        self.assertEqual(fields["curTopic"], {"id": 10, "desc": "small talk", "prevId": 11, "prevDesc": "weather"})
        self.assertEqual(fields["memory"]["cur"], [{"key": "uid", "value": "7"}])
        self.assertEqual(fields["textMissing"], {"tagIds": [], "topicIds": [], "reason": ""})

        # A tag switched off, one removed, a topic with an unknown id, a fact changed.
        await self.write(client, *users[7], {1: tag(1, 2, False)}, {"cur": "12", "prev": "10"},
                         {10: topic(5), 12: topic(9)}, {"uid": "seven"})
        again = await reader.read(users)
        self.assertEqual(dictionary.queries, 2)  # 12 was unknown
        self.assertIs(again[users[0]], results[users[0]])  # unchanged users are not parsed again
        later = again[users[7]]
        assert isinstance(later, Snapshot)
        self.assertTrue(changed(first, later))
        diff = status_fields(first, later)
        self.assertEqual([(t["id"], t["isInUse"]) for t in diff["tag"]["newTags"]], [(1, False)])
        self.assertEqual([t["id"] for t in diff["tag"]["deletedTags"]], [2])
        self.assertEqual(diff["curTopic"], {"id": 12, "desc": "", "prevId": 10, "prevDesc": "small talk"})
        self.assertEqual([t["id"] for t in diff["curTopicList"]["newTopics"]], [12])
        self.assertEqual([t["id"] for t in diff["curTopicList"]["deletedTopics"]], [11])
        self.assertEqual(diff["memory"]["new"], [{"key": "uid", "value": "seven"}])
        self.assertEqual(diff["memory"]["deleted"], [{"key": "uid", "value": "7"}])
        self.assertEqual(diff["textMissing"]["topicIds"], [12])
        self.assertEqual(diff["textMissing"]["reason"], "not in the dictionary")
        self.assertEqual(len(store.calls), 3)
        # Idle users cost a nil reply each. The one that moved comes whole,
        # and so does user 7 while a text of its state is missing.
        await self.write(client, *users[3], {}, {}, {}, {"uid": "three"})
        third = await reader.read(users)
        self.assertEqual(store.calls[-1], len(users))
        self.assertEqual([r is None for r in store.replies[-1]], [u not in (users[3], users[7]) for u in users])
        self.assertIs(third[users[0]], results[users[0]])
        self.assertEqual(third[users[7]], later)
        moved = third[users[3]]
        assert isinstance(moved, Snapshot)
        self.assertEqual(moved.memory, {"uid": "three"})

    async def test_whole_state_reader_agrees(self) -> None:
        """The reader that reads whole states (no scripts) gives the same snapshots as the digest one."""
        client = await self.client()
        dictionary = Dictionary(await self.database(), LAYOUT, reactor)
        digests = StateReader(client, dictionary, LAYOUT, reactor)
        store = CountingStore(client)
        whole = StateReader(store, dictionary, LAYOUT, reactor, digests=False)
        users = [("1.00002", str(i)) for i in range(12)]
        for appid, uid in users:
            await self.write(client, appid, uid, {1: tag(1, 2, True)}, {"cur": "10"}, {10: topic(5)}, {"uid": uid})
        for round in range(2):
            await self.write(client, *users[round], {2: tag(3, 4, False)}, {"cur": "11", "prev": "10"},
                             {11: topic(6)}, {"uid": "moved"})
            a, b = await digests.read(users), await whole.read(users)
            for user in users:
                self.assertEqual(status_fields(None, a[user]), status_fields(None, b[user]))  # type: ignore[arg-type]
        self.assertEqual(store.calls, [4 * len(users)] * 2)  # four HGETALL per user

    async def test_scripts_flushed(self) -> None:
        """After SCRIPT FLUSH (or a node restart) the script is sent again and nothing is lost."""
        client = await self.client()
        store = CountingStore(client)
        reader = StateReader(store, Dictionary(None, LAYOUT, reactor), LAYOUT, reactor)
        users = [("1.00002", str(i)) for i in range(20)]
        for user in users:
            await self.write(client, *user, {}, {}, {}, {"id": user[1]})
        await reader.read(users)
        for node in self.cluster.nodes:
            self.cluster.command(node, "SCRIPT", "FLUSH")
        await self.write(client, *users[5], {}, {}, {}, {"id": "five"})
        results = await reader.read(users)
        self.assertEqual(store.calls[-2:], [len(users), len(users)])
        for user in users:
            result = results[user]
            assert isinstance(result, Snapshot)
            self.assertEqual(result.memory, {"id": "five" if user == users[5] else user[1]})

    async def test_scripts_refused(self) -> None:
        """A Redis that refuses scripts (an ACL here) is read whole from then on, and it is logged."""
        client = await self.client()
        for node in self.cluster.nodes:
            self.cluster.command(node, "ACL", "SETUSER", "default", "-@scripting")
        reader = StateReader(client, Dictionary(None, LAYOUT, reactor), LAYOUT, reactor)
        users = [("1.00002", str(i)) for i in range(10)]
        for user in users:
            await self.write(client, *user, {}, {}, {}, {"id": user[1]})
        logged: list[str] = []
        observer = lambda event: logged.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        results = await reader.read(users)
        self.assertFalse(reader.digests)
        self.assertEqual([r.memory for r in results.values()], [{"id": u[1]} for u in users])  # type: ignore[union-attr]
        self.assertTrue(any("refuses scripts" in line and "NOPERM" in line for line in logged), logged)

    async def test_text_added_later(self) -> None:
        """An id without a row is asked again once its absence has expired, and its text then shows."""
        client = await self.client()
        name = mariadb.temporary_database(self)
        mariadb.execute(name, f"CREATE TABLE {LAYOUT.tag_table} (id INT PRIMARY KEY, content VARCHAR(255))")
        mariadb.execute(name, f"CREATE TABLE {LAYOUT.topic_table} (id INT PRIMARY KEY, content VARCHAR(255))")
        db = await self.database(name=name)
        dictionary = Dictionary(db, LAYOUT, reactor, absent_ttl=0.0)
        reader = StateReader(client, dictionary, LAYOUT, reactor)
        user = ("1.00003", "u")
        await self.write(client, *user, {5: tag(1, 2, True)}, {}, {}, {})
        before = (await reader.read([user]))[user]
        assert isinstance(before, Snapshot)
        self.assertEqual(before.missing_tags, (5,))
        mariadb.execute(name, f"INSERT INTO {LAYOUT.tag_table} VALUES (5, 'new text')")
        after = (await reader.read([user]))[user]
        assert isinstance(after, Snapshot)
        self.assertEqual(after.tags[5]["desc"], "new text")
        self.assertTrue(after.complete)

    async def test_mysql_unreachable(self) -> None:
        """With MySQL unreachable the state is still read, ids are reported without text and why."""
        client = await self.client()
        probe = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory())
        dead = probe.getHost().port
        await probe.stopListening()
        db = await self.database(port=dead, name="nothing")
        self.assertFalse(db.available)
        dictionary = Dictionary(db, LAYOUT, reactor)
        reader = StateReader(client, dictionary, LAYOUT, reactor)
        user = ("1.00002", "m")
        await self.write(client, *user, {1: tag(1, 2, True)}, {"cur": "10"}, {10: topic(3)}, {"a": "b"})
        result = (await reader.read([user]))[user]
        assert isinstance(result, Snapshot)
        fields = status_fields(None, result)
        self.assertEqual(fields["tag"]["curTags"][0]["desc"], "")
        self.assertEqual(fields["curTopic"]["desc"], "")
        self.assertEqual(fields["memory"]["cur"], [{"key": "a", "value": "b"}])
        self.assertEqual(fields["textMissing"]["tagIds"], [1])
        self.assertEqual(fields["textMissing"]["topicIds"], [10])
        self.assertIn("MySQL unavailable", fields["textMissing"]["reason"])
        # No MySQL configured at all: the same, with that reason.
        bare = StateReader(client, Dictionary(None, LAYOUT, reactor), LAYOUT, reactor)
        result = (await bare.read([user]))[user]
        assert isinstance(result, Snapshot)
        self.assertEqual(result.missing_reason, "no MySQL configured")

    async def test_node_down(self) -> None:
        """With one master down its users get an error naming it while the other users are read."""
        client = await self.client()
        dictionary = Dictionary(None, LAYOUT, reactor)
        reader = StateReader(client, dictionary, LAYOUT, reactor)
        victim = self.cluster.nodes[0]
        users = [("1.00002", str(i)) for i in range(40)]
        for user in users:
            await self.write(client, *user, {}, {}, {}, {"id": user[1]})
        self.cluster.kill(victim)
        results = await reader.read(users)
        on_victim = [u for u in users if client.node_for(LAYOUT.keys(*u)[0]) == victim]
        self.assertTrue(on_victim and len(on_victim) < len(users))
        for user in users:
            result = results[user]
            if user in on_victim:
                self.assertIsInstance(result, ReadError)
                self.assertIn(f"{victim[0]}:{victim[1]}", str(result))
            else:
                assert isinstance(result, Snapshot)
                self.assertEqual(result.memory, {"id": user[1]})

    async def test_poller_end_to_end(self) -> None:
        """The poll timer pushes the first state and then each change written into the cluster."""
        client = await self.client()
        reader = StateReader(client, Dictionary(await self.database(), LAYOUT, reactor), LAYOUT, reactor)
        poller = StatusPoller(reader, reactor, interval=0.05)
        pushed: list[StatusUpdate] = []
        user = ("1.00002", "p")
        await self.write(client, *user, {1: tag(1, 2, True)}, {}, {}, {})
        poller.watch("session", *user, pushed.append)
        poller.start()
        self.addCleanup(poller.stop)
        await _until(lambda: len(pushed) >= 1)
        await self.write(client, *user, {1: tag(1, 2, True), 2: tag(3, 4, True)}, {}, {}, {})
        await _until(lambda: len(pushed) >= 2)
        fields = pushed[1].fields
        assert fields is not None
        self.assertEqual([(t["id"], t["desc"]) for t in fields["tag"]["newTags"]], [(2, "在镜头前")])


async def _until(check: Any, timeout: float = 5.0) -> None:
    from twisted.internet import task

    waited = 0.0
    while not check():
        if waited > timeout:
            raise AssertionError("condition not met in time")
        await task.deferLater(reactor, 0.02, lambda: None)  # type: ignore[arg-type]
        waited += 0.02

