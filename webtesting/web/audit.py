"""
The audit trail: who changed the registry, when, from where, and the fields
before and after, with passwords masked (table ``tb_audit``).

Rows are written by L{record} on the cursor of the change itself, inside its
transaction: a change and its audit row are stored together or not at all.
Nothing in the HTTP API writes, edits or deletes them; L{AuditLog} only reads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from webtesting.protocol import PASSWORD_MASK
from webtesting.web.schema import dialect_sql as _sql

# Fields whose values are never written to the trail, only that they changed.
SECRET_FIELDS = frozenset({"mysqlPwd", "password", "passwordHash"})

KINDS = ("service", "user", "session")


@dataclass(frozen=True)
class Actor:
    """Who made a change: an account (or ``cli:<os user>``), and the address it came from."""

    username: str
    address: str = ""


def masked(values: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A copy with every secret field's value replaced by the mask (an empty one stays empty)."""
    if values is None:
        return None
    return {k: (PASSWORD_MASK if v else "") if k in SECRET_FIELDS else v for k, v in values.items()}



_INSERT = ("INSERT INTO tb_audit (at, actor, address, action, kind, target, serviceId, beforeValues, afterValues) "
           "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)")


def record(cursor: Any, dialect_name: str, actor: Actor | None, action: str, kind: str, target: str | int,
           *, service_id: int | None = None, before: Mapping[str, Any] | None = None,
           after: Mapping[str, Any] | None = None, at: float | None = None) -> None:
    """Write one audit row on C{cursor}, in the caller's transaction. No actor: nothing is written."""
    if actor is None:
        return
    when = int((time.time() if at is None else at) * 1000)
    cursor.execute(_sql(dialect_name, _INSERT), [
        when, actor.username[:64], actor.address[:64], action, kind, str(target)[:64], service_id,
        None if before is None else json.dumps(masked(before), ensure_ascii=False, sort_keys=True),
        None if after is None else json.dumps(masked(after), ensure_ascii=False, sort_keys=True),
    ])


def changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fields of C{after} whose values differ from C{before}'s: (old values, new values)."""
    changed = [k for k, v in after.items() if before.get(k) != v]
    return {k: before.get(k) for k in changed}, {k: after[k] for k in changed}


_COLUMNS = ("id", "at", "actor", "address", "action", "kind", "target", "serviceId", "beforeValues", "afterValues")


def _entry(row: Any) -> dict[str, Any]:
    entry = dict(zip(_COLUMNS, row, strict=True))
    before, after = entry.pop("beforeValues"), entry.pop("afterValues")
    entry["before"] = json.loads(before) if before else None
    entry["after"] = json.loads(after) if after else None
    return entry


class AuditLog:
    """Reads the trail, newest first."""

    def __init__(self, db: Any, dialect_name: str) -> None:
        self.db = db
        self._dialect = dialect_name

    def list(self, *, service_id: int | None = None, kind: str | None = None, before_id: int | None = None,
             limit: int = 100) -> Deferred[list[dict[str, Any]]]:
        """Up to C{limit} entries older than C{before_id}, of one service or kind if given."""
        where: list[str] = []
        params: list[Any] = []
        if service_id is not None:
            where.append("serviceId = %s")
            params.append(service_id)
        if kind is not None:
            where.append("kind = %s")
            params.append(kind)
        if before_id is not None:
            where.append("id < %s")
            params.append(before_id)
        statement = _sql(self._dialect, f"SELECT {', '.join(_COLUMNS)} FROM tb_audit"
                         + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC LIMIT %s")
        params.append(limit)

        def work(cursor: Any) -> list[dict[str, Any]]:
            cursor.execute(statement, params)
            return [_entry(row) for row in cursor.fetchall()]

        return self.db.run(work)
