"""A WebSocket test client over real loopback sockets, collecting JSON messages."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.util import parse_url
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint

Match = Callable[[dict[str, Any]], bool]


class JSONClientProtocol(WebSocketClientProtocol):
    factory: _Factory

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self._waiters: list[tuple[Match, Deferred[dict[str, Any]]]] = []
        self.closed: Deferred[tuple[bool, int | None, str | None]] = Deferred()

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.raw.append(payload)
        message = json.loads(payload)
        self.messages.append(message)
        for waiter in list(self._waiters):
            match, d = waiter
            if match(message):
                self._waiters.remove(waiter)
                self.messages.remove(message)
                d.callback(message)
                return

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"handshake failed: {code} {reason}"))
        self.closed.callback((wasClean, code, reason))
        for _, d in self._waiters:
            d.errback(ConnectionError(f"closed while waiting: {code} {reason}"))
        self._waiters = []

    def send(self, message: Any) -> None:
        data = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.sendMessage(data, isBinary=False)

    def expect(self, match: Match | str, timeout: float = 10.0) -> Deferred[dict[str, Any]]:
        """The first message (already received or next) that C{match}es; a string matches the method."""
        if isinstance(match, str):
            method = match
            match = lambda m: m.get("method") == method  # noqa: E731
        for message in self.messages:
            if match(message):
                self.messages.remove(message)
                return defer.succeed(message)
        d: Deferred[dict[str, Any]] = Deferred()
        waiter = (match, d)
        self._waiters.append(waiter)

        def gone(failure: Any) -> Any:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            return failure

        d.addTimeout(timeout, reactor)
        d.addErrback(gone)
        return d

    async def close(self) -> None:
        if not self.closed.called:
            self.sendClose()
            self.closed.addTimeout(5, reactor)
            try:
                await self.closed
            except defer.TimeoutError:
                self.dropConnection(abort=True)


class _Factory(WebSocketClientFactory):
    protocol = JSONClientProtocol

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened: Deferred[JSONClientProtocol] = Deferred()


async def connect(url: str, headers: dict[str, str] | None = None, **options: Any) -> JSONClientProtocol:
    """Open a WebSocket to C{url}; fails with ConnectionError if the handshake is refused."""
    _secure, host, port, _resource, _path, _params = parse_url(url)
    factory = _Factory(url, headers=headers or {})
    factory.setProtocolOptions(openHandshakeTimeout=5, closeHandshakeTimeout=2, **options)
    await TCP4ClientEndpoint(reactor, host, port, timeout=5).connect(factory)
    return await factory.opened


async def connect_agent(url: str, secret: str, service_id: int, **options: Any) -> JSONClientProtocol:
    """
    Open a web server link to the agent at C{url} and authenticate it for
    C{service_id} (webtesting.linkauth), as the web server does; fails with
    ConnectionError when the agent refuses or does not prove itself.
    """
    from webtesting import linkauth

    client = await connect(url, **options)
    auth = linkauth.WebSide(secret, service_id)
    try:
        client.send(auth.answer(await client.expect("authChallenge", timeout=5)))
        auth.verify(await client.expect("authResp", timeout=5))
    except (linkauth.AuthFailed, defer.TimeoutError) as e:
        await client.close()
        raise ConnectionError(f"agent authentication failed: {e}") from None
    return client
