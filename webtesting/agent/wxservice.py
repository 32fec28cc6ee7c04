"""
The agent's only code that speaks the WxService protocol
(docs/wxservice-protocol.md): one WebSocket per logged-in user.

A deployment whose bot speaks something else replaces this module and keeps
its interface:

- L{WxServiceLink}: one user's login, kept up. It is the owner
  (L{webtesting.wslink.LinkOwner}) of a reconnecting WebSocket link whose
  L{webtesting.lifecycle.Lifecycle} counts it as up once the bot accepted
  the (re)login; ping/pong finds a frozen bot. Its L{LinkListener} hears of
  each accepted login, each time the link goes down (with a reason code),
  a login the bot refused, and every bot message. The user session never
  sees a frame.
- L{probe}C{(reactor, url, timeout)}: the health check, a WebSocket
  handshake closed at once.
- L{connect}C{(reactor, url, listener)}: one plain connection (no retries),
  fires with a L{WxServiceConnection} once the WebSocket is open.
- L{WxServiceConnection}: the frames on one open WebSocket.
  L{WxServiceConnection.login} fires with the bot's C{uid} or fails with
  L{WxServiceError} (the bot's C{result} and C{msg}), L{WxServiceTimeout} or
  L{WxServiceUnavailable}; L{WxServiceConnection.chat} sends a message;
  L{WxServiceConnection.logout}; L{WxServiceConnection.close}. Every bot
  message goes to C{listener.bot_message(content, action)}, every error
  answer not tied to a pending login/logout to C{listener.bot_error}, and a
  connection lost without C{close()} to C{listener.connection_lost}.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.types import ConnectionResponse
from autobahn.websocket.util import parse_url
from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from webtesting.fastframes import FastFrames
from webtesting.leanws import LeanFactory, LeanProtocol
from webtesting.lifecycle import Backoff, Health, Lifecycle, Reason
from webtesting.metrics import FRAMES
from webtesting.protocol import InvalidInput, json_data, parse_json_object
from webtesting.wslink import BOT, DialGate, LinkProtocol, WebSocketDialer

OK = 1
INTERNAL = 500
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024

_BOT_IN, _BOT_OUT = ("agent", "bot", "in"), ("agent", "bot", "out")


class WxServiceError(Exception):
    """The bot answered with an error: C{result} (not 1) and C{msg}."""

    def __init__(self, method: str, result: int, msg: str) -> None:
        self.method = method
        self.result = result
        self.msg = msg
        super().__init__(f"{method}: {msg} (result {result})")


class WxServiceUnavailable(Exception):
    """
    The bot cannot be reached, or the connection was lost.

    @ivar code: the reason code (C{bot_unreachable}, C{bot_not_responding}).
    """

    def __init__(self, message: str, code: str = "bot_unreachable") -> None:
        super().__init__(message)
        self.code = code


class WxServiceTimeout(Exception):
    """The bot did not answer in time."""


class NotOpen(Exception):
    """The connection is closed or closing; nothing can be sent."""


class WxServiceListener(Protocol):
    """What the owner of a connection is told."""

    def bot_message(self, content: str, action: str) -> None:
        """The bot said something (an answer or an unprompted message)."""

    def bot_error(self, error: WxServiceError) -> None:
        """The bot answered with an error not tied to a pending login/logout."""

    def connection_lost(self, reason: str) -> None:
        """The connection ended without L{WxServiceConnection.close}."""


# Ignored (misc): Autobahn's own two bases disagree on the types of peer and _transport_details.
class _ClientProtocol(FastFrames, LeanProtocol, WebSocketClientProtocol):  # type: ignore[misc]
    """The WebSocket side of one L{WxServiceConnection}."""

    _log = Logger()
    owner: WxServiceConnection | None = None
    attempt: _Attempt | None = None  # until it opens: who waits for it

    # Each Autobahn callback is wrapped: Autobahn swallows what they raise.

    def onConnect(self, response: ConnectionResponse) -> None:
        try:
            self._log.debug("wxservice {peer} upgraded", peer=response.peer)
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            self._log.failure("wxservice onConnect")

    def onOpen(self) -> None:
        attempt, self.attempt = self.attempt, None
        try:
            if attempt is None:
                self.dropConnection(abort=True)
                return
            attempt.opened(self)
        except Exception as e:  # noqa: BLE001 - logged with its traceback; the caller hears of it
            self._log.failure("wxservice onOpen")
            self.dropConnection(abort=True)
            if attempt is not None:
                attempt.failed(f"opening failed: {e}")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            if self.owner is not None:
                self.owner._received(payload, isBinary)
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            # A listener's bug must not go unseen, nor stop the next message.
            self._log.failure("wxservice message from the bot")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        try:
            why = reason or (f"closed with code {code}" if code else "connection lost")
            if self.owner is not None:
                self.owner._lost(why)
            elif self.attempt is not None:
                attempt, self.attempt = self.attempt, None
                attempt.failed(why)
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            self._log.failure("wxservice onClose")


class _ClientFactory(LeanFactory, WebSocketClientFactory):
    """
    Every connection to one WxService address with the same options shares
    one factory (L{_shared_factory}); what each connect waits for is its
    L{_Attempt}'s. A factory per connection cost each bot user 2.5 KB.
    """

    protocol = _ClientProtocol
    noisy = False  # no "Starting factory" line per login


# (reactor, url, options) -> the factory, the most recently used last; kept (not weakly: a bot that is
# down would make a new factory, and a new protocol class, for every retry) up to _MAX_FACTORIES.
_FACTORIES: OrderedDict[tuple[Any, ...], _ClientFactory] = OrderedDict()
_MAX_FACTORIES = 256


def _shared_factory(reactor: Any, url: str, max_message_bytes: int, open_handshake_timeout: float,
                    ping: tuple[float, float] | None) -> _ClientFactory:
    key = (id(reactor), url, max_message_bytes, open_handshake_timeout, ping)
    factory = _FACTORIES.get(key)
    if factory is not None and factory.reactor is reactor:
        _FACTORIES.move_to_end(key)
    else:
        factory = _ClientFactory(url, reactor=reactor)
        factory.setProtocolOptions(
            maxMessagePayloadSize=max_message_bytes,
            maxFramePayloadSize=max_message_bytes,
            openHandshakeTimeout=open_handshake_timeout,
            closeHandshakeTimeout=1.0,
            autoPingInterval=ping[0] if ping else None,
            autoPingTimeout=ping[1] if ping else None,
        )
        _FACTORIES[key] = factory
        while len(_FACTORIES) > _MAX_FACTORIES:
            _FACTORIES.popitem(last=False)  # its connections keep it as long as they live
    return factory


class _Attempt(ClientFactory):
    """One connect through a shared L{_ClientFactory}: the endpoint's factory, and what it fires."""

    noisy = False

    def __init__(self, shared: _ClientFactory, listener: WxServiceListener) -> None:
        self.shared = shared
        self._listener = listener
        self.connecting: Deferred[Any] | None = None
        self._protocol: _ClientProtocol | None = None
        # Cancelling the result gives up: the attempt or the upgrade is dropped.
        self.result: Deferred[WxServiceConnection] = Deferred(self._cancel)

    def buildProtocol(self, addr: Any) -> Any:
        protocol: Any = self.shared.buildProtocol(addr)
        protocol.attempt = self
        self._protocol = protocol
        return protocol

    def _cancel(self, _: Deferred[WxServiceConnection]) -> None:
        if self.connecting is not None and not self.connecting.called:
            self.connecting.cancel()
        elif self._protocol is not None:
            self._protocol.dropConnection(abort=True)

    def failed_to_connect(self, failure: Failure) -> None:
        if not self.result.called:
            self.result.errback(failure)

    def opened(self, protocol: _ClientProtocol) -> None:
        self._protocol = None
        if self.result.called:  # the caller gave up already
            protocol.dropConnection(abort=True)
            return
        conn = WxServiceConnection(protocol, self._listener, self.shared.reactor)
        protocol.owner = conn
        self.result.callback(conn)

    def failed(self, why: str) -> None:
        self._protocol = None
        if not self.result.called:
            code = "bot_not_responding" if "timeout" in why else "bot_unreachable"
            self.result.errback(WxServiceUnavailable(f"WebSocket handshake failed: {why}", code))


def connect(
    reactor: Any,
    url: str,
    listener: WxServiceListener,
    *,
    connect_timeout: float = 5.0,
    open_handshake_timeout: float = 5.0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ping: tuple[float, float] | None = None,
) -> Deferred[WxServiceConnection]:
    """
    Open a WebSocket to the WxService at C{url} (C{ws://host:port/path} or
    C{wss://...}).

    @return: fires with the open connection, or fails with
        L{WxServiceUnavailable} (refused, unreachable, timed out, upgrade
        refused) or C{ValueError} (a malformed C{url}).
    """
    try:
        secure, host, port, _resource, _path, _params = parse_url(url)
    except Exception as e:  # noqa: BLE001 - autobahn raises plain Exception for bad URLs
        return defer.fail(ValueError(f"not a WebSocket address: {url!r} ({e})"))
    try:
        if secure:
            from twisted.internet.ssl import optionsForClientTLS

            tls = optionsForClientTLS(host)
    except Exception as e:  # noqa: BLE001 - an IDNA-invalid host name, for one
        return defer.fail(ValueError(f"not a usable host name: {host!r} ({e})"))
    factory = _Attempt(_shared_factory(reactor, url, max_message_bytes, open_handshake_timeout, ping), listener)
    endpoint: Any
    if isIPAddress(host):
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=connect_timeout)
    elif isIPv6Address(host):
        endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=connect_timeout)
    else:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=connect_timeout)
    if secure:
        endpoint = wrapClientTLS(tls, endpoint)

    def not_connected(failure: Failure) -> Failure:
        if failure.check(WxServiceUnavailable, defer.CancelledError):
            return failure
        from twisted.internet import error

        code = "bot_not_responding" if failure.check(error.TimeoutError) else "bot_unreachable"
        return Failure(WxServiceUnavailable(f"cannot connect to {host}:{port}: {failure.getErrorMessage()}", code))

    connecting = endpoint.connect(factory)
    connecting.addErrback(not_connected)
    connecting.addErrback(factory.failed_to_connect)
    factory.connecting = connecting
    return factory.result


class WxServiceConnection:
    """
    One user's open WebSocket to the WxService.

    At most one login and one logout wait for their answer at a time.
    """

    _log = Logger()

    def __init__(self, protocol: WebSocketClientProtocol, listener: WxServiceListener, reactor: Any) -> None:
        self._protocol = protocol
        self._listener = listener
        self._reactor = reactor
        self.uid: str | None = None
        self.open = True
        self._closing = False
        self._pending: dict[str, tuple[Deferred[Any], Any]] = {}  # answer -> (waiter, IDelayedCall)
        self._closed: Deferred[None] = Deferred()

    # -- requests ---------------------------------------------------------

    def login(self, appid: str, uname: str, timeout: float = 5.0) -> Deferred[str]:
        """Log C{uname} of C{appid} in; fires with the bot's C{uid}."""
        d: Deferred[str] = self._request("loginResp", {"method": "loginReq", "appid": appid, "uname": uname}, timeout)

        def logged_in(uid: str) -> str:
            self.uid = uid
            return uid

        return d.addCallback(logged_in)

    def chat(self, content: str) -> None:
        """Say C{content}; the answers arrive at C{listener.bot_message}."""
        self._send({"method": "chatReq", "content": content})

    def logout(self, timeout: float = 5.0) -> Deferred[None]:
        """Log out; the connection stays open."""
        d: Deferred[Any] = self._request("logoutResp", {"method": "logoutReq"}, timeout)

        def logged_out(_: Any) -> None:
            self.uid = None

        return d.addCallback(logged_out)

    def abort(self) -> None:
        """Drop the connection now, with no closing handshake (and no timer left behind)."""
        if self.open and not self._closing:
            self._closing = True
            self._protocol.dropConnection(abort=True)

    def close(self) -> Deferred[None]:
        """Close the WebSocket; fires once the connection is gone."""
        if self.open and not self._closing:
            self._closing = True
            self._protocol.sendClose(code=1000, reason="bye")
        return self._when_closed()

    def _when_closed(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self._closed.called:
            d.callback(None)
        else:
            self._closed.addBoth(lambda _: d.callback(None))
        return d

    def _request(self, answer: str, message: dict[str, Any], timeout: float) -> Deferred[Any]:
        if answer in self._pending:
            return defer.fail(RuntimeError(f"a {message['method']} is already waiting for its answer"))
        try:
            self._send(message)
        except NotOpen as e:
            return defer.fail(e)
        d: Deferred[Any] = Deferred()
        timer = self._reactor.callLater(timeout, self._timed_out, answer, timeout)
        self._pending[answer] = (d, timer)
        return d

    def _timed_out(self, answer: str, timeout: float) -> None:
        d, _ = self._pending.pop(answer)
        d.errback(WxServiceTimeout(f"no {answer} within {timeout:g} s"))

    def _settle(self, answer: str) -> Deferred[Any] | None:
        entry = self._pending.pop(answer, None)
        if entry is None:
            return None
        d, timer = entry
        if timer.active():
            timer.cancel()
        return d

    def _send(self, message: dict[str, Any]) -> None:
        # The bot may be closing the connection (a graceful restart): then
        # Autobahn would raise Disconnected; we say NotOpen, which callers handle.
        if not self.open or self._closing or self._protocol.state != _ClientProtocol.STATE_OPEN:
            raise NotOpen("the WxService connection is closed")
        FRAMES[_BOT_OUT] += 1
        self._protocol.sendMessage(json_data(message), isBinary=False)

    # -- from the protocol ------------------------------------------------

    def _received(self, payload: bytes, is_binary: bool) -> None:
        FRAMES[_BOT_IN] += 1
        try:
            if is_binary:
                raise InvalidInput("", "a binary frame")
            message = parse_json_object(payload)
        except InvalidInput as e:
            self._log.warn("wxservice sent something unreadable ({why}); ignored", why=str(e))
            if e.request is not None:
                # Text we could not pass on (a lone surrogate): the request
                # it answers fails now rather than at its timeout.
                self._unreadable(e.request["method"], str(e))
            return
        method: str = message["method"]
        result = message.get("result", OK)
        msg = str(message.get("msg", ""))
        ok = result == OK
        if method == "chatResp" and ok:
            self._listener.bot_message(str(message.get("content", "")), str(message.get("action", "")))
            return
        if method in ("loginResp", "logoutResp"):
            d = self._settle(method)
            if d is None:
                self._log.info("wxservice {method} nobody waits for; ignored", method=method)
            elif not ok:
                d.errback(WxServiceError(method, _int(result), msg))
            elif method == "loginResp":
                uid = message.get("uid")
                if isinstance(uid, (str, int)) and not isinstance(uid, bool) and str(uid):
                    d.callback(str(uid))
                else:
                    d.errback(WxServiceError(method, 500, "loginResp carries no uid"))
            else:
                d.callback(None)
            return
        if not ok:
            error = WxServiceError(method, _int(result), msg)
            # An error answer the bot could not tie to a request is about
            # the login when that is all that was sent.
            if method == "error" and "loginResp" in self._pending:
                d = self._settle("loginResp")
                assert d is not None
                d.errback(error)
                return
            self._listener.bot_error(error)
            return
        self._log.info("wxservice sent an unknown message {method}; ignored", method=method)

    def _unreadable(self, method: str, why: str) -> None:
        error = WxServiceError(method, INTERNAL, f"the bot sent a {method} that is not Unicode text ({why})")
        d = self._settle(method)
        if d is not None:
            d.errback(error)
        elif method == "chatResp":
            self._listener.bot_error(error)

    def _lost(self, why: str) -> None:
        self.open = False
        for answer in list(self._pending):
            d = self._settle(answer)
            assert d is not None
            d.errback(WxServiceUnavailable(f"connection lost before {answer}: {why}"))
        was_closing = self._closing
        self._closed.callback(None)
        if not was_closing:
            self._listener.connection_lost(why)


def _int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return 500


# -- the health check ----------------------------------------------------------


class _Ignore:
    def bot_message(self, content: str, action: str) -> None:
        pass

    def bot_error(self, error: WxServiceError) -> None:
        pass

    def connection_lost(self, reason: str) -> None:
        pass


class _Watch(_Ignore):
    def __init__(self, gone: Any) -> None:
        self._gone = gone

    def connection_lost(self, reason: str) -> None:
        self._gone(reason)


def watch(
    reactor: Any, url: str, gone: Any, timeout: float = 2.0, ping: tuple[float, float] | None = None
) -> Deferred[WxServiceConnection]:
    """
    Like L{probe}, but the connection is kept open and C{gone(reason)} is
    called if it ends without C{close()}: a bot that dies between two health
    checks is noticed at once, even with nobody logged in. With C{ping}
    (interval, timeout) it is also pinged, so a bot that freezes is noticed
    within their sum.
    """
    return connect(reactor, url, _Watch(gone), connect_timeout=timeout, open_handshake_timeout=timeout, ping=ping)


def probe(reactor: Any, url: str, timeout: float = 2.0) -> Deferred[None]:
    """
    Whether the WxService at C{url} answers: a WebSocket handshake, closed at
    once (the protocol has no cheaper request that needs no login).

    @return: fires with None, or fails with L{WxServiceUnavailable} (its
        C{code} says why) or C{ValueError} (an address that cannot be used).
    """
    d = connect(reactor, url, _Ignore(), connect_timeout=timeout, open_handshake_timeout=timeout)

    def opened(conn: WxServiceConnection) -> None:
        conn.close()

    return d.addCallback(opened)


# -- one user's login, kept up ----------------------------------------------------


class LinkListener(Protocol):
    """What the owner of a L{WxServiceLink} (a user session) hears."""

    def logged_in(self, uid: str) -> None:
        """The bot accepted the login (the first one, or again after the link was down)."""

    def link_down(self, health: Health) -> None:
        """The link went down, or its reason changed; it is being retried (unless unusable)."""

    def login_refused(self, error: WxServiceError) -> None:
        """The bot refused the (re)login: the link has stopped."""

    def bot_message(self, content: str, action: str) -> None:
        """The bot said something."""

    def bot_error(self, error: WxServiceError) -> None:
        """The bot answered with an error not tied to the login."""


@dataclass(frozen=True)
class LinkSettings:
    """How a user's WxService link behaves (the agent's configuration, C{users.*})."""

    backoff: Backoff = Backoff(initial=0.5, maximum=4.0)
    login_timeout: float = 5.0
    connect_timeout: float = 5.0
    # This connection is pinged every ping_interval seconds and dropped when
    # no pong comes within ping_timeout. The agent pings the bot far more
    # often on the service's own connection (see ServiceState) and then asks
    # every user's connection at once (check_alive).
    ping_interval: float = 2.0
    ping_timeout: float = 2.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Shared by the links of one service: how many connect at once.
    gate: DialGate | None = None


class WxServiceLink:
    """
    One user's WebSocket to WxService, logged in and kept logged in.

    The link is up (C{lifecycle.connected()}) once the bot accepted the
    login on a new WebSocket; a lost or frozen WebSocket, or a login the bot
    does not answer in time, is retried by the lifecycle's backoff and the
    user logged in again with the same C{appid} and C{uname}. A login the bot
    refuses stops the link: waiting will not change the bot's mind.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        url: Callable[[], str],
        listener: LinkListener,
        appid: str,
        uname: str,
        settings: LinkSettings = LinkSettings(),
    ) -> None:
        self._reactor = reactor
        self._listener = listener
        self.appid = appid
        self.uname = uname
        self._settings = settings
        self.uid: str | None = None
        self.conn: WxServiceConnection | None = None  # logged in on it
        self._opening: WxServiceConnection | None = None  # logging in on it
        self._ending = False
        self.lifecycle = Lifecycle(f"WxService link of {appid}/{uname}", self._health)
        self.dialer = WebSocketDialer(
            self.lifecycle, self, BOT, reactor=reactor, backoff=settings.backoff, url=url,
            connect_timeout=settings.connect_timeout, gate=settings.gate,
            options={
                "maxMessagePayloadSize": settings.max_message_bytes,
                "maxFramePayloadSize": settings.max_message_bytes,
                "closeHandshakeTimeout": 1.0,
                "autoPingInterval": settings.ping_interval,
                "autoPingTimeout": settings.ping_timeout,
            },
        )

    # -- what the user session does ---------------------------------------------

    def start(self) -> None:
        self.lifecycle.start()

    def retry_now(self) -> None:
        """The bot answers again (the service's health check says so): don't wait out the backoff."""
        if self.lifecycle.state == "backing off":
            self.lifecycle.changed()

    def check_alive(self) -> None:
        """
        The bot may be frozen (the service's own connection to it missed a
        pong): ask this connection for a pong now. No answer within
        C{ping_timeout} drops it as C{bot_not_responding}, as its own
        ping would, only sooner.
        """
        proto = self.dialer.proto
        if proto is not None and self.conn is not None:
            proto.check_alive(self._settings.ping_timeout)

    def moved(self) -> None:
        """The WxService address changed: drop the connection and log in at the new one now."""
        self._forget()
        self.lifecycle.changed()

    def chat(self, content: str) -> None:
        """Say C{content}; raises L{NotOpen} while not logged in."""
        if self.conn is None:
            raise NotOpen("not logged in to the bot right now")
        self.conn.chat(content)

    def logout(self, timeout: float = 2.0) -> None:
        """Log out (if logged in), close the WebSocket, and stop."""
        conn = self.conn
        self._ending = True
        if conn is None or not conn.open:
            self.stop()
            return
        d = conn.logout(timeout=timeout)
        d.addErrback(lambda _: None)  # closing anyway
        d.addBoth(lambda _: conn.close())
        # The close handshake ends within closeHandshakeTimeout; link_closed stops the lifecycle.

    def stop(self) -> None:
        """Stop for good, at once."""
        self._ending = True
        self._forget()
        self.lifecycle.stop()

    @property
    def up(self) -> bool:
        return self.lifecycle.is_up and self.conn is not None

    def _forget(self) -> None:
        self.conn = None
        self._opening = None

    # -- LinkOwner ----------------------------------------------------------------

    def link_opened(self, proto: LinkProtocol) -> None:
        if self._ending:
            proto.dropConnection(abort=True)
            return
        conn = WxServiceConnection(proto, self, self._reactor)
        self._opening = conn
        d = conn.login(self.appid, self.uname, timeout=self._settings.login_timeout)
        d.addCallbacks(self._logged_in, self._login_failed, callbackArgs=(conn,), errbackArgs=(conn, proto))
        d.addErrback(lambda f: self._log.failure("{name}: after a login", f, name=self.lifecycle.name))

    def link_frame(self, proto: LinkProtocol, payload: bytes, is_binary: bool) -> None:
        conn = self._conn_of(proto)
        if conn is not None:
            conn._received(payload, is_binary)

    def link_closed(self, proto: LinkProtocol, reason: Reason) -> None:
        conn = self._conn_of(proto)
        if conn is self.conn:
            self.conn = None
        if conn is self._opening:
            self._opening = None
        if conn is not None:
            conn._lost(reason.detail)  # fails what waits for an answer
        if self._ending:
            self.lifecycle.stop()

    def _conn_of(self, proto: LinkProtocol) -> WxServiceConnection | None:
        for conn in (self.conn, self._opening):
            if conn is not None and conn._protocol is proto:
                return conn
        return None

    # -- the login on each new WebSocket ----------------------------------------------

    def _logged_in(self, uid: str, conn: WxServiceConnection) -> None:
        if conn is not self._opening:
            return
        self._opening = None
        self.conn = conn
        self.uid = uid
        self.lifecycle.connected()
        self._listener.logged_in(uid)

    def _login_failed(self, failure: Failure, conn: WxServiceConnection, proto: LinkProtocol) -> None:
        if conn is not self._opening:
            return
        self._opening = None
        if failure.check(WxServiceError):
            error: Any = failure.value
            self._ending = True
            self.lifecycle.stop()
            self._listener.login_refused(error)
        elif failure.check(WxServiceTimeout):
            self.lifecycle.fail(Reason(
                "bot_not_responding",
                f"the bot did not answer the login within {self._settings.login_timeout:g} s",
            ))
            proto.dropConnection(abort=True)
        # WxServiceUnavailable: the WebSocket closed first; the lifecycle heard.

    def _health(self, health: Health) -> None:
        if not health.up and not self._ending:
            self._listener.link_down(health)

    # -- WxServiceListener, for the connection ------------------------------------

    def bot_message(self, content: str, action: str) -> None:
        self._listener.bot_message(content, action)

    def bot_error(self, error: WxServiceError) -> None:
        self._listener.bot_error(error)

    def connection_lost(self, reason: str) -> None:
        pass  # the lifecycle has heard it from the link
