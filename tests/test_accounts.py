"""Accounts: passwords, roles on the API, cross-site refusal, slowed failures (sessions: test_server_sessions)."""

from __future__ import annotations

from twisted.trial import unittest

from tests.support.registry import SERVICE, RunningRegistry, seed_service
from webtesting.config import RegistryConfig
from webtesting.web.accounts import (
    add_user_sync,
    check_password,
    cookie_value,
    delete_user_sync,
    hash_password,
    list_users_sync,
)
from webtesting.web.registry import connect_sync


class PasswordTests(unittest.TestCase):
    def test_hash_and_check(self) -> None:
        """A password checks against its own salted hash only; two hashes of it differ."""
        stored = hash_password("correct horse")
        self.assertTrue(stored.startswith("scrypt$"))
        self.assertNotIn("correct horse", stored)
        self.assertTrue(check_password("correct horse", stored))
        self.assertFalse(check_password("correct hors", stored))
        self.assertNotEqual(stored, hash_password("correct horse"))
        self.assertFalse(check_password("x", "not-a-hash"))


class CookieTests(unittest.TestCase):
    def test_cookie_value(self) -> None:
        """The session cookie is found among others."""
        self.assertEqual(cookie_value(b"a=1; wt_session=v1.x.y; b=2"), "v1.x.y")
        self.assertIsNone(cookie_value("a=1"))


class AccountAPITests(unittest.TestCase):
    async def setUp(self) -> None:
        config = RegistryConfig(sqlite_path=self.mktemp() + ".sqlite3")
        connection, dialect = connect_sync(config)
        add_user_sync(connection, dialect, "ann", "ann-password-1", "admin")
        add_user_sync(connection, dialect, "tom", "tom-password-1", "tester")
        self.assertEqual(list_users_sync(connection, dialect), [("ann", "admin"), ("tom", "tester")])
        connection.close()
        self.running = RunningRegistry(config)
        self.client = await self.running.start(role=None)

    async def tearDown(self) -> None:
        await self.running.stop()

    async def test_login_sets_a_safe_cookie(self) -> None:
        """A right password logs in with an HttpOnly, SameSite=Strict, expiring cookie; /me tells who."""
        status, answer = await self.client.login("ann", "ann-password-1")
        self.assertEqual((status, answer["role"], answer["username"]), (200, "admin", "ann"))
        [cookie] = [c for c in self.client.last_headers.getRawHeaders("set-cookie") if c.startswith("wt_session=")]
        [device] = [c for c in self.client.last_headers.getRawHeaders("set-cookie") if c.startswith("wt_device=")]
        for flag in ("HttpOnly", "SameSite=Strict", "Path=/WebTesting", "Max-Age=3600"):
            self.assertIn(flag, cookie)
        # The login throttle's device cookie: only the login route sees it.
        for flag in ("HttpOnly", "SameSite=Strict", "Path=/WebTesting/Account;"):
            self.assertIn(flag, device)
        status, answer = await self.client.call("GET", "/WebTesting/Account/me")
        self.assertEqual((status, answer["username"], answer["role"]), (200, "ann", "admin"))

    async def test_wrong_password(self) -> None:
        """A wrong password or unknown user is answered 401 with the same words, and no cookie."""
        for username, password in (("ann", "wrong-password"), ("nobody", "whatever-pw")):
            status, answer = await self.client.login(username, password)
            self.assertEqual((status, answer),
                             (401, {"result": 401, "msg": "wrong username or password", "code": "not_logged_in"}))
        self.assertEqual(self.client.cookie, "")
        status, _ = await self.client.call("GET", "/WebTesting/Account/me")
        self.assertEqual(status, 401)

    async def test_not_logged_in(self) -> None:
        """Without a session every API call is answered 401."""
        for method, endpoint in (("GET", "getServiceList"), ("GET", "getServices"), ("PUT", "addServices")):
            status, answer = await self.client.call(method, f"{SERVICE}/{endpoint}", [seed_service()])
            self.assertEqual((status, answer["result"]), (401, 401))

    async def test_tester_is_refused_admin_operations(self) -> None:
        """A tester may list services for chat, but may not see them in full or change them."""
        await self.client.login("tom", "tom-password-1")
        status, _ = await self.client.call("GET", f"{SERVICE}/getServiceList")
        self.assertEqual(status, 200)
        for method, endpoint, body in (("GET", "getServices", None), ("PUT", "addServices", [seed_service()]),
                                       ("POST", "updateServices", [{"serviceId": 1, "description": "x"}]),
                                       ("DELETE", "delServices", {"serviceIds": [1]})):
            status, answer = await self.client.call(method, f"{SERVICE}/{endpoint}", body)
            self.assertEqual((status, answer["result"]), (403, 403), endpoint)
        self.assertEqual(await self.running.registry.list_services(), [])

    async def test_cross_site_requests_are_refused(self) -> None:
        """A state-changing request from another site's page is refused even with the admin's cookie."""
        await self.client.login("ann", "ann-password-1")
        response = await self.client.http.request(
            "PUT", f"{self.client.base}{SERVICE}/addServices", json=[seed_service()],
            headers={"Cookie": [self.client.cookie], "Origin": ["http://evil.example"]},
        )
        self.assertEqual(response.code, 403)
        await response.content()
        self.assertEqual(await self.running.registry.list_services(), [])

    async def test_logout(self) -> None:
        """Logging out clears the cookie."""
        await self.client.login("ann", "ann-password-1")
        status, _ = await self.client.call("POST", "/WebTesting/Account/logout", {})
        self.assertEqual(status, 200)
        [cookie] = self.client.last_headers.getRawHeaders("set-cookie")
        self.assertIn("wt_session=;", cookie)
        self.assertIn("Max-Age=0", cookie)

    async def test_page_headers(self) -> None:
        """Pages are sent with a Content-Security-Policy that forbids inline and foreign scripts."""
        response = await self.client.http.get(f"{self.client.base}/WebTesting/index.html")
        await response.content()
        self.assertIn("default-src 'self'", response.headers.getRawHeaders("content-security-policy")[0])


class CommandTests(unittest.TestCase):
    def test_add_update_delete(self) -> None:
        """The account command's functions add, re-role and delete users, refusing weak input."""
        from webtesting.protocol import InvalidInput

        connection, dialect = connect_sync(RegistryConfig(sqlite_path=self.mktemp() + ".sqlite3"))
        self.addCleanup(connection.close)
        add_user_sync(connection, dialect, "ann", "ann-password-1", "tester")
        add_user_sync(connection, dialect, "ann", "ann-password-2", "admin")
        self.assertEqual(list_users_sync(connection, dialect), [("ann", "admin")])
        self.assertRaises(InvalidInput, add_user_sync, connection, dialect, "bob", "short", "tester")
        self.assertRaises(InvalidInput, add_user_sync, connection, dialect, "b b", "long-enough-pw", "tester")
        self.assertRaises(InvalidInput, add_user_sync, connection, dialect, "bob", "long-enough-pw", "root")
        self.assertTrue(delete_user_sync(connection, dialect, "ann"))
        self.assertFalse(delete_user_sync(connection, dialect, "ann"))

    def test_command_changes_are_audited(self) -> None:
        """webtesting-account's add, re-role, token and delete each leave an audit row naming the OS user; no
        password or token is in the trail."""
        import io
        import json
        import os
        from unittest import mock

        from webtesting.web.accounts import main

        db = os.path.abspath(self.mktemp() + ".sqlite3")
        config = self.mktemp() + ".yaml"
        with open(config, "w") as f:
            f.write(f"http:\n  sessions:\n    secret: 'test-secret-0123456789'\nregistry:\n  sqlite_path: '{db}'\n"
                    "agents:\n  auth:\n    secret: 'test-secret-0123456789'\n")
        for argv, stdin in ((["add", "ann", "--password-stdin"], "ann-password-1\n"),
                            (["add", "ann", "--role", "admin", "--password-stdin"], "ann-password-2\n"),
                            (["token", "ann", "--label", "ci"], ""),
                            (["delete", "ann"], "")):
            out = io.StringIO()
            with mock.patch("sys.stdin", io.StringIO(stdin)), mock.patch("sys.stdout", out):
                self.assertEqual(main(["--config", config, *argv]), 0, argv)
        connection, _dialect = connect_sync(RegistryConfig(sqlite_path=db))
        self.addCleanup(connection.close)
        cursor = connection.cursor()
        cursor.execute("SELECT actor, address, action, kind, target, beforeValues, afterValues FROM tb_audit "
                       "ORDER BY id")
        rows = cursor.fetchall()
        self.assertEqual([(r[2], r[3], r[4]) for r in rows][:2], [("addUser", "user", "ann"),
                                                                   ("updateUser", "user", "ann")])
        self.assertEqual([r[2] for r in rows], ["addUser", "updateUser", "makeToken", "deleteUser"])
        for actor, address, *_ in rows:
            self.assertTrue(actor.startswith("cli:"), actor)
            self.assertEqual(address, "local")
        self.assertEqual(json.loads(rows[1][5]), {"password": "********", "role": "tester"})
        self.assertEqual(json.loads(rows[1][6]), {"password": "********", "role": "admin"})
        self.assertEqual(json.loads(rows[3][5]), {"role": "admin", "username": "ann"})
        self.assertNotIn("ann-password", json.dumps(rows))

    def test_delete_and_its_audit_row_go_together_on_mariadb(self) -> None:
        """On MariaDB (where a CREATE TABLE commits), a user's deletion whose audit row cannot be written is
        not kept either."""
        import pymysql

        from tests.support import mariadb
        from webtesting.config import MySQLConfig
        from webtesting.web.audit import Actor

        database = mariadb.temporary_database(self)
        connection, dialect = connect_sync(RegistryConfig(mysql=MySQLConfig(
            host=mariadb.HOST, port=mariadb.PORT, user=mariadb.USER, password=mariadb.PASSWORD, database=database)))
        self.addCleanup(connection.close)
        add_user_sync(connection, dialect, "ann", "ann-password-1", "admin")
        mariadb.execute(database, "ALTER TABLE tb_audit DROP COLUMN afterValues")  # every audit insert now fails
        with self.assertRaises(pymysql.err.OperationalError):
            delete_user_sync(connection, dialect, "ann", Actor("cli:test", "local"))
        connection.rollback()
        self.assertEqual(list_users_sync(connection, dialect), [("ann", "admin")])
