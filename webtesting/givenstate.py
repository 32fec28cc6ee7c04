"""
A user's starting state, written into the bot's Redis Cluster in the layout
the agent reads (L{webtesting.statelayout}): a test case's C{given}, sent by
the web server as C{setUserStateReq} and written by the agent, only on a
service whose registry record has C{allowStateWrites} on.

    {"reset": true,                                  # delete tags, topics and memory first
     "tags": [3, {"id": 4, "isInUse": false}],       # ids, or objects
     "topic": {"cur": 10, "prev": 9},
     "topics": [10, 9],
     "memory": {"name": "Alice"}}

Every part is optional; without C{reset} the parts are merged into what the
user has. Tag and topic times are now and an hour from now unless given.
"""

from __future__ import annotations

import json
from typing import Any

from webtesting.protocol import InvalidInput, require_int, require_list, require_object, require_str
from webtesting.statelayout import StateLayout

PARTS = ("reset", "tags", "topic", "topics", "memory")
MAX_ITEMS = 100
MAX_KEY = 64
MAX_VALUE = 1024
_HOUR_MS = 3600 * 1000
_ID = (0, 2**31 - 1)
_TIME = (0, 2**53)


def _where(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def check_given(raw: Any, where: str = "given") -> dict[str, Any]:
    """The checked C{given}, or L{InvalidInput} naming the first thing wrong."""
    given = require_object(raw, where)
    for key in given:
        if key not in PARTS:
            raise InvalidInput(_where(where, key), f"unknown part (known: {', '.join(PARTS)})")
    if not given:
        raise InvalidInput(where, f"names nothing to write (parts: {', '.join(PARTS)})")
    out: dict[str, Any] = {}
    if "reset" in given:
        if not isinstance(given["reset"], bool):
            raise InvalidInput(_where(where, "reset"), "must be true or false")
        out["reset"] = given["reset"]
    if "tags" in given:
        tags = []
        for i, item in enumerate(require_list(given["tags"], _where(where, "tags"), MAX_ITEMS)):
            at = f"{_where(where, 'tags')}[{i}]"
            if isinstance(item, dict):
                for key in item:
                    if key not in ("id", "isInUse", "beginTime", "endTime"):
                        raise InvalidInput(f"{at}.{key}", "unknown field (id, isInUse, beginTime, endTime)")
                tag: dict[str, Any] = {"id": require_int(item.get("id"), f"{at}.id", *_ID)}
                if "isInUse" in item:
                    if not isinstance(item["isInUse"], bool):
                        raise InvalidInput(f"{at}.isInUse", "must be true or false")
                    tag["isInUse"] = item["isInUse"]
                for key in ("beginTime", "endTime"):
                    if key in item:
                        tag[key] = require_int(item[key], f"{at}.{key}", *_TIME)
            else:
                tag = {"id": require_int(item, at, *_ID)}
            tags.append(tag)
        out["tags"] = tags
    if "topic" in given:
        topic = require_object(given["topic"], _where(where, "topic"))
        for key in topic:
            if key not in ("cur", "prev"):
                raise InvalidInput(f"{_where(where, 'topic')}.{key}", "unknown field (cur, prev)")
        out["topic"] = {k: require_int(v, f"{_where(where, 'topic')}.{k}", *_ID) for k, v in topic.items()}
    if "topics" in given:
        out["topics"] = [require_int(v, f"{_where(where, 'topics')}[{i}]", *_ID)
                         for i, v in enumerate(require_list(given["topics"], _where(where, "topics"), MAX_ITEMS))]
    if "memory" in given:
        memory = require_object(given["memory"], _where(where, "memory"))
        if len(memory) > MAX_ITEMS:
            raise InvalidInput(_where(where, "memory"), f"at most {MAX_ITEMS} facts")
        out["memory"] = {
            require_str(k, f"{_where(where, 'memory')} key", MAX_KEY):
                require_str(v, f"{_where(where, 'memory')}.{k}", MAX_VALUE, min_len=0)
            for k, v in memory.items()
        }
    return out


def commands(layout: StateLayout, appid: str, uid: str, given: dict[str, Any], now_ms: int) -> list[list[Any]]:
    """The Redis commands that write C{given} (checked) for one user: one pipeline, one slot."""
    tags_key, topic_key, topics_key, memory_key = layout.keys(appid, uid)
    out: list[list[Any]] = []
    if given.get("reset"):
        out += [["DEL", tags_key], ["DEL", topic_key], ["DEL", topics_key], ["DEL", memory_key]]
    if given.get("tags"):
        fields: list[Any] = []
        for tag in given["tags"]:
            value = {"beginTime": tag.get("beginTime", now_ms), "endTime": tag.get("endTime", now_ms + _HOUR_MS),
                     "isInUse": tag.get("isInUse", True)}
            fields += [str(tag["id"]), json.dumps(value, separators=(",", ":"))]
        out.append(["HSET", tags_key, *fields])
    if given.get("topic"):
        out.append(["HSET", topic_key, *[x for k, v in sorted(given["topic"].items()) for x in (k, str(v))]])
    if given.get("topics"):
        end = json.dumps({"endTime": now_ms + _HOUR_MS}, separators=(",", ":"))
        out.append(["HSET", topics_key, *[x for t in given["topics"] for x in (str(t), end)]])
    if given.get("memory"):
        out.append(["HSET", memory_key, *[x for k, v in given["memory"].items() for x in (k, v)]])
    return out


def describe(given: dict[str, Any]) -> str:
    """A short account of what a write did, for the log (no memory values: they may be personal)."""
    parts = []
    if given.get("reset"):
        parts.append("reset")
    if given.get("tags"):
        parts.append(f"tags {[t['id'] for t in given['tags']]}")
    if given.get("topic"):
        parts.append(f"topic {given['topic']}")
    if given.get("topics"):
        parts.append(f"topics {given['topics']}")
    if given.get("memory"):
        parts.append(f"memory keys {sorted(given['memory'])}")
    return ", ".join(parts)
