"""A small real-HTTP client for tests: no connection is left open afterwards."""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool


class JSONClient:
    def __init__(self, base: str, persistent: bool = False) -> None:
        self.base = base
        self.pool = HTTPConnectionPool(reactor, persistent=persistent)
        self.pool.maxPersistentPerHost = 8
        self.http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))
        self.cookie = ""  # "wt_session=…" once logged in

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str | None = "application/json",
    ) -> tuple[int, Any]:
        """Send one request; fire with the status and the decoded JSON answer."""
        headers = {}
        if content_type is not None:
            headers["Content-Type"] = [content_type]
        if self.cookie:
            headers["Cookie"] = [self.cookie]
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        response = await self.http.request(method, self.base + path, data=data, headers=headers)
        content = await response.content()
        self.last_headers = response.headers
        try:
            decoded = json.loads(content)
        except ValueError:
            raise AssertionError(f"{method} {path}: answer is not JSON: {content[:300]!r}") from None
        return response.code, decoded

    async def login(self, username: str, password: str) -> tuple[int, Any]:
        """Log in through the API; later calls carry the session cookie."""
        status, answer = await self.call("POST", "/WebTesting/Account/login",
                                         {"username": username, "password": password})
        if status == 200:
            [set_cookie] = self.last_headers.getRawHeaders("set-cookie")
            self.cookie = set_cookie.split(";", 1)[0]
        return status, answer

    async def close(self) -> None:
        await self.pool.closeCachedConnections()
