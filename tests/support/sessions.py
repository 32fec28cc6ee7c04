"""Real login sessions for tests: users and session rows in a real registry database."""

from __future__ import annotations

from typing import Any

from webtesting.web.accounts import COOKIE, SessionStore, hash_password

# One real scrypt hash, made once: tests that only need a user to exist
# (not to log in with a password) skip the half-second cost per user.
_HASH: list[str] = []


def _stored_hash() -> str:
    if not _HASH:
        _HASH.append(hash_password("not a password anyone types"))
    return _HASH[0]


async def ensure_user(db: Any, dialect_name: str, username: str, role: str) -> None:
    """Create (or re-role) C{username} through the registry's own pool."""
    q = (lambda sql: sql) if dialect_name == "mysql" else (lambda sql: sql.replace("%s", "?"))

    def work(cursor: Any) -> None:
        cursor.execute(q("SELECT id FROM tb_user WHERE username = %s"), [username])
        if cursor.fetchone():
            cursor.execute(q("UPDATE tb_user SET role = %s WHERE username = %s"), [role, username])
        else:
            cursor.execute(q("INSERT INTO tb_user (username, passwordHash, role, createdAt) VALUES (%s, %s, %s, 0)"),
                           [username, _stored_hash(), role])

    await db.run(work)


async def session_cookie(store: SessionStore, username: str, role: str, address: str = "127.0.0.1",
                         token: str | None = None) -> str:
    """A Cookie header value for a new, real session of C{username} (created with C{role} if missing)."""
    await ensure_user(store.db, store._dialect, username, role)
    token = await store.create(username, address, "tests", token=token)
    return f"{COOKIE}={token}"


async def sqlite_store(testcase: Any, lifetime: float = 3600) -> SessionStore:
    """A session store on a fresh SQLite registry in the test's temp folder, started and stopped with it."""
    from twisted.internet import reactor

    from webtesting.config import RegistryConfig
    from webtesting.web.registry import open_registry

    registry = open_registry(RegistryConfig(sqlite_path=testcase.mktemp() + ".sqlite3"), reactor)
    registry.db.startService()
    testcase.addCleanup(registry.db.stopService)
    await registry.db.ready()
    return SessionStore(registry.db, registry.dialect_name, lifetime)
