"""
Server-side login sessions, over real sockets on a real registry database:
a session ends at once on logout, "log out everywhere", an admin's word, or
a deleted or re-roled user, for the HTTP API and for open WebSockets (on this
web node at once, on another within its re-check interval).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.support import wsclient
from tests.support.http import JSONClient
from tests.support.registry import RunningRegistry
from tests.support.sessions import session_cookie
from tests.support.wait import autobahn_timers_settled, eventually
from webtesting.config import RegistryConfig
from webtesting.web import accounts
from webtesting.web.accounts import (
    SessionStore,
    add_user_sync,
    delete_user_sync,
    hash_password,
    needs_rehash,
)
from webtesting.web.registry import connect_sync
from webtesting.web.sessions import Relay
from webtesting.web.ws import SESSION_ENDED, BrowserFactory

ME = "/WebTesting/Account/me"


class SessionStoreTests(unittest.TestCase):
    async def setUp(self) -> None:
        self.config = RegistryConfig(sqlite_path=self.mktemp() + ".sqlite3")
        self.running = RunningRegistry(self.config)
        await self.running.start(role=None)
        self.addCleanup(self.running.stop)
        self.now = [1_000_000.0]
        self.store = SessionStore(self.running.registry.db, "sqlite", 60, clock=lambda: self.now[0])

    async def test_round_trip_and_expiry(self) -> None:
        """A new session is read back with the user's current role; it ends when it expires."""
        cookie = await session_cookie(self.store, "ann", "admin")
        token = cookie.split("=", 1)[1]
        session = await self.store.check(token)
        assert session is not None
        self.assertEqual((session.username, session.role, session.is_admin), ("ann", "admin", True))
        self.now[0] += 61
        self.assertIsNone(await self.store.check(token))

    async def test_checks_of_one_token_share_a_query(self) -> None:
        """Checks of one cookie that come together share one database query; a later one asks again."""
        token = (await session_cookie(self.store, "ann", "admin")).split("=", 1)[1]
        other = (await session_cookie(self.store, "bob", "tester")).split("=", 1)[1]
        db = self.running.registry.db
        runs: list[object] = []
        real_run = db.run

        def counting_run(work: object) -> object:
            runs.append(work)
            return real_run(work)

        db.run = counting_run
        self.addCleanup(setattr, db, "run", real_run)
        checks = [self.store.check(token) for _ in range(50)] + [self.store.check(other)]
        results = await defer.gatherResults(checks)
        self.assertEqual(len(runs), 2)  # one per token
        self.assertEqual({r.username for r in results[:50]}, {"ann"})  # type: ignore[union-attr]
        self.assertEqual(results[50].username, "bob")  # type: ignore[union-attr]
        self.now[0] += 61  # expired: a new check asks again, and says so
        self.assertIsNone(await self.store.check(token))
        self.assertEqual(len(runs), 3)
        # A caller that gives up (its request went away) leaves the others their answer.
        self.now[0] -= 61
        gone, staying = self.store.check(token), self.store.check(token)
        gone.cancel()
        self.failureResultOf(gone, defer.CancelledError)
        session = await staying
        assert session is not None
        self.assertEqual(session.username, "ann")
        self.assertEqual(len(runs), 4)

    async def test_only_the_hash_is_stored(self) -> None:
        """The table holds the token's SHA-256, never the token: a copy of the database opens nothing."""
        token = (await session_cookie(self.store, "ann", "admin")).split("=", 1)[1]
        rows = await self.running.registry.db.run(
            lambda c: (c.execute("SELECT * FROM tb_session"), c.fetchall())[1])
        flat = " ".join(str(v) for row in rows for v in row)
        self.assertNotIn(token, flat)
        self.assertIn(hashlib.sha256(token.encode()).hexdigest(), flat)

    async def test_sessions_per_account_are_bounded(self) -> None:
        """An account holds at most max_per_user sessions: logging in again ends the oldest."""
        self.store.max_per_user = 3
        tokens = []
        for _ in range(5):
            tokens.append((await session_cookie(self.store, "ann", "admin")).split("=", 1)[1])
            self.now[0] += 1
        alive = [await self.store.check(t) is not None for t in tokens]
        self.assertEqual(alive, [False, False, True, True, True])
        other = (await session_cookie(self.store, "bob", "tester")).split("=", 1)[1]
        self.assertIsNotNone(await self.store.check(other))

    async def test_odd_tokens_are_no_session(self) -> None:
        """Absent, forged, over-long or non-ASCII tokens are simply no session (not an error)."""
        await session_cookie(self.store, "ann", "admin")
        for token in (None, "", "x", "A" * 43, "é" * 10, "A" * 5000):
            self.assertIsNone(await self.store.check(token))


class RevocationTests(unittest.TestCase):
    """The findings: a cookie outlived logout, a deleted user, a demoted admin."""

    async def setUp(self) -> None:
        self.addCleanup(autobahn_timers_settled)
        self.config = RegistryConfig(sqlite_path=self.mktemp() + ".sqlite3")
        connection, dialect = connect_sync(self.config)
        add_user_sync(connection, dialect, "ann", "ann-password-1", "admin")
        add_user_sync(connection, dialect, "tom", "tom-password-1", "tester")
        connection.close()
        self.running = RunningRegistry(self.config)
        self.client = await self.running.start(role=None)
        self.addCleanup(self.running.stop)
        # A browser WebSocket on the same registry, as tap wires it.
        self.factory = BrowserFactory(Relay({}), self.running.sessions, path="/WebTesting", recheck_interval=0.2)
        self.running.api.sessions_ended = self.factory.recheck
        self.ws_port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.ws_port.stopListening)
        self.ws_url = f"ws://127.0.0.1:{self.ws_port.getHost().port}/WebTesting"

    async def logged_in(self, username: str, password: str) -> JSONClient:
        client = JSONClient(self.client.base)
        self.addCleanup(client.close)
        status, _ = await client.login(username, password)
        self.assertEqual(status, 200)
        return client

    async def websocket(self, client: JSONClient) -> wsclient.JSONClientProtocol:
        ws = await wsclient.connect(self.ws_url, headers={"Cookie": client.cookie})
        self.addCleanup(ws.close)
        return ws

    def sync(self, work: Any) -> None:
        connection, dialect = connect_sync(self.config)
        try:
            work(connection, dialect)
        finally:
            connection.close()

    async def test_cookie_from_before_logout(self) -> None:
        """After logout the same cookie opens neither the API nor a WebSocket, and the open WebSocket closes."""
        client = await self.logged_in("tom", "tom-password-1")
        ws = await self.websocket(client)
        old = client.cookie
        status, _ = await client.call("POST", "/WebTesting/Account/logout", {})
        self.assertEqual(status, 200)
        _clean, code, reason = await ws.closed
        self.assertEqual(code, SESSION_ENDED)
        self.assertIn("session ended", reason or "")
        client.cookie = old  # an attacker who kept the cookie
        status, answer = await client.call("GET", ME)
        self.assertEqual((status, answer["code"]), (401, "not_logged_in"))
        with self.assertRaises(ConnectionError):
            await wsclient.connect(self.ws_url, headers={"Cookie": old})

    async def test_deleted_user(self) -> None:
        """Deleting a user (webtesting-account delete) ends their sessions: API at once, WebSockets within the re-
        check."""
        client = await self.logged_in("ann", "ann-password-1")
        ws = await self.websocket(client)
        self.sync(lambda c, d: delete_user_sync(c, d, "ann"))
        status, _ = await client.call("GET", ME)
        self.assertEqual(status, 401)
        _clean, code, _reason = await ws.closed
        self.assertEqual(code, SESSION_ENDED)

    async def test_demoted_admin(self) -> None:
        """An admin made a tester loses admin rights at once, even with a role changed by hand in the table."""
        client = await self.logged_in("ann", "ann-password-1")
        status, _ = await client.call("GET", "/WebTesting/Service/getServices")
        self.assertEqual(status, 200)
        await self.running.registry.db.run(
            lambda c: c.execute("UPDATE tb_user SET role = 'tester' WHERE username = 'ann'"))
        status, answer = await client.call("GET", "/WebTesting/Service/getServices")
        self.assertEqual((status, answer["code"]), (403, "forbidden"))
        status, answer = await client.call("GET", ME)
        self.assertEqual(answer["role"], "tester")
        # webtesting-account add (a role or password change) ends the sessions altogether.
        self.sync(lambda c, d: add_user_sync(c, d, "ann", "ann-password-2", "admin"))
        status, _ = await client.call("GET", ME)
        self.assertEqual(status, 401)

    async def test_log_out_everywhere(self) -> None:
        """logoutAll ends every session of the caller, in every browser, and closes their WebSockets; others stay."""
        first = await self.logged_in("tom", "tom-password-1")
        second = await self.logged_in("tom", "tom-password-1")
        other = await self.logged_in("ann", "ann-password-1")
        sockets = [await self.websocket(first), await self.websocket(second)]
        kept = await self.websocket(other)
        status, answer = await first.call("POST", "/WebTesting/Account/logoutAll", {})
        self.assertEqual((status, answer["ended"]), (200, 2))
        for ws in sockets:
            self.assertEqual((await ws.closed)[1], SESSION_ENDED)
        self.assertEqual((await second.call("GET", ME))[0], 401)
        self.assertEqual((await other.call("GET", ME))[0], 200)
        self.assertFalse(kept.closed.called)

    async def test_admin_lists_and_ends_sessions(self) -> None:
        """An admin sees the active sessions (never a token) and ends one, or all of an account's; a tester may not."""
        tom = await self.logged_in("tom", "tom-password-1")
        tom2 = await self.logged_in("tom", "tom-password-1")
        ann = await self.logged_in("ann", "ann-password-1")
        status, _ = await tom.call("GET", "/WebTesting/Account/sessions")
        self.assertEqual(status, 403)
        status, answer = await ann.call("GET", "/WebTesting/Account/sessions")
        self.assertEqual(status, 200)
        listed = answer["sessions"]
        self.assertEqual(sorted(s["username"] for s in listed), ["ann", "tom", "tom"])
        self.assertEqual({s["address"] for s in listed}, {"127.0.0.1"})
        text = repr(listed)
        for client in (tom, tom2, ann):
            self.assertNotIn(client.cookie.split("=", 1)[1], text)
        self.assertEqual((await tom.call("POST", "/WebTesting/Account/endSessions", {"username": "ann"}))[0], 403)
        one = next(s["id"] for s in listed if s["username"] == "tom")
        status, answer = await ann.call("POST", "/WebTesting/Account/endSessions", {"id": one})
        self.assertEqual((status, answer["ended"]), (200, 1))
        alive = [c for c in (tom, tom2) if (await c.call("GET", ME))[0] == 200]
        self.assertEqual(len(alive), 1)
        status, answer = await ann.call("POST", "/WebTesting/Account/endSessions", {"username": "tom"})
        self.assertEqual((status, answer["ended"]), (200, 1))
        self.assertEqual((await alive[0].call("GET", ME))[0], 401)
        for body in ({}, {"id": one, "username": "tom"}, {"username": 5}):
            status, _ = await ann.call("POST", "/WebTesting/Account/endSessions", body)
            self.assertEqual(status, 400, body)

    async def test_another_web_node_closes_within_its_recheck(self) -> None:
        """A second web server on the same registry closes the WebSocket of a session ended on the first."""
        other = BrowserFactory(Relay({}), SessionStore(self.running.registry.db, "sqlite", 3600),
                               path="/WebTesting", recheck_interval=0.3)
        port = reactor.listenTCP(0, other, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = await self.logged_in("tom", "tom-password-1")
        ws = await wsclient.connect(f"ws://127.0.0.1:{port.getHost().port}/WebTesting",
                                    headers={"Cookie": client.cookie})
        self.addCleanup(ws.close)
        await client.call("POST", "/WebTesting/Account/logout", {})
        took = await eventually(lambda: ws.closed.called, timeout=3, what="closed by the other node")
        self.assertLess(took, 1.5)
        self.assertEqual((await ws.closed)[1], SESSION_ENDED)

    async def test_expired_login_closes_its_websocket(self) -> None:
        """A login that expires closes its open WebSocket (4401, "login expired") within the recheck, though
        the database still has the row; no timer per connection."""
        now = [time.time()]
        self.factory.clock = lambda: now[0]
        client = await self.logged_in("tom", "tom-password-1")
        ws = await self.websocket(client)
        protocol = next(iter(self.factory.open_protocols))
        self.assertEqual([c for c in reactor.getDelayedCalls() if getattr(c.func, "__self__", None) is protocol], [])
        await deferLater(reactor, 0.5, lambda: None)
        self.assertFalse(ws.closed.called)  # not yet expired
        now[0] = protocol.user.expires + 1
        await eventually(lambda: ws.closed.called, timeout=3, what="closed on expiry")
        self.assertEqual((await ws.closed)[1:], (SESSION_ENDED, "login expired; log in again"))

    async def test_websockets_per_account(self) -> None:
        """An account may hold at most max_per_account WebSockets; the next is refused with 429, closing one frees a
        place."""
        self.factory.max_per_account = 2
        client = await self.logged_in("tom", "tom-password-1")
        first = await self.websocket(client)
        await self.websocket(client)
        with self.assertRaises(ConnectionError) as refused:
            await wsclient.connect(self.ws_url, headers={"Cookie": client.cookie})
        self.assertIn("429", str(refused.exception))
        ann = await self.logged_in("ann", "ann-password-1")
        await self.websocket(ann)  # another account is not affected
        await first.close()
        await eventually(lambda: self.factory._per_account.get("tom") == 1, what="a place freed")
        await self.websocket(client)


class PasswordCostTests(unittest.TestCase):
    async def test_old_hashes_work_and_are_upgraded(self) -> None:
        """A password hashed at the old cost (n=2**14) still logs in, and is stored again at today's cost."""
        config = RegistryConfig(sqlite_path=self.mktemp() + ".sqlite3")
        running = RunningRegistry(config)
        client = await running.start(role=None)
        self.addCleanup(running.stop)
        old_n = accounts._N
        accounts._N = 2**14
        try:
            old = hash_password("tom-password-1")
        finally:
            accounts._N = old_n
        self.assertTrue(needs_rehash(old))
        await running.registry.db.run(lambda c: c.execute(
            "INSERT INTO tb_user (username, passwordHash, role, createdAt) VALUES ('tom', ?, 'tester', 0)", [old]))
        status, _ = await client.login("tom", "tom-password-1")
        self.assertEqual(status, 200)
        stored = await running.registry.db.run(
            lambda c: (c.execute("SELECT passwordHash FROM tb_user WHERE username = 'tom'"), c.fetchone())[1][0])
        self.assertTrue(stored.startswith(f"scrypt${2**17}$8$1$"), stored)
        self.assertFalse(needs_rehash(stored))
        status, _ = await JSONClient(client.base).login("tom", "tom-password-1")
        self.assertEqual(status, 200)

    def test_new_hashes_cost_2_17(self) -> None:
        """New hashes are made at n=2**17; an absurd cost in a stored hash is refused, not computed."""
        self.assertTrue(hash_password("x" * 8).startswith(f"scrypt${2**17}$8$1$"))
        salt = "AAAAAAAAAAAAAAAAAAAAAA"
        self.assertFalse(accounts.check_password("x", f"scrypt${2**30}$8$1${salt}${salt}"))


class ExpiryWhileTheDatabaseHangsTests(unittest.TestCase):
    def test_expired_logins_close_while_a_recheck_waits(self) -> None:
        """A recheck still waiting for the database does not hold back the close of an expired login."""
        from twisted.internet.defer import Deferred
        from twisted.internet.testing import MemoryReactorClock

        class Hanging:
            def check(self, token: str | None) -> Deferred[Any]:
                return Deferred()

            def alive(self, keys: Any) -> Deferred[set[str]]:
                return Deferred()  # never answers

        class Fake:
            def __init__(self, expires: int) -> None:
                self.user = accounts.Session("tom", "tester", expires, key=f"k{expires}")
                self.expired = 0

            def login_expired(self) -> None:
                self.expired += 1

        now = [1000.0]
        factory = BrowserFactory(Relay({}), Hanging(), clock=lambda: now[0], reactor=MemoryReactorClock())
        soon, later = Fake(1010), Fake(5000)
        factory.open_protocols.update({soon, later})  # type: ignore[arg-type]
        first = factory.recheck()
        self.assertIsNotNone(first)
        self.assertEqual((soon.expired, later.expired), (0, 0))
        now[0] = 1010
        self.assertIs(factory.recheck(), first)  # the query still waits
        self.assertEqual((soon.expired, later.expired), (1, 0))

    def test_the_timer_closes_expired_logins_while_a_recheck_waits(self) -> None:
        """The 2 s timer does not wait for a recheck's query, and goes on after an error."""
        from twisted.internet.defer import Deferred
        from twisted.internet.testing import MemoryReactorClock

        queries: list[Deferred[set[str]]] = []

        class Hanging:
            def check(self, token: str | None) -> Deferred[Any]:
                return Deferred()

            def alive(self, keys: Any) -> Deferred[set[str]]:
                queries.append(Deferred())
                return queries[-1]  # never answers

        class Fake:
            def __init__(self, expires: int, fails: bool = False) -> None:
                self.user = accounts.Session("tom", "tester", expires, key=f"k{expires}")
                self.expired, self.fails = 0, fails

            def login_expired(self) -> None:
                self.expired += 1
                if self.fails:
                    raise RuntimeError("a broken connection")

        now = [1000.0]
        clock = MemoryReactorClock()
        factory = BrowserFactory(Relay({}), Hanging(), clock=lambda: now[0], reactor=clock, recheck_interval=2)
        broken, soon, later = Fake(1003, fails=True), Fake(1005), Fake(5000)
        factory.open_protocols.update({broken, soon, later})  # type: ignore[arg-type]
        factory.startFactory()
        self.addCleanup(factory.stopFactory)
        clock.advance(2)
        self.assertEqual(len(queries), 1)
        now[0] = 1006
        clock.advance(2)
        clock.advance(2)
        self.assertEqual((broken.expired >= 1, soon.expired >= 1, later.expired), (True, True, 0))
        self.assertEqual(len(queries), 1)  # one query at a time
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), broken.expired)
