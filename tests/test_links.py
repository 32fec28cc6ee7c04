"""
Agent links with health, over real loopback WebSockets: the web server's
AgentLinks against a real agent server, with the registry on SQLite.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error, reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.support import wsclient
from tests.support.agent import SECRET, RunningAgent
from tests.support.fakestate import FakeStateSource, fake_state_factory
from tests.support.registry import seed_service
from tests.support.wait import autobahn_timers_settled, eventually, free_port
from webtesting.config import RegistryConfig
from webtesting.lifecycle import Backoff
from webtesting.web.agentlink import AgentLink
from webtesting.web.links import AgentLinks
from webtesting.web.registry import open_registry
from webtesting.web.sessions import Relay

STEP = 0.1  # the first retry delay in these tests


def up(links: AgentLinks, sid: int) -> bool:
    link = links.links.get(sid)
    return link is not None and link.up


BACKOFF = Backoff(initial=STEP, maximum=0.4, jitter=0.0)


class LinkTestsBase(unittest.TestCase):
    async def setUp(self) -> None:
        # Links dropped at once (a peer that failed authentication) leave Autobahn's batched timers behind.
        self.addCleanup(autobahn_timers_settled)
        self.registry = open_registry(RegistryConfig(sqlite_path=self.mktemp() + ".sqlite3"), reactor)
        self.registry.db.startService()
        self.addCleanup(self.registry.db.stopService)
        await self.registry.db.ready()
        self.relay = Relay({})
        self.sources: list[FakeStateSource] = []
        self.agents: list[RunningAgent] = []

    def agent(self, port: int | None = None, secret: str = SECRET) -> RunningAgent:
        agent = RunningAgent(port or free_port(), fake_state_factory(self.sources), secret=secret)
        self.agents.append(agent)
        self.addCleanup(agent.kill)
        return agent

    def links(self, secret: str = SECRET, sync_interval: float = 0.2) -> AgentLinks:
        links = AgentLinks(self.registry, self.relay, reactor, secret=secret,
                           sync_interval=sync_interval, backoff=BACKOFF, connect_timeout=2)
        links.startService()
        self.addCleanup(links.stopService)
        return links

    async def add(self, **changes: Any) -> int:
        await self.registry.add_services([seed_service(**changes)])
        return max(s["serviceId"] for s in await self.registry.list_services())

    async def record(self, sid: int) -> dict[str, Any]:
        return next(s for s in await self.registry.list_services() if s["serviceId"] == sid)

    async def status_is(self, sid: int, status: int, text: str = "") -> bool:
        record = await self.record(sid)
        return bool(record["status"] == status and text in record["msg"])


class AgentLinkTests(LinkTestsBase):
    async def test_agent_started_later(self) -> None:
        """Agent not started: status 0 with the reason; once it starts, status 1 within one backoff step."""
        agent = self.agent()
        sid = await self.add(agentAddr=agent.url)
        links = self.links()
        await eventually(lambda: self.status_is(sid, 0, "connection refused"), what="status 0, refused")
        self.assertEqual(links.links[sid].state, "backing off")
        self.assertEqual(links.links[sid].code, "agent_unreachable")
        agent.start()
        took = await eventually(lambda: self.status_is(sid, 1, "ok"), what="status 1")
        self.assertLess(took, 0.4 + 0.5, "the link must come up within one (max) backoff step")
        self.assertTrue(links.links[sid].up)
        # The agent got the service's settings.
        [link] = agent.links()
        self.assertEqual(link.service["wxServiceAddr"], seed_service()["wxServiceAddr"])
        self.assertEqual(link.service["mysqlPwd"], "root")

    async def test_health_changes_and_round_trips_are_recorded(self) -> None:
        """Each health change is one event in the health history, with its code; the automatic pings' round
        trips wait on the link for the health sampler."""
        agent = self.agent()
        sid = await self.add(agentAddr=agent.url)
        links = AgentLinks(self.registry, self.relay, reactor, secret=SECRET, sync_interval=0.2, backoff=BACKOFF,
                           connect_timeout=2, ping_interval=0.05)
        links.startService()
        self.addCleanup(links.stopService)
        await eventually(lambda: self.status_is(sid, 0, "connection refused"), what="status 0, refused")
        agent.start()
        await eventually(lambda: self.status_is(sid, 1, "ok"), what="status 1")
        await eventually(lambda: len(links.links[sid]._rtts) >= 2, what="two pongs")
        rtts = links.links[sid].take_rtts()
        self.assertTrue(all(0 < r < 1 for r in rtts), rtts)
        self.assertLess(len(links.links[sid].take_rtts()), 2)  # taken: only what came since
        events = await self.registry.db.run(
            lambda c: (c.execute("SELECT serviceId, status, code FROM tb_health_event ORDER BY id"), c.fetchall())[1])
        events = [tuple(e) for e in events]
        self.assertEqual((events[0], events[-1]), ((sid, 0, "agent_unreachable"), (sid, 1, "ok")))
        # Between them at most the link's own step: connected, the agent not yet taking its settings.
        self.assertLessEqual(set(events[1:-1]), {(sid, 0, "waiting_for_agent")})

    async def test_agent_killed_and_back(self) -> None:
        """A killed agent makes the service status 0; when it is back the link is restored by itself."""
        agent = self.agent()
        agent.start()
        sid = await self.add(agentAddr=agent.url)
        links = self.links()
        await eventually(lambda: self.status_is(sid, 1), what="up")
        await agent.kill()
        await eventually(lambda: self.status_is(sid, 0, "agent"), what="down after kill")
        self.assertFalse(links.links[sid].up)
        agent.start()
        await eventually(lambda: self.status_is(sid, 1), what="up again")

    async def test_agent_reports_its_problems(self) -> None:
        """The agent's own agentStatusReq (its Redis, MySQL or WxService down) is the service's status and reason."""
        agent = self.agent()
        agent.start()
        sid = await self.add(agentAddr=agent.url)
        self.links()
        await eventually(lambda: self.status_is(sid, 1), what="up")
        self.sources[-1].on_health("redis", False, "Redis Cluster unreachable: 127.0.0.1:7000 refused")
        await eventually(lambda: self.status_is(sid, 0, "Redis Cluster unreachable"), what="agent's reason")
        self.sources[-1].on_health("redis", True, "ok")
        await eventually(lambda: self.status_is(sid, 1, "ok"), what="agent recovered")

    async def test_wrong_secret(self) -> None:
        """A web server with the wrong secret is refused (4401) and retries at the longest delay."""
        agent = self.agent()
        agent.start()
        sid = await self.add(agentAddr=agent.url)
        links = self.links(secret="not-the-secret-at-all")
        await eventually(lambda: self.status_is(sid, 0, "authentication"), what="refused")
        self.assertEqual(links.links[sid].code, "agent_auth_failed")
        factory = links.links[sid]._dialer.factory
        assert factory is not None
        self.assertEqual(factory.delay, BACKOFF.maximum)
        self.assertEqual(agent.links(), [])

    async def test_client_without_secret_is_refused(self) -> None:
        """A WebSocket client that cannot prove the secret is refused before any message is obeyed."""
        agent = self.agent()
        agent.start()
        with self.assertRaises(ConnectionError):
            await wsclient.connect_agent(agent.url, "not-the-secret-at-all", 1)
        client = await wsclient.connect_agent(agent.url, SECRET, 1)
        self.assertEqual(len(agent.links()), 1)
        await client.close()

    async def test_unknown_host_is_retried_at_the_longest_delay(self) -> None:
        """An unknown agent host is recorded and retried at the longest delay; a changed record connects at once."""
        sid = await self.add(agentAddr="ws://no-such-host.invalid:2021/WebTesting/Agent")
        links = self.links()
        await eventually(lambda: self.status_is(sid, 0, "unknown"), what="unknown host")
        link = links.links[sid]
        self.assertEqual((link.state, link.code), ("backing off", "agent_unknown_host"))
        factory = link._dialer.factory
        assert factory is not None
        self.assertEqual(factory.delay, BACKOFF.maximum)
        agent = self.agent()
        agent.start()
        await self.registry.update_services([{"serviceId": sid, "agentAddr": agent.url, "mysqlPwd": "root"}])
        await eventually(lambda: self.status_is(sid, 1), what="up after the record changed")


class RegistrySyncTests(LinkTestsBase):
    async def test_new_and_deleted_services(self) -> None:
        """A service added to the registry gets a link within one sync; a deleted one loses it."""
        agent = self.agent()
        agent.start()
        links = self.links()
        sid = await self.add(agentAddr=agent.url)
        await eventually(lambda: up(links, sid), timeout=2, what="new link")
        await self.registry.delete_services([sid])
        await eventually(lambda: sid not in links.links and not agent.links(), timeout=2, what="link dropped")

    async def test_changed_agent_address(self) -> None:
        """A changed agentAddr moves the link to the new agent within one sync."""
        first, second = self.agent(), self.agent()
        first.start()
        second.start()
        sid = await self.add(agentAddr=first.url)
        links = self.links()
        await eventually(lambda: up(links, sid) and first.links(), what="first agent")
        await self.registry.update_services([{"serviceId": sid, "agentAddr": second.url, "mysqlPwd": "root"}])
        await eventually(lambda: second.links() and not first.links(), timeout=2, what="moved to the second")
        await eventually(lambda: self.status_is(sid, 1), what="up at the second")

    async def test_changed_settings_are_sent_again(self) -> None:
        """A changed wxServiceAddr (or any setting) reaches the agent within one sync, on the same link."""
        agent = self.agent()
        agent.start()
        sid = await self.add(agentAddr=agent.url)
        links = self.links()
        await eventually(lambda: up(links, sid), what="up")
        [before] = agent.links()
        await self.registry.update_services([{"serviceId": sid, "wxServiceAddr": "ws://127.0.0.1:1999/x",
                                                "mysqlPwd": "root"}])
        await eventually(lambda: before.service["wxServiceAddr"] == "ws://127.0.0.1:1999/x", timeout=2,
                         what="new settings at the agent")
        self.assertEqual(agent.links(), [before])

    async def test_registry_down_keeps_links(self) -> None:
        """While the registry is unavailable, syncing keeps every link as it is."""
        agent = self.agent()
        agent.start()
        sid = await self.add(agentAddr=agent.url)
        links = self.links()
        await eventually(lambda: up(links, sid), what="up")
        await self.registry.db.stopService()
        await eventually(lambda: True)
        links.sync()
        self.assertTrue(links.links[sid].up)


class AgentLinkUnitTests(unittest.TestCase):
    """One link's decisions on a MemoryReactorClock: no sockets."""

    def link(self, **record: Any) -> tuple[AgentLink, MemoryReactorClock, list[tuple[int, str]]]:
        clock = MemoryReactorClock()
        health: list[tuple[int, str]] = []
        link = AgentLink(
            seed_service(serviceId=1, status=0, msg="", **record), reactor=clock, relay=Relay({}, clock=clock),
            secret="s", on_health=lambda link: health.append(link.health), backoff=BACKOFF,
        )
        self.addCleanup(link.stop)
        return link, clock, health

    def test_unusable_address(self) -> None:
        """An address that does not parse is not dialled nor retried; it waits for its record to change."""
        link, clock, health = self.link(agentAddr="ws://bad:port:x")
        link.start()
        self.assertEqual((link.state, link.code), ("unusable", "agent_address_invalid"))
        self.assertIn("not usable", link.current.msg)  # admins see why
        self.assertEqual(link.reason, "the service's agent is unreachable")  # testers, that it is
        self.assertEqual((clock.tcpClients, clock.getDelayedCalls()), ([], []))
        link.update(seed_service(serviceId=1, status=0, msg="", agentAddr="ws://127.0.0.3:9/x"))
        self.assertEqual([c[:2] for c in clock.tcpClients], [("127.0.0.3", 9)])

    def test_failure_reasons_are_scrubbed(self) -> None:
        """Each kind of connect failure has its own code and details; testers see only that it is unreachable."""
        link, clock, health = self.link()
        link.start()
        factory, connector = clock.tcpClients[0][2], clock.connectors[0]
        factory.clientConnectionFailed(connector, Failure(error.TimeoutError()))
        self.assertEqual(health[-1], (0, "agent unreachable: connecting timed out"))
        self.assertEqual(link.code, "agent_unreachable")
        clock.advance(1)
        factory.startedConnecting(connector)  # what a real connector does when the retry dials
        factory.clientConnectionFailed(connector, Failure(error.DNSLookupError("x")))
        self.assertEqual(health[-1], (0, "agent host unknown: 127.0.0.2"))
        self.assertEqual(link.reason, "the service's agent is unreachable", "testers see no address, no detail")

    def test_stop_leaves_nothing_behind(self) -> None:
        """Stopping a link that is backing off cancels its retry and stops its factory."""
        link, clock, health = self.link()
        link.start()
        factory, connector = clock.tcpClients[0][2], clock.connectors[0]
        factory.clientConnectionFailed(connector, Failure(error.ConnectionRefusedError()))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        link.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertFalse(factory.continueTrying)
        self.assertEqual(link.state, "stopped")


class SyncRetryTests(unittest.TestCase):
    def test_unanswered_sync_is_tried_again_soon(self) -> None:
        """A sync the registry could not answer is tried again after 1 s, then 2 s, ..., not a whole interval
        later (a worker starting beside another saw its first sync refused and no link for 30 s)."""
        from twisted.internet.defer import fail, succeed

        from webtesting.dbpool import DatabaseUnavailable

        clock = MemoryReactorClock()
        answers = [fail(DatabaseUnavailable("starting")), fail(DatabaseUnavailable("starting")),
                   succeed([seed_service(serviceId=7, status=0, msg="", agentAddr="ws://127.0.0.3:9/x")])]
        asked: list[float] = []

        class Registry:
            def list_services(self) -> Any:
                asked.append(clock.seconds())
                return answers.pop(0)

        links = AgentLinks(Registry(), Relay({}, clock=clock), clock, secret="s", sync_interval=30.0,
                           backoff=BACKOFF)
        links.running = True  # the loop itself waits for a real database: not started here
        self.addCleanup(links.stopService)
        links.sync()
        clock.advance(1)
        clock.advance(2)
        self.assertEqual(asked, [0, 1, 3])
        self.assertIn(7, links.links)
        self.assertEqual([c for c in clock.getDelayedCalls() if c.func == links.sync], [])


class HealthWriteOrderTests(unittest.TestCase):
    def test_one_write_at_a_time_the_latest_next(self) -> None:
        """Health written while an earlier write is in flight waits for it, and only the latest is written
        then: two writes in flight could commit out of order and leave the registry on the older one (the drill
        once saw "waiting for the agent's answer" stay after "ok")."""
        from twisted.internet.defer import Deferred

        clock = MemoryReactorClock()
        writes: list[tuple[int, int, str, Deferred[None]]] = []

        class Registry:
            def set_status(self, sid: int, status: int, msg: str, code: str) -> Deferred[None]:
                d: Deferred[None] = Deferred()
                writes.append((sid, status, msg, d))
                return d

        class Link:
            service_id, code = 3, "x"
            health = (0, "waiting for the agent's answer")

        links = AgentLinks(Registry(), Relay({}, clock=clock), clock, secret="s", backoff=BACKOFF)
        link = Link()
        links._health_changed(link)  # type: ignore[arg-type]
        for health in ((1, "ok"), (0, "bot down"), (1, "ok again")):
            link.health = health
            links._health_changed(link)  # type: ignore[arg-type]
        self.assertEqual([w[1:3] for w in writes], [(0, "waiting for the agent's answer")])
        writes[0][3].callback(None)
        self.assertEqual([w[1:3] for w in writes[1:]], [(1, "ok again")])
        writes[1][3].callback(None)
        self.assertEqual(len(writes), 2)
