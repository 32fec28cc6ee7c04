"""
The browsers' WebSocket over real loopback sockets: bad input of every kind
gets an error answer and the connection keeps working.
"""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ConnectionRefusedError
from twisted.trial import unittest

from tests.support import wsclient
from tests.support.sessions import session_cookie, sqlite_store
from tests.support.sessions_fakes import StaticLink
from tests.support.wait import autobahn_timers_settled, free_port
from tests.support.wsclient import JSONClientProtocol
from webtesting.web.sessions import Relay
from webtesting.web.ws import BrowserFactory, BrowserListener


class BrowserWebSocketTests(unittest.TestCase):
    async def setUp(self) -> None:
        self.addCleanup(autobahn_timers_settled)
        self.link = StaticLink(1)
        self.relay = Relay({1: self.link})
        self.addCleanup(self.relay.stop)  # requests the fake agent never answers
        self.link.relay = self.relay
        self.sessions = await sqlite_store(self)
        self.cookie = await session_cookie(self.sessions, "t", "tester")
        factory = BrowserFactory(self.relay, self.sessions, path="/WebTesting", max_message=1024)
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = f"ws://127.0.0.1:{self.port.getHost().port}/WebTesting"
        self.client = await self.connect()

    async def connect(self) -> JSONClientProtocol:
        client = await wsclient.connect(self.url, headers={"Cookie": self.cookie})
        self.addCleanup(client.close)
        return client

    async def still_works(self, client: JSONClientProtocol) -> None:
        client.send({"method": "loginReq", "serviceId": 1, "appid": "1.00002", "uname": "u"})
        self.assertEqual((await client.expect("loginResp"))["result"], 1)

    async def test_malformed_json(self) -> None:
        """Malformed JSON is answered with an error; the connection stays up."""
        self.client.send(b"{not json")
        answer = await self.client.expect("error")
        self.assertEqual(answer["result"], 400)
        await self.still_works(self.client)

    async def test_unknown_method_and_bad_fields(self) -> None:
        """An unknown method and a wrong-typed field each get an answer naming the problem."""
        self.client.send({"method": "danceReq"})
        self.assertIn("danceReq", (await self.client.expect("error"))["msg"])
        self.client.send({"method": "loginReq", "serviceId": "one", "appid": "1.00002", "uname": "u"})
        answer = await self.client.expect("loginResp")
        self.assertEqual((answer["result"], answer["msg"]), (400, "serviceId: must be an integer, got a string"))
        await self.still_works(self.client)

    async def test_oversized_message(self) -> None:
        """A message over the limit is answered 413 and dropped; the connection stays up."""
        self.client.send({"method": "aichatReq", "serviceId": 1, "appid": "1.00002", "content": "x" * 5000})
        answer = await self.client.expect("error")
        self.assertEqual(answer["result"], 413)
        self.assertIn("1024 bytes", answer["msg"])
        self.assertEqual(self.link.sent, [])
        self.client.sendMessage(b"\x00" * 5000, isBinary=True)
        self.assertEqual((await self.client.expect("error"))["result"], 413)
        await self.still_works(self.client)

    async def test_a_limit_raised_by_a_reload_holds_on_open_connections(self) -> None:
        """Past Autobahn's backstop (1 MiB here) too: a larger message is answered, not closed with 1009."""
        factory = self.port.factory
        factory.set_max_message(4 * 1024 * 1024)
        self.client.send({"method": "aichatReq", "serviceId": 1, "appid": "1.00002", "content": "x" * 2_000_000})
        answer = await self.client.expect("aichatResp")  # read whole, and checked
        self.assertEqual((answer["result"], answer["msg"]),
                         (400, "content: must be at most 4096 characters, got 2000000"))
        await self.still_works(self.client)
        late = await self.connect()
        late.send({"method": "aichatReq", "serviceId": 1, "appid": "1.00002", "content": "x" * 2_000_000})
        self.assertEqual((await late.expect("aichatResp"))["result"], 400)
        factory.set_max_message(1024)
        self.client.send({"method": "aichatReq", "serviceId": 1, "appid": "1.00002", "content": "x" * 5000})
        self.assertEqual((await self.client.expect("error"))["result"], 413)

    async def test_lone_surrogates(self) -> None:
        """A string with a lone surrogate escape is answered 400 naming the field, as the request's own answer."""
        self.client.send(rb'{"method":"loginReq","serviceId":1,"appid":"1.00002","uname":"\ud800"}')
        answer = await self.client.expect("loginResp")
        self.assertEqual((answer["result"], answer["serviceId"], answer["appid"]), (400, 1, "1.00002"))
        self.assertTrue(answer["msg"].startswith("uname: "), answer["msg"])
        self.assertEqual(self.link.sent, [])
        await self.still_works(self.client)
        self.client.send(rb'{"method":"aichatReq","serviceId":1,"appid":"1.00002","content":"hi \udc00"}')
        answer = await self.client.expect("aichatResp")
        self.assertEqual(answer["result"], 400)
        self.assertTrue(answer["msg"].startswith("content: "), answer["msg"])
        self.client.send(rb'{"method":"\ud800"}')
        self.assertEqual((await self.client.expect("error"))["result"], 400)
        self.assertEqual([m["method"] for m in self.link.sent], ["loginReq"])

    async def test_binary_message(self) -> None:
        """A binary message is refused with a reason."""
        self.client.sendMessage(b"\x00\x01", isBinary=True)
        self.assertEqual((await self.client.expect("error"))["result"], 400)
        await self.still_works(self.client)

    async def test_unknown_service_and_down_service(self) -> None:
        """A service that doesn't exist or is down gets an error answer, not silence."""
        self.client.send({"method": "loginReq", "serviceId": 42, "appid": "1.00002", "uname": "u"})
        self.assertEqual((await self.client.expect("loginResp"))["result"], 404)
        self.link.up = False
        self.client.send({"method": "loginReq", "serviceId": 1, "appid": "1.00002", "uname": "u"})
        answer = await self.client.expect("loginResp")
        self.assertEqual(answer["result"], 503)

    async def test_wrong_path(self) -> None:
        """A WebSocket on another path is refused."""
        with self.assertRaises(ConnectionError):
            await wsclient.connect(self.url.replace("/WebTesting", "/Elsewhere"),
                                   headers={"Cookie": self.cookie})

    async def test_invalid_utf8_closes_with_1007(self) -> None:
        """A text frame that is not UTF-8 closes that connection with 1007 and a reason; others are served on."""
        other = await self.connect()
        self.client.send(b"\xff\xfe garbage")  # RFC 6455 says fail the connection: no answer can be sent
        _clean, code, reason = await self.client.closed
        self.assertEqual(code, 1007)
        self.assertIn("UTF-8", reason or "")
        await self.still_works(other)

    async def test_beyond_the_backstop_closes_with_1009(self) -> None:
        """A message beyond the backstop (16 x the limit, at least 1 MiB) closes the connection with 1009."""
        self.client.sendMessage(b"x" * (1024 * 1024 + 1), isBinary=True)
        _clean, code, _reason = await self.client.closed
        self.assertEqual(code, 1009)

    async def test_browser_going_away_tells_the_agent(self) -> None:
        """When the browser goes away, the agent is told (sessionClosed) and the session is cleared."""
        await self.still_works(self.client)
        uuid = self.link.sent[-1]["uuid"]
        await self.client.close()
        from tests.support.wait import eventually

        await eventually(lambda: self.link.sent[-1] == {"method": "sessionClosed", "uuid": uuid})
        self.assertEqual(self.relay.sessions, {})

    async def test_answers_are_routed_byte_for_byte(self) -> None:
        """What the agent sends for a session reaches that browser unchanged."""
        await self.still_works(self.client)
        uuid = self.link.sent[-1]["uuid"]
        body = json.dumps({"method": "aichatResp", "content": "<script>x</script> 你好"}, ensure_ascii=False)
        self.relay.from_agent(1, uuid.encode() + b"=" + body.encode())
        await self.client.expect("aichatResp")
        self.assertEqual(self.client.raw[-1], body.encode())

    async def test_login_required(self) -> None:
        """Without a valid session cookie the WebSocket is refused in its handshake."""
        for headers in ({}, {"Cookie": "wt_session=v1.forged.signature"}, {"Cookie": "wt_session=" + "A" * 43},
                        {"Cookie": "wt_session=" + "é" * 80}):
            with self.assertRaises(ConnectionError):
                await wsclient.connect(self.url, headers=headers)

    async def test_other_sites_are_refused(self) -> None:
        """
        Only the pages' own origin (scheme, host and port exactly) may open the
        WebSocket with the user's cookie: not another site, not another port of
        the same host, not https for http.
        """
        cookie = self.cookie
        with self.assertRaises(ConnectionError):
            await wsclient.connect(self.url, headers={"Cookie": cookie, "Origin": "http://evil.example"})
        for other in ("http://127.0.0.1:8080", "https://127.0.0.1", "ws://127.0.0.1", "http://localhost",
                      "null", "http://127.0.0.1.evil.example"):
            with self.assertRaises(ConnectionError, msg=other):
                await wsclient.connect(self.url, headers={"Cookie": cookie, "Origin": other})
        client = await wsclient.connect(self.url, headers={"Cookie": cookie, "Origin": "http://127.0.0.1"})
        await client.close()


class ShutdownTests(unittest.TestCase):
    async def test_stopping_says_goodbye_with_1001(self) -> None:
        """Stopping the listener closes every open browser with 1001 before it stops listening."""
        relay = Relay({})
        sessions = await sqlite_store(self)
        port = free_port()
        listener = BrowserListener(serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1"),
                                   BrowserFactory(relay, sessions, path="/WebTesting"))
        listener.startService()
        self.addCleanup(lambda: listener.stopService() if listener.running else None)
        url = f"ws://127.0.0.1:{port}/WebTesting"
        cookie = {"Cookie": await session_cookie(sessions, "t", "tester")}
        clients = [await wsclient.connect(url, headers=cookie) for _ in range(3)]
        await listener.stopService()
        for client in clients:
            self.assertTrue(client.closed.called)
            _clean, code, reason = await client.closed
            self.assertEqual((code, reason), (1001, "the server is shutting down"))
        self.assertEqual(relay.sessions, {})
        with self.assertRaises(ConnectionRefusedError):
            await wsclient.connect(url, headers=cookie)
        # Listening again with the same factory serves browsers again.
        again = reactor.listenTCP(port, listener.factory, interface="127.0.0.1")
        self.addCleanup(again.stopListening)
        client = await wsclient.connect(url, headers=cookie)
        await client.close()
        await autobahn_timers_settled()

    async def test_stopping_with_nobody_connected(self) -> None:
        """With no browser open, stopping is immediate."""
        listener = BrowserListener(serverFromString(reactor, f"tcp:{free_port()}:interface=127.0.0.1"),
                                   BrowserFactory(Relay({}), await sqlite_store(self)))
        listener.startService()
        d = listener.stopService()
        self.assertTrue(d.called)
        await d
