"""
What testers are told about a failure: the reason code and a fixed
sentence, never an address, a port or which port answered — from every
source of reasons, through one function (webtesting.protocol.tester_reason);
admins still see the details.
"""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.internet import error
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.support.sessions_fakes import StaticLink
from tests.support.system import System
from tests.support.wait import eventually
from webtesting.protocol import LOGGED_IN, ROUTE, TESTER_SENTENCES, routed_frame, scrub_reason, tester_reason
from webtesting.web.sessions import Relay
from webtesting.wslink import AGENT, BOT, classify_connect_failure

ADDRESS = re.compile(r"\d{1,3}(\.\d{1,3}){3}|:\d{2,5}\b|://|\.internal|::1")

SERVICE = {
    "redisCluster": [{"host": "redis-1.internal", "port": 7000}], "mysqlAddr": "db.internal", "mysqlPort": 3306,
    "mysqlUser": "botuser", "mysqlPwd": "s3cret", "mysqlDbname": "botdb",
    "wxServiceAddr": "ws://bot.internal:1443/5.00034", "agentAddr": "ws://127.1.2.3:2021/WebTesting/Agent",
}

# (code, detail) as each source words them.
SOURCES = [
    ("agent_unreachable", classify_connect_failure(Failure(error.ConnectionRefusedError()), AGENT, "127.1.2.3").detail),
    ("agent_unknown_host",
     classify_connect_failure(Failure(error.DNSLookupError("x")), AGENT, "agents.internal").detail),
    ("agent_tls_failed",
     "the agent's TLS certificate was refused: SSL error: certificate verify failed (127.1.2.3:2021)"),
    ("agent_auth_failed", "the peer at the agent address could not prove it is the agent: a wrong proof"),
    ("agent_not_responding", "the agent stopped answering (no pong in time)"),
    ("bot_unreachable", classify_connect_failure(Failure(error.ConnectionRefusedError()), BOT, "bot.internal").detail
     + " ws://bot.internal:1443/5.00034"),
    ("bot_unreachable", "bot unreachable: connecting timed out to 127.0.0.1:1443"),
    ("redis_unreachable", "Redis Cluster unreachable: redis-1.internal:7000 refused; [::1]:7001 refused"),
    ("redis_partial", "Redis Cluster partly down: 127.0.0.1:7001 unreachable (slots 5461-10922)"),
    ("mysql_unreachable", "bot MySQL unreachable: (2003, \"Can't connect to MySQL server on 'db.internal' "
                          "([Errno 111] Connection refused))\"; Access denied for user 'botuser'@'10.0.0.9'"),
    ("registry_unavailable", "registry (mysql 127.0.0.1:3306/webtesting) unreachable"),
    ("unavailable", "cannot read the user's state: Redis Cluster unreachable: 127.0.0.1:7000 refused"),
]


class OneFunctionTests(unittest.TestCase):
    def test_every_health_code_is_a_fixed_sentence(self) -> None:
        """Each health code's details are replaced by its sentence, whatever they said."""
        for code, detail in SOURCES:
            shown = tester_reason(code, detail, SERVICE)
            self.assertEqual(shown, TESTER_SENTENCES[code], (code, detail))
            self.assertIn("unreachable" if code != "waiting_for_agent" else "waiting", shown)
            self.assertIsNone(ADDRESS.search(shown), shown)

    def test_other_reasons_lose_their_addresses(self) -> None:
        """A reason without a health code keeps its words but loses every address and credential."""
        for _code, detail in SOURCES:
            shown = scrub_reason(detail, SERVICE)
            self.assertIsNone(ADDRESS.search(shown), shown)
            for secret in ("botuser", "s3cret", "botdb", "db.internal", "bot.internal"):
                self.assertNotIn(secret, shown)
        self.assertEqual(tester_reason("bad_request", "uname: must be at most 64 characters"),
                         "uname: must be at most 64 characters")

    def test_relay_rewrites_what_an_agent_says(self) -> None:
        """An agent's error answer or servStatus reaches the page with the sentence, whatever the agent wrote."""
        link = StaticLink(1)
        link.record = SERVICE  # type: ignore[attr-defined]
        relay = Relay({1: link})
        self.addCleanup(relay.stop)
        link.relay = relay
        got: list[dict[str, Any]] = []
        session = relay.open_session(lambda data: got.append(json.loads(data)), "tess")
        relay.from_browser(session, json.dumps({"method": "loginReq", "serviceId": 1, "appid": "1.00002",
                                                "uname": "u"}).encode())
        for code, detail in SOURCES:
            relay.from_agent(1, routed_frame(session.uuid, ROUTE, {
                "method": "servStatus", "serviceId": 1, "appid": "1.00002", "status": 0, "msg": detail, "code": code}))
        pushed = [m for m in got if m["method"] == "servStatus"]
        self.assertEqual(len(pushed), len(SOURCES))
        for message in pushed:
            self.assertEqual(message["msg"], TESTER_SENTENCES[message["code"]])
        # Success frames pass untouched (byte for byte: no parse on the fast path).
        frame = routed_frame(session.uuid, LOGGED_IN, {"method": "aichatResp", "serviceId": 1, "content": "1.2.3.4:5"})
        relay.from_agent(1, frame)
        self.assertEqual(got[-1]["content"], "1.2.3.4:5")


class RealChainTests(unittest.TestCase):
    timeout = 120

    async def test_state_error_names_no_address(self) -> None:
        """With the bot's Redis pointed at a dead address, the tester's getUserStatusResp says only 'unreachable'; the
        registry keeps the detail."""
        system = System(self)
        await system.start()
        sid = await system.add_service()
        browser = await system.browser()
        browser.send({"method": "loginReq", "serviceId": sid, "appid": "1.00002", "uname": "alice"})
        self.assertEqual((await browser.expect("loginResp"))["result"], 1)
        dead = [{"host": "127.0.0.1", "port": 1}]
        from tests.support import mariadb

        await system.registry.update_services([{"serviceId": sid, "redisCluster": dead, "mysqlPwd": mariadb.PASSWORD}])

        async def state_error() -> dict[str, Any] | None:
            browser.send({"method": "getUserStatusReq", "serviceId": sid, "appid": "1.00002"})
            return await browser.expect(lambda m: m.get("method") == "getUserStatusResp" and m["result"] != 1,
                                        timeout=2)

        answer = None
        for _ in range(20):
            try:
                answer = await state_error()
                break
            except Exception:  # noqa: BLE001 - not failing yet: the agent is still on the old Redis
                continue
        assert answer is not None, "the state read never failed"
        self.assertIsNone(ADDRESS.search(answer["msg"]), answer)
        self.assertEqual(answer["msg"], TESTER_SENTENCES[answer["code"]])
        await eventually(lambda: self._status_down(system, sid), timeout=20, what="health down")
        record = next(s for s in await system.registry.list_services() if s["serviceId"] == sid)
        self.assertIn("127.0.0.1", record["msg"] + json.dumps(record["redisCluster"]))  # admins keep the detail

    async def _status_down(self, system: Any, sid: int) -> bool:
        record = next(s for s in await system.registry.list_services() if s["serviceId"] == sid)
        return bool(record["status"] == 0)
