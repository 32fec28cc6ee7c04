"""
The browsers' WebSocket (SPEC §3): one L{BrowserProtocol} per browser tab,
each with a session in the L{Relay}.

What a browser frame that is not a request gets (docs/protocol.md §1):

- a message over C{max_message} bytes: a 413 C{error} answer at its end; its
  data is dropped as it arrives (never held in memory) and the connection
  stays up;
- beyond Autobahn's own limit, set well above ours (16 x C{max_message},
  at least 1 MiB) as the backstop that fails a connection which streams
  without end: close code 1009;
- a text frame that is not valid UTF-8: close code 1007, as RFC 6455 requires
  (a WebSocket endpoint must fail such a connection, so no answer can be
  sent on it);
- a binary message: a 400 C{error} answer; the connection stays up.

The closes are real close frames with a reason (C{failByDrop} off), so a
client learns why rather than seeing the TCP connection vanish (1006).

On shutdown (SIGTERM, C{stopService}) L{BrowserListener} sends every open
browser a close frame with code 1001 (going away) and waits for the closing
handshakes, bounded, before it stops listening; the page reconnects to the
next server rather than guessing what happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from webtesting.dbpool import DatabaseUnavailable
from webtesting.fastframes import FastFrames
from webtesting.handshake import BoundedHandshake
from webtesting.leanws import LeanFactory, LeanProtocol
from webtesting.metrics import FRAMES
from webtesting.protocol import Result
from webtesting.web.accounts import Session, cookie_value
from webtesting.web.origins import Origins
from webtesting.web.sessions import BrowserSession, Relay

_INTERNAL = b'{"method":"error","result":500,"msg":"internal error"}'


def _backstop(max_message: int) -> int:
    """
    Autobahn's own message and frame size limit, well above C{max_message}:
    a larger message is dropped here as it arrives and answered 413 (the
    hooks of L{BrowserProtocol}); Autobahn closes with 1009 only past this.
    """
    return max(16 * max_message, 1024 * 1024)
GOING_AWAY = 1001
GOING_AWAY_REASON = "the server is shutting down"

_BROWSER_IN, _BROWSER_OUT = ("web", "browser", "in"), ("web", "browser", "out")


SESSION_ENDED = 4401


class SessionChecker(Protocol):
    """What the browser WebSocket asks of the login sessions (L{webtesting.web.accounts.SessionStore})."""

    def check(self, token: str | None) -> Deferred[Session | None]: ...

    def alive(self, keys: Sequence[str]) -> Deferred[set[str]]: ...


# Ignored (misc): Autobahn's own two bases of WebSocketServerProtocol
# disagree on the types of peer and _transport_details.
class BrowserProtocol(FastFrames, LeanProtocol, BoundedHandshake, WebSocketServerProtocol):  # type: ignore[misc]
    _log = Logger()
    factory: BrowserFactory
    session: BrowserSession | None = None
    user: Session | None = None
    _counted = False
    _too_large = False

    # Autobahn waits for a Deferred from onConnect; its annotation does not say so.
    def onConnect(self, request: ConnectionRequest) -> Deferred[Any]:  # type: ignore[override]
        if self.factory.going_away:
            raise ConnectionDeny(503, "the server is shutting down")
        if request.path != self.factory.path:
            raise ConnectionDeny(404, f"no WebSocket at {request.path}")
        if not self.factory.origins.permit(request.headers.get("origin")):
            self._log.warn("refused a browser WebSocket from origin {origin}", origin=request.headers.get("origin"))
            raise ConnectionDeny(403, "origin not allowed")
        # The session row, read now: a logged-out or deleted user's cookie opens nothing.
        d = self.factory.sessions.check(cookie_value(request.headers.get("cookie")))
        d.addCallbacks(self._checked, self._check_failed)
        return d

    def _checked(self, user: Session | None) -> None:
        if user is None:
            raise ConnectionDeny(401, "log in first")
        if self.state == WebSocketServerProtocol.STATE_CLOSED:
            raise ConnectionDeny(400, "the browser went away during the handshake")
        if not self.factory.admit(user.username):
            raise ConnectionDeny(429, f"too many open WebSockets for this account "
                                      f"(at most {self.factory.max_per_account})")
        self._counted = True
        self.user = user

    def _check_failed(self, failure: Any) -> None:
        if failure.check(DatabaseUnavailable):
            raise ConnectionDeny(503, "the registry database is unavailable; try again shortly")
        self._log.failure("checking a browser's session", failure)
        raise ConnectionDeny(500, "internal error")

    def session_ended(self) -> None:
        """The login session was ended (logout elsewhere, an admin, a deleted user)."""
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendClose(code=SESSION_ENDED, reason="session ended; log in again")

    def onOpen(self) -> None:
        try:
            # The login ends for this connection too when it expires: the factory's recheck sees to it.
            self.session = self.factory.relay.open_session(
                self._deliver, self.user.username if self.user is not None else "")
            self.factory.opened(self)
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            self._log.failure("opening a browser session")
            self.dropConnection(abort=True)

    def going_away(self) -> None:
        """
        Close with 1001 (going away). Autobahn's C{sendClose} takes only 1000
        and application codes, so the close frame is sent one level down.
        """
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendCloseFrame(code=GOING_AWAY, reasonUtf8=GOING_AWAY_REASON.encode(), isReply=False)

    def login_expired(self) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendClose(code=SESSION_ENDED, reason="login expired; log in again")

    def _deliver(self, data: bytes) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            FRAMES[_BROWSER_OUT] += 1
            self.sendMessage(data, isBinary=False)

    # -- size limit: drop the message as it arrives, answer at its end -------

    def _fast_in_limit(self) -> int:
        # A larger message takes Autobahn's way, where the hooks below drop it.
        return min(super()._fast_in_limit(), self.factory.max_message)

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
        FRAMES[_BROWSER_IN] += 1
        if self.session is None:
            return
        if isBinary:
            self._deliver(b'{"method":"error","result":400,"msg":"binary messages are not understood; send JSON text"}')
            return
        try:
            self.factory.relay.from_browser(self.session, payload)
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            self._log.failure("handling a browser message")
            self._deliver(_INTERNAL)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._counted:
            self._counted = False
            self.factory.release(self.user.username if self.user is not None else "")
        try:
            self.factory.closed(self)
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            self._log.failure("forgetting a closed browser WebSocket")
        if self.session is None:
            return
        session, self.session = self.session, None
        try:
            self.factory.relay.close_session(session)
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            self._log.failure("closing a browser session")


class BrowserFactory(LeanFactory, WebSocketServerFactory):
    protocol = BrowserProtocol  # type: ignore[assignment]
    _log = Logger()

    def __init__(
        self,
        relay: Relay,
        sessions: SessionChecker,
        *,
        path: str = "/WebTesting",
        max_message: int = 64 * 1024,
        origins: Origins | None = None,
        max_per_account: int = 20,
        recheck_interval: float = 2.0,
        clock: Callable[[], float] = time.time,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.clock = clock  # the wall clock logins expire by
        self.relay = relay
        self.sessions = sessions
        self.max_per_account = max_per_account
        self._per_account: dict[str, int] = {}
        # Sessions ended on another web node (or by webtesting-account) close
        # here within this many seconds; ended here, at once (recheck()).
        self._recheck = LoopingCall(self._tick)
        self._recheck.clock = self.reactor
        self._recheck_interval = recheck_interval
        self._rechecking: Deferred[Any] | None = None
        self._again = False
        self.path = path
        # Pages from these origins only (scheme, host and port, exactly).
        self.origins = origins or Origins("http://127.0.0.1")
        self.open_protocols: set[BrowserProtocol] = set()
        self.going_away = False
        self._drained: list[Deferred[None]] = []
        self.setProtocolOptions(autoPingInterval=20, autoPingTimeout=10, openHandshakeTimeout=10, failByDrop=False)
        self.set_max_message(max_message)

    def set_max_message(self, max_message: int) -> None:
        """
        The largest message a browser may send (at start, and when a live
        reload changes it). Autobahn's own limit behind it (see
        L{_backstop}) follows, for the browsers that come and for those
        already here (Autobahn copied its options into each when it
        connected).
        """
        self.max_message = max_message
        backstop = _backstop(max_message)
        self.setProtocolOptions(maxMessagePayloadSize=backstop, maxFramePayloadSize=backstop)
        for browser in self.open_protocols:
            browser.maxMessagePayloadSize = backstop  # type: ignore[attr-defined]
            browser.maxFramePayloadSize = backstop  # type: ignore[attr-defined]

    # -- shutdown: every open browser is told 1001 -----------------------------

    def startFactory(self) -> None:
        # Listening (again) with this factory: new browsers are welcome.
        self.going_away = False
        super().startFactory()
        if not self._recheck.running:
            self._recheck.start(self._recheck_interval, now=False)

    def stopFactory(self) -> None:
        if self._recheck.running:
            self._recheck.stop()
        super().stopFactory()

    # -- per-account limit, and sessions that end ---------------------------------

    def admit(self, username: str) -> bool:
        count = self._per_account.get(username, 0)
        if count >= self.max_per_account:
            return False
        self._per_account[username] = count + 1
        return True

    def release(self, username: str) -> None:
        count = self._per_account.get(username, 0) - 1
        if count > 0:
            self._per_account[username] = count
        else:
            self._per_account.pop(username, None)

    def recheck(self) -> Deferred[Any] | None:
        """Close the WebSockets whose login session has ended (one query for all of them)."""
        open_ = self._close_expired()
        if self._rechecking is not None:
            # It may have read before the latest change: once more when it is done.
            self._again = True
            return self._rechecking
        if not open_:
            return None
        d = self.sessions.alive(sorted({p.user.key for p in open_ if p.user is not None}))

        def close_ended(alive: set[str]) -> None:
            for protocol in open_:
                if protocol.user is not None and protocol.user.key not in alive:
                    self._log.info("closing a WebSocket of {username}: session ended",
                                   username=protocol.user.username)
                    protocol.session_ended()

        def failed(failure: Any) -> None:
            if not failure.check(DatabaseUnavailable):  # kept open until it can be checked
                self._log.failure("re-checking the browsers' sessions", failure)

        def done(_: object) -> None:
            self._rechecking = None
            if self._again:
                self._again = False
                self.recheck()

        d.addCallbacks(close_ended, failed)
        d.addBoth(done)
        self._rechecking = d
        return d

    def _tick(self) -> None:
        """
        The recheck timer: never waits for a recheck's query (a slow
        database must not hold back the expiry closes) and never stops on
        an error.
        """
        try:
            self.recheck()
        except Exception:  # noqa: BLE001 - logged with its traceback; the timer goes on
            self._log.failure("re-checking the browsers' sessions")

    def _close_expired(self) -> list[BrowserProtocol]:
        """
        Close the WebSockets whose login has expired, whether or not the
        database answers (one timer for all of them, not one per connection:
        recheck_interval is how late a close may come); the others, logged in.
        """
        now = self.clock()
        logged_in = []
        for protocol in list(self.open_protocols):
            if protocol.user is None:
                continue
            if protocol.user.expires <= now:
                try:
                    protocol.login_expired()
                except Exception:  # noqa: BLE001 - logged with its traceback; the others still close
                    self._log.failure("closing a WebSocket whose login expired")
            else:
                logged_in.append(protocol)
        return logged_in

    def opened(self, protocol: BrowserProtocol) -> None:
        self.open_protocols.add(protocol)
        if self.going_away:  # opened while the goodbyes were under way
            protocol.going_away()

    def closed(self, protocol: BrowserProtocol) -> None:
        self.open_protocols.discard(protocol)
        if not self.open_protocols:
            waiters, self._drained = self._drained, []
            for d in waiters:
                d.callback(None)

    def say_goodbye(self, timeout: float = 3.0) -> Deferred[None]:
        """
        Close every open browser WebSocket with 1001 and refuse new ones;
        fire once all have closed, or after C{timeout} seconds (then the
        ones left are dropped).
        """
        self.going_away = True
        if not self.open_protocols:
            return succeed(None)
        self._log.info("saying goodbye (1001) to {count} browsers", count=len(self.open_protocols))
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        for protocol in list(self.open_protocols):
            protocol.going_away()

        def too_slow() -> None:
            if not d.called:
                for protocol in list(self.open_protocols):
                    protocol.dropConnection(abort=True)
                self._drained.remove(d)
                d.callback(None)

        timer = self.reactor.callLater(timeout, too_slow)

        def done(result: None) -> None:
            if timer.active():
                timer.cancel()
            return result

        d.addCallback(done)
        return d


class BrowserListener(StreamServerEndpointService):
    """
    The browsers' WebSocket listener. Stopping it first closes every open
    browser with 1001 (L{BrowserFactory.say_goodbye}), then stops listening.
    """

    factory: BrowserFactory
    _raiseSynchronously = True  # a port that cannot be had stops the daemon at start

    def __init__(self, endpoint: IStreamServerEndpoint, factory: BrowserFactory, goodbye_timeout: float = 3.0) -> None:
        super().__init__(endpoint, factory)
        self.goodbye_timeout = goodbye_timeout

    def stopService(self) -> Deferred[None]:
        d = self.factory.say_goodbye(self.goodbye_timeout)
        d.addCallback(lambda _: StreamServerEndpointService.stopService(self))
        return d
