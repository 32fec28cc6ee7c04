"""
A WebSocket client link kept up by a L{webtesting.lifecycle.Lifecycle}.

The usual Autobahn pattern: Twisted's C{ReconnectingClientFactory} mixed into
Autobahn's C{WebSocketClientFactory}. Its C{clientConnectionFailed} and
C{clientConnectionLost} see the failure's reason, so the link can tell a
refused connection (retry, growing delay) from an unknown host (retry at the
longest delay) and an address that cannot parse (C{stopTrying()} until it
changes). The lifecycle decides; the factory only waits and redials.

A L{WebSocketDialer} makes one L{LinkFactory} per address: when the address
changes the old factory stops trying and a new one dials. A frozen peer is
found by WebSocket ping/pong (C{autoPingInterval} + C{autoPingTimeout}), or
at once when asked (L{LinkProtocol.check_alive}). Links that share a
L{DialGate} connect a bounded number at a time, first dials and retries alike.

Who owns the link (a L{LinkOwner}) hears of each open protocol, each frame,
and each close, and says when the link counts as up
(C{lifecycle.connected()}): for the web server's agent link that is when the
WebSocket opens, for a user's WxService link when the bot accepted the login.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from autobahn.websocket.util import parse_url
from twisted.internet import error
from twisted.internet.protocol import ReconnectingClientFactory
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure

from webtesting.fastframes import FastFrames
from webtesting.leanws import LeanProtocol, class_defaults, compact, lean_class, shared_batched_timer
from webtesting.lifecycle import Backoff, Fault, Lifecycle, Reason

_log = Logger()


class LinkOwner(Protocol):
    """What a link tells its owner."""

    def link_opened(self, proto: LinkProtocol) -> None:
        """The WebSocket is open; the owner may send, and says when it is up."""

    def link_frame(self, proto: LinkProtocol, payload: bytes, is_binary: bool) -> None:
        """A message arrived on the open link."""

    def link_closed(self, proto: LinkProtocol, reason: Reason) -> None:
        """The open link closed (the lifecycle is told as well)."""


@dataclass(frozen=True)
class Names:
    """The reason codes of one kind of link, and what to call its peer in the details."""

    what: str  # "agent", "bot"
    unreachable: str
    unknown_host: str
    address_invalid: str
    refused: str
    not_responding: str
    auth_failed: str  # the peer closed with 4401 (webtesting.linkauth)
    tls_failed: str  # the TLS handshake failed (a certificate that is not the pinned one)


AGENT = Names("agent", "agent_unreachable", "agent_unknown_host", "agent_address_invalid",
              "agent_refused", "agent_not_responding", "agent_auth_failed", "agent_tls_failed")
BOT = Names("bot", "bot_unreachable", "bot_unreachable", "bot_address_invalid",
            "bot_unreachable", "bot_not_responding", "bot_refused", "bot_unreachable")
AUTH_CLOSE_CODE = 4401


class DialGate:
    """
    At most C{limit} links in their TCP connect and WebSocket handshake at
    once; the others wait their turn, first come first served.

    The agent opens one WebSocket to the bot per logged-in user. Without a
    bound, a storm of logins (or every user of a bot that just came back)
    dials at once: the bot's listen queue overflows, the kernel drops SYNs
    and handshakes time out, and the users are told the bot is unreachable
    while it is only busy. With the gate, they reach it at the pace it
    accepts them.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy = 0
        self._waiting: deque[GateTicket] = deque()

    def set_limit(self, limit: int) -> None:
        """A live reload: a new bound, at once (a larger one lets waiting dials in now)."""
        self.limit = limit
        self._next()

    @property
    def waiting(self) -> int:
        return sum(1 for t in self._waiting if t.state == "waiting")

    def enter(self, go: Callable[[], None]) -> GateTicket:
        """Run C{go} once there is room: now, or when a ticket ahead leaves."""
        ticket = GateTicket(self, go)
        self._waiting.append(ticket)
        self._next()
        return ticket

    def _next(self) -> None:
        while self.busy < self.limit and self._waiting:
            ticket = self._waiting.popleft()
            if ticket.state != "waiting":
                continue  # left while waiting
            ticket.state = "in"
            self.busy += 1
            try:
                ticket.go()
            except Exception:  # noqa: BLE001 - one dial's bug must not stop the others' turn
                _log.failure("dialling")
                ticket.leave()

    def _left(self, ticket: GateTicket, was_in: bool) -> None:
        if was_in:
            self.busy -= 1
            self._next()


class GateTicket:
    """One dial's place at a L{DialGate}: C{leave()} once its handshake ended (either way). Idempotent."""

    __slots__ = ("gate", "go", "state")

    def __init__(self, gate: DialGate, go: Callable[[], None]) -> None:
        self.gate = gate
        self.go = go
        self.state = "waiting"  # then "in", then "left"

    def leave(self) -> None:
        if self.state == "left":
            return
        was_in = self.state == "in"
        self.state = "left"
        self.go = _nothing
        self.gate._left(self, was_in)


def _nothing() -> None:
    pass


class _GatedConnector:
    """A connector whose C{connect()} waits its turn at the gate (the factory's retries go through it)."""

    def __init__(self, connector: Any, factory: LinkFactory) -> None:
        self._connector = connector
        self._factory = factory

    def connect(self) -> None:
        self._factory.through_gate(self._connector.connect)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connector, name)


# Ignored (misc): Autobahn's own two bases disagree on the types of peer and _transport_details.
class LinkProtocol(FastFrames, LeanProtocol, WebSocketClientProtocol):  # type: ignore[misc]
    """The wire side of one link; every decision is the dialer's and its owner's."""

    _log = Logger()
    factory: LinkFactory
    opened = False
    _alive_timer: Any = None

    def check_alive(self, timeout: float) -> None:
        """
        Ping now, and drop the link as frozen (as a missed automatic ping
        would) unless a pong or any frame comes back within C{timeout}
        seconds. A check already running is not started again.
        """
        if not self.opened or self._alive_timer is not None or self.state != self.STATE_OPEN:
            return
        self._alive_timer = self.factory.reactor.callLater(timeout, self._no_answer)
        self.sendPing()

    def _answered(self) -> None:
        timer, self._alive_timer = self._alive_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _no_answer(self) -> None:
        self._alive_timer = None
        self.onAutoPingTimeout()  # the same words as Autobahn's own ping timeout: "not responding"

    def onPong(self, payload: bytes) -> None:
        if self._alive_timer is not None:
            self._answered()

    def onAutoPong(self, ping_sent: int, ping_seq: int, pong_received: int, pong_rtt: int, payload: bytes) -> None:
        # Autobahn's pong_rtt is whole milliseconds; the nanosecond times say more.
        self.factory.pong(self, (pong_received - ping_sent) / 1e9)

    def onOpen(self) -> None:
        try:
            self.opened = True
            self.factory.opened(self)
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            self._log.failure("{what} link: opening", what=self.factory.names.what)
            self.dropConnection(abort=True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._alive_timer is not None:
            self._answered()
        try:
            self.factory.frame(self, payload, isBinary)
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            self._log.failure("{what} link: handling a frame", what=self.factory.names.what)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._answered()
        try:
            self.factory.closed(self, wasClean, code, reason)
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            self._log.failure("{what} link: closing", what=self.factory.names.what)


class LinkFactory(ReconnectingClientFactory, WebSocketClientFactory):  # type: ignore[misc]
    """
    One address's reconnecting factory. Twisted's retry timer and delays;
    the dialer's lifecycle decides whether to retry at all.
    """

    protocol = LinkProtocol  # type: ignore[assignment]
    _log = Logger()
    # Per link, unless set otherwise (one link per bot user at the agent: leanws.compact keeps them off
    # each instance).
    noisy = False  # the lifecycle logs what matters, once
    # Our own jitter, bounded (±backoff.jitter): the factory's own is a normal distribution,
    # which now and then waits far longer.
    jitter = 0
    isSecure = False
    origin = None
    proxy = None
    proto: LinkProtocol | None = None
    _close_reason: Reason | None = None
    _gate: DialGate | None = None
    _ticket: GateTicket | None = None

    def __init__(
        self, dialer: WebSocketDialer, url: str, *, reactor: Any, backoff: Backoff,
        headers: dict[str, str], options: dict[str, Any], protocols: list[str] | None = None,
    ) -> None:
        WebSocketClientFactory.__init__(self, url, reactor=reactor, headers=headers, protocols=protocols)
        self.setProtocolOptions(**options)
        # Small per link (one per bot user at the agent): webtesting.leanws.
        self.protocol = lean_class(LinkProtocol, self)  # type: ignore[assignment]
        self._batched_timer = shared_batched_timer(self._batched_timer)
        self.clock = reactor
        self.initialDelay = self.delay = backoff.initial
        self.maxDelay = backoff.maximum  # type: ignore[assignment]
        self.factor = backoff.factor
        self._backoff = backoff
        self._base = backoff.initial
        self.dialer: WebSocketDialer | None = dialer
        self.names = dialer.names
        self._gate = dialer.gate
        compact(self)

    # -- the gate --------------------------------------------------------------

    def through_gate(self, connect: Callable[[], None]) -> None:
        """Run C{connect} now, or once the dial gate has room (no gate: now)."""
        self._leave_gate()
        if self._gate is None:
            connect()
            return

        def go() -> None:
            if self.dialer is None:  # given up on while it waited
                self._leave_gate()
                return
            connect()

        self._ticket = self._gate.enter(go)

    def _leave_gate(self) -> None:
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            ticket.leave()

    def retry(self, connector: Any = None) -> None:
        if self._gate is not None:
            connector = _GatedConnector(connector or self.connector, self)
        super().retry(connector)

    # -- the dialer's hooks --------------------------------------------------

    def retry_after_backoff(self, longest: bool, down_for: float = 0.0) -> float:
        ceiling = self._backoff.ceiling(down_for)
        # The longest delay for a peer that is surely away, and the slow one
        # once it has been away long (Backoff.slow_after).
        base = ceiling if longest or ceiling > self.maxDelay else self._base
        self.delay = self._backoff.around(base)
        self._base = min(base * self.factor, ceiling)
        self.continueTrying = True
        self.retry()
        call: Any = self._callID
        clock: Any = self.clock
        return float(call.getTime() - clock.seconds()) if call is not None else 0.0

    def resetProtocolOptions(self) -> None:
        """Autobahn's defaults stay on the class (leanws.class_defaults): only options set are the link's."""

    def resetDelay(self) -> None:
        super().resetDelay()
        self._base = self.initialDelay

    def detach(self) -> None:
        """Given up on: no more retries, no more news, and the connection dropped."""
        self.dialer = None
        self._leave_gate()
        self.stopTrying()
        if self.proto is not None:
            proto, self.proto = self.proto, None
            proto.dropConnection(abort=True)

    # -- the protocol's --------------------------------------------------------

    def buildProtocol(self, addr: Any) -> Any:
        proto: Any = WebSocketClientFactory.buildProtocol(self, addr)
        self.proto = proto
        self._close_reason = None
        return proto

    def opened(self, proto: LinkProtocol) -> None:
        self._leave_gate()  # the handshake is over
        if self.dialer is None or proto is not self.proto:
            proto.dropConnection(abort=True)
            return
        self.dialer.owner.link_opened(proto)

    def frame(self, proto: LinkProtocol, payload: bytes, is_binary: bool) -> None:
        if self.dialer is not None and proto is self.proto:
            self.dialer.owner.link_frame(proto, payload, is_binary)

    def pong(self, proto: LinkProtocol, rtt: float) -> None:
        """An automatic ping came back after C{rtt} seconds: told to an owner that has C{link_pong}."""
        if self.dialer is not None and proto is self.proto:
            hook = getattr(self.dialer.owner, "link_pong", None)
            if hook is not None:
                hook(proto, rtt)

    def closed(self, proto: LinkProtocol, was_clean: bool, code: int | None, reason: str | None) -> None:
        n = self.names
        text = reason or ""
        if code == AUTH_CLOSE_CODE:
            self._close_reason = Reason(n.auth_failed, f"the {n.what} refused the link's authentication "
                                        "(do both sides have the same secret?)", Fault.REFUSED)
        elif "SSL error" in text or "certificate verify failed" in text:
            # Twisted's TLS layer logs the OpenSSL error and closes; Autobahn passes its words on.
            self._close_reason = Reason(n.tls_failed, f"the {n.what}'s TLS certificate was refused: {text}",
                                        Fault.REFUSED)
        elif "ping timeout" in text or "did not respond with pong" in text:
            self._close_reason = Reason(n.not_responding, f"the {n.what} stopped answering (no pong in time)")
        elif "opening handshake timeout" in text:
            # It took the TCP connection (the kernel does, for a stopped process) but never answered.
            self._close_reason = Reason(n.not_responding,
                                        f"the {n.what} did not answer the WebSocket handshake in time")
        elif not proto.opened:
            self._close_reason = Reason(
                n.refused, f"the {n.what} refused the WebSocket: {text}" if text
                else f"the {n.what} closed the link during the handshake",
            )
        else:
            self._close_reason = Reason(n.unreachable, f"{n.what} link lost" + (f": {text}" if text else ""))

    # -- ReconnectingClientFactory's -------------------------------------------

    def startedConnecting(self, connector: Any) -> None:
        self.connector = connector
        if self.dialer is not None:
            self.dialer.lifecycle.attempting()

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.connector = connector
        self._leave_gate()
        if self.dialer is None:
            return
        reason_ = classify_connect_failure(reason, self.names, self.host)
        if reason_.fault is Fault.UNUSABLE:
            self.stopTrying()
        self.dialer.lifecycle.fail(reason_)

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        self.connector = connector
        self._leave_gate()
        proto, self.proto = self.proto, None
        dialer = self.dialer  # the owner may stop the link (detaching us) while it hears of the close
        if dialer is None:
            return
        n = self.names
        why = self._close_reason or Reason(n.unreachable, f"{n.what} link lost: {reason.getErrorMessage()}")
        if _tls_failure(reason):
            why = Reason(n.tls_failed, f"the {n.what}'s TLS certificate was refused: {reason.getErrorMessage()}",
                         Fault.REFUSED)
        if proto is not None and proto.opened:
            try:
                dialer.owner.link_closed(proto, why)
            except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
                self._log.failure("{what} link: telling its owner it closed", what=self.names.what)
            dialer.lifecycle.lost(why)
        else:
            dialer.lifecycle.fail(why)


def _autobahn_defaults() -> Any:
    """A client factory as Autobahn makes it, on a reactor of its own (importing us installs none)."""
    from twisted.internet.testing import MemoryReactor

    return WebSocketClientFactory("ws://127.0.0.1:1/", reactor=MemoryReactor())


class_defaults(LinkFactory, _autobahn_defaults())


def _tls_failure(failure: Failure) -> bool:
    try:
        from OpenSSL.SSL import Error as TLSError
    except ImportError:  # pragma: no cover - Twisted[tls] brings pyOpenSSL
        return False
    return bool(failure.check(TLSError))


def pinned_tls(ca_file: str) -> Callable[[str], Any]:
    """
    Client TLS options that trust only the certificates in C{ca_file} (PEM):
    with the peer's own self-signed certificate there, that is pinning. The
    host name is checked against the certificate as well.
    """
    from twisted.internet.ssl import Certificate, trustRootFromCertificates

    with open(ca_file, "rb") as f:
        pem = f.read()
    marker = b"-----END CERTIFICATE-----"
    blocks = [block + marker for block in pem.split(marker) if b"-----BEGIN CERTIFICATE-----" in block]
    if not blocks:
        raise ValueError(f"{ca_file} holds no PEM certificate")
    root = trustRootFromCertificates([Certificate.loadPEM(block) for block in blocks])
    return lambda host: optionsForClientTLS(host, trustRoot=root)


def classify_connect_failure(failure: Failure, names: Names, host: str) -> Reason:
    """Why a TCP (or TLS) connection attempt failed, and whether waiting repairs it."""
    n = names
    if failure.check(error.DNSLookupError):
        return Reason(n.unknown_host, f"{n.what} host unknown: {host}", Fault.UNKNOWN_HOST)
    if failure.check(error.ConnectionRefusedError):
        return Reason(n.unreachable, f"{n.what} unreachable: connection refused")
    if failure.check(error.TimeoutError, error.UserError):
        return Reason(n.unreachable, f"{n.what} unreachable: connecting timed out")
    return Reason(n.unreachable, f"{n.what} unreachable: {failure.getErrorMessage()}")


class WebSocketDialer:
    """
    The L{webtesting.lifecycle.Dialer} of one WebSocket link.

    @param url: gives the current address (it may change between dials).
    @param headers: gives the handshake headers for each dial.
    @param options: Autobahn protocol options (ping/pong, sizes, timeouts).
    @param protocols: WebSocket subprotocols to offer (the peer may take one).
    @param gate: bounds how many links (sharing it) connect at once.
    """

    _log = Logger()

    def __init__(
        self,
        lifecycle: Lifecycle,
        owner: LinkOwner,
        names: Names,
        *,
        reactor: Any,
        backoff: Backoff,
        url: Callable[[], str],
        headers: Callable[[], dict[str, str]] = dict,
        connect_timeout: float = 5.0,
        options: dict[str, Any] | None = None,
        tls: Callable[[str], Any] = optionsForClientTLS,
        protocols: list[str] | None = None,
        gate: DialGate | None = None,
    ) -> None:
        self.lifecycle = lifecycle
        self.gate = gate
        self.owner = owner
        self.names = names
        self._reactor = reactor
        self._backoff = backoff
        self._url = url
        self._headers = headers
        self._connect_timeout = connect_timeout
        self._options = dict(options or {})
        self._options.setdefault("openHandshakeTimeout", connect_timeout)
        self._tls = tls
        self._protocols = protocols  # WebSocket subprotocols offered, best first
        self._down_since = 0.0  # when the first of the failures in a row came
        self.factory: LinkFactory | None = None
        self._timer: Any = None
        lifecycle.dialer = self

    def dial(self) -> None:
        if self.factory is not None:
            self.factory.detach()
            self.factory = None
        url = self._url()
        n = self.names
        try:
            secure, host, _port, _resource, _path, _params = parse_url(url)
            factory = LinkFactory(self, url, reactor=self._reactor, backoff=self._backoff,
                                  headers=self._headers(), options=self._options, protocols=self._protocols)
            context = self._tls(host) if secure else None
        except Exception as e:  # noqa: BLE001 - autobahn and IDNA raise plain exceptions
            self.lifecycle.fail(Reason(n.address_invalid, f"{n.what} address {url!r} is not usable: {e}",
                                       Fault.UNUSABLE))
            return
        self.factory = factory

        def connect() -> None:
            factory.connector = connectWS(factory, context, timeout=self._connect_timeout)

        factory.through_gate(connect)

    def redial(self, longest: bool) -> float:
        now = self._reactor.seconds()
        if self.lifecycle.failures == 0:
            self._down_since = now  # the first of the failures in a row
        down_for = now - self._down_since
        if self.factory is None or self.factory.connector is None:
            # Nothing to redial (the address never parsed): dial afresh later.
            delay = self._backoff.longest(down_for=down_for) if longest else self._backoff.initial
            self._timer = self._reactor.callLater(delay, self._fresh)
            return delay
        return self.factory.retry_after_backoff(longest, down_for)

    def _fresh(self) -> None:
        self._timer = None
        if self.lifecycle.state == "backing off":
            self.lifecycle.attempting()
            self.dial()

    def reset(self) -> None:
        if self.factory is not None:
            self.factory.resetDelay()

    def hang_up(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.factory is not None:
            factory, self.factory = self.factory, None
            factory.detach()

    @property
    def proto(self) -> LinkProtocol | None:
        return self.factory.proto if self.factory is not None else None
