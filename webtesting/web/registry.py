"""
The service registry: table ``tb_service_info`` on MySQL/MariaDB, or on an
SQLite file when no MySQL is configured (the embedded default).

All SQL is parameterised; the only names spliced into statements are the
fixed column names below. Multi-row changes run in one transaction, so they
happen for every row or for none.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from webtesting import dbpool
from webtesting.config import RegistryConfig
from webtesting.protocol import (
    OPTIONAL_FIELDS,
    PASSWORD_MASK,
    SERVICE_FIELDS,
    STATUS_MSG_LIMIT,
    InvalidInput,
    json_text,
)
from webtesting.web import audit
from webtesting.web.audit import Actor
from webtesting.web.history import HISTORY_INDEX_SQLITE, HISTORY_SCHEMA_MYSQL, HISTORY_SCHEMA_SQLITE
from webtesting.web.schema import (
    AUDIT_INDEX_SQLITE,
    AUDIT_SCHEMA_MYSQL,
    AUDIT_SCHEMA_SQLITE,
    HEALTH_EVENT_SCHEMA_MYSQL,
    HEALTH_SAMPLE_SCHEMA_MYSQL,
    HEALTH_SCHEMA_SQLITE,
    SERVICE_SCHEMA_MYSQL,
    SERVICE_SCHEMA_SQLITE,
    SESSION_INDEX_SQLITE,
    SESSION_SCHEMA_MYSQL,
    SESSION_SCHEMA_SQLITE,
    USER_SCHEMA_MYSQL,
    USER_SCHEMA_SQLITE,
    dialect_sql,
)
from webtesting.web.testruns import CASE_SCHEMA_MYSQL, CASE_SCHEMA_SQLITE

TABLE = "tb_service_info"
_JSON_FIELDS = ("redisCluster", "allowedAppids")
_COLUMNS = ("id",) + SERVICE_FIELDS + ("status", "msg")

_log = Logger()

# A new service is not known to be up until its agent link says so.
NEW_SERVICE_STATUS = (0, "waiting for the agent link")


class UnknownServices(Exception):
    """Some of the given serviceIds are not in the registry; nothing was changed."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = sorted(ids)
        super().__init__("no such serviceIds: " + ", ".join(str(i) for i in self.ids))


@dataclass(frozen=True)
class _Dialect:
    name: str
    schema: tuple[str, ...]
    for_update: str

    def sql(self, statement: str) -> str:
        return dialect_sql(self.name, statement)


MYSQL = _Dialect("mysql", (SERVICE_SCHEMA_MYSQL, USER_SCHEMA_MYSQL, SESSION_SCHEMA_MYSQL, HISTORY_SCHEMA_MYSQL,
                           CASE_SCHEMA_MYSQL, AUDIT_SCHEMA_MYSQL, HEALTH_EVENT_SCHEMA_MYSQL,
                           HEALTH_SAMPLE_SCHEMA_MYSQL), " FOR UPDATE")
SQLITE = _Dialect("sqlite", (SERVICE_SCHEMA_SQLITE, USER_SCHEMA_SQLITE, SESSION_SCHEMA_SQLITE, SESSION_INDEX_SQLITE,
                             HISTORY_SCHEMA_SQLITE, HISTORY_INDEX_SQLITE, CASE_SCHEMA_SQLITE, AUDIT_SCHEMA_SQLITE,
                             AUDIT_INDEX_SQLITE, *HEALTH_SCHEMA_SQLITE), "")


def _placeholders(n: int) -> str:
    return ", ".join(["%s"] * n)


def _to_row(service: dict[str, Any], fields: Sequence[str]) -> list[Any]:
    row = []
    for f in fields:
        value = service[f] if f in service or f not in OPTIONAL_FIELDS else OPTIONAL_FIELDS[f]
        row.append(json_text(value) if f in _JSON_FIELDS else int(value) if f == "allowStateWrites" else value)
    return row


def _from_row(row: Sequence[Any]) -> dict[str, Any]:
    record = dict(zip(_COLUMNS, row, strict=False))
    service: dict[str, Any] = {"serviceId": record.pop("id")}
    for f in SERVICE_FIELDS:
        value = record[f]
        if f in _JSON_FIELDS:
            try:
                value = json.loads(value) if value else []
            except ValueError:
                _log.warn(
                    "service {service_id}: column {column} is not JSON; shown as []",
                    service_id=service["serviceId"], column=f,
                )
                value = []
        elif f == "allowStateWrites":
            value = bool(value)
        service[f] = value
    service["status"] = record["status"]
    service["msg"] = record["msg"]
    return service


# Changing any of these needs the MySQL password retyped: each is a place the
# password would be sent (the MySQL server; the agent, given it in agentInfoReq;
# the WxService, which the agent trusts with the service's users).
_PASSWORD_BOUND = ("mysqlAddr", "mysqlPort", "agentAddr", "wxServiceAddr")


class Registry:
    """The registry's operations, each one transaction on the L{dbpool.Database}."""

    def __init__(self, db: dbpool.Database, dialect: _Dialect) -> None:
        self.db = db
        self._dialect = dialect
        self.dialect_name = dialect.name

    def add_services(self, services: Sequence[dict[str, Any]], actor: Actor | None = None) -> Deferred[int]:
        """Insert every service or none, with an audit row each when C{actor} is given; fire with the number
        inserted."""
        fields = SERVICE_FIELDS + ("status", "msg")
        rows = [_to_row(s, SERVICE_FIELDS) + list(NEW_SERVICE_STATUS) for s in services]
        statement = self._dialect.sql(
            f"INSERT INTO {TABLE} ({', '.join(fields)}) VALUES ({_placeholders(len(fields))})"
        )
        dialect = self.dialect_name

        def work(cursor: Any) -> int:
            if actor is None:
                cursor.executemany(statement, rows)
                return len(rows)
            # One at a time: each audit row names the serviceId its insert got.
            for service, row in zip(services, rows, strict=True):
                cursor.execute(statement, row)
                after = {f: service.get(f, OPTIONAL_FIELDS.get(f)) for f in SERVICE_FIELDS}
                audit.record(cursor, dialect, actor, "addServices", "service", cursor.lastrowid,
                             service_id=cursor.lastrowid, after=after)
            return len(rows)

        return self.db.run(work)

    def delete_services(self, ids: Sequence[int], actor: Actor | None = None) -> Deferred[int]:
        """Delete every given service, or none if any is unknown (L{UnknownServices})."""
        marks = _placeholders(len(ids))
        select = self._dialect.sql(
            f"SELECT {', '.join(_COLUMNS)} FROM {TABLE} WHERE id IN ({marks}){self._dialect.for_update}"
        )
        delete = self._dialect.sql(f"DELETE FROM {TABLE} WHERE id IN ({marks})")
        dialect = self.dialect_name

        def work(cursor: Any) -> int:
            cursor.execute(select, list(ids))
            found = {row[0]: _from_row(row) for row in cursor.fetchall()}
            missing = [i for i in ids if i not in found]
            if missing:
                raise UnknownServices(missing)
            cursor.execute(delete, list(ids))
            for table in ("tb_health_event", "tb_health_sample"):  # shown nowhere once the service is gone
                cursor.execute(self._dialect.sql(f"DELETE FROM {table} WHERE serviceId IN ({marks})"), list(ids))
            for sid in dict.fromkeys(ids):
                before = {f: found[sid][f] for f in SERVICE_FIELDS}
                audit.record(cursor, dialect, actor, "delServices", "service", sid, service_id=sid, before=before)
            return len(found)

        return self.db.run(work)

    def update_services(self, services: Sequence[dict[str, Any]], actor: Actor | None = None) -> Deferred[int]:
        """
        Change the given fields of every given service, or of none if any is
        unknown (L{UnknownServices}). A C{mysqlPwd} equal to L{PASSWORD_MASK}
        (or left out) keeps the stored password — but not when the service
        moves to another MySQL server, another agent or another WxService:
        the stored password must not follow an address nobody retyped it for
        (L{InvalidInput}). The agent is given the password; whoever can point
        a service at their own listener must know the password already.
        Each service whose fields changed gets an audit row with the changed
        fields before and after, when C{actor} is given.
        """
        ids = [s["serviceId"] for s in services]
        dialect = self.dialect_name
        select = self._dialect.sql(
            f"SELECT {', '.join(_COLUMNS)} FROM {TABLE} "
            f"WHERE id IN ({_placeholders(len(ids))}){self._dialect.for_update}"
        )
        updates: list[tuple[str, list[Any]]] = []
        for s in services:
            fields = [
                f for f in SERVICE_FIELDS
                if f in s and not (f == "mysqlPwd" and s[f] == PASSWORD_MASK)
            ]
            if not fields:
                continue
            assignments = ", ".join(f"{f} = %s" for f in fields)
            updates.append((
                self._dialect.sql(f"UPDATE {TABLE} SET {assignments} WHERE id = %s"),
                _to_row(s, fields) + [s["serviceId"]],
            ))

        def work(cursor: Any) -> int:
            cursor.execute(select, ids)
            found = {row[0]: _from_row(row) for row in cursor.fetchall()}
            missing = [i for i in ids if i not in found]
            if missing:
                raise UnknownServices(missing)
            for i, s in enumerate(services):
                stored = found[s["serviceId"]]
                moved = [f for f in _PASSWORD_BOUND if f in s and s[f] != stored[f]]
                if moved and s.get("mysqlPwd", PASSWORD_MASK) == PASSWORD_MASK:
                    raise InvalidInput(f"[{i}].mysqlPwd",
                                       f"retype the password when changing {' or '.join(moved)}: "
                                       "the stored one does not follow a new address")
            for statement, params in updates:
                cursor.execute(statement, params)
            for s in services:
                sid = s["serviceId"]
                given = {f: s[f] for f in SERVICE_FIELDS
                         if f in s and not (f == "mysqlPwd" and s[f] == PASSWORD_MASK)}
                before, after = audit.changes(found[sid], given)
                if after:
                    audit.record(cursor, dialect, actor, "updateServices", "service", sid, service_id=sid,
                                 before=before, after=after)
            return len(ids)

        return self.db.run(work)

    def list_services(self) -> Deferred[list[dict[str, Any]]]:
        """Every service with all its fields (the real password included), by id."""
        statement = f"SELECT {', '.join(_COLUMNS)} FROM {TABLE} ORDER BY id"

        def work(cursor: Any) -> list[dict[str, Any]]:
            cursor.execute(statement)
            return [_from_row(row) for row in cursor.fetchall()]

        return self.db.run(work)

    def set_status(self, service_id: int, status: int, msg: str, code: str = "",
                   at: float | None = None) -> Deferred[bool]:
        """
        Record a service's health, and the change in its health history
        (once: a health already stored, by this web server or another, is
        not a change); fire with whether the service still exists.
        """
        msg = msg[:STATUS_MSG_LIMIT]
        select = self._dialect.sql(f"SELECT status, msg FROM {TABLE} WHERE id = %s{self._dialect.for_update}")
        update = self._dialect.sql(f"UPDATE {TABLE} SET status = %s, msg = %s WHERE id = %s")
        event = self._dialect.sql("INSERT INTO tb_health_event (serviceId, at, status, code, msg) "
                                  "VALUES (%s, %s, %s, %s, %s)")

        def work(cursor: Any) -> bool:
            cursor.execute(select, [service_id])
            row = cursor.fetchone()
            if row is None:
                return False
            if (row[0], row[1]) != (status, msg):
                cursor.execute(update, [status, msg, service_id])
                when = int((time.time() if at is None else at) * 1000)
                cursor.execute(event, [service_id, when, status, code[:32], msg])
            return True

        return self.db.run(work)


def _private_file(path: str) -> None:
    """
    Create the SQLite file readable by its owner only (it holds the bots'
    MySQL passwords and the login sessions), or make an existing one so;
    SQLite's journal files follow the database file's mode.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _connector(config: RegistryConfig) -> tuple[dbpool.Connect, _Dialect, str]:
    """How to open one connection to the registry database, its dialect and a name for logs."""
    if config.mysql is None:
        path = config.sqlite_path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        _private_file(path)
        return dbpool.sqlite_connector(path, busy_timeout=config.request_timeout), SQLITE, f"registry (sqlite {path})"
    m = config.mysql
    connect_db = dbpool.mysql_connector(
        m.host, m.port, m.user, m.password, m.database, m.connect_timeout, m.read_timeout, m.write_timeout,
    )
    connect_server = dbpool.mysql_connector(
        m.host, m.port, m.user, m.password, None, m.connect_timeout, m.read_timeout, m.write_timeout,
    )

    def connect() -> Any:
        import pymysql

        try:
            return connect_db()
        except pymysql.err.OperationalError as e:
            if e.args[0] != 1049:  # unknown database: create it, once
                raise
        server = connect_server()
        try:
            with server.cursor() as cursor:
                cursor.execute(
                    f"CREATE DATABASE IF NOT EXISTS `{m.database.replace('`', '``')}` CHARACTER SET utf8mb4"
                )
        finally:
            server.close()
        return connect_db()

    return connect, MYSQL, f"registry (mysql {m.host}:{m.port}/{m.database})"


# Columns added since the first release: (column, its definition per dialect).
_ADDED_COLUMNS = (
    ("allowStateWrites", {"mysql": "tinyint(1) NOT NULL DEFAULT '0'", "sqlite": "INTEGER NOT NULL DEFAULT 0"}),
)


def _columns(cursor: Any, dialect: _Dialect) -> set[str]:
    if dialect.name == "mysql":
        cursor.execute("SELECT COLUMN_NAME FROM information_schema.COLUMNS "
                       "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s", [TABLE])
        return {row[0] for row in cursor.fetchall()}
    cursor.execute(f"PRAGMA table_info({TABLE})")
    return {row[1] for row in cursor.fetchall()}


def _prepare(dialect: _Dialect) -> Any:
    def prepare(cursor: Any) -> None:
        # Runs on every reconnect: the tables may have been dropped meanwhile.
        for statement in dialect.schema:
            cursor.execute(statement)
        # A registry made by an older release gets the columns added since.
        have = _columns(cursor, dialect)
        for column, definition in _ADDED_COLUMNS:
            if column not in have:
                _log.info("registry: adding column {column} to {table}", column=column, table=TABLE)
                cursor.execute(f"ALTER TABLE {TABLE} ADD COLUMN {column} {definition[dialect.name]}")

    return prepare


def open_registry(config: RegistryConfig, reactor: Any) -> Registry:
    """
    Build the registry on MySQL when C{config.mysql} is set, else on SQLite.

    The returned registry's C{db} is a service: start it to connect.
    """
    connect, dialect, name = _connector(config)
    db = dbpool.Database(
        name,
        connect,
        reactor,
        is_fault=dbpool.mysql_is_fault if dialect is MYSQL else dbpool.sqlite_is_fault,
        # One writer at a time is all SQLite does; one thread keeps it simple.
        threads=config.threads if dialect is MYSQL else 1,
        request_timeout=config.request_timeout,
        retry_interval=config.retry_interval,
        queue_timeout=config.queue_timeout,
        prepare=_prepare(dialect),
        code="registry_unavailable",
    )
    return Registry(db, dialect)


def connect_sync(config: RegistryConfig) -> tuple[Any, str]:
    """One plain DB-API connection with the tables in place, for command-line tools."""
    connect, dialect, _name = _connector(config)
    connection = connect()
    cursor = connection.cursor()
    _prepare(dialect)(cursor)
    connection.commit()
    return connection, dialect.name
