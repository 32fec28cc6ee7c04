"""
The reference bot's per-user session alone: no WebSocket, a fake clock, and an
in-memory store. (The protocol around it is tested over real sockets in
test_wxservice.)
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.test_wxservice import FlakyStore
from webtesting.config import from_mapping
from webtesting.wxsim.config import WxsimConfig
from webtesting.wxsim.session import MAX_QUEUED, BotSession, Refused, State
from webtesting.wxsim.store import StoreUnavailable, UidAllocator


class Context:
    def __init__(self, store: Any, followup_delay: float = 5.0) -> None:
        self.config = from_mapping(WxsimConfig, {"bot": {"followup_delay": followup_delay}})
        self.store = store
        self.clock = Clock()
        self.layout = self.config.state
        self.settings = self.config.bot.settings()
        self.uids = UidAllocator(store, self.config.redis)


class BotSessionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.store = FlakyStore()
        self.context = Context(self.store)
        self.sent: list[dict[str, Any]] = []
        self.session = BotSession(self.context, self.sent.append, "test")

    def login(self) -> None:
        self.session.request("loginReq", "loginResp", {"method": "loginReq", "appid": "1.00002", "uname": "kim"})

    def test_login_chat_logout(self) -> None:
        """A login gets a uid, a chat the bot's reply with the state written in one pipeline, a logout its answer."""
        self.login()
        self.assertEqual((self.sent[0]["method"], self.sent[0]["result"], self.sent[0]["uid"]), ("loginResp", 1, "1"))
        self.session.request("chatReq", "chatResp", {"method": "chatReq", "content": "my name is Kim"})
        self.assertEqual((self.sent[1]["method"], self.sent[1]["result"]), ("chatResp", 1))
        self.assertIn("Kim", self.sent[1]["content"])
        self.assertEqual(self.store.hashes["wt:{1.00002:1}:memory"], {"name": "Kim"})
        self.session.request("logoutReq", "logoutResp", {"method": "logoutReq"})
        self.assertEqual(self.sent[-1], {"method": "logoutResp", "result": 1, "msg": "ok"})
        self.assertIs(self.session.state, State.IDLE)

    def test_requests_run_in_order(self) -> None:
        """A request waits for the one before it: answers keep the requests' order, refusals included."""
        slow: defer.Deferred[list[Any]] = defer.Deferred()
        self.login()
        real = self.store.pipeline
        self.store.pipeline = lambda commands: slow  # type: ignore[method-assign]
        self.session.request("chatReq", "chatResp", {"method": "chatReq", "content": "hello"})
        self.session.refuse(Refused("error", 400, "not JSON"))
        self.session.request("chatReq", "chatResp", {"method": "chatReq", "content": "x", "extra": 1})
        self.assertEqual(len(self.sent), 1)
        self.store.pipeline = real  # type: ignore[method-assign]
        slow.callback([])
        self.assertEqual([(m["method"], m["result"]) for m in self.sent[1:]],
                         [("chatResp", 1), ("error", 400), ("chatResp", 400)])
        self.assertIn("extra: unknown field", self.sent[-1]["msg"])

    def test_queue_is_bounded(self) -> None:
        """Beyond MAX_QUEUED waiting requests, a request is answered 503 at once."""
        self.store.pipeline = lambda commands: defer.Deferred()  # type: ignore[method-assign]
        self.login()  # waits for ever
        for _ in range(MAX_QUEUED):
            self.session.request("chatReq", "chatResp", {"method": "chatReq", "content": "hi"})
        self.assertEqual(self.sent, [])
        self.session.request("chatReq", "chatResp", {"method": "chatReq", "content": "one too many"})
        self.assertEqual([(m["method"], m["result"]) for m in self.sent], [("chatResp", 503)])

    def test_follow_up_after_close_is_not_sent(self) -> None:
        """An unprompted follow-up fires after its delay; once the connection is gone it never does."""
        self.login()
        self.session.request("chatReq", "chatResp", {"method": "chatReq", "content": "what's the weather like?"})
        answered = len(self.sent)
        self.context.clock.advance(5)
        self.assertEqual(self.sent[-1]["action"], "followUp")
        self.session.request("chatReq", "chatResp", {"method": "chatReq", "content": "what's the weather like?"})
        self.session.close()
        self.assertEqual(self.context.clock.getDelayedCalls(), [])
        self.context.clock.advance(10)
        self.assertEqual(len(self.sent), answered + 2)
        self.session.request("chatReq", "chatResp", {"method": "chatReq", "content": "anyone?"})
        self.assertEqual(len(self.sent), answered + 2)

    def test_store_down_at_login(self) -> None:
        """With the store away the login is refused 503 with the reason; the session may log in later."""
        self.store.execute = lambda *args: defer.fail(StoreUnavailable("refused"))  # type: ignore[method-assign]
        self.login()
        self.assertEqual((self.sent[0]["result"], self.sent[0]["method"]), (503, "loginResp"))
        self.assertIn("refused", self.sent[0]["msg"])
        self.assertIs(self.session.state, State.IDLE)
        # Anything else going wrong is answered the same, and logged with its traceback.
        self.store.execute = lambda *args: defer.fail(ConnectionError("reset"))  # type: ignore[method-assign]
        self.login()
        self.assertEqual(self.sent[-1]["result"], 503)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)


class InMemoryProtocolTests(unittest.TestCase):
    """The bot's WebSocket protocol over Autobahn's in-memory transports (autobahn.twisted.testing): no socket."""

    async def test_frames_in_and_out(self) -> None:
        from autobahn.twisted.testing import MemoryReactorClockResolver, create_memory_agent, create_pumper
        from autobahn.twisted.websocket import WebSocketClientProtocol

        from webtesting.wxsim.server import WxServiceServerFactory

        reactor = MemoryReactorClockResolver()
        config = from_mapping(WxsimConfig, {"bot": {"followup_delay": 0}})
        factory = WxServiceServerFactory(config, FlakyStore(), reactor)
        received: list[dict[str, Any]] = []

        class Client(WebSocketClientProtocol):  # type: ignore[misc]
            def onMessage(self, payload: bytes, isBinary: bool) -> None:
                import json

                received.append(json.loads(payload))

        pumper = create_pumper()
        pumper.start()
        self.addCleanup(pumper.stop)
        agent = create_memory_agent(reactor, pumper, lambda: factory.buildProtocol(None))
        client = await agent.open("ws://127.0.0.1:1443/5.00034", {}, Client)
        [server] = factory.connections
        client.sendMessage(b'{"method":"loginReq","appid":"1.00002","uname":"kim"}')
        client.sendMessage(b"not json")
        client.sendMessage(b'{"method":"chatReq","content":"my name is Kim"}')
        client.sendMessage(b'{"method":"dance"}')
        pumper._flush()
        pumper._flush()
        self.assertEqual([(m["method"], m["result"]) for m in received],
                         [("loginResp", 1), ("error", 400), ("chatResp", 1), ("error", 404)])
        self.assertIn("Kim", received[2]["content"])
        client.sendClose(1000)
        pumper._flush()
        pumper._flush()
        self.assertEqual(factory.connections, set())
        self.assertIs(server.session.state, State.CLOSED)
