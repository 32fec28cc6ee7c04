"""
Headless Chromium for end-to-end tests, driven by Playwright from trial.

Why a thread: the system under test runs on Twisted's reactor in the test's
own process (so a test can kill and restart the agent or the bot as
L{tests.support.system} does), and Playwright's async API wants an asyncio
loop of its own. Playwright's I{sync} API runs its own private loop in
whatever thread calls it, so every browser call here runs on one dedicated
worker thread (a one-thread L{ThreadPool}: Playwright's objects belong to the
thread that made them) while the reactor keeps serving the pages, the
WebSocket and the agent links. A test writes each browser step as a plain
function and awaits it::

    browser = Browser(self)                  # stopped in cleanup
    page = await browser.page()
    await browser.run(lambda: page.goto(url))

L{PagesSystem} is what the pages run against: the web server built exactly
as ``twistd webtesting-web`` builds it, plus the agent, the reference bot, a
Redis Cluster and a MariaDB database, all real and all on free loopback ports.

Chromium is Debian's (C{/usr/bin/chromium}); Playwright never downloads a
browser here. A missing chromium or Playwright fails the test saying how to
install it: nothing is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from collections.abc import Callable
from typing import Any, TypeVar, cast

import treq
from twisted.internet import reactor
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from tests.support import mariadb
from tests.support.agent import SECRET
from tests.support.sessions import session_cookie
from tests.support.system import BotBackends
from tests.support.wait import eventually, free_port
from webtesting.web import tap
from webtesting.web.accounts import add_user_sync
from webtesting.web.registry import connect_sync

T = TypeVar("T")

CHROMIUM = os.environ.get("WT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# How long one Playwright wait may take before the step fails.
STEP_TIMEOUT_MS = 15_000


class BrowserMissing(AssertionError):
    """Chromium or Playwright is not installed: these tests cannot run."""


def _require() -> None:
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        raise BrowserMissing(
            f"these tests need Chromium at {CHROMIUM}; install it with `apt-get install chromium` "
            "(./wt test does) — never `playwright install`"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise BrowserMissing(
            "these tests need Playwright's Python package: `.venv/bin/pip install playwright` "
            "(it is in pyproject.toml's test extras)"
        ) from None


class Browser:
    """One headless Chromium for one test, on its own thread; closed in cleanup."""

    def __init__(self, testcase: Any) -> None:
        _require()
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="playwright")
        self._pool.start()
        self._playwright: Any = None
        self._browser: Any = None
        self._contexts: list[Any] = []
        testcase.addCleanup(self.stop)

    def run(self, step: Callable[..., T], *args: Any, **kwargs: Any) -> Any:
        """Run C{step} on the browser's thread; a Deferred of its result."""
        return deferToThreadPool(reactor, self._pool, step, *args, **kwargs)

    async def page(self, **context_options: Any) -> Any:
        """A new page in a fresh browser context (its own cookies and storage)."""
        return await self.run(self._new_page, context_options)

    def _new_page(self, context_options: dict[str, Any]) -> Any:
        if self._browser is None:
            from playwright.sync_api import sync_playwright

            self._playwright = sync_playwright().start()
            self._browser = self._playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            )
        context = self._browser.new_context(
            viewport={"width": 1366, "height": 800}, locale="en-US", **context_options,
        )
        context.set_default_timeout(STEP_TIMEOUT_MS)
        self._contexts.append(context)
        page = context.new_page()
        # Uncaught errors and Content-Security-Policy violations: a test can
        # assert there were none.
        page.wt_errors = []
        page.on("pageerror", lambda error: page.wt_errors.append(str(error)))
        page.on("console", lambda message: page.wt_errors.append(message.text)
                if "Content Security Policy" in message.text else None)
        return page

    def _close(self) -> None:
        for context in self._contexts:
            # The browser may already be gone; closing it below still runs.
            with contextlib.suppress(Exception):
                context.close()
        self._contexts = []
        if self._browser is not None:
            self._browser.close()
            self._browser = None
        if self._playwright is not None:
            self._playwright.stop()
            self._playwright = None

    async def stop(self) -> None:
        try:
            await self.run(self._close)
        finally:
            self._pool.stop()


# -- the system the pages run against ---------------------------------------------

SESSION_SECRET = "pages-test-session-secret-0123456789"
PASSWORD = "correct horse battery"


class PagesSystem(BotBackends):
    """
    The real product for a browser: the web server exactly as ``twistd
    webtesting-web`` builds it (L{tap.makeService} from a generated YAML file:
    pages, HTTP API, accounts, browser WebSocket, agent links, SQLite
    registry), the agent and the reference bot on free loopback ports, a real
    Redis Cluster and a real MariaDB database. All in this process, so a test
    can kill the agent and start it again; all stopped in cleanup.
    """

    def __init__(self, testcase: Any) -> None:
        super().__init__(testcase, "wt_pages")
        folder = os.path.abspath(testcase.mktemp())
        os.makedirs(folder)
        self.folder = folder
        self.http_port = free_port()
        self.ws_port = free_port()
        config = os.path.join(folder, "web.yaml")
        with open(config, "w", encoding="utf-8") as f:
            json.dump({  # JSON is YAML
                "http": {"listen": f"tcp:{self.http_port}:interface=127.0.0.1",
                         "sessions": {"secret": SESSION_SECRET, "lifetime": 3600}},
                "websocket": {"listen": f"tcp:{self.ws_port}:interface=127.0.0.1"},
                "registry": {"sqlite_path": os.path.join(folder, "registry.sqlite3")},
                "agents": {"auth": {"secret": SECRET}, "sync_interval": 5,
                           "retry_initial": 0.1, "retry_max": 0.4, "connect_timeout": 2},
            }, f)
        self.options = tap.Options()
        self.options.parseOptions(["--config", config])
        self.web = tap.makeService(self.options, reactor)
        self.base = f"http://127.0.0.1:{self.http_port}/WebTesting"
        self._admin_cookie = ""

    async def start(self) -> None:
        await self.bot.start()
        self.agent.start()
        self.web.startService()
        # Whichever web server runs at the end (restart_web makes a new one).
        self.testcase.addCleanup(lambda: self.web.stopService() if self.web.running else None)
        await eventually(lambda: _answers(self.http_port) and _answers(self.ws_port), what="the web server listening")

    async def restart_web(self) -> None:
        """Stop the web server as SIGTERM would, and start a new one from the same configuration."""
        await self.web.stopService()
        self.web = tap.makeService(self.options, reactor)
        self.web.startService()
        await eventually(lambda: _answers(self.http_port) and _answers(self.ws_port), what="the web server listening")
        assert await self.web.getServiceNamed("store").getServiceNamed("registry").ready(), "the registry is away"

    async def drop_browser_websocket(self) -> None:
        """Stop the browsers' WebSocket listener and drop every open connection, as when it dies."""
        ws = self.web.getServiceNamed("websocket")
        # Dropped before the stop: stopping would say goodbye (1001) first.
        for session in list(ws.factory.relay.sessions.values()):
            # A session delivers through its protocol's bound method.
            session.deliver.__self__.dropConnection(abort=True)
        await ws.stopService()

    def restore_browser_websocket(self) -> None:
        """Listen again with the same factory (a stopped endpoint service does not start again)."""
        factory = self.web.getServiceNamed("websocket").factory
        port: Any = cast(Any, reactor).listenTCP(self.ws_port, factory, interface="127.0.0.1")
        self.testcase.addCleanup(port.stopListening)

    def push(self, message: dict[str, Any]) -> None:
        """
        Send one frame to every open browser session through the real
        WebSocket, exactly as the web server delivers a push: for the codes and
        repeats the servers do not produce on demand.
        """
        relay = self.web.getServiceNamed("websocket").factory.relay
        data = json.dumps(message).encode()
        for session in list(relay.sessions.values()):
            session.deliver(data)

    def add_user(self, username: str, role: str, password: str = PASSWORD) -> None:
        connection, dialect = connect_sync(self.options.config.registry)
        try:
            add_user_sync(connection, dialect, username, password, role)
        finally:
            connection.close()

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

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        """Call the HTTP API as an admin (a real session of the admin "root"); the decoded answer."""
        if not self._admin_cookie:
            store = self.web.getServiceNamed("websocket").factory.sessions
            await eventually(lambda: store.db.available, what="the registry database")
            self._admin_cookie = await session_cookie(store, "root", "admin")
        headers: dict[bytes | str, bytes | str] = {"Cookie": self._admin_cookie}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        response = await treq.request(method, f"{self.base}/{path}", data=data, headers=headers,
                                       persistent=False)
        return json.loads(await response.content())

    async def services(self) -> list[dict[str, Any]]:
        return list((await self.api("GET", "Service/getServices"))["servicdLists"])

    async def add_service(self, **changes: Any) -> int:
        """Register a service and wait until it is healthy; its serviceId."""
        answer = await self.api("PUT", "Service/addServices", [self.service(**changes)])
        assert answer["result"] == 1, answer
        sid = max(s["serviceId"] for s in await self.services())
        await self.wait_status(sid, 1)
        return sid

    async def update_service(self, sid: int, **changes: Any) -> None:
        """Change a registered service through the HTTP API, as an admin does."""
        answer = await self.api("POST", "Service/updateServices", [{"serviceId": sid, **self.service(**changes)}])
        assert answer["result"] == 1, answer

    async def wait_status(self, sid: int, status: int, timeout: float = 15.0) -> None:
        async def check() -> bool:
            return any(s["serviceId"] == sid and s["status"] == status for s in await self.services())

        await eventually(check, timeout=timeout, what=f"service {sid} with status {status}")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
