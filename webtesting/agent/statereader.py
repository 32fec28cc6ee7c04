"""
The agent's state reader: many users' state read from the bot's Redis
Cluster at once, with tag and topic ids turned into text through the bot's
MySQL (L{Dictionary}, cached).

L{StateReader} makes one Redis pipeline per read for any number of users
(one per cluster node), then at most one dictionary query for all the ids
not seen before. An idle user costs one script call answered with nil
(L{STATE_SCRIPT}): the state is sent whole only when its digest moved.
What a state means is L{webtesting.agent.snapshot}'s.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from webtesting import rediscluster
from webtesting.agent.snapshot import RawState, Snapshot, Texts, User, parse_state, resolve, text_of
from webtesting.statelayout import StateLayout

T = TypeVar("T")

_log = Logger()


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
            (self._tags if int(kind) == 0 else self._topics)[int(ident)] = text_of(content)
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
