"""
One login per (service, appid, uname), as seed 001 does for devices: over
the real chain (reference bot, agent, Redis Cluster, MariaDB), a second
login as the same bot user, from any account on any web server, ends the
first, whose page is told who took it; admins see who holds which bot user;
each account holds a bounded number of bot logins.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest

from tests.support import wsclient
from tests.support.agent import SECRET
from tests.support.http import JSONClient
from tests.support.sessions import session_cookie
from tests.support.system import FAST_BACKOFF, System
from tests.support.wait import eventually
from webtesting.web.http import RegistryAPI, make_site
from webtesting.web.links import AgentLinks
from webtesting.web.sessions import Relay
from webtesting.web.ws import BrowserFactory


class OneLoginTests(unittest.TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.system = System(self)
        await self.system.start()
        self.sid = await self.system.add_service()

    async def login(self, browser: Any, uname: str = "alice") -> dict[str, Any]:
        browser.send({"method": "loginReq", "serviceId": self.sid, "appid": "1.00002", "uname": uname})
        return dict(await browser.expect("loginResp"))

    def holders(self) -> list[tuple[int, str, str]]:
        return sorted(self.system.agent.factory.holders)

    async def second_web_node(self) -> tuple[Relay, Any]:
        """Another web server on the same registry: its own relay, agent links and browser WebSocket."""
        relay = Relay({})
        links = AgentLinks(self.system.registry, relay, reactor, secret=SECRET, sync_interval=0.3,
                           backoff=FAST_BACKOFF, connect_timeout=2)
        links.startService()
        self.addCleanup(links.stopService)
        await eventually(lambda: self.sid in links.links and links.links[self.sid].up, what="second node's link")
        port = reactor.listenTCP(0, BrowserFactory(relay, self.system.sessions, path="/WebTesting"),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return relay, port

    async def test_second_account_ends_the_first_login(self) -> None:
        """Two accounts, one bot user: the second login ends the first, which hears who took it over."""
        first = await self.system.browser("ann")
        second = await self.system.browser("bob")
        self.assertEqual((await self.login(first))["result"], 1)
        self.assertEqual((await self.login(second))["result"], 1)
        ended = await first.expect("logoutResp")
        self.assertEqual((ended["result"], ended["code"], ended["serviceId"], ended["appid"]),
                         (409, "logged_in_elsewhere", self.sid, "1.00002"))
        self.assertEqual(ended["msg"], "logged in elsewhere by bob")
        self.assertEqual(self.holders(), [(self.sid, "1.00002", "alice")])
        # The first page's login is over at both servers; the second chats on.
        first.send({"method": "aichatReq", "serviceId": self.sid, "appid": "1.00002", "content": "hi"})
        self.assertEqual((await first.expect("aichatResp"))["result"], 401)
        second.send({"method": "aichatReq", "serviceId": self.sid, "appid": "1.00002", "content": "hi"})
        self.assertEqual((await second.expect("aichatResp"))["result"], 1)
        # Another uname is another bot user: no conflict.
        self.assertEqual((await self.login(first, "carol"))["result"], 1)
        self.assertEqual(len(self.holders()), 2)

    async def test_across_web_servers(self) -> None:
        """A login through another web server ends the one held through this one."""
        _relay, port = await self.second_web_node()
        here = await self.system.browser("ann")
        self.assertEqual((await self.login(here))["result"], 1)
        there = await wsclient.connect(f"ws://127.0.0.1:{port.getHost().port}/WebTesting",
                                       headers={"Cookie": await session_cookie(self.system.sessions, "bob", "tester")})
        self.addCleanup(there.close)
        self.assertEqual((await self.login(there))["result"], 1)
        ended = await here.expect("logoutResp")
        self.assertEqual((ended["code"], ended["msg"]), ("logged_in_elsewhere", "logged in elsewhere by bob"))
        self.assertEqual(self.holders(), [(self.sid, "1.00002", "alice")])

    async def test_restore_does_not_take_over(self) -> None:
        """A login restored after its agent link came back does not end the newer login someone made meanwhile."""
        _relay, port = await self.second_web_node()
        here = await self.system.browser("ann")
        self.assertEqual((await self.login(here))["result"], 1)
        # This node's link drops: the agent forgets ann's login; bob takes the bot user meanwhile.
        link = self.system.links.links[self.sid]
        assert link._proto is not None
        link._proto.dropConnection(abort=True)
        await here.expect(lambda m: m.get("method") == "servStatus" and m["status"] == 0)
        there = await wsclient.connect(f"ws://127.0.0.1:{port.getHost().port}/WebTesting",
                                       headers={"Cookie": await session_cookie(self.system.sessions, "bob", "tester")})
        self.addCleanup(there.close)
        await eventually(lambda: self.holders() == [], what="the agent forgetting ann's login")
        self.assertEqual((await self.login(there))["result"], 1)
        # The link comes back and restores ann's login: refused, and ann's page is told why.
        ended = await here.expect("logoutResp", timeout=15)
        self.assertEqual(ended["code"], "logged_in_elsewhere")
        self.assertIn("bob", ended["msg"])
        there.send({"method": "aichatReq", "serviceId": self.sid, "appid": "1.00002", "content": "still here?"})
        self.assertEqual((await there.expect("aichatResp"))["result"], 1)

    async def test_admins_see_who_is_logged_in_as_whom(self) -> None:
        """getLogins lists every bot login with its account; a tester may not ask."""
        ann = await self.system.browser("ann")
        await self.login(ann, "alice")
        bob = await self.system.browser("bob")
        await self.login(bob, "bert")
        api = RegistryAPI(self.system.registry, "webroot", lambda request: "", self.system.sessions,
                          logins=self.system.links.list_logins)
        port = reactor.listenTCP(0, make_site(api.app.resource(), 1024 * 1024), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = JSONClient(f"http://127.0.0.1:{port.getHost().port}")
        self.addCleanup(client.close)
        client.cookie = await session_cookie(self.system.sessions, "tess", "tester")
        status, _ = await client.call("GET", "/WebTesting/Service/getLogins")
        self.assertEqual(status, 403)
        client.cookie = await session_cookie(self.system.sessions, "ada", "admin")
        status, answer = await client.call("GET", "/WebTesting/Service/getLogins")
        self.assertEqual(status, 200)
        self.assertEqual(answer["unknown"], [])
        got = sorted((entry["uname"], entry["account"], entry["serviceId"]) for entry in answer["logins"])
        self.assertEqual(got, [("alice", "ann", self.sid), ("bert", "bob", self.sid)])
        self.assertTrue(all(isinstance(entry["since"], int) for entry in answer["logins"]))
        # An agent that is down is named, not guessed.
        await self.system.agent.kill()
        await eventually(lambda: not self.system.links.links[self.sid].up, what="link down")
        status, answer = await client.call("GET", "/WebTesting/Service/getLogins")
        self.assertEqual((status, answer["logins"], answer["unknown"]), (200, [], [self.sid]))

    async def test_bot_logins_per_account(self) -> None:
        """An account holds at most max_logins_per_account bot logins on a web server; logging out frees one."""
        self.system.relay.max_logins_per_account = 1
        first = await self.system.browser("ann")
        second = await self.system.browser("ann")
        self.assertEqual((await self.login(first, "u1"))["result"], 1)
        refused = await self.login(second, "u2")
        self.assertEqual((refused["result"], refused["code"]), (429, "too_many_logins"))
        other = await self.system.browser("bob")
        self.assertEqual((await self.login(other, "u3"))["result"], 1)
        first.send({"method": "logoutReq", "serviceId": self.sid, "appid": "1.00002"})
        await first.expect("logoutResp")
        self.assertEqual((await self.login(second, "u2"))["result"], 1)
