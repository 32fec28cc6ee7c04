"""
Tester and admin accounts, their login sessions, and the command that
manages them (``webtesting-account``).

- Users live in the registry database (table ``tb_user``), passwords hashed
  with scrypt (salted, deliberately slow; verified off the reactor).
- A login session is a signed cookie (``wt_session``: user, role, expiry,
  HMAC-SHA256 with the configured session secret), so every web server
  process that shares the secret accepts it and no session store is needed.
  It is HttpOnly, SameSite=Strict, Path=/WebTesting, Secure over HTTPS.
- Failed logins are slowed down: after a few failures for one username or
  one address, every further answer waits longer (up to 10 s).
"""

from __future__ import annotations

import argparse
import base64
import functools
import getpass
import hashlib
import hmac
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from webtesting.protocol import InvalidInput, require_str

COOKIE = "wt_session"
ROLES = ("tester", "admin")
MAX_USERNAME = 64
MIN_PASSWORD = 8

USER_SCHEMA_MYSQL = """\
CREATE TABLE IF NOT EXISTS `tb_user` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `username` varchar(64) NOT NULL,
  `passwordHash` varchar(255) NOT NULL COMMENT 'scrypt$n$r$p$salt$hash',
  `role` varchar(16) NOT NULL COMMENT 'tester or admin',
  `createdAt` bigint NOT NULL COMMENT 'Unix seconds',
  PRIMARY KEY (`id`),
  UNIQUE KEY `username` (`username`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""

USER_SCHEMA_SQLITE = """\
CREATE TABLE IF NOT EXISTS tb_user (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  username TEXT NOT NULL UNIQUE,
  passwordHash TEXT NOT NULL,
  role TEXT NOT NULL,
  createdAt INTEGER NOT NULL
)
"""

# -- passwords -------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))



_N, _R, _P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """Whether C{password} matches C{stored}; slow on purpose (call it off the reactor)."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(_unb64(digest)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(digest))


@functools.cache
def _dummy_hash() -> str:
    """A hash to check against when the username does not exist, so that the
    answer takes as long as for a wrong password."""
    return hash_password("not a real password")


# -- sessions --------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    username: str
    role: str
    expires: int

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class SessionSigner:
    """Makes and checks C{wt_session} cookie values."""

    def __init__(self, secret: str, lifetime: float, clock: Callable[[], float] = time.time) -> None:
        self._key = hashlib.sha256(b"webtesting session\0" + secret.encode()).digest()
        self.lifetime = lifetime
        self._clock = clock

    def make(self, username: str, role: str) -> str:
        payload = _b64(json.dumps(
            {"u": username, "r": role, "e": int(self._clock() + self.lifetime)}, separators=(",", ":")
        ).encode())
        return f"v1.{payload}.{self._sign(payload)}"

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def check(self, value: str | None) -> Session | None:
        """The session a cookie value stands for, or None (absent, forged, expired)."""
        if not value:
            return None
        try:
            version, payload, signature = value.split(".")
        except ValueError:
            return None
        if version != "v1" or not hmac.compare_digest(
            signature.encode("utf-8", "replace"), self._sign(payload).encode()
        ):
            return None
        try:
            data = json.loads(_unb64(payload))
            session = Session(str(data["u"]), str(data["r"]), int(data["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires < self._clock() or session.role not in ROLES:
            return None
        return session


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


# -- slowing down repeated failures ------------------------------------------------


class LoginThrottle:
    """
    Counts failed logins per key (a username, an address) and says how long
    the next answer for those keys must wait. Per process; a key forgets its
    failures C{window} seconds after the last one.
    """

    FREE = 3  # failures answered without delay
    MAX_DELAY = 10.0
    MAX_KEYS = 10_000

    def __init__(self, clock: Callable[[], float] = time.monotonic, window: float = 900.0) -> None:
        self._clock = clock
        self._window = window
        self._failures: dict[str, tuple[int, float]] = {}

    def delay(self, keys: Sequence[str]) -> float:
        now = self._clock()
        worst = 0
        for key in keys:
            count, last = self._failures.get(key, (0, 0.0))
            if count and now - last > self._window:
                del self._failures[key]
                count = 0
            worst = max(worst, count)
        if worst < self.FREE:
            return 0.0
        return float(min(0.5 * 2 ** (worst - self.FREE), self.MAX_DELAY))

    def failed(self, keys: Sequence[str]) -> None:
        now = self._clock()
        if len(self._failures) >= self.MAX_KEYS:
            oldest = min(self._failures, key=lambda k: self._failures[k][1])
            del self._failures[oldest]
        for key in keys:
            count, _ = self._failures.get(key, (0, 0.0))
            self._failures[key] = (count + 1, now)

    def succeeded(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._failures.pop(key, None)


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


def _sql(dialect_name: str, statement: str) -> str:
    return statement if dialect_name == "mysql" else statement.replace("%s", "?")


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
            return checking.addCallback(lambda ok: role if ok and row else None)

        return d.addCallback(verify)


def add_user_sync(connection: Any, dialect_name: str, username: str, password: str, role: str) -> None:
    """Create or update a user on an open DB-API connection (the command line and tests use this)."""
    check_username(username)
    check_new_password(password)
    if role not in ROLES:
        raise InvalidInput("role", f"must be one of {', '.join(ROLES)}")
    cursor = connection.cursor()
    cursor.execute(USER_SCHEMA_MYSQL if dialect_name == "mysql" else USER_SCHEMA_SQLITE)
    digest = hash_password(password)
    cursor.execute(_sql(dialect_name, "SELECT id FROM tb_user WHERE username = %s"), [username])
    if cursor.fetchone():
        cursor.execute(_sql(dialect_name, "UPDATE tb_user SET passwordHash = %s, role = %s WHERE username = %s"),
                       [digest, role, username])
    else:
        cursor.execute(
            _sql(dialect_name, "INSERT INTO tb_user (username, passwordHash, role, createdAt) VALUES (%s, %s, %s, %s)"),
            [username, digest, role, int(time.time())],
        )
    connection.commit()


def list_users_sync(connection: Any, dialect_name: str) -> list[tuple[str, str]]:
    cursor = connection.cursor()
    cursor.execute(USER_SCHEMA_MYSQL if dialect_name == "mysql" else USER_SCHEMA_SQLITE)
    cursor.execute("SELECT username, role FROM tb_user ORDER BY username")
    return [(str(u), str(r)) for u, r in cursor.fetchall()]


def delete_user_sync(connection: Any, dialect_name: str, username: str) -> bool:
    cursor = connection.cursor()
    cursor.execute(_sql(dialect_name, "DELETE FROM tb_user WHERE username = %s"), [username])
    connection.commit()
    return bool(cursor.rowcount)


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
                add_user_sync(connection, dialect_name, args.username, password, args.role)
            except InvalidInput as e:
                print(e, file=sys.stderr)
                return 1
            print(f"{args.username}: {args.role}")
        elif args.command == "list":
            for username, role in list_users_sync(connection, dialect_name):
                print(f"{username}\t{role}")
        elif args.command == "delete":
            if not delete_user_sync(connection, dialect_name, args.username):
                print(f"no such user: {args.username}", file=sys.stderr)
                return 1
    finally:
        connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
