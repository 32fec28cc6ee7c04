"""
The browsers' WebSocket (SPEC §3): one L{BrowserProtocol} per browser tab,
each with a session in the L{Relay}.

Messages over C{max_message} bytes are answered with an error and dropped as
they arrive (never held in memory); the connection stays up. Autobahn's own
limit is set well above ours, as the backstop that fails a connection which
streams without end.
"""

from __future__ import annotations

import time
from typing import Any, Sequence
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.logger import Logger

from webtesting.protocol import Result
from webtesting.web.accounts import Session, SessionSigner, cookie_value
from webtesting.web.sessions import BrowserSession, Relay

_INTERNAL = b'{"method":"error","result":500,"msg":"internal error"}'


class BrowserProtocol(WebSocketServerProtocol):
    _log = Logger()
    factory: "BrowserFactory"
    session: BrowserSession | None = None
    user: Session | None = None
    _expiry: Any = None
    _too_large = False

    def onConnect(self, request: ConnectionRequest) -> None:
        if request.path != self.factory.path:
            raise ConnectionDeny(404, f"no WebSocket at {request.path}")
        if not self.factory.origin_allowed(request.headers.get("origin"), request.headers.get("host", "")):
            self._log.warn("refused a browser WebSocket from origin {origin}", origin=request.headers.get("origin"))
            raise ConnectionDeny(403, "origin not allowed")
        self.user = self.factory.signer.check(cookie_value(request.headers.get("cookie")))
        if self.user is None:
            raise ConnectionDeny(401, "log in first")

    def onOpen(self) -> None:
        try:
            if self.user is not None:
                # The login ends for this connection too when it expires.
                self._expiry = self.factory.reactor.callLater(
                    max(0.0, self.user.expires - time.time()), self._login_expired)
            self.session = self.factory.relay.open_session(self._deliver)
        except Exception:
            self._log.failure("opening a browser session")
            self.dropConnection(abort=True)

    def _login_expired(self) -> None:
        self._expiry = None
        self.sendClose(code=4401, reason="login expired; log in again")

    def _deliver(self, data: bytes) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(data, isBinary=False)

    # -- size limit: drop the message as it arrives, answer at its end -------

    def onMessageBegin(self, isBinary: bool) -> None:
        self._too_large = False
        super().onMessageBegin(isBinary)

    def onMessageFrameBegin(self, length: int) -> None:
        super().onMessageFrameBegin(length)
        if self.message_data_total_length > self.factory.max_message:
            self._too_large = True

    def onMessageFrameData(self, payload: bytes) -> None:
        if not self._too_large:
            super().onMessageFrameData(payload)

    def onMessageEnd(self) -> None:
        if self._too_large:
            self.message_data = None  # type: ignore[assignment]
            self._deliver(
                b'{"method":"error","result":%d,"msg":"message larger than %d bytes; dropped"}'
                % (Result.TOO_LARGE, self.factory.max_message)
            )
            return
        super().onMessageEnd()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.session is None:
            return
        if isBinary:
            self._deliver(b'{"method":"error","result":400,"msg":"binary messages are not understood; send JSON text"}')
            return
        try:
            self.factory.relay.from_browser(self.session, payload)
        except Exception:
            self._log.failure("handling a browser message")
            self._deliver(_INTERNAL)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        if self.session is None:
            return
        session, self.session = self.session, None
        try:
            self.factory.relay.close_session(session)
        except Exception:
            self._log.failure("closing a browser session")


class BrowserFactory(WebSocketServerFactory):
    protocol = BrowserProtocol  # type: ignore[assignment]

    def __init__(
        self,
        relay: Relay,
        signer: SessionSigner,
        *,
        path: str = "/WebTesting",
        max_message: int = 64 * 1024,
        allowed_origins: Sequence[str] = (),
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.relay = relay
        self.signer = signer
        self.path = path
        self.allowed_origins = {o.rstrip("/").lower() for o in allowed_origins}
        self.max_message = max_message
        backstop = max(16 * max_message, 1024 * 1024)
        self.setProtocolOptions(
            maxMessagePayloadSize=backstop,
            maxFramePayloadSize=backstop,
            autoPingInterval=20,
            autoPingTimeout=10,
            openHandshakeTimeout=10,
        )

    def origin_allowed(self, origin: str | None, host: str) -> bool:
        """
        A browser page may connect from the host it reached us by (any port:
        the pages are served on another port than this), or from a
        configured origin. Non-browser clients send no Origin.
        """
        if origin is None:
            return True
        origin = origin.rstrip("/").lower()
        if origin in self.allowed_origins:
            return True
        try:
            origin_host = urlsplit(origin).hostname
        except ValueError:
            return False
        return origin_host is not None and origin_host == urlsplit("//" + host).hostname
