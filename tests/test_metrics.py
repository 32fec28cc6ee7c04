"""
Prometheus metrics: both daemons' /metrics scraped after a chat through the real chain
(the web server as twistd builds it, an agent as twistd builds it with its metrics listener, the reference bot).
"""

from __future__ import annotations

import json
import os
import re

import treq
from twisted.internet import reactor, task
from twisted.trial import unittest

from tests.support.agent import SECRET
from tests.support.browser import PASSWORD, PagesSystem
from tests.support.wait import autobahn_timers_settled, free_port
from webtesting.agent import tap as agent_tap
from webtesting.client import Client


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a scrape (None when it is not there)."""
    for line in text.splitlines():
        if not line.startswith(name + ("{" if labels else " ")):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if labels else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


class MetricsTests(unittest.TestCase):
    timeout = 120

    async def start_agent(self) -> tuple[int, int]:
        """An agent exactly as twistd webtesting-agent builds it, with its metrics listener; its two ports."""
        ws_port, metrics_port = free_port(), free_port()
        config = os.path.join(self.mktemp() + "-agent.yaml")
        with open(config, "w") as f:
            json.dump({"websocket": {"listen": f"tcp:{ws_port}:interface=127.0.0.1"}, "auth": {"secret": SECRET},
                       "users": {"poll_interval": 0.2},
                       "metrics": {"listen": f"tcp:{metrics_port}:interface=127.0.0.1"}}, f)
        options = agent_tap.Options()
        options.parseOptions(["--config", config])
        agent = agent_tap.makeService(options, reactor)
        agent.startService()
        self.addCleanup(agent.stopService)
        return ws_port, metrics_port

    async def scrape(self, port: int) -> str:
        response = await treq.get(f"http://127.0.0.1:{port}/metrics", persistent=False)
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))
        return (await response.content()).decode()

    async def test_scraped_after_a_chat(self) -> None:
        """After a login and a chat both daemons' /metrics count the frames, the login, the user, the polls."""
        # Last of the cleanups: the close handshakes' Autobahn timers fire before trial checks the reactor.
        self.addCleanup(autobahn_timers_settled)
        system = PagesSystem(self)
        await system.start()
        ws_port, metrics_port = await self.start_agent()
        sid = await system.add_service(agentAddr=f"ws://127.0.0.1:{ws_port}/WebTesting/Agent")
        before = await self.scrape(system.http_port)
        browser_in = sample(before, "webtesting_frames_total", daemon="web", leg="browser", direction="in") or 0
        bot_out = sample(before, "webtesting_frames_total", daemon="agent", leg="bot", direction="out") or 0

        system.add_user("mia", "tester")
        client = Client(f"http://127.0.0.1:{system.http_port}")
        await client.login("mia", PASSWORD)
        conn = await client.connect()
        self.addCleanup(conn.close)
        bot = await conn.login(service_id=sid, appid="1.00002", uname="metrics-user")
        await bot.chat("my name is Mia")

        web = await self.scrape(system.http_port)
        self.assertEqual(sample(web, "webtesting_web_browser_sessions"), 1)
        self.assertEqual(sample(web, "webtesting_web_bot_logins", service=str(sid)), 1)
        self.assertEqual(sample(web, "webtesting_web_service_up", service=str(sid)), 1)
        self.assertGreaterEqual(sample(web, "webtesting_web_agent_links", state="up") or 0, 1)
        # loginReq and aichatReq came from the browser; their answers went back.
        self.assertGreaterEqual(
            (sample(web, "webtesting_frames_total", daemon="web", leg="browser", direction="in") or 0) - browser_in, 2)
        count = sample(web, "webtesting_web_http_request_seconds_count", route="Account/login")
        self.assertGreaterEqual(count or 0, 1)
        self.assertIsNotNone(sample(web, "webtesting_web_history_lag_seconds"))
        self.assertGreaterEqual(sample(web, "webtesting_health_changes_total", daemon="web", service=str(sid),
                                       status="1") or 0, 1)

        agent = await self.scrape(metrics_port)
        self.assertEqual(sample(agent, "webtesting_agent_bot_users", service=str(sid), state="online"), 1)
        self.assertGreaterEqual(sample(agent, "webtesting_agent_web_links") or 0, 1)
        self.assertGreaterEqual(
            (sample(agent, "webtesting_frames_total", daemon="agent", leg="bot", direction="out") or 0) - bot_out, 2)
        for _ in range(50):  # the state poll runs every 0.2 s here
            if (sample(agent, "webtesting_agent_state_polls_total", service=str(sid)) or 0) >= 2:
                break
            await task.deferLater(reactor, 0.1, lambda: None)
            agent = await self.scrape(metrics_port)
        self.assertGreaterEqual(sample(agent, "webtesting_agent_state_polls_total", service=str(sid)) or 0, 2)
        self.assertGreaterEqual(sample(agent, "webtesting_agent_state_poll_seconds_count") or 0, 2)
        self.assertEqual(sample(agent, "webtesting_agent_state_watched_users", service=str(sid)), 1)
        self.assertGreaterEqual(sample(agent, "webtesting_health_changes_total", daemon="agent", service=str(sid),
                                       status="1") or 0, 1)
        # The agent's listener answers /metrics only.
        response = await treq.get(f"http://127.0.0.1:{metrics_port}/", persistent=False)
        self.assertEqual(response.code, 404)
        await response.content()
        await bot.logout()
        await client.logout()
