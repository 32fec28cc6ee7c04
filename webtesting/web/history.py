"""
Conversation history: every turn a tester had with a bot, kept in the
registry database (table ``tb_history``) per (serviceId, appid, uname).

The relay hands each event to L{History.record} as it passes: a tester's
chat (C{say}), a bot reply (C{reply}, the agent's frame as it came), a state
push (C{state}, likewise), a login and a logout. Recording is an append to a
list; nothing is decoded or written on the way. A timer flushes the list
every C{flush_interval} seconds (sooner when C{batch} events wait) in one
transaction on the database's thread pool.

A flush writes one row per bot user (a I{chunk}: that user's events of the
flush, in order, as one JSON array), not one per event: a row costs the
database far more than its bytes. Chats and replies go in as they came and
are cut when read; state pushes are decoded on the pool's thread and cut to
what history keeps:

- C{reply}: C{content} and C{action}, or C{result}/C{code}/C{msg} of an
  error answer (a timeout, the link lost);
- C{state}: the differences (C{new}/C{deleted} of tags, topics and memory)
  and the current topic, kept only when something changed; the first state
  after a login is kept whole (C{cur}), the user's starting state.

An event's id is its row's id times L{PER_ROW} plus its place in the row.
A bot user keeps its last C{turns} turns (a turn starts with a C{say}; each
row counts its own); older rows are deleted as new turns come, a few turns
at a time. While the database is away, events wait in memory up to
C{max_buffer}, the oldest dropped beyond that (and counted in the log). A
read flushes first, so a page reloaded right after a chat sees it.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from webtesting.dbpool import DatabaseUnavailable
from webtesting.protocol import json_text
from webtesting.web.schema import dialect_sql as _sql

TABLE = "tb_history"

HISTORY_SCHEMA_MYSQL = """\
CREATE TABLE IF NOT EXISTS `tb_history` (
  `id` bigint NOT NULL AUTO_INCREMENT,
  `serviceId` int NOT NULL,
  `appid` varchar(32) NOT NULL,
  `uname` varchar(64) NOT NULL,
  `account` varchar(64) NOT NULL COMMENT 'the WebTesting user who was logged in',
  `turns` int NOT NULL COMMENT 'how many of the events are chats (say)',
  `at` bigint NOT NULL COMMENT 'the last event''s time, Unix epoch milliseconds',
  `events` mediumtext NOT NULL COMMENT 'JSON [[kind, at, body], ...] in order',
  PRIMARY KEY (`id`),
  KEY `botUser` (`serviceId`, `appid`, `uname`, `id`),
  KEY `account` (`account`, `id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""

HISTORY_SCHEMA_SQLITE = """\
CREATE TABLE IF NOT EXISTS tb_history (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  serviceId INTEGER NOT NULL,
  appid TEXT NOT NULL,
  uname TEXT NOT NULL,
  account TEXT NOT NULL,
  turns INTEGER NOT NULL,
  at INTEGER NOT NULL,
  events TEXT NOT NULL
)
"""

HISTORY_INDEX_SQLITE = "CREATE INDEX IF NOT EXISTS tb_history_bot_user ON tb_history (serviceId, appid, uname, id)"

# Events in one row at most; an event's id is its row's id * PER_ROW + its place.
PER_ROW = 1000

KINDS = ("say", "reply", "state", "login", "logout")

# One event as the relay hands it over: serviceId, appid, uname, account,
# kind, Unix ms, and the body (a chat's text, a routed frame's JSON bytes, or
# a dict).
Event = tuple[int, str, str, str, str, int, Any]

_DIFFS = (("tag", "newTags", "deletedTags"), ("curTopicList", "newTopics", "deletedTopics"),
          ("memory", "new", "deleted"))



_string = json.encoder.encode_basestring  # type: ignore[attr-defined]  # as json.dumps(str, ensure_ascii=False)


class _Chunk:
    """One row being built: a bot user's events under one account, as JSON texts."""

    __slots__ = ("user", "account", "parts", "said", "at")

    def __init__(self, user: tuple[int, str, str], account: str) -> None:
        self.user = user
        self.account = account
        self.parts: list[str] = []
        self.said = 0  # how many are chats (say)
        self.at = 0  # the last one's time


def _load(body: Any) -> dict[str, Any] | None:
    if isinstance(body, dict):
        return body
    try:
        message = json.loads(body)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def reply_body(body: Any) -> dict[str, Any] | None:
    """What history keeps of an aichatResp."""
    message = _load(body)
    if message is None:
        return None
    if message.get("result", 1) != 1:
        return {"result": message.get("result"), "code": message.get("code", ""), "msg": message.get("msg", "")}
    return {"content": message.get("content", ""), "action": message.get("action", "")}


def state_body(body: Any, first: bool) -> dict[str, Any] | None:
    """
    What history keeps of a getUserStatusResp: the differences and the
    current topic; the current lists too when C{first}.
    """
    message = _load(body)
    if message is None or message.get("result", 1) != 1:
        return None
    kept: dict[str, Any] = {"curTopic": message.get("curTopic") or {}}
    for part, new, deleted in _DIFFS:
        section = message.get(part) or {}
        diff = {new: section.get(new) or [], deleted: section.get(deleted) or []}
        if first:
            cur = {"tag": "curTags", "curTopicList": "curTopics", "memory": "cur"}[part]
            diff[cur] = section.get(cur) or []
        kept[part] = diff
    if first:
        kept["first"] = True
    return kept


class History(service.Service):
    """Records events as they pass and writes them in batches (see the module's docstring)."""

    _log = Logger()

    def __init__(self, db: Any, dialect_name: str, clock: Any = None, *, turns: int = 200,
                 flush_interval: float = 1.0, batch: int = 10000, max_buffer: int = 50000) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.db = db
        self._dialect = dialect_name
        self._clock = clock
        self.turns = turns
        self.flush_interval = flush_interval
        self.batch = batch
        self.max_buffer = max_buffer
        self._buffer: list[Event] = []
        self._in_flight: list[Event] = []  # the batch being written
        self._timer: Any = None
        self._flushing: Deferred[None] | None = None
        self._recorded = 0  # events recorded so far
        self._written = 0  # of which the first this many are written
        self._waiting: list[tuple[int, Deferred[None]]] = []  # flush() callers: (events needed, Deferred)
        self._dropped = 0
        # Per bot user, on the flush thread only: the last topic written, the
        # turns written since the last trim, and whether the next state is a
        # login's first one.
        self._topic: dict[tuple[int, str, str], Any] = {}
        self._since_trim: dict[tuple[int, str, str], int] = {}
        self._first: set[tuple[int, str, str]] = set()
        self._insert = _sql(dialect_name, f"INSERT INTO {TABLE} (serviceId, appid, uname, account, turns, at, events) "
                                          "VALUES (%s, %s, %s, %s, %s, %s, %s)")
        self._rows_back = _sql(dialect_name, f"SELECT id, turns FROM {TABLE} WHERE serviceId = %s AND appid = %s "
                                             "AND uname = %s AND turns > 0 ORDER BY id DESC LIMIT %s")
        self._trim = _sql(dialect_name, f"DELETE FROM {TABLE} WHERE serviceId = %s AND appid = %s "
                                        "AND uname = %s AND id < %s")

    # -- recording (the relay's hot path) ---------------------------------------

    def record(self, service_id: int, appid: str, uname: str, account: str, kind: str, body: Any) -> None:
        """Keep one event for the next flush."""
        self._buffer.append((service_id, appid, uname, account, kind, int(self._clock.seconds() * 1000), body))
        self._recorded += 1
        if self._timer is None:
            if self._flushing is None and self.running:
                self._timer = self._clock.callLater(self.flush_interval, self._tick)
        elif len(self._buffer) == self.batch:
            self._timer.reset(0)

    def _tick(self) -> None:
        self._timer = None
        if self._flushing is None and self._buffer:
            self._start()

    # -- writing ------------------------------------------------------------------

    def flush(self) -> Deferred[None]:
        """
        Fire once every event recorded before this call is written, or once a
        write failed (the events wait for the next one).
        """
        target = self._recorded
        if self._written >= target or not (self._buffer or self._flushing):
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiting.append((target, waiter))
        if self._flushing is None:
            self._start()
        return waiter

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        events, self._buffer = self._buffer, []
        self._in_flight = events
        upto = self._recorded
        self._flushing = self.db.run(lambda cursor: self._write(cursor, events))
        self._flushing.addCallbacks(lambda _: self._done(upto), lambda f: self._failed(f, events))

    def _failed(self, failure: Any, events: list[Event]) -> None:
        # Put the batch back in front of what came meanwhile; keep the newest.
        self._in_flight = []
        self._buffer = events + self._buffer
        over = len(self._buffer) - self.max_buffer
        if over > 0:
            del self._buffer[:over]
            self._dropped += over
        reason = failure.value if failure.check(DatabaseUnavailable) else failure.getErrorMessage()
        self._log.warn("history: {count} events wait to be written ({reason}); {dropped} dropped so far",
                       count=len(self._buffer), reason=str(reason), dropped=self._dropped)
        if not failure.check(DatabaseUnavailable):
            self._log.failure("history: writing failed", failure)
        self._done(None)

    def _done(self, upto: int | None) -> None:
        self._flushing = None
        self._in_flight = []
        if upto is not None:
            self._written = upto
        # After a failure every waiter goes on (a read shows what is written).
        ready = [w for t, w in self._waiting if upto is None or t <= upto]
        self._waiting = [(t, w) for t, w in self._waiting if upto is not None and t > upto]
        if self._waiting and self._buffer:
            self._start()
        elif self._buffer and self.running and self._timer is None:
            self._timer = self._clock.callLater(
                0 if len(self._buffer) >= self.batch else self.flush_interval, self._tick)
        for waiter in ready:
            waiter.callback(None)

    def _write(self, cursor: Any, events: list[Event]) -> None:
        """On the database's thread: cut the states, one row per bot user and account, trim."""
        # One _Chunk per row: a bot user's events under one account, in order
        # (a new row whenever the account changes, which a takeover does).
        # Each event is written as its JSON text here, in one pass: a chat's
        # text with the C encoder of a string, an agent's reply as it came
        # (the relay forwards it to pages as it is, so it is JSON already).
        chunks: list[_Chunk] = []
        last: dict[tuple[int, str, str], _Chunk] = {}
        turns: dict[tuple[int, str, str], int] = {}
        for service_id, appid, uname, account, kind, at, body in events:
            user = (service_id, appid, uname)
            said = 0
            if kind == "say":
                turns[user] = turns.get(user, 0) + 1
                said = 1
                part = f'["say",{at},{_string(body)}]'
            elif kind == "reply":
                text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
                if isinstance(text, str) and text.startswith("{"):
                    part = f'["reply",{at},{text}]'
                else:
                    part = json_text([kind, at, text])
            elif kind == "state":
                first = user in self._first
                kept = state_body(body, first)
                if kept is None:
                    continue
                self._first.discard(user)
                topic = kept["curTopic"]
                if not first and topic == self._topic.get(user) and not _changed(kept):
                    continue  # nothing moved
                self._topic[user] = topic
                part = json_text([kind, at, kept])
            else:  # login, logout
                if kind == "login":
                    self._first.add(user)
                else:
                    self._first.discard(user)
                self._topic.pop(user, None)
                part = json_text([kind, at, body if isinstance(body, dict) else {}])
            chunk = last.get(user)
            if chunk is None or chunk.account != account or len(chunk.parts) >= PER_ROW:
                chunk = last[user] = _Chunk(user, account)
                chunks.append(chunk)
            chunk.parts.append(part)
            chunk.said += said
            chunk.at = at
        rows = [(*c.user, c.account, c.said, c.at, "[" + ",".join(c.parts) + "]") for c in chunks]
        if rows:
            cursor.executemany(self._insert, rows)
        # Trimming reads the user's rows back: once every `turns` turns, so a user
        # holds between `turns` and twice that (a read cuts to `turns`).
        every = self.turns
        for user, count in turns.items():
            since = self._since_trim.get(user, 0) + count
            if since < every:
                self._since_trim[user] = since
                continue
            self._since_trim.pop(user, None)
            cursor.execute(self._rows_back, [*user, self.turns])
            kept_turns = 0
            for row_id, row_turns in cursor.fetchall():
                kept_turns += row_turns
                if kept_turns >= self.turns:
                    cursor.execute(self._trim, [*user, row_id])
                    break

    # -- reading ------------------------------------------------------------------

    async def read(self, service_id: int, appid: str, uname: str, *, account: str | None = None,
                   turns: int | None = None, before: int | None = None) -> list[dict[str, Any]]:
        """
        The events of a bot user's last C{turns} turns (before event id
        C{before}), oldest first; only those of C{account} unless it is None.
        """
        await self.flush()
        turns = min(turns or self.turns, self.turns)
        where = "serviceId = %s AND appid = %s AND uname = %s"
        params: list[Any] = [service_id, appid, uname]
        if account is not None:
            where += " AND account = %s"
            params.append(account)
        if before is not None:
            where += " AND id <= %s"
            params.append(before // PER_ROW)
        select = _sql(self._dialect, f"SELECT id, account, turns, events FROM {TABLE} WHERE {where} "
                                     "ORDER BY id DESC LIMIT 50 OFFSET %s")

        def work(cursor: Any) -> list[Any]:
            rows: list[Any] = []
            said = 0
            while said < turns:
                cursor.execute(select, [*params, len(rows)])
                page = cursor.fetchall()
                rows += page
                said += sum(r[2] for r in page)
                if len(page) < 50:
                    break
            return rows

        rows = await self.db.run(work)
        found: list[dict[str, Any]] = []
        for row_id, row_account, _turns, text in reversed(rows):
            try:
                chunk = json.loads(text)
            except ValueError:
                self._log.warn("history: row {row_id} is not JSON; left out", row_id=row_id)
                continue
            for place, (kind, at, body) in enumerate(chunk):
                event_id = row_id * PER_ROW + place
                if before is None or event_id < before:
                    found.append(_event(event_id, row_account, kind, at, body))
        says = [i for i, e in enumerate(found) if e["kind"] == "say"]
        if len(says) > turns:
            found = found[says[-turns]:]
        return found

    async def bot_users(self, account: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The bot users with history (of C{account}, unless None), the latest first."""
        await self.flush()
        where, params = ("WHERE account = %s", [account]) if account is not None else ("", [])
        select = _sql(self._dialect, f"SELECT serviceId, appid, uname, MAX(id), MAX(at) FROM {TABLE} {where} "
                                     "GROUP BY serviceId, appid, uname ORDER BY MAX(id) DESC LIMIT %s")

        def work(cursor: Any) -> list[dict[str, Any]]:
            cursor.execute(select, [*params, limit])
            return [{"serviceId": r[0], "appid": r[1], "uname": r[2], "at": r[4]} for r in cursor.fetchall()]

        return await self.db.run(work)

    # -- the service's life ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self._buffer and self._timer is None:
            self._timer = self._clock.callLater(0, self._tick)

    def stopService(self) -> Deferred[None]:
        """Write what waits before the database closes."""
        super().stopService()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return self.flush()

    def backlog(self) -> dict[str, Any]:
        """What waits to be written: how many events, the oldest one's age, and how many were dropped."""
        oldest = [batch[0][5] for batch in (self._in_flight, self._buffer) if batch]
        lag = max(0.0, self._clock.seconds() - min(oldest) / 1000) if oldest else 0.0
        return {"waiting": len(self._buffer) + len(self._in_flight), "lagSeconds": lag, "dropped": self._dropped}

    def describe(self) -> dict[str, int]:
        """Counters for logs and metrics."""
        return {"waiting": len(self._buffer), "recorded": self._recorded, "written": self._written,
                "dropped": self._dropped}


def _changed(kept: dict[str, Any]) -> bool:
    return any(kept[part][new] or kept[part][deleted] for part, new, deleted in _DIFFS)


def _event(event_id: int, account: str, kind: str, at: int, body: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"id": event_id, "account": account, "kind": kind, "at": at}
    if kind == "say":
        event["content"] = body
    elif kind == "reply":
        event.update(reply_body(body) or {})
    elif isinstance(body, dict):
        event.update(body)
    return event
