"""The agent's per-link logic (WebLink), with no network."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.support.fakestate import fake_state_factory
from webtesting.agent.server import MAX_FRAME, AgentSettings, WebLink


class WebLinkTests(unittest.TestCase):
    def setUp(self) -> None:
        self.sent: list[bytes] = []
        self.sources: list[Any] = []
        self.link = WebLink(self.sent.append, Clock(), AgentSettings(), fake_state_factory(self.sources))

    @staticmethod
    def info(_: Any = None, **changes: Any) -> dict[str, Any]:
        message = {
            "method": "agentInfoReq", "serviceId": 1,
            "redisCluster": [{"host": "127.0.0.1", "port": 7000}], "mysqlAddr": "127.0.0.1", "mysqlPort": 3306,
            "mysqlUser": "botuser", "mysqlPwd": "pw", "mysqlDbname": "bot",
            "wxServiceAddr": "ws://127.0.0.1:1443/x", "allowedAppids": ["1.00002"], "description": "d",
        }
        message.update(changes)
        return message

    def test_settings_answered(self) -> None:
        """Good settings are answered ok; bad ones with the field at fault."""
        self.link.handle(json.dumps(self.info()).encode())
        self.assertEqual(json.loads(self.sent[-1])["result"], 1)
        self.link.handle(json.dumps(self.info(mysqlPort="x")).encode())
        answer = json.loads(self.sent[-1])
        self.assertEqual((answer["method"], answer["result"], answer["code"]), ("agentInfoResp", 400, "bad_request"))
        self.assertIn("mysqlPort", answer["msg"])

    def test_oversized_frame_becomes_an_error(self) -> None:
        """A browser frame too large for the link is replaced by a 413 answer for that session."""
        self.link.handle(json.dumps(self.info()).encode())
        self.link.frame("a" * 32, b"=", {"method": "aichatResp", "serviceId": 1, "appid": "1.00002",
                                         "content": "x" * (MAX_FRAME + 10)})
        frame = self.sent[-1]
        self.assertLess(len(frame), 1000)
        self.assertEqual((json.loads(frame[33:])["result"], json.loads(frame[33:])["code"]), (413, "too_large"))

    def test_reasons_for_browsers_are_scrubbed(self) -> None:
        """Reasons sent to browsers lose the service's hosts and user names."""
        self.link.handle(json.dumps(self.info()).encode())
        shown = self.link.scrub("cannot connect to 127.0.0.1:1443 as botuser")
        self.assertNotIn("127.0.0.1", shown)
        self.assertNotIn("botuser", shown)

    def test_request_before_settings(self) -> None:
        """A browser request before any agentInfoReq is answered 503, not dropped."""
        self.link.handle(json.dumps({"method": "loginReq", "serviceId": 1, "appid": "1.00002", "uname": "u",
                                     "uuid": "b" * 32}).encode())
        answer = json.loads(self.sent[-1][33:])
        self.assertEqual((answer["result"], answer["code"]), (503, "unavailable"))

    def test_lone_surrogate_answered(self) -> None:
        """A request with a lone surrogate is answered 400 for its session, naming the field; no user starts."""
        self.link.handle(json.dumps(self.info()).encode())
        self.link.handle(b'{"method":"loginReq","serviceId":1,"appid":"1.00002","uname":"\\ud800","uuid":"'
                         + b"c" * 32 + b'"}')
        frame = self.sent[-1]
        self.assertEqual(frame[:33], b"c" * 32 + b"=")
        answer = json.loads(frame[33:])
        self.assertEqual((answer["method"], answer["serviceId"], answer["appid"], answer["result"]),
                         ("loginResp", 1, "1.00002", 400))
        self.assertTrue(answer["msg"].startswith("uname: "))
        self.assertEqual(self.link.users, {})

    def test_status_reports_carry_codes(self) -> None:
        """The service's health goes to the web server as agentStatusReq with a code: once per change, after two
        agreeing checks."""
        clock: Any = self.link.reactor
        self.link.handle(json.dumps(self.info()).encode())
        clock.advance(0)
        statuses = [json.loads(f) for f in self.sent if b"agentStatusReq" in f]
        self.assertEqual([(s["status"], s["code"]) for s in statuses], [(1, "ok")])
        self.sources[-1].on_health("redis", False, "Redis Cluster nodes unavailable: 127.0.0.1:7001", "redis_partial")
        clock.advance(0.2)  # the sign's check (0.2 s after the last one at most)
        clock.advance(1.0)  # its confirmation
        statuses = [json.loads(f) for f in self.sent if b"agentStatusReq" in f]
        self.assertEqual([(s["status"], s["code"]) for s in statuses], [(1, "ok"), (0, "redis_partial")])
        self.link.shutdown()

    def test_frozen_bot_hint_reaches_every_user(self) -> None:
        """The service's connection to the bot lost (a missed pong) makes every user's connection check itself."""

        class User:
            checked = 0

            def bot_may_be_frozen(self) -> None:
                self.checked += 1

            def close(self) -> None:
                pass

        self.link.handle(json.dumps(self.info()).encode())
        users = [User(), User()]
        self.link.users.update({str(n): user for n, user in enumerate(users)})  # type: ignore[misc]
        self.sources[-1].on_health("redis", False, "a read failed")
        self.assertEqual([u.checked for u in users], [0, 0])
        self.sources[-1].on_health("wxservice", False, "the bot's connection closed: ping timeout")
        self.assertEqual([u.checked for u in users], [1, 1])
        self.link.shutdown()

    def test_not_logged_in_and_unknown_method_codes(self) -> None:
        """Requests without a login and unknown methods are answered with their codes."""
        self.link.handle(json.dumps(self.info()).encode())
        self.link.handle(json.dumps({"method": "aichatReq", "serviceId": 1, "appid": "1.00002", "content": "hi",
                                     "uuid": "b" * 32}).encode())
        answer = json.loads(self.sent[-1][33:])
        self.assertEqual((answer["result"], answer["code"]), (401, "not_logged_in"))
        self.link.handle(json.dumps({"method": "danceReq", "uuid": "b" * 32}).encode())
        answer = json.loads(self.sent[-1][33:])
        self.assertEqual((answer["result"], answer["code"]), (404, "unknown_method"))
        self.link.shutdown()


class _Book:
    """Worker 0's login book as a worker's link sees it, answered by hand."""

    def __init__(self) -> None:
        from twisted.internet.defer import Deferred

        self.claims: list[tuple[Any, str, str, bool, Deferred[Any]]] = []
        self.released: list[tuple[Any, str]] = []
        self._deferred = Deferred

    def claim(self, key: Any, uuid: str, account: str, since: int, restore: bool) -> Any:
        d = self._deferred()
        self.claims.append((key, uuid, account, restore, d))
        return d

    def release(self, key: Any, uuid: str) -> None:
        self.released.append((key, uuid))

    def logins(self, service_id: int) -> Any:
        return self._deferred()


class WorkerLoginTests(unittest.TestCase):
    """A worker's link and worker 0's login book (workers: N; webtesting.agent.loginbook)."""

    def setUp(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from webtesting.agent.server import AgentFactory

        self.sent: list[bytes] = []
        self.book = _Book()
        self.reactor = MemoryReactorClock()
        self.factory = AgentFactory(secret="s" * 20, reactor=self.reactor, state_factory=fake_state_factory([]))
        self.factory.book = self.book  # type: ignore[assignment]
        self.link = self.factory.new_link(self.sent.append, 1)
        self.link.handle(json.dumps(WebLinkTests.info()).encode())
        self.key = (1, "1.00002", "ann")

    def login(self, uuid: str, **fields: Any) -> None:
        self.link.handle(json.dumps({"method": "loginReq", "serviceId": 1, "appid": "1.00002", "uname": "ann",
                                     "uuid": uuid, "account": "boss", **fields}).encode())

    def answers(self, uuid: str) -> list[dict[str, Any]]:
        return [json.loads(f[33:]) for f in self.sent if f[:32] == uuid.encode()]

    def test_fresh_login_claims_before_it_starts(self) -> None:
        """A new login tells the book at once (which ends the older one elsewhere); an evict for another login of
        the same bot user leaves it; one naming it ends it with 409 logged_in_elsewhere."""
        self.login("a" * 32)
        [(key, uuid, account, restore, _d)] = self.book.claims
        self.assertEqual((key, uuid, account, restore), (self.key, "a" * 32, "boss", False))
        self.assertIn("a" * 32, self.link.users)
        self.factory.evict(self.key, "z" * 32, "tess")
        self.assertIn("a" * 32, self.link.users)
        self.factory.evict(self.key, "a" * 32, "tess")
        self.assertNotIn("a" * 32, self.link.users)
        [ended] = [m for m in self.answers("a" * 32) if m["method"] == "logoutResp"]
        self.assertEqual((ended["result"], ended["code"], ended["msg"]),
                         (409, "logged_in_elsewhere", "logged in elsewhere by tess"))
        self.assertEqual(self.book.released, [(self.key, "a" * 32)])

    def test_restore_held_elsewhere_is_refused(self) -> None:
        """A restored login waits for the book; held on another worker, it is refused and never starts."""
        self.login("b" * 32, restore=True)
        self.assertEqual(self.link.users, {})
        self.login("b" * 32, restore=True)  # the same session again while waiting: refused
        self.assertEqual(self.answers("b" * 32)[-1]["result"], 400)
        self.book.claims[0][4].callback("tess")
        answer = self.answers("b" * 32)[-1]
        self.assertEqual((answer["method"], answer["result"], answer["msg"]),
                         ("loginResp", 409, "logged in elsewhere by tess"))
        self.assertEqual(self.link.users, {})

    def test_restore_given_up_while_waiting(self) -> None:
        """A session closed while its restore waits: the login never starts and the book forgets it."""
        self.login("c" * 32, restore=True)
        self.link.handle(json.dumps({"method": "sessionClosed", "uuid": "c" * 32}).encode())
        self.book.claims[0][4].callback(None)
        self.assertEqual(self.link.users, {})
        self.assertEqual(self.book.released, [(self.key, "c" * 32)])
        self.assertEqual(self.answers("c" * 32), [])

    def test_restore_book_silent(self) -> None:
        """Worker 0 not answering: after BOOK_TIMEOUT the restore gets 503 and its claim is released."""
        from webtesting.agent.server import BOOK_TIMEOUT

        self.login("d" * 32, restore=True)
        self.reactor.advance(BOOK_TIMEOUT)
        answer = self.answers("d" * 32)[-1]
        self.assertEqual((answer["result"], answer["code"]), (503, "agent_unavailable"))
        self.assertEqual(self.book.released, [(self.key, "d" * 32)])
        self.assertEqual(self.link.users, {})
