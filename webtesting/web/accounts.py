"""
Tester and admin accounts, their login sessions, and the command that
manages them (``webtesting-account``).

- Users live in the registry database (table ``tb_user``), passwords hashed
  with scrypt (salted, deliberately slow; verified off the reactor; older,
  cheaper hashes are upgraded at the next successful login).
- A login session is a row in the registry database (table ``tb_session``),
  so every web server process sees it, and ending it takes effect at once.
  The cookie ``wt_session`` holds a random token; the row is keyed by the
  token's SHA-256, so the table alone lets nobody in. Every request and
  every WebSocket handshake reads the row and the user's current role.
  The cookie is HttpOnly, SameSite=Strict, Path=/WebTesting, Secure over
  HTTPS.
- Logging out, "log out everywhere", an admin ending sessions, and
  ``webtesting-account`` deleting a user or changing a password or role all
  delete rows; each web server closes the WebSockets of ended sessions
  (L{webtesting.web.ws.BrowserFactory.recheck}).
"""

from __future__ import annotations

import argparse
import base64
import functools
import getpass
import hashlib
import hmac
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from webtesting.protocol import InvalidInput, require_str
from webtesting.web import audit
from webtesting.web.audit import Actor
from webtesting.web.schema import (
    AUDIT_INDEX_SQLITE,
    AUDIT_SCHEMA_MYSQL,
    AUDIT_SCHEMA_SQLITE,
    SESSION_INDEX_SQLITE,
    SESSION_SCHEMA_MYSQL,
    SESSION_SCHEMA_SQLITE,
    USER_SCHEMA_MYSQL,
    USER_SCHEMA_SQLITE,
)
from webtesting.web.schema import (
    dialect_sql as _sql,
)

COOKIE = "wt_session"
_log = Logger()
ROLES = ("tester", "admin")
MAX_USERNAME = 64
MIN_PASSWORD = 8


# -- passwords -------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))



# scrypt's cost: n=2**17, r=8 takes 128 MiB and about half a second per check
# here. Hashes made with a lower n (2**14 before) stay valid and are made
# again at this cost at the user's next successful login.
_N, _R, _P = 2**17, 8, 1
_MAXMEM = 256 * 1024 * 1024


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32, maxmem=_MAXMEM)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def needs_rehash(stored: str) -> bool:
    """Whether a stored hash was made at a lower cost than today's."""
    try:
        kind, n, r, p, _salt, _digest = stored.split("$")
        return kind != "scrypt" or (int(n), int(r), int(p)) < (_N, _R, _P)
    except ValueError:
        return True


def check_password(password: str, stored: str) -> bool:
    """Whether C{password} matches C{stored}; slow on purpose (call it off the reactor)."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        if int(n) > 2**20 or int(r) > 32 or int(p) > 16:
            return False  # not a hash of ours: refuse rather than spend a gigabyte on it
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(_unb64(digest)), maxmem=_MAXMEM * 4)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(digest))


@functools.cache
def _dummy_hash() -> str:
    """A hash to check against when the username does not exist, so that the
    answer takes as long as for a wrong password."""
    return hash_password("not a real password")


# -- sessions --------------------------------------------------------------------


# API tokens are sessions whose public id starts so; they last a year and are
# not among the sessions a new login pushes out.
TOKEN_PREFIX = "tok-"
TOKEN_LIFETIME = 365 * 86400.0

# lastSeen is written at most this often per session (seconds).
_SEEN_EVERY = 60


@dataclass(frozen=True)
class Session:
    """A live login session: who, with the role the user has now."""

    username: str
    role: str
    expires: int
    key: str = ""  # the row's id (SHA-256 of the token)
    public_id: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def session_key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def _token_ok(token: str | None) -> bool:
    return token is not None and 0 < len(token) <= 64 and token.isascii()


class SessionStore:
    """Login sessions in the registry database, through its L{webtesting.dbpool.Database}."""

    def __init__(self, db: Any, dialect_name: str, lifetime: float,
                 clock: Callable[[], float] = time.time, max_per_user: int = 50) -> None:
        self.db = db
        self._dialect = dialect_name
        self.lifetime = lifetime
        self._clock = clock
        self.max_per_user = max_per_user  # login sessions one account may hold; the oldest end first
        # session key -> callers waiting for the check of it already running
        self._checking: dict[str, list[Deferred[Session | None]]] = {}

    def _now(self) -> int:
        return int(self._clock())

    def create(self, username: str, address: str = "", user_agent: str = "",
               token: str | None = None, audited: bool = True) -> Deferred[str]:
        """
        A new session for C{username}; fires with the cookie token (a new
        random one unless given). It is a login in the audit trail unless
        not C{audited}.
        """
        token = token or _b64(os.urandom(32))
        now = self._now()
        public_id = os.urandom(8).hex()
        row = [session_key(token), public_id, username, address[:64], user_agent[:256],
               now, now, int(now + self.lifetime)]
        actor = Actor(username, address) if audited else None
        dialect = self._dialect
        statement = _sql(self._dialect, "INSERT INTO tb_session (id, publicId, username, address, userAgent, "
                                         "createdAt, lastSeen, expiresAt) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)")
        oldest = _sql(self._dialect, f"SELECT id FROM tb_session WHERE username = %s AND publicId NOT LIKE "
                                     f"'{TOKEN_PREFIX}%%' ORDER BY createdAt DESC, id LIMIT 1000 OFFSET %s")
        drop = _sql(self._dialect, "DELETE FROM tb_session WHERE id = %s")
        keep = self.max_per_user

        def work(cursor: Any) -> str:
            cursor.execute(statement, row)
            # An account holds a bounded number of sessions: the oldest beyond it end.
            cursor.execute(oldest, [username, keep])
            for (key,) in cursor.fetchall():
                cursor.execute(drop, [key])
            audit.record(cursor, dialect, actor, "login", "session", public_id,
                         after={"username": username, "userAgent": user_agent[:256]}, at=now)
            return token

        return self.db.run(work)

    def check(self, token: str | None) -> Deferred[Session | None]:
        """
        The live session a cookie token stands for, with the user's role now;
        None if there is none.

        Checks of one token that come while one is waiting for the database
        share its answer: a load test (or a tester's many tabs) opening
        thousands of WebSockets with one cookie costs one query per database
        round trip, not a queue of them that outlasts the handshake timeout.
        """
        if not _token_ok(token):
            return succeed(None)
        key = session_key(token)  # type: ignore[arg-type]
        # Every caller gets a Deferred of its own: one that is cancelled (its
        # request went away) leaves the query and the other callers alone.
        waiting = self._checking.get(key)
        first = waiting is None
        if waiting is None:
            waiting = self._checking[key] = []

        def forget(d: Deferred[Session | None]) -> None:
            if d in waiting:
                waiting.remove(d)

        mine: Deferred[Session | None] = Deferred(forget)
        waiting.append(mine)
        if first:

            def share(result: Any) -> None:
                for caller in self._checking.pop(key, []):
                    if isinstance(result, Failure):
                        caller.errback(result)
                    else:
                        caller.callback(result)

            self._check(key).addBoth(share)
        return mine

    def _check(self, key: str) -> Deferred[Session | None]:
        now = self._now()
        select = _sql(self._dialect,
                      "SELECT s.username, u.role, s.expiresAt, s.publicId, s.lastSeen FROM tb_session s "
                      "JOIN tb_user u ON u.username = s.username WHERE s.id = %s AND s.expiresAt > %s")
        touch = _sql(self._dialect, "UPDATE tb_session SET lastSeen = %s WHERE id = %s")

        def work(cursor: Any) -> Session | None:
            cursor.execute(select, [key, now])
            row = cursor.fetchone()
            if row is None or row[1] not in ROLES:
                return None
            if now - int(row[4]) >= _SEEN_EVERY:
                cursor.execute(touch, [now, key])
            return Session(str(row[0]), str(row[1]), int(row[2]), key, str(row[3]))

        return self.db.run(work)

    def alive(self, keys: Sequence[str]) -> Deferred[set[str]]:
        """Which of these session keys are still live (row there, not expired, user still there)."""
        keys = list(keys)
        now = self._now()

        def work(cursor: Any) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                cursor.execute(_sql(self._dialect,
                    "SELECT s.id FROM tb_session s JOIN tb_user u ON u.username = s.username "  # noqa: E128
                    f"WHERE s.expiresAt > %s AND s.id IN ({', '.join(['%s'] * len(chunk))})"), [now, *chunk])
                found.update(str(row[0]) for row in cursor.fetchall())
            return found

        return self.db.run(work) if keys else succeed(set())

    def _delete(self, where: str, params: list[Any], actor: Actor | None = None, action: str = "",
                owner_acts: bool = False) -> Deferred[int]:
        """
        Delete the sessions C{where} says; each one ended gets an audit row
        (C{action}) by C{actor}, or by its own user from C{actor}'s address
        when C{owner_acts} (a logout).
        """
        select = _sql(self._dialect, f"SELECT publicId, username FROM tb_session WHERE {where}")
        statement = _sql(self._dialect, f"DELETE FROM tb_session WHERE {where}")
        dialect = self._dialect

        def work(cursor: Any) -> int:
            if actor is None:
                cursor.execute(statement, params)
                return int(cursor.rowcount)
            cursor.execute(select, params)
            ended = cursor.fetchall()
            cursor.execute(statement, params)
            count = int(cursor.rowcount)
            for public_id, username in ended:
                by = Actor(str(username), actor.address) if owner_acts else actor
                audit.record(cursor, dialect, by, action, "session", str(public_id),
                             before={"username": str(username)})
            return count

        return self.db.run(work)

    def end(self, token: str | None, address: str | None = None) -> Deferred[int]:
        """End the session of this token (logout; audited when the caller's C{address} is given)."""
        if not _token_ok(token):
            return succeed(0)
        actor = None if address is None else Actor("", address)
        return self._delete("id = %s", [session_key(token)], actor, "logout", owner_acts=True)  # type: ignore[arg-type]

    def end_user(self, username: str, actor: Actor | None = None, action: str = "endSessions") -> Deferred[int]:
        """End every session of C{username} (log out everywhere, or an admin's doing)."""
        return self._delete("username = %s", [username], actor, action)

    def end_public(self, public_id: str, actor: Actor | None = None) -> Deferred[int]:
        """End the session an admin picked from the list."""
        return self._delete("publicId = %s", [public_id], actor, "endSessions")

    def purge(self) -> Deferred[int]:
        """Forget expired sessions."""
        return self._delete("expiresAt <= %s", [self._now()])

    def list(self) -> Deferred[list[dict[str, Any]]]:
        """The live sessions, newest first, as admins see them (never the token or its key)."""
        statement = _sql(self._dialect,
                         "SELECT s.publicId, s.username, u.role, s.address, s.userAgent, s.createdAt, s.lastSeen, "
                         "s.expiresAt FROM tb_session s JOIN tb_user u ON u.username = s.username "
                         "WHERE s.expiresAt > %s ORDER BY s.createdAt DESC")
        now = self._now()

        def work(cursor: Any) -> list[dict[str, Any]]:
            cursor.execute(statement, [now])
            names = ("id", "username", "role", "address", "userAgent", "createdAt", "lastSeen", "expiresAt")
            return [dict(zip(names, row, strict=False)) for row in cursor.fetchall()]

        return self.db.run(work)


class DeviceSigner:
    """
    Signs small values with the configured session secret (HMAC-SHA256),
    for cookies whose content needs no row (the login throttle's device
    cookie).
    """

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"webtesting device\0" + secret.encode()).digest()

    def sign(self, value: str) -> str:
        payload = _b64(value.encode())
        return f"{payload}.{_b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())}"

    def check(self, signed: str | None) -> str | None:
        if not signed or signed.count(".") != 1 or len(signed) > 512:
            return None
        payload, signature = signed.split(".")
        expected = _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            return None
        try:
            return _unb64(payload).decode()
        except (ValueError, UnicodeDecodeError):
            return None


def cookie_value(header: str | bytes | None, name: str = COOKIE) -> str | None:
    """The value of cookie C{name} in a Cookie header."""
    if not header:
        return None
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def set_cookie_header(value: str, max_age: int, secure: bool) -> str:
    flags = f"{COOKIE}={value}; Path=/WebTesting; Max-Age={max_age}; HttpOnly; SameSite=Strict"
    return flags + ("; Secure" if secure else "")


# -- the users table ------------------------------------------------------------------


def check_username(value: Any, where: str = "username") -> str:
    name = require_str(value, where, MAX_USERNAME)
    if name != name.strip() or any(c.isspace() or ord(c) < 32 for c in name):
        raise InvalidInput(where, "must not contain spaces or control characters")
    return name


def check_new_password(value: Any, where: str = "password") -> str:
    password = require_str(value, where, 1024)
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(where, f"must be at least {MIN_PASSWORD} characters")
    return password



class Accounts:
    """Users in the registry database, through its L{webtesting.dbpool.Database}."""

    def __init__(self, db: Any, dialect_name: str) -> None:
        self.db = db
        self._dialect = dialect_name

    def authenticate(self, username: str, password: str) -> Deferred[str | None]:
        """Fire with the user's role if the password is right, else None."""
        statement = _sql(self._dialect, "SELECT passwordHash, role FROM tb_user WHERE username = %s")

        def work(cursor: Any) -> Any:
            cursor.execute(statement, [username])
            return cursor.fetchone()

        d = self.db.run(work)

        def verify(row: Any) -> Deferred[str | None]:
            stored, role = (row[0], row[1]) if row else (_dummy_hash(), None)
            checking = deferToThread(check_password, password, stored)

            def checked(ok: bool) -> Any:
                if not (ok and row):
                    return None
                if needs_rehash(stored):
                    # Made at an older, lower cost: store it again at today's.
                    upgrading = deferToThread(hash_password, password)
                    upgrading.addCallback(lambda new: self._replace_hash(username, stored, new))
                    upgrading.addErrback(lambda f: _log.failure("upgrading the password hash of {username}", f,
                                                                username=username))
                    upgrading.addCallback(lambda _: role)
                    return upgrading
                return role

            return checking.addCallback(checked)

        return d.addCallback(verify)

    def _replace_hash(self, username: str, old: str, new: str) -> Deferred[None]:
        # Only if nobody changed the password meanwhile.
        statement = _sql(self._dialect,
                         "UPDATE tb_user SET passwordHash = %s WHERE username = %s AND passwordHash = %s")
        return self.db.run(lambda cursor: cursor.execute(statement, [new, username, old]))


def cli_actor() -> Actor:
    """Who the audit trail names for a change made with webtesting-account: the OS user, on this machine."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = str(os.getuid())
    return Actor(f"cli:{name}", "local")


def _audit_schema_sync(cursor: Any, dialect_name: str) -> None:
    if dialect_name == "mysql":
        cursor.execute(AUDIT_SCHEMA_MYSQL)
    else:
        cursor.execute(AUDIT_SCHEMA_SQLITE)
        cursor.execute(AUDIT_INDEX_SQLITE)


def add_user_sync(connection: Any, dialect_name: str, username: str, password: str, role: str,
                  actor: Actor | None = None) -> None:
    """
    Create or update a user on an open DB-API connection (the command line
    and tests use this); audited when C{actor} is given.
    """
    check_username(username)
    check_new_password(password)
    if role not in ROLES:
        raise InvalidInput("role", f"must be one of {', '.join(ROLES)}")
    cursor = connection.cursor()
    cursor.execute(USER_SCHEMA_MYSQL if dialect_name == "mysql" else USER_SCHEMA_SQLITE)
    _session_schema_sync(cursor, dialect_name)
    _audit_schema_sync(cursor, dialect_name)
    digest = hash_password(password)
    cursor.execute(_sql(dialect_name, "SELECT role FROM tb_user WHERE username = %s"), [username])
    existing = cursor.fetchone()
    if existing:
        cursor.execute(_sql(dialect_name, "UPDATE tb_user SET passwordHash = %s, role = %s WHERE username = %s"),
                       [digest, role, username])
        audit.record(cursor, dialect_name, actor, "updateUser", "user", username,
                     before={"role": str(existing[0]), "password": "old"}, after={"role": role, "password": "new"})
    else:
        cursor.execute(
            _sql(dialect_name, "INSERT INTO tb_user (username, passwordHash, role, createdAt) VALUES (%s, %s, %s, %s)"),
            [username, digest, role, int(time.time())],
        )
        audit.record(cursor, dialect_name, actor, "addUser", "user", username,
                     after={"username": username, "role": role, "password": "set"})
    # A new password or role: whoever was logged in as this user logs in again.
    cursor.execute(_sql(dialect_name, "DELETE FROM tb_session WHERE username = %s"), [username])
    connection.commit()


def _session_schema_sync(cursor: Any, dialect_name: str) -> None:
    if dialect_name == "mysql":
        cursor.execute(SESSION_SCHEMA_MYSQL)
    else:
        cursor.execute(SESSION_SCHEMA_SQLITE)
        cursor.execute(SESSION_INDEX_SQLITE)


def list_users_sync(connection: Any, dialect_name: str) -> list[tuple[str, str]]:
    cursor = connection.cursor()
    cursor.execute(USER_SCHEMA_MYSQL if dialect_name == "mysql" else USER_SCHEMA_SQLITE)
    cursor.execute("SELECT username, role FROM tb_user ORDER BY username")
    return [(str(u), str(r)) for u, r in cursor.fetchall()]


def make_token_sync(connection: Any, dialect_name: str, username: str, label: str = "",
                    lifetime: float = TOKEN_LIFETIME, actor: Actor | None = None) -> str:
    """
    An API token for C{username} (for CI: ``webtesting-test --token-file``): a
    long-lived session, listed among the sessions (id ``tok-…``) and ended
    like one (an admin's endSessions, logoutAll, deleting the user, a new
    password or role). Only its SHA-256 is stored.
    """
    cursor = connection.cursor()
    _session_schema_sync(cursor, dialect_name)
    cursor.execute(_sql(dialect_name, "SELECT id FROM tb_user WHERE username = %s"), [username])
    if not cursor.fetchone():
        raise InvalidInput("username", f"no such user: {username}")
    _audit_schema_sync(cursor, dialect_name)
    token = _b64(os.urandom(32))
    now = int(time.time())
    public_id = TOKEN_PREFIX + os.urandom(6).hex()
    user_agent = f"API token {label}".strip()[:256]
    cursor.execute(
        _sql(dialect_name, "INSERT INTO tb_session (id, publicId, username, address, userAgent, createdAt, "
                           "lastSeen, expiresAt) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"),
        [session_key(token), public_id, username, "", user_agent, now, now, int(now + lifetime)],
    )
    audit.record(cursor, dialect_name, actor, "makeToken", "session", public_id,
                 after={"username": username, "userAgent": user_agent})
    connection.commit()
    return token


def delete_user_sync(connection: Any, dialect_name: str, username: str, actor: Actor | None = None) -> bool:
    cursor = connection.cursor()
    # Tables first: on MySQL a CREATE TABLE commits, so none may come between the delete and its audit row.
    _audit_schema_sync(cursor, dialect_name)
    _session_schema_sync(cursor, dialect_name)
    cursor.execute(_sql(dialect_name, "SELECT role FROM tb_user WHERE username = %s"), [username])
    existing = cursor.fetchone()
    cursor.execute(_sql(dialect_name, "DELETE FROM tb_user WHERE username = %s"), [username])
    deleted = bool(cursor.rowcount)
    if existing:
        audit.record(cursor, dialect_name, actor, "deleteUser", "user", username,
                     before={"username": username, "role": str(existing[0])})
    cursor.execute(_sql(dialect_name, "DELETE FROM tb_session WHERE username = %s"), [username])
    connection.commit()
    return deleted


# -- webtesting-account ------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``webtesting-account``: add, list and delete tester and admin accounts."""
    from webtesting.config import ConfigError, WebConfig, load
    from webtesting.web.registry import connect_sync

    parser = argparse.ArgumentParser(prog="webtesting-account", description=main.__doc__)
    parser.add_argument("--config", "-c", help="the web server's YAML configuration (etc/web.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="create a user, or set an existing user's password and role")
    add.add_argument("username")
    add.add_argument("--role", choices=ROLES, default="tester")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input instead of asking")
    token = commands.add_parser("token", help="make an API token for a user (for CI); prints it once")
    token.add_argument("username")
    token.add_argument("--label", default="", help="what it is for, shown in the admin's session list")
    commands.add_parser("list", help="list users and their roles")
    delete = commands.add_parser("delete", help="delete a user")
    delete.add_argument("username")
    args = parser.parse_args(argv)

    try:
        config = load(WebConfig, args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    connection, dialect_name = connect_sync(config.registry)
    try:
        if args.command == "add":
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\n")
            else:
                password = getpass.getpass(f"password for {args.username}: ")
                if getpass.getpass("again: ") != password:
                    print("the passwords differ", file=sys.stderr)
                    return 1
            try:
                add_user_sync(connection, dialect_name, args.username, password, args.role, cli_actor())
            except InvalidInput as e:
                print(e, file=sys.stderr)
                return 1
            print(f"{args.username}: {args.role}")
        elif args.command == "token":
            try:
                print(make_token_sync(connection, dialect_name, args.username, args.label, actor=cli_actor()))
            except InvalidInput as e:
                print(e, file=sys.stderr)
                return 1
        elif args.command == "list":
            for username, role in list_users_sync(connection, dialect_name):
                print(f"{username}\t{role}")
        elif args.command == "delete" and not delete_user_sync(connection, dialect_name, args.username,
                                                                    cli_actor()):
            print(f"no such user: {args.username}", file=sys.stderr)
            return 1
    finally:
        connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
