"""The agent's per-link logic (WebLink), with no network."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from webtesting.agent.server import MAX_FRAME, AgentSettings, WebLink
from tests.support.fakestate import fake_state_factory


class WebLinkTests(unittest.TestCase):
    def setUp(self) -> None:
        self.sent: list[bytes] = []
        self.sources: list[Any] = []
        self.link = WebLink(self.sent.append, Clock(), AgentSettings(), fake_state_factory(self.sources))

    def info(self, **changes: Any) -> dict[str, Any]:
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
        self.assertEqual((answer["method"], answer["result"]), ("agentInfoResp", 400))
        self.assertIn("mysqlPort", answer["msg"])

    def test_oversized_frame_becomes_an_error(self) -> None:
        """A browser frame too large for the link is replaced by a 413 answer for that session."""
        self.link.handle(json.dumps(self.info()).encode())
        self.link.frame("a" * 32, b"=", {"method": "aichatResp", "serviceId": 1, "appid": "1.00002",
                                         "content": "x" * (MAX_FRAME + 10)})
        frame = self.sent[-1]
        self.assertLess(len(frame), 1000)
        self.assertEqual(json.loads(frame[33:])["result"], 413)

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
        self.assertEqual(json.loads(self.sent[-1][33:])["result"], 503)

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
