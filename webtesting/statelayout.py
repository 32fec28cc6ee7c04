"""
Where a bot keeps each user's live state, shared by the reference bot (which
writes it) and the agent (which reads it).

A real bot may keep its state elsewhere, so every name here is configuration
(the ``state`` section of etc/agent.yaml and etc/wxsim.yaml). The defaults:

Redis Cluster, one user = one hash slot (the ``{appid:uid}`` hash tag), so one
user's whole state is read with a single pipeline on a single node:

=============================  ======  =====================================================
key                            type    content
=============================  ======  =====================================================
``wt:{<appid>:<uid>}:tags``    hash    tag id -> JSON ``{"beginTime": int, "endTime": int,
                                       "isInUse": bool}``
``wt:{<appid>:<uid>}:topic``   hash    ``cur`` -> current topic id, ``prev`` -> previous one
``wt:{<appid>:<uid>}:topics``  hash    topic id -> JSON ``{"endTime": int}``
``wt:{<appid>:<uid>}:memory``  hash    fact name -> text (e.g. ``name`` -> ``Alice``)
=============================  ======  =====================================================

MySQL dictionary tables turn ids into text: ``tb_tag_dict`` and
``tb_topic_dict``, each ``(id INT PRIMARY KEY, content VARCHAR(255))``.
Times are Unix epoch milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_PLACEHOLDERS = ("{appid}", "{uid}")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def _check_template(value: str) -> str | None:
    for p in _PLACEHOLDERS:
        if p not in value:
            return f"must contain {p}, got {value!r}"
    # Both placeholders must sit inside one {...} hash tag so that all keys of
    # a user land in one slot; the literal braces are written doubled.
    if "{{" not in value or "}}" not in value:
        return f"must keep the user in one hash slot with a {{{{...}}}} hash tag, got {value!r}"
    return None


def _check_identifier(value: str) -> str | None:
    if not _IDENTIFIER.fullmatch(value):
        return f"must be a plain SQL table name, got {value!r}"
    return None


def _template(default: str) -> str:
    return field(default=default, metadata={"check": _check_template})  # type: ignore[no-any-return]


def _table(default: str) -> str:
    return field(default=default, metadata={"check": _check_identifier})  # type: ignore[no-any-return]


@dataclass(frozen=True)
class StateLayout:
    """
    Key templates (Python ``str.format`` with ``appid`` and ``uid``; literal
    braces doubled) and dictionary table names.
    """

    tags_key: str = _template("wt:{{{appid}:{uid}}}:tags")
    topic_key: str = _template("wt:{{{appid}:{uid}}}:topic")
    topics_key: str = _template("wt:{{{appid}:{uid}}}:topics")
    memory_key: str = _template("wt:{{{appid}:{uid}}}:memory")
    tag_table: str = _table("tb_tag_dict")
    topic_table: str = _table("tb_topic_dict")

    def keys(self, appid: str, uid: str) -> tuple[str, str, str, str]:
        """The tags, topic, topics and memory keys of one user, in that order."""
        return (
            self.tags_key.format(appid=appid, uid=uid),
            self.topic_key.format(appid=appid, uid=uid),
            self.topics_key.format(appid=appid, uid=uid),
            self.memory_key.format(appid=appid, uid=uid),
        )
