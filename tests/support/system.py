"""
The whole chain in this process, over real loopback sockets: the reference
bot, an agent and a web server, with a real 3-master Redis Cluster and a
real MariaDB database (both made for the test and removed after it).

Each part can be stopped and started again on the same port, as when its
process dies and comes back.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater

from tests.support import mariadb, wsclient
from tests.support.agent import SECRET, RunningAgent
from tests.support.rediscluster import start_cluster
from tests.support.sessions import session_cookie
from tests.support.wait import eventually, free_port
from webtesting.agent.backend import state_source_factory
from webtesting.agent.server import AgentSettings
from webtesting.config import RegistryConfig, from_mapping
from webtesting.lifecycle import Backoff
from webtesting.web.accounts import SessionStore
from webtesting.web.links import AgentLinks
from webtesting.web.registry import open_registry
from webtesting.web.sessions import Relay
from webtesting.web.ws import BrowserFactory
from webtesting.wxsim.config import WxsimConfig
from webtesting.wxsim.server import make_bot_service

FOLLOWUP_DELAY = 0.3


FAST_BACKOFF = Backoff(initial=0.1, maximum=0.4, jitter=0.0)


class Bot:
    """The reference bot on a fixed loopback port."""

    def __init__(self, testcase: Any, cluster_nodes: list[tuple[str, int]], database: str,
                 bot: dict[str, Any] | None = None) -> None:
        """C{bot}: the bot's rule settings (etc/wxsim.yaml ``bot``), e.g. another followup_delay."""
        self.port = free_port()
        self.config = from_mapping(WxsimConfig, {
            "mysql": {"host": mariadb.HOST, "port": mariadb.PORT, "user": mariadb.USER,
                      "password": mariadb.PASSWORD, "database": database},
            "redis": {"nodes": [{"host": h, "port": p} for h, p in cluster_nodes], "retry_interval": 0.2},
            "bot": {"followup_delay": FOLLOWUP_DELAY, **(bot or {})},
        })
        self.service: Any = None
        testcase.addCleanup(self.stop)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/5.00034"

    async def start(self) -> None:
        endpoint = serverFromString(reactor, f"tcp:{self.port}:interface=127.0.0.1")
        self.service = make_bot_service(self.config, reactor, endpoint)
        self.service.startService()
        await self.service.getServiceNamed("websocket").listening()
        assert await self.service.getServiceNamed("mysql").ready(), "the bot could not prepare MariaDB"
        redis = self.service.getServiceNamed("redis")
        await eventually(lambda: redis.available, what="the bot connecting to Redis")

    async def stop(self) -> None:
        """Stop listening and drop every user connection, as when the process dies."""
        if self.service is None:
            return
        service, self.service = self.service, None
        factory = service.getServiceNamed("websocket").factory
        for proto in list(getattr(factory, "connections", ())):
            proto.dropConnection(abort=True)
        await service.stopService()
        # An aborted connection ends on the next reactor turn (abortConnection
        # schedules its connectionLost); let those run before trial looks.
        await deferLater(reactor, 0.01, lambda: None)


async def another_bot(testcase: Any, database: str, **settings: Any) -> tuple[Bot, dict[str, Any]]:
    """
    A second reference bot with C{settings} (e.g. another followup_delay) and a
    Redis Cluster of its own, started; and the registry fields of a service
    on it. Its own cluster matters: two bots on one cluster give the same
    uname the same keys, and a compare runs one uname on both at once.
    """
    cluster = start_cluster(testcase)
    bot = Bot(testcase, list(cluster.nodes), database, bot=settings)
    await bot.start()
    return bot, {"wxServiceAddr": bot.url, "redisCluster": [{"host": h, "port": p} for h, p in cluster.nodes]}


class BotBackends:
    """What a service is made of: a Redis Cluster, a MariaDB database, the reference bot, an agent."""

    def __init__(self, testcase: Any, db_prefix: str) -> None:
        self.testcase = testcase
        self.cluster = start_cluster(testcase)
        self.database = mariadb.temporary_database(testcase, db_prefix)
        self.bot = Bot(testcase, list(self.cluster.nodes), self.database)
        self.agent = RunningAgent(
            free_port(), state_source_factory(timeout=2.0, retry_interval=0.2),
            settings=AgentSettings(poll_interval=0.2, retry_initial=0.1, retry_max=0.4, login_timeout=3),
        )
        testcase.addCleanup(self.agent.kill)


class System(BotBackends):
    """The backends plus the web server's parts, assembled in this process."""

    def __init__(self, testcase: Any) -> None:
        super().__init__(testcase, "wt_bot")
        self.registry = open_registry(RegistryConfig(sqlite_path=testcase.mktemp() + ".sqlite3"), reactor)
        self.relay = Relay({})
        self.links = AgentLinks(self.registry, self.relay, reactor, secret=SECRET,
                                sync_interval=0.3, backoff=FAST_BACKOFF, connect_timeout=2)
        self.browser_port: Any = None
        self.sessions = SessionStore(self.registry.db, self.registry.dialect_name, 3600)

    async def start(self) -> None:
        await self.bot.start()
        self.agent.start()
        self.registry.db.startService()
        self.testcase.addCleanup(self.registry.db.stopService)
        await self.registry.db.ready()
        self.links.startService()
        self.testcase.addCleanup(self.links.stopService)
        factory = BrowserFactory(self.relay, self.sessions, path="/WebTesting")
        self.browser_port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.testcase.addCleanup(self.browser_port.stopListening)

    def service(self, **changes: Any) -> dict[str, Any]:
        service = {
            "redisCluster": [{"host": h, "port": p} for h, p in self.cluster.nodes],
            "mysqlAddr": mariadb.HOST, "mysqlPort": mariadb.PORT, "mysqlUser": mariadb.USER,
            "mysqlPwd": mariadb.PASSWORD, "mysqlDbname": self.database,
            "wxServiceAddr": self.bot.url, "agentAddr": self.agent.url,
            "allowedAppids": ["1.00002", "1.00003"], "description": "reference bot",
        }
        service.update(changes)
        return service

    async def add_service(self, **changes: Any) -> int:
        await self.registry.add_services([self.service(**changes)])
        sid = max(s["serviceId"] for s in await self.registry.list_services())
        await eventually(lambda: sid in self.links.links and self.links.links[sid].up, what="link up")
        return sid

    async def status(self, sid: int) -> tuple[int, str]:
        record = next(s for s in await self.registry.list_services() if s["serviceId"] == sid)
        return record["status"], record["msg"]

    async def browser(self, account: str = "tester") -> wsclient.JSONClientProtocol:
        client = await wsclient.connect(
            f"ws://127.0.0.1:{self.browser_port.getHost().port}/WebTesting",
            headers={"Cookie": await session_cookie(self.sessions, account, "tester")},
        )
        self.testcase.addCleanup(client.close)
        return client
