"""
The client SDK (webtesting.client) against the real product: the web server
as twistd builds it, the agent, the reference bot, a Redis Cluster and
MariaDB, over real sockets.
"""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from tests.support.browser import PASSWORD, PagesSystem
from tests.support.wait import eventually
from webtesting.client import Client, ClientError, ServerError, WaitTimeout


class ClientTests(unittest.TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.system = PagesSystem(self)
        await self.system.start()
        self.system.add_user("tess", "tester")
        self.system.add_user("tom", "tester")
        self.sid = await self.system.add_service()
        await self.system.wait_status(self.sid, 1)

    async def client(self, username: str = "tess") -> Client:
        client = Client(f"http://127.0.0.1:{self.system.http_port}", timeout=10)
        await client.login(username, PASSWORD)
        return client

    async def test_chat_state_and_unprompted_replies(self) -> None:
        """Log in, chat, read the state and its pushes, hear the bot speak unprompted, log out."""
        client = await self.client()
        self.assertEqual((client.username, client.role), ("tess", "tester"))
        [service] = await client.services()
        self.assertEqual(service["serviceId"], self.sid)
        self.assertTrue(client.ws_addr.startswith("ws://127.0.0.1:"))
        conn = await client.connect()
        self.addCleanup(conn.close)
        bot = await conn.login(self.sid, "1.00002", "alice")
        self.assertTrue(bot.uid)
        # The first state after login: its diffs are empty, whatever it holds. Waiting for it makes the
        # next push the one that tells what the chat changed (else the first read may already see it).
        first = await bot.next_push()
        self.assertEqual(first["memory"]["new"], [])
        reply = await bot.chat("my name is Alice")
        self.assertIn("Alice", reply["content"])
        pushed = await bot.next_push(lambda m: any(e["key"] == "name" for e in m["memory"]["new"]))
        self.assertEqual(pushed["memory"]["new"], [{"key": "name", "value": "Alice"}])
        state = await bot.state()
        self.assertIn({"key": "name", "value": "Alice"}, state["memory"]["cur"])
        await bot.chat("what's the weather like?")
        later = await bot.next_reply(timeout=5)
        self.assertEqual(later["action"], "followUp")
        self.assertEqual([r["action"] for r in bot.replies][-1], "followUp")
        self.assertGreaterEqual(len(bot.replies), 3)
        await bot.logout()
        self.assertEqual(conn.logins, {})
        await client.logout()
        with self.assertRaises(ServerError) as refused:
            await client.services()
        self.assertEqual((refused.exception.result, refused.exception.code), (401, "not_logged_in"))

    async def test_clear_errors(self) -> None:
        """A wrong password, an appid not allowed, a timeout and a closed WebSocket each give their own error."""
        with self.assertRaises(ServerError) as wrong:
            await Client(f"http://127.0.0.1:{self.system.http_port}").login("tess", "not the password")
        self.assertEqual(wrong.exception.code, "not_logged_in")
        client = await self.client()
        conn = await client.connect()
        with self.assertRaises(ServerError) as forbidden:
            await conn.login(self.sid, "9.99999", "alice")
        self.assertEqual(forbidden.exception.result, 403)
        bot = await conn.login(self.sid, "1.00002", "alice")
        with self.assertRaises(WaitTimeout):
            await bot.next_reply(timeout=0.2)
        await conn.close()
        with self.assertRaises(ClientError):
            await bot.chat("anyone there?")
        with self.assertRaises(ClientError):
            await Client("http://127.0.0.1:1").login("tess", PASSWORD)

    async def test_logged_in_elsewhere(self) -> None:
        """A second account logging in as the same bot user ends the first's login, which says who."""
        first = await (await self.client("tess")).connect()
        self.addCleanup(first.close)
        second = await (await self.client("tom")).connect()
        self.addCleanup(second.close)
        bot = await first.login(self.sid, "1.00002", "alice")
        await second.login(self.sid, "1.00002", "alice")
        await eventually(lambda: bot.ended is not None, what="the first login ended")
        ended: Any = bot.ended
        self.assertEqual((ended["code"], ended["msg"]), ("logged_in_elsewhere", "logged in elsewhere by tom"))
        self.assertNotIn(self.sid, first.logins)


class PushOrderTests(unittest.TestCase):
    async def test_a_push_that_came_first_is_not_missed(self) -> None:
        """next_push returns a matching push that arrived before the call, each push once, oldest first."""
        from webtesting.client import BotUser

        bot = BotUser(None, 1, "1.00002", "alice")  # type: ignore[arg-type]  # nothing here waits
        for n in (1, 2, 3):
            bot._push({"n": n, "memory": {"new": [{"key": "name"}] if n > 1 else []}})
        first = await bot.next_push(lambda m: bool(m["memory"]["new"]))
        self.assertEqual(first["n"], 2)
        self.assertEqual((await bot.next_push())["n"], 3)
