"""A small real-HTTP client for tests: no connection is left open afterwards."""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool


class JSONClient:
    def __init__(self, base: str, persistent: bool = False, bind: str | None = None) -> None:
        """C{bind}: the loopback address to connect from (127.0.0.2, …), to play another client."""
        self.base = base
        self.pool = HTTPConnectionPool(reactor, persistent=persistent)
        self.pool.maxPersistentPerHost = 8
        if bind is None:
            agent = Agent(reactor, pool=self.pool)
        else:
            agent = Agent.usingEndpointFactory(reactor, _BoundEndpoints(bind), pool=self.pool)
        self.http = treq.client.HTTPClient(agent)
        self.cookie = ""  # "wt_session=…" once logged in
        self.device = ""  # "wt_device=…" once logged in (the login throttle's device cookie)

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
        cookies = "; ".join(c for c in (self.cookie, self.device) if c)
        if cookies:
            headers["Cookie"] = [cookies]
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
            set_cookies = self.last_headers.getRawHeaders("set-cookie")
            [set_cookie] = [c for c in set_cookies if c.startswith("wt_session=")]
            self.cookie = set_cookie.split(";", 1)[0]
            self.device = next((c.split(";", 1)[0] for c in set_cookies if c.startswith("wt_device=")), "")
        return status, answer

    async def close(self) -> None:
        await self.pool.closeCachedConnections()


class _BoundEndpoints:
    """Connects from one local address (twisted.web.iweb.IAgentEndpointFactory)."""

    def __init__(self, address: str) -> None:
        self.address = address

    def endpointForURI(self, uri: Any) -> Any:
        from twisted.internet.endpoints import TCP4ClientEndpoint

        return TCP4ClientEndpoint(reactor, uri.host.decode(), uri.port, bindAddress=(self.address, 0))
