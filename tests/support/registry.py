"""The registry and its HTTP API, running for real on a loopback port."""

from __future__ import annotations

import base64
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import LoopingCall

from tests.support.http import JSONClient
from tests.support.sessions import session_cookie
from webtesting.config import RegistryConfig
from webtesting.web.accounts import SessionStore
from webtesting.web.http import RegistryAPI, make_site
from webtesting.web.origins import Origins
from webtesting.web.registry import Registry, open_registry

SERVICE = "/WebTesting/Service"
SESSION_SECRET = "test-session-secret-0123456789"


def seed_service(**changes: Any) -> dict[str, Any]:
    """
    The seed's example service object (SPEC §2), with C{changes}; its Redis
    nodes are moved to the loopback (127.0.0.2) so that nothing a test starts
    ever reaches for a real network address.
    """
    service = {
        "redisCluster": [
            {"port": 7000, "host": "127.0.0.2"},
            {"port": 7001, "host": "127.0.0.2"},
            {"port": 7002, "host": "127.0.0.2"},
        ],
        "mysqlAddr": "127.0.0.1",
        "mysqlPort": 3306,
        "mysqlUser": "root",
        "mysqlPwd": "root",
        "mysqlDbname": "tesdb001",
        "wxServiceAddr": "ws://127.0.0.1:1443",
        "agentAddr": "ws://127.0.0.2:2021/WebTesting/Agent",
        "allowedAppids": ["1.00002", "1.00003"],
        "description": "医疗小程序",
    }
    service.update(changes)
    return service


class RunningRegistry:
    """A started registry database with the HTTP API listening on 127.0.0.1."""

    def __init__(self, config: RegistryConfig, max_body: int = 1024 * 1024) -> None:
        self.registry: Registry = open_registry(config, reactor)
        self.sessions = SessionStore(self.registry.db, self.registry.dialect_name, 3600)
        self.api = api = RegistryAPI(self.registry, "webroot", lambda request: "ws://127.0.0.1:2999/WebTesting",
                                     self.sessions)
        self.site = make_site(api.app.resource(), max_body)
        self.port: Any = None
        self.client: JSONClient | None = None
        self._pending: LoopingCall | None = None

    async def start(self, wait: bool = True, role: str | None = "admin") -> JSONClient:
        """
        Start; the client carries a real session of a user named like C{role}
        (made in the database, as a login would). Without C{wait} the session
        is made as soon as the database first answers.
        """
        self.registry.db.startService()
        if wait:
            await self.registry.db.ready()
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.client = JSONClient(f"http://127.0.0.1:{self.port.getHost().port}")
        self.api.origins = Origins(self.client.base)  # the pages' own origin
        if role is not None and wait and self.registry.db.available:
            self.client.cookie = await self.cookie(role, role)
        elif role is not None:
            # The database is away: the session row is written as soon as it is back.
            token = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
            self.client.cookie = f"wt_session={token}"
            self._pending = LoopingCall(self._write_later, role, token)
            self._pending.clock = reactor
            self._pending.start(0.05)
        return self.client

    async def _write_later(self, role: str, token: str) -> None:
        if not self.registry.db.available:
            return
        try:
            await session_cookie(self.sessions, role, role, token=token)
        except Exception:  # noqa: BLE001 - gone again: next tick
            return
        if self._pending is not None and self._pending.running:
            self._pending.stop()

    async def cookie(self, username: str, role: str) -> str:
        """The Cookie header of a new real session of C{username} (created with C{role} if missing)."""
        return await session_cookie(self.sessions, username, role)

    async def stop(self) -> None:
        if self._pending is not None and self._pending.running:
            self._pending.stop()
        if self.client is not None:
            await self.client.close()
        if self.port is not None:
            await self.port.stopListening()
        if self.registry.db.running:
            await self.registry.db.stopService()
