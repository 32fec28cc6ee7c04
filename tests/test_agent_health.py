"""
The agent's own health checks against real parts: a real 3-master Redis
Cluster, real MariaDB (behind a TCP proxy a test can cut) and the real
reference bot, with nobody logged in. The web server's side of the link is
a list of the frames the agent sends it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest

from tests.support import mariadb
from tests.support.system import BotBackends
from tests.support.tcpproxy import TCPProxy
from tests.support.wait import eventually
from webtesting.agent.backend import state_source_factory
from webtesting.agent.server import AgentSettings, WebLink
from webtesting.rediscluster import key_slot


class AgentHealthTests(unittest.TestCase):
    timeout = 90

    async def setUp(self) -> None:
        self.parts = BotBackends(self, "wt_health")
        await self.parts.bot.start()
        self.statuses: list[tuple[float, dict[str, Any]]] = []

    def link(self, **service: Any) -> WebLink:
        """An agent's link for one service, its settings sent; health as the defaults say (5 s, 1 s, 2)."""

        def send(data: bytes) -> None:
            if data.startswith(b"{"):
                message = json.loads(data)
                if message["method"] == "agentStatusReq":
                    self.statuses.append((time.monotonic(), message))

        link = WebLink(send, reactor, AgentSettings(),
                       state_source_factory(timeout=1.0, retry_interval=0.2, retry_max=1.0))
        self.addCleanup(link.shutdown)
        settings = {
            "method": "agentInfoReq", "serviceId": 7,
            "redisCluster": [{"host": h, "port": p} for h, p in self.parts.cluster.nodes],
            "mysqlAddr": mariadb.HOST, "mysqlPort": mariadb.PORT, "mysqlUser": mariadb.USER,
            "mysqlPwd": mariadb.PASSWORD, "mysqlDbname": self.parts.database,
            "wxServiceAddr": self.parts.bot.url, "allowedAppids": ["1.00002"], "description": "d",
        }
        settings.update(service)
        link.handle(json.dumps(settings).encode())
        return link

    def codes(self) -> list[tuple[int, str]]:
        return [(m["status"], m["code"]) for _, m in self.statuses]

    async def test_idle_bot_killed_and_back(self) -> None:
        """With nobody logged in, a killed bot makes the status 0 bot_unreachable, and its return 1 within 5 s, by
        itself."""
        self.link()
        await eventually(lambda: self.codes() == [(1, "ok")], what="first status ok")
        await self.parts.bot.stop()
        killed = time.monotonic()
        await eventually(lambda: len(self.statuses) == 2, timeout=10, what="status 0")
        self.assertEqual(self.codes()[1], (0, "bot_unreachable"))
        detected = self.statuses[1][0] - killed
        self.assertLess(detected, 7.5)  # next 5 s check + one 1 s confirmation + handshakes
        await self.parts.bot.start()
        back = time.monotonic()
        await eventually(lambda: len(self.statuses) == 3, timeout=10, what="status 1 again")
        self.assertEqual(self.codes()[2], (1, "ok"))
        self.assertLess(self.statuses[2][0] - back, 5.0)

    async def test_wrong_wxservice_address(self) -> None:
        """A wxServiceAddr where no bot listens is reported as status 0 bot_unreachable at the first check."""
        self.link(wxServiceAddr="ws://127.0.0.1:1/none")
        await eventually(lambda: self.statuses, what="first status")
        status = self.statuses[0][1]
        self.assertEqual((status["status"], status["code"]), (0, "bot_unreachable"))
        self.assertIn("WxService", status["msg"])

    async def test_one_master_killed_and_back(self) -> None:
        """One Redis master killed: exactly one change, to 0 redis_partial naming the node and its slots; back: one
        change to 1."""
        self.link()
        await eventually(lambda: self.codes() == [(1, "ok")], what="first status ok")
        cluster = self.parts.cluster
        victim = cluster.owner(key_slot("a"))
        self.parts.cluster.kill(victim)
        killed = time.monotonic()
        await eventually(lambda: len(self.statuses) >= 2, timeout=10, what="status 0")
        down = self.statuses[1][1]
        self.assertEqual((down["status"], down["code"]), (0, "redis_partial"))
        self.assertIn(f"{victim[0]}:{victim[1]}", down["msg"])
        self.assertIn("slots ", down["msg"])
        self.assertLess(self.statuses[1][0] - killed, 7.5)
        cluster.restart(victim)
        back = time.monotonic()
        await eventually(lambda: len(self.statuses) >= 3, timeout=10, what="status 1 again")
        self.assertEqual(self.codes()[2], (1, "ok"))
        self.assertLess(self.statuses[2][0] - back, 5.0)
        await eventually(lambda: time.monotonic() - back > 3, what="a while of quiet")
        self.assertEqual(len(self.statuses), 3, "one change each way, no flapping")

    async def test_mysql_cut_and_back(self) -> None:
        """The bot's MySQL cut: status 0 mysql_unreachable; back: status 1, and the text cache asks again at once."""
        proxy = TCPProxy(reactor, mariadb.HOST, mariadb.PORT)
        port = proxy.start()
        self.addCleanup(proxy.stop)
        link = self.link(mysqlPort=port)
        await eventually(lambda: self.codes() == [(1, "ok")], what="first status ok")
        await proxy.cut()
        await eventually(lambda: len(self.statuses) >= 2, timeout=10, what="status 0")
        self.assertEqual(self.codes()[1], (0, "mysql_unreachable"))
        source: Any = link.source
        texts = await source.dictionary.lookup([20005], [])
        self.assertEqual(texts.tags, {})  # no text while MySQL is away
        proxy.restore()
        await eventually(lambda: len(self.statuses) >= 3, timeout=10, what="status 1 again")
        self.assertEqual(self.codes()[2], (1, "ok"))
        texts = await source.dictionary.lookup([20005], [])
        self.assertTrue(texts.tags.get(20005), "the text is read again as soon as MySQL is back")
