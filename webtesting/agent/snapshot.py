"""
A user's state as the agent shows it, and what changed: pure functions, no
I/O (the state reader is L{webtesting.agent.statereader}, the poll timer
L{webtesting.agent.status}).

L{parse_state} turns the four hashes of a user (see
L{webtesting.statelayout}) into a L{RawState}; L{resolve} adds the texts;
L{status_fields} and L{changed} compare two L{Snapshot}s.

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

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

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


def text_of(value: Any) -> str:
    """A Redis or MySQL value as text (bytes decoded as UTF-8, invalid bytes replaced)."""
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
    text = text_of(value).strip()
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
            problems.append(f"tag {text_of(name)!r}: {e}")
    cur = prev = None
    for name, raw in _pairs(topic):
        try:
            if name == "cur":
                cur = _int_or_none(raw)
            elif name == "prev":
                prev = _int_or_none(raw)
        except ValueError as e:
            problems.append(f"topic {text_of(name)}: {e}")
    topic_map: dict[int, int | None] = {}
    for name, raw in _pairs(topics):
        try:
            value = json.loads(raw)
            end = _int_or_none(value.get("endTime")) if isinstance(value, dict) else _int_or_none(value)
            topic_map[int(name)] = end
        except (ValueError, TypeError, AttributeError) as e:
            problems.append(f"topic list entry {text_of(name)!r}: {e}")
    memory_map = {text_of(k): text_of(v) for k, v in _pairs(memory)}
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

    def tagtext_of(i: int) -> str:
        text = texts.tags.get(i)
        if text is None:
            missing_tags.add(i)
            return ""
        return text

    def topictext_of(i: int | None) -> str:
        if i is None:
            return ""
        text = texts.topics.get(i)
        if text is None:
            missing_topics.add(i)
            return ""
        return text

    tags = {
        i: {"id": i, "desc": tagtext_of(i), "beginTime": v.begin, "endTime": v.end, "isInUse": v.in_use}
        for i, v in raw.tags.items()
    }
    cur_topic = {
        "id": raw.cur_topic,
        "desc": topictext_of(raw.cur_topic),
        "prevId": raw.prev_topic,
        "prevDesc": topictext_of(raw.prev_topic),
    }
    topics = {i: {"id": i, "desc": topictext_of(i), "endTime": end} for i, end in raw.topics.items()}
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
