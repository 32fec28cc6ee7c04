"""
A real MariaDB database for one test: created on the server these machines
run on 127.0.0.1:3306 (root, no password), dropped in cleanup.

If the server is not there the test fails, saying so: it is never skipped.
"""

from __future__ import annotations

import secrets
from typing import Any

import pymysql

HOST = "127.0.0.1"
PORT = 3306
USER = "root"
PASSWORD = ""


class MariaDBMissing(AssertionError):
    pass


def connect(database: str | None = None, **kwargs: Any) -> Any:
    try:
        return pymysql.connect(
            host=HOST, port=PORT, user=USER, password=PASSWORD, database=database,
            charset="utf8mb4", connect_timeout=5, autocommit=True, **kwargs,
        )
    except pymysql.err.OperationalError as e:
        raise MariaDBMissing(
            f"these tests need MariaDB on {HOST}:{PORT} (user {USER}, empty password); "
            f"connecting failed: {e}. ./wt test starts it when it is installed."
        ) from None


def temporary_database(testcase: Any, prefix: str = "wt_test") -> str:
    """Create a uniquely named database, dropped when C{testcase} ends."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    with connect() as conn, conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")

    def drop() -> None:
        with connect() as conn, conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")

    testcase.addCleanup(drop)
    return name


def execute(database: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement straight on the server (test set-up and checks)."""
    with connect(database) as conn, conn.cursor() as cursor:
        cursor.execute(statement, params)
        return list(cursor.fetchall())
