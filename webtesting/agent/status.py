"""
The agent's user-state reader: a user's tags, topics and memory, read from
the bot's Redis Cluster, with tag and topic ids turned into text through the
bot's MySQL, and the difference from what the browser saw last.

Three layers, kept apart so that the decisions are tested with no network:

1. Pure functions: L{parse_state} turns the four hashes of a user (see
   L{webtesting.statelayout}) into a L{RawState}; L{resolve} adds the texts;
   L{status_fields} and L{changed} compare two L{Snapshot}s.
2. I/O: L{Dictionary} (MySQL id -> text, cached) and L{StateReader} (one
   Redis pipeline per read for any number of users, then one dictionary
   query for all ids not seen before). An idle user costs one script call
   answered with nil (L{STATE_SCRIPT}): the state is sent whole only when
   its digest moved.
3. L{StatusPoller}: polls the watched users every second, a chunk of users
   at a time, and pushes each change; a poll still running when the next one
   is due makes that one skip.

The fields of C{getUserStatusResp} (SPEC section 3), as L{status_fields}
makes them:

- C{tag}: C{curTags}, C{newTags}, C{deletedTags}; items C{{id, desc,
  beginTime, endTime, isInUse}}.
- C{curTopic}: C{{id, desc, prevId, prevDesc}}; C{id}/C{prevId} are C{null}
  (and the descs C{""}) when there is no current/previous topic.
- C{curTopicList}: C{curTopics}, C{newTopics}, C{deletedTopics}; items
  C{{id, desc, endTime}}.
- C{memory}: C{cur}, C{new}, C{deleted}; items C{{key, value}}.
- C{textMissing}: C{{tagIds, topicIds, reason}}: ids whose text could not be
  found (their C{desc} is C{""}) and why (MySQL unreachable, or no such row);
  empty lists and C{""} when every id has its text.

What counts as new and deleted, against the previous snapshot sent to the
same browser session (the first snapshot has every new/deleted list empty):

- A tag or topic whose id was not there before is new; one whose id is gone
  is deleted. A tag whose C{beginTime}, C{endTime} or C{isInUse} changed, or
  a topic whose C{endTime} changed, is listed in C{newTags}/C{newTopics} with
  its new values (it is not deleted: it is still current).
- A memory fact whose key is new is new. A fact whose value changed is
  listed twice: the new value in C{new} and the old one in C{deleted}. A key
  that is gone is deleted with its last value.
- A text that arrives later (MySQL came back) changes C{desc} only: nothing
  becomes new, but the snapshot counts as changed so the text is pushed.

Lists are sorted: tags and topics by id, memory by key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from webtesting import rediscluster
from webtesting.metrics import POLL_SECONDS
from webtesting.statelayout import StateLayout

T = TypeVar("T")

_log = Logger()

User = tuple[str, str]  # (appid, uid)


# -- pure: parsing ----------------------------------------------------------


@dataclass(frozen=True)
class TagValue:
    begin: int | None
    end: int | None
    in_use: bool


@dataclass(frozen=True)
class RawState:
    """A user's state as stored, ids not yet turned into text."""

    tags: Mapping[int, TagValue] = field(default_factory=dict)
    cur_topic: int | None = None
    prev_topic: int | None = None
    topics: Mapping[int, int | None] = field(default_factory=dict)  # id -> endTime
    memory: Mapping[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()  # entries skipped because they made no sense

    def tag_ids(self) -> set[int]:
        return set(self.tags)

    def topic_ids(self) -> set[int]:
        ids = set(self.topics)
        if self.cur_topic is not None:
            ids.add(self.cur_topic)
        if self.prev_topic is not None:
            ids.add(self.prev_topic)
        return ids


def _pairs(reply: Any) -> Iterable[tuple[Any, Any]]:
    """The (field, value) pairs of an HGETALL reply: a flat list or a mapping."""
    # Plain lists first: the ABC check for Mapping is slow and this runs
    # four times per user per poll.
    if isinstance(reply, (list, tuple)):
        return zip(reply[0::2], reply[1::2], strict=False)
    if reply is None:
        return ()
    if isinstance(reply, Mapping):
        return reply.items()
    raise ValueError(f"not a hash: {reply!r}")


def _text(value: Any) -> str:
    if type(value) is str:
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _int_or_none(value: Any) -> int | None:
    if type(value) is int:
        return value
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    text = _text(value).strip()
    return int(text) if text else None


def parse_state(tags: Any, topic: Any, topics: Any, memory: Any) -> RawState:
    """
    A L{RawState} from the replies of HGETALL on the user's four keys (in
    L{StateLayout.keys} order). Entries that make no sense are skipped and
    named in C{problems}; nothing here raises for bad data.
    """
    problems: list[str] = []
    tag_map: dict[int, TagValue] = {}
    for name, raw in _pairs(tags):
        try:
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
            tag_map[int(name)] = TagValue(
                _int_or_none(value.get("beginTime")),
                _int_or_none(value.get("endTime")),
                bool(value.get("isInUse", False)),
            )
        except (ValueError, TypeError) as e:
            problems.append(f"tag {_text(name)!r}: {e}")
    cur = prev = None
    for name, raw in _pairs(topic):
        try:
            if name == "cur":
                cur = _int_or_none(raw)
            elif name == "prev":
                prev = _int_or_none(raw)
        except ValueError as e:
            problems.append(f"topic {_text(name)}: {e}")
    topic_map: dict[int, int | None] = {}
    for name, raw in _pairs(topics):
        try:
            value = json.loads(raw)
            end = _int_or_none(value.get("endTime")) if isinstance(value, dict) else _int_or_none(value)
            topic_map[int(name)] = end
        except (ValueError, TypeError, AttributeError) as e:
            problems.append(f"topic list entry {_text(name)!r}: {e}")
    memory_map = {_text(k): _text(v) for k, v in _pairs(memory)}
    return RawState(tag_map, cur, prev, topic_map, memory_map, tuple(problems))


# -- pure: texts and snapshots ----------------------------------------------


@dataclass(frozen=True)
class Texts:
    """
    What the dictionary knows about some ids.

    @ivar reason: why some ids have no text ("" when all have one).
    """

    tags: Mapping[int, str] = field(default_factory=dict)
    topics: Mapping[int, str] = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True)
class Snapshot:
    """A user's state with texts: what the browser is shown."""

    tags: Mapping[int, dict[str, Any]]  # id -> item
    cur_topic: dict[str, Any]
    topics: Mapping[int, dict[str, Any]]  # id -> item
    memory: Mapping[str, str]
    missing_tags: tuple[int, ...] = ()
    missing_topics: tuple[int, ...] = ()
    missing_reason: str = ""

    @property
    def complete(self) -> bool:
        """Whether every id has its text."""
        return not self.missing_tags and not self.missing_topics


def resolve(raw: RawState, texts: Texts) -> Snapshot:
    """The L{Snapshot} of C{raw}, ids turned into text with C{texts}."""
    missing_tags: set[int] = set()
    missing_topics: set[int] = set()

    def tag_text(i: int) -> str:
        text = texts.tags.get(i)
        if text is None:
            missing_tags.add(i)
            return ""
        return text

    def topic_text(i: int | None) -> str:
        if i is None:
            return ""
        text = texts.topics.get(i)
        if text is None:
            missing_topics.add(i)
            return ""
        return text

    tags = {
        i: {"id": i, "desc": tag_text(i), "beginTime": v.begin, "endTime": v.end, "isInUse": v.in_use}
        for i, v in raw.tags.items()
    }
    cur_topic = {
        "id": raw.cur_topic,
        "desc": topic_text(raw.cur_topic),
        "prevId": raw.prev_topic,
        "prevDesc": topic_text(raw.prev_topic),
    }
    topics = {i: {"id": i, "desc": topic_text(i), "endTime": end} for i, end in raw.topics.items()}
    missing = bool(missing_tags or missing_topics)
    return Snapshot(
        tags,
        cur_topic,
        topics,
        dict(raw.memory),
        tuple(sorted(missing_tags)),
        tuple(sorted(missing_topics)),
        (texts.reason or "not in the dictionary") if missing else "",
    )


# -- pure: differences ------------------------------------------------------

_TAG_VALUE = ("beginTime", "endTime", "isInUse")
_TOPIC_VALUE = ("endTime",)


def _differs(a: dict[str, Any], b: dict[str, Any], names: tuple[str, ...]) -> bool:
    return any(a[n] != b[n] for n in names)


def _listing(
    prev: Mapping[int, dict[str, Any]] | None, cur: Mapping[int, dict[str, Any]], names: tuple[str, ...]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    current = [cur[i] for i in sorted(cur)]
    if prev is None:
        return current, [], []
    new = [cur[i] for i in sorted(cur) if i not in prev or _differs(prev[i], cur[i], names)]
    deleted = [prev[i] for i in sorted(prev) if i not in cur]
    return current, new, deleted


def status_fields(prev: Snapshot | None, cur: Snapshot) -> dict[str, Any]:
    """
    The state fields of C{getUserStatusResp}: C{cur} as the browser is to
    show it, with what is new and deleted since C{prev} (None: the first
    snapshot, nothing new or deleted).
    """
    cur_tags, new_tags, deleted_tags = _listing(None if prev is None else prev.tags, cur.tags, _TAG_VALUE)
    cur_topics, new_topics, deleted_topics = _listing(None if prev is None else prev.topics, cur.topics, _TOPIC_VALUE)
    memory_cur = [{"key": k, "value": cur.memory[k]} for k in sorted(cur.memory)]
    memory_new: list[dict[str, str]] = []
    memory_deleted: list[dict[str, str]] = []
    if prev is not None:
        for k in sorted(set(cur.memory) | set(prev.memory)):
            old, now = prev.memory.get(k), cur.memory.get(k)
            if old == now:
                continue
            if now is not None:
                memory_new.append({"key": k, "value": now})
            if old is not None:
                memory_deleted.append({"key": k, "value": old})
    return {
        "tag": {"curTags": cur_tags, "newTags": new_tags, "deletedTags": deleted_tags},
        "curTopic": dict(cur.cur_topic),
        "curTopicList": {"curTopics": cur_topics, "newTopics": new_topics, "deletedTopics": deleted_topics},
        "memory": {"cur": memory_cur, "new": memory_new, "deleted": memory_deleted},
        "textMissing": {
            "tagIds": list(cur.missing_tags),
            "topicIds": list(cur.missing_topics),
            "reason": cur.missing_reason,
        },
    }


def changed(prev: Snapshot | None, cur: Snapshot) -> bool:
    """Whether C{cur} is worth pushing after C{prev} (any difference at all, texts included)."""
    return prev is not cur and (prev is None or prev != cur)


# -- I/O: the dictionary ----------------------------------------------------


class Runner(Protocol):
    """Runs blocking DB-API work off the reactor (L{webtesting.dbpool.Database} is one)."""

    def run(self, work: Callable[[Any], T]) -> Deferred[T]:
        """Run C{work(cursor)} in a transaction; fire with its result."""


class Dictionary:
    """
    Tag and topic texts from the bot's MySQL (tables C{layout.tag_table} and
    C{layout.topic_table}, columns C{id}, C{content}), cached in memory.

    Ids not in the cache are fetched all together, in one query. An id with
    no row is asked again only after C{absent_ttl} seconds, and after a
    failed query (MySQL away, too slow) none is asked for C{retry_interval}
    seconds: meanwhile those ids come back without text and with the reason.
    L{lookup} never fails.

    Texts are assumed not to change once written (the bot adds rows); call
    L{clear} to forget them.
    """

    def __init__(
        self,
        db: Runner | None,
        layout: StateLayout,
        clock: Any,
        *,
        timeout: float = 2.0,
        retry_interval: float = 5.0,
        absent_ttl: float = 30.0,
    ) -> None:
        self._db = db
        self._layout = layout
        self._clock = clock
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._absent_ttl = absent_ttl
        self._tags: dict[int, str] = {}
        self._topics: dict[int, str] = {}
        self._absent: dict[tuple[bool, int], float] = {}  # (is tag, id) -> ask again after
        self._blocked_until = float("-inf")
        self.reason = "" if db is not None else "no MySQL configured"
        self.queries = 0

    def clear(self) -> None:
        self._tags.clear()
        self._topics.clear()
        self._absent.clear()

    def refresh(self) -> None:
        """
        MySQL is back: ask again at once for every id that has no text, those
        found missing while it was away or restarting included (the texts
        already known are kept).
        """
        self._absent.clear()
        self._blocked_until = float("-inf")

    def lookup(self, tag_ids: Iterable[int], topic_ids: Iterable[int]) -> Deferred[Texts]:
        """The texts of these ids: from the cache, or with one query for the unknown ones."""
        tag_ids, topic_ids = set(tag_ids), set(topic_ids)
        now = self._clock.seconds()
        unknown_tags = [i for i in tag_ids if i not in self._tags and self._absent.get((True, i), now) <= now]
        unknown_topics = [
            i for i in topic_ids if i not in self._topics and self._absent.get((False, i), now) <= now
        ]
        if not unknown_tags and not unknown_topics:
            return defer.succeed(self._texts(tag_ids, topic_ids))
        if self._db is None or now < self._blocked_until:
            return defer.succeed(self._texts(tag_ids, topic_ids))
        self.queries += 1
        work = _Query(self._layout.tag_table, self._layout.topic_table, sorted(unknown_tags), sorted(unknown_topics))
        try:
            d = self._db.run(work)
        except Exception as e:  # noqa: BLE001 - a runner that raises is one more way to fail
            d = defer.fail(e)
        d.addTimeout(self._timeout, self._clock)
        d.addCallbacks(self._found, self._failed, callbackArgs=(work, now))
        return d.addCallback(lambda _: self._texts(tag_ids, topic_ids))

    def _found(self, rows: list[tuple[Any, Any, Any]], work: _Query, asked_at: float) -> None:
        for kind, ident, content in rows:
            (self._tags if int(kind) == 0 else self._topics)[int(ident)] = _text(content)
        until = asked_at + self._absent_ttl
        for i in work.tag_ids:
            if i not in self._tags:
                self._absent[(True, i)] = until
        for i in work.topic_ids:
            if i not in self._topics:
                self._absent[(False, i)] = until
        if self.reason:
            _log.info("tag/topic dictionary readable again")
        self.reason = ""

    def _failed(self, failure: Failure) -> None:
        if failure.check(defer.TimeoutError):
            reason = f"MySQL did not answer within {self._timeout:g} s"
        else:
            reason = f"MySQL unavailable: {_describe(failure.value)}"
        if reason != self.reason:
            _log.warn("tag/topic texts unavailable: {reason}", reason=reason)
        self.reason = reason
        self._blocked_until = self._clock.seconds() + self._retry_interval

    def _texts(self, tag_ids: set[int], topic_ids: set[int]) -> Texts:
        tags = {i: self._tags[i] for i in tag_ids if i in self._tags}
        topics = {i: self._topics[i] for i in topic_ids if i in self._topics}
        reason = ""
        if len(tags) < len(tag_ids) or len(topics) < len(topic_ids):
            reason = self.reason or "not in the dictionary"
        return Texts(tags, topics, reason)


class _Query:
    """One query for the texts of some tag and topic ids (runs in a pool thread)."""

    def __init__(self, tag_table: str, topic_table: str, tag_ids: list[int], topic_ids: list[int]) -> None:
        self.tag_table = tag_table
        self.topic_table = topic_table
        self.tag_ids = tag_ids
        self.topic_ids = topic_ids

    def __call__(self, cursor: Any) -> list[tuple[Any, Any, Any]]:
        parts: list[str] = []
        params: list[int] = []
        # Table names come from a checked StateLayout (plain identifiers).
        for kind, table, ids in ((0, self.tag_table, self.tag_ids), (1, self.topic_table, self.topic_ids)):
            if ids:
                marks = ",".join(["%s"] * len(ids))
                parts.append(f"SELECT {kind}, id, content FROM `{table}` WHERE id IN ({marks})")
                params.extend(ids)
        cursor.execute(" UNION ALL ".join(parts), params)
        return list(cursor.fetchall())


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    args: tuple[Any, ...] = getattr(error, "args", ())
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        return f"{args[1]} ({args[0]})"  # pymysql's (code, message)
    return str(error) or type(error).__name__


# -- I/O: reading users -----------------------------------------------------


class ReadError(Exception):
    """One user's state could not be read; C{str()} says why."""


class StateStore(Protocol):
    """Enough of L{webtesting.rediscluster.RedisCluster} for reading state."""

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> Deferred[list[Any]]:
        """Run the commands, one pipeline per node; failures come back in place."""


# One user's four hashes, read in Redis, and sent only when they changed: the
# reply is nil when their digest is still the one the reader passes in
# (ARGV[1]), else {digest, tags, topic, topics, memory}. An idle user then
# costs one short command and a nil reply instead of four hashes parsed and
# compared. All four keys share a slot (StateLayout insists), so one script
# call runs on one node of a cluster. HGETALL's order may change while the
# content does not (a rehash): that only costs one needless full reply.
STATE_SCRIPT = """\
local state = {}
for i = 1, 4 do state[i] = redis.call('HGETALL', KEYS[i]) end
local digest = redis.sha1hex(cmsgpack.pack(state))
if digest == ARGV[1] then return false end
return {digest, state[1], state[2], state[3], state[4]}
"""
STATE_SCRIPT_SHA = hashlib.sha1(STATE_SCRIPT.encode("ascii")).hexdigest()

_UNCHANGED = object()


def _script_missing(reply: Any) -> bool:
    return isinstance(reply, Exception) and str(reply).startswith("NOSCRIPT")


def _scripting_refused(reply: Any) -> bool:
    """Redis will not run scripts for us at all (an old server, or an ACL)."""
    if not isinstance(reply, Exception):
        return False
    text = str(reply)
    return text.startswith("NOPERM") or "unknown command" in text


class StateReader:
    """
    Reads the state of many users at once: one pipeline call (so one
    pipeline per cluster node, as every user's four keys share a slot) and
    at most one dictionary query.

    With C{digests} (the default) each user costs one L{STATE_SCRIPT} call
    that answers nil while the user's state has the digest of the last read,
    and the whole state only when it moved. Without (or when the server
    refuses scripts, which is logged once), each user's four hashes are read
    with HGETALL every time, and compared with the last ones here.

    Either way a user whose state did not change gets last time's snapshot
    back without parsing again (when it had all its texts).
    """

    def __init__(
        self,
        redis: StateStore,
        dictionary: Dictionary,
        layout: StateLayout,
        clock: Any,
        *,
        timeout: float = 2.0,
        digests: bool = True,
    ) -> None:
        self._redis = redis
        self._dictionary = dictionary
        self._layout = layout
        self._clock = clock
        self._timeout = timeout
        self.digests = digests
        # user -> (what its state was last time: the digest, or the four
        # HGETALL replies; the snapshot made of it)
        self._last: dict[User, tuple[Any, Snapshot]] = {}
        self._keys: dict[User, tuple[str, str, str, str]] = {}
        self._asks: dict[User, tuple[str, rediscluster.Prepared]] = {}

    def forget(self, user: User) -> None:
        """Drop what is remembered about C{user} (it logged out)."""
        self._last.pop(user, None)
        self._keys.pop(user, None)
        self._asks.pop(user, None)

    def read(self, users: Sequence[User]) -> Deferred[dict[User, Snapshot | ReadError]]:
        """Each user's snapshot, or the L{ReadError} that stopped it. Never fails."""
        users = list(dict.fromkeys(users))
        d = defer.ensureDeferred(self._read(users))
        d.addErrback(self._all_failed, users)
        return d

    def _user_keys(self, user: User) -> tuple[str, str, str, str]:
        keys = self._keys.get(user)
        if keys is None:
            keys = self._keys[user] = self._layout.keys(*user)
        return keys

    def _fetch(self, commands: list[tuple[Any, ...]]) -> Deferred[list[Any]]:
        # maybeDeferred: a store that raises fails this read only.
        d: Deferred[list[Any]] = defer.maybeDeferred(self._redis.pipeline, commands)
        d.addTimeout(self._timeout, self._clock)
        return d

    async def _read(self, users: list[User]) -> dict[User, Snapshot | ReadError]:
        # The last snapshot of each user as this read starts: a nil reply
        # means "still this one", even if the user is forgotten meanwhile.
        before = [self._last.get(user) for user in users]
        if self.digests:
            items = await self._read_digests(users, before)
            if items is not None:
                return await self._settle(users, before, items)
        commands = [("HGETALL", key) for user in users for key in self._user_keys(user)]
        replies = await self._fetch(commands)
        items = []
        for n in range(len(users)):
            mine = replies[4 * n : 4 * n + 4]
            error = next((r for r in mine if isinstance(r, Exception)), None)
            items.append(error if error is not None else (mine, mine))
        return await self._settle(users, before, items)

    async def _read_digests(self, users: list[User], before: list[tuple[Any, Snapshot] | None]) -> list[Any] | None:
        """Per user: _UNCHANGED, an exception, or (digest, four replies); None if scripts are refused."""

        def command(verb: str, n: int) -> Any:
            last = before[n]
            digest = last[0] if last is not None and last[1].complete else ""
            if verb == "EVAL":
                return (verb, STATE_SCRIPT, 4, *self._user_keys(users[n]), digest)
            # The same command goes out every second while the user is idle:
            # encoded and routed once.
            cached = self._asks.get(users[n])
            if cached is None or cached[0] != digest:
                cached = self._asks[users[n]] = (
                    digest, rediscluster.Prepared(verb, STATE_SCRIPT_SHA, 4, *self._user_keys(users[n]), digest)
                )
            return cached[1]

        replies = await self._fetch([command("EVALSHA", n) for n in range(len(users))])
        missing = [n for n, reply in enumerate(replies) if _script_missing(reply)]
        if missing:  # a node that has not seen the script yet (new, restarted, flushed)
            for n, reply in zip(missing, await self._fetch([command("EVAL", n) for n in missing]), strict=False):
                replies[n] = reply
        refused = next((reply for reply in replies if _scripting_refused(reply)), None)
        if refused is not None:
            _log.warn("Redis refuses scripts ({error}): reading whole states every poll from now on",
                      error=str(refused))
            self.digests = False
            return None
        items: list[Any] = []
        for n, reply in enumerate(replies):
            if reply is None and before[n] is not None:
                items.append(_UNCHANGED)
            elif isinstance(reply, Exception):
                items.append(reply)
            elif isinstance(reply, list) and len(reply) == 5:
                items.append((reply[0], reply[1:]))
            else:
                items.append(ReadError(f"unexpected reply to the state script: {reply!r:.80}"))
        return items

    def _all_failed(self, failure: Failure, users: list[User]) -> dict[User, Snapshot | ReadError]:
        if failure.check(defer.TimeoutError):
            error = ReadError(f"Redis did not answer within {self._timeout:g} s")
        else:
            error = ReadError(f"Redis unavailable: {failure.value}")
        return {user: error for user in users}

    async def _settle(
        self, users: list[User], before: list[tuple[Any, Snapshot] | None], items: list[Any]
    ) -> dict[User, Snapshot | ReadError]:
        out: dict[User, Snapshot | ReadError] = {}
        pending: dict[User, tuple[Any, RawState]] = {}
        tag_ids: set[int] = set()
        topic_ids: set[int] = set()
        for user, last, item in zip(users, before, items, strict=False):
            if item is _UNCHANGED:
                out[user] = last[1]  # type: ignore[index]
                continue
            if isinstance(item, Exception):
                out[user] = ReadError(str(item))
                self._last.pop(user, None)
                continue
            marker, mine = item
            if last is not None and last[0] == marker and last[1].complete:
                out[user] = last[1]
                continue
            try:
                raw = parse_state(*mine)
            except Exception as e:  # noqa: BLE001 - one user's bad data must not stop the others
                _log.failure("reading the state of {appid}:{uid}", appid=user[0], uid=user[1])
                out[user] = ReadError(f"unreadable state: {e}")
                continue
            if raw.problems:
                _log.warn(
                    "state of {appid}:{uid}: skipped {problems}",
                    appid=user[0], uid=user[1], problems="; ".join(raw.problems),
                )
            pending[user] = (marker, raw)
            tag_ids |= raw.tag_ids()
            topic_ids |= raw.topic_ids()
        if pending:
            texts = await self._dictionary.lookup(tag_ids, topic_ids)
            for user, (marker, raw) in pending.items():
                snapshot = resolve(raw, texts)
                if user in self._keys:  # not forgotten while the texts were looked up
                    self._last[user] = (marker, snapshot)
                out[user] = snapshot
        return out


# -- polling ----------------------------------------------------------------


@dataclass(frozen=True)
class StatusUpdate:
    """
    What to tell a browser: the state fields (L{status_fields}), or why the
    state cannot be read (C{error}; C{fields} is None then).
    """

    fields: dict[str, Any] | None
    error: str | None = None


class _Watch:
    def __init__(self, user: User, push: Callable[[StatusUpdate], None], auto: bool) -> None:
        self.user = user
        self.push = push
        self.auto = auto
        self.sent: Snapshot | None = None
        self.error: str | None = None


class StatusPoller:
    """
    Polls the state of the watched users every C{interval} seconds and
    pushes each change (and each new read error, and its end) to the
    watcher's C{push}.

    A poll reads the watched users C{chunk} at a time, one
    L{StateReader.read} after the other, and pushes each chunk's changes as
    they come, so a poll of many users never holds the reactor for long.
    When a poll is still running at the next tick, that tick is skipped
    (counted in C{skipped}), so slow nodes never make polls pile up.
    """

    def __init__(self, reader: StateReader, clock: Any, interval: float = 1.0, *, chunk: int = 1000) -> None:
        self._reader = reader
        self._clock = clock
        self._interval = interval
        self.chunk = chunk
        self._watches: dict[Hashable, _Watch] = {}
        self._loop: LoopingCall | None = None
        self._running: Deferred[None] | None = None
        self.skipped = 0
        self.polls = 0
        self.last_seconds = 0.0  # how long the last poll took
        self.slowest = 0.0

    # -- who --

    def watch(
        self, key: Hashable, appid: str, uid: str, push: Callable[[StatusUpdate], None], *, auto: bool = True
    ) -> None:
        """Start watching a user for C{key} (e.g. a browser session): the first state has nothing new."""
        old = self._watches.get(key)
        if old is not None and old.user != (appid, uid):
            self._forget_user(old.user, key)
        self._watches[key] = _Watch((appid, uid), push, auto)

    def unwatch(self, key: Hashable) -> None:
        watch = self._watches.pop(key, None)
        if watch is not None:
            self._forget_user(watch.user, key)

    def _forget_user(self, user: User, key: Hashable) -> None:
        if not any(w.user == user for k, w in self._watches.items() if k != key):
            self._reader.forget(user)

    def set_auto(self, key: Hashable, auto: bool) -> None:
        """Turn automatic pushes for C{key} on or off."""
        watch = self._watches.get(key)
        if watch is not None:
            watch.auto = auto

    def watching(self) -> list[Hashable]:
        return list(self._watches)

    # -- on demand --

    def current(self, key: Hashable) -> Deferred[StatusUpdate]:
        """
        Read C{key}'s user now: the state with what changed since the last
        one sent for C{key} (which this becomes), or the read error.
        """
        watch = self._watches.get(key)
        if watch is None:
            return defer.fail(KeyError(key))
        d = self._reader.read([watch.user])

        def got(results: dict[User, Snapshot | ReadError]) -> StatusUpdate:
            result = results[watch.user]
            if isinstance(result, ReadError):
                watch.error = str(result)
                return StatusUpdate(None, str(result))
            update = StatusUpdate(status_fields(watch.sent, result))
            watch.sent, watch.error = result, None
            return update

        return d.addCallback(got)

    # -- the timer --

    def start(self) -> None:
        if self._loop is not None:
            return
        self._loop = LoopingCall(self._tick_quietly)
        self._loop.clock = self._clock
        d = self._loop.start(self._interval, now=False)
        d.addErrback(lambda f: _log.failure("state poll timer stopped", f))

    def set_interval(self, interval: float) -> None:
        """Poll every C{interval} seconds from now on (a live reload)."""
        self._interval = interval
        if self._loop is not None and self._loop.running:
            self._loop.stop()
            self._loop = None
            self.start()

    def stop(self) -> Deferred[None]:
        """Stop polling; fire once the poll that may be running has ended."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._running is None:
            return defer.succeed(None)
        done: Deferred[None] = Deferred()

        def ended(result: object) -> object:
            done.callback(None)
            return result

        self._running.addBoth(ended)
        return done

    def _tick_quietly(self) -> None:
        # Not returning the poll's Deferred: the LoopingCall keeps its own
        # schedule and tick() decides what to skip.
        try:
            self.tick()
        except Exception:  # noqa: BLE001 - a LoopingCall dies on its first exception
            _log.failure("state poll")

    def tick(self) -> Deferred[None] | None:
        """Poll once, unless the last poll is still running (then None)."""
        if self._running is not None:
            self.skipped += 1
            _log.debug("state poll skipped: the last one is still running")
            return None
        watches = [(k, w) for k, w in self._watches.items() if w.auto]
        if not watches:
            return None
        self.polls += 1
        started = self._clock.seconds()
        d: Deferred[Any] = defer.ensureDeferred(self._poll(watches))
        d.addErrback(lambda f: _log.failure("state poll", f))
        self._running = d

        def ended(_: object) -> None:
            self._running = None
            self.last_seconds = took = self._clock.seconds() - started
            self.slowest = max(self.slowest, took)
            POLL_SECONDS.observe(took)
            if took > self._interval:
                _log.warn("the state poll of {users} users took {took:.2f} s, more than its interval: "
                          "the next poll is late", users=len(watches), took=took)

        d.addBoth(ended)
        return d

    async def _poll(self, watches: list[tuple[Hashable, _Watch]]) -> None:
        # Users are read C{chunk} at a time, one read after the other, so
        # that with many users the reactor serves everyone else between
        # chunks (and the first changes are pushed sooner).
        by_user: dict[User, list[tuple[Hashable, _Watch]]] = {}
        for key, watch in watches:
            by_user.setdefault(watch.user, []).append((key, watch))
        users = list(by_user)
        for start in range(0, len(users), self.chunk):
            part = users[start : start + self.chunk]
            results = await self._reader.read(part)
            self._deliver(results, [kw for user in part for kw in by_user[user]])

    def _deliver(self, results: dict[User, Snapshot | ReadError], watches: list[tuple[Hashable, _Watch]]) -> None:
        for key, watch in watches:
            if self._watches.get(key) is not watch or not watch.auto:
                continue  # unwatched or paused while the poll ran
            try:
                update = self._update(watch, results.get(watch.user))
                if update is not None:
                    watch.push(update)
            except Exception:  # noqa: BLE001 - one watcher's failure must not stop the others
                _log.failure("pushing the state of {appid}:{uid}", appid=watch.user[0], uid=watch.user[1])

    @staticmethod
    def _update(watch: _Watch, result: Snapshot | ReadError | None) -> StatusUpdate | None:
        """What to push to C{watch} for this poll's C{result}, if anything."""
        if result is None:
            return None
        if isinstance(result, ReadError):
            if watch.error == str(result):
                return None  # said already
            watch.error = str(result)
            return StatusUpdate(None, str(result))
        if watch.error is None and not changed(watch.sent, result):
            return None
        update = StatusUpdate(status_fields(watch.sent, result))
        watch.sent, watch.error = result, None
        return update
