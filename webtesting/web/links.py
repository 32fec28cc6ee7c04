"""
The web server's links to agents: one WebSocket per registered service.

An L{AgentLink} keeps its link up by itself: it connects, sends
``agentInfoReq`` once the WebSocket is open, and after any failure waits a
growing delay before trying again — unless the failure cannot be repaired by
waiting (an address that does not parse, an unknown host), in which case it
waits for the registry record to change. Its health (link up, and what the
agent itself reports with ``agentStatusReq``) is written to the registry and
pushed to the browsers logged in there (``servStatus``).

L{AgentLinks} re-reads the registry every C{sync_interval} seconds and makes
the set of links match it: new services connect, deleted ones are dropped, a
changed ``agentAddr`` reconnects, other changed settings are sent again.

Reconnecting is done here rather than with ClientService: we must not retry
unrepairable failures, and a refused WebSocket handshake (a TCP success) must
still grow the delay. Both need the failure's kind, which ClientService does
not hand to its retry policy.
"""

from __future__ import annotations

import enum
import json
import typing
from typing import Any, Callable

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.util import parse_url
from twisted.application import service
from twisted.application.internet import backoffPolicy
from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.error import Error as WebError

from webtesting.dbpool import DatabaseUnavailable
from webtesting.protocol import SERVICE_FIELDS, scrub_reason
from webtesting.web.sessions import Relay

# The settings an agent is given (agentInfoReq); agentAddr is the link itself.
AGENT_FIELDS = tuple(f for f in SERVICE_FIELDS if f != "agentAddr")

Policy = Callable[[int], float]


class LinkState(enum.Enum):
    CONNECTING = "connecting"  # TCP + WebSocket handshake under way
    OPEN = "open"  # WebSocket open, agentInfoReq sent, no good answer yet
    UP = "up"  # agentInfoResp said ok: requests flow
    WAITING = "waiting"  # failed; a timer will try again
    BROKEN = "broken"  # failed for good; waiting for the record to change
    STOPPED = "stopped"


class Unrepairable(Exception):
    """A failure that waiting cannot repair."""


class AgentLinkProtocol(WebSocketClientProtocol):
    """The wire side of one link; every decision is the L{AgentLink}'s."""

    _log = Logger()
    link: "AgentLink"

    def onOpen(self) -> None:
        try:
            self.link._opened(self)
        except Exception:
            self._log.failure("agent link {service_id}: opening", service_id=self.link.service_id)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            self.link._frame(self, payload)
        except Exception:
            self._log.failure("agent link {service_id}: handling a frame", service_id=self.link.service_id)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        try:
            self.link._closed(self, code, reason)
        except Exception:
            self._log.failure("agent link {service_id}: closing", service_id=self.link.service_id)


class AgentLink:
    """
    One service's link to its agent, and its health.

    @param on_health: called with this link whenever C{health} changes.
    """

    _log = Logger()

    def __init__(
        self,
        record: dict[str, Any],
        *,
        reactor: Any,
        relay: Relay,
        secret: str,
        on_health: Callable[["AgentLink"], None],
        policy: Policy,
        connect_timeout: float = 5.0,
        max_message: int = 1024 * 1024,
    ) -> None:
        self.service_id: int = record["serviceId"]
        self.record = record
        self._reactor = reactor
        self._relay = relay
        self._secret = secret
        self._on_health = on_health
        self._policy = policy
        self._connect_timeout = connect_timeout
        self._max_message = max_message
        self.state = LinkState.STOPPED
        self.failures = 0  # since the link was last up; drives the backoff
        self._reason = "not connected yet"
        self._agent_status: tuple[int, str] = (1, "ok")
        self._proto: AgentLinkProtocol | None = None
        self._attempt: Deferred[Any] | None = None
        self._retry: Any = None
        self.health: tuple[int, str] = (0, self._reason)

    # -- what the relay sees -------------------------------------------------

    @property
    def up(self) -> bool:
        return self.state is LinkState.UP

    @property
    def connected(self) -> bool:
        return self._proto is not None and self.state in (LinkState.OPEN, LinkState.UP)

    @property
    def reason(self) -> str:
        """Why the link is down, as testers may see it (no addresses, no credentials)."""
        return scrub_reason(self.health[1], self.record)

    def send(self, message: dict[str, Any]) -> None:
        if self._proto is not None and self._proto.state == WebSocketClientProtocol.STATE_OPEN:
            self._proto.sendMessage(json.dumps(message, ensure_ascii=False).encode())

    # -- life ------------------------------------------------------------------

    def start(self) -> None:
        if self.state is LinkState.STOPPED:
            self._connect()

    def stop(self) -> None:
        """Stop for good (the service was deleted, or the server stops)."""
        self.state = LinkState.STOPPED
        self._drop_connection()

    def update(self, record: dict[str, Any]) -> None:
        """The registry record changed: reconnect or resend what changed."""
        old, self.record = self.record, record
        if record["agentAddr"] != old["agentAddr"] or self.state is LinkState.BROKEN:
            self._log.info(
                "agent link {service_id}: record changed, reconnecting", service_id=self.service_id
            )
            was_up = self.state is LinkState.UP
            self._drop_connection()
            self.failures = 0
            if was_up:
                self._relay.service_status(self.service_id, 0, "the agent moved; reconnecting")
            self._connect()
        elif any(record[f] != old[f] for f in AGENT_FIELDS) and self._proto is not None:
            self._send_info()

    def _drop_connection(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            attempt, self._attempt = self._attempt, None
            attempt.cancel()
        if self._proto is not None:
            proto, self._proto = self._proto, None
            proto.link = _DetachedLink()  # type: ignore[assignment]
            proto.dropConnection(abort=True)

    # -- connecting ------------------------------------------------------------

    def _connect(self) -> None:
        self._retry = None
        self.state = LinkState.CONNECTING
        try:
            endpoint, factory = self._endpoint()
        except Unrepairable as e:
            self._failed(str(e), repairable=False)
            return
        d = endpoint.connect(factory)
        self._attempt = d
        # An attempt dropped on purpose (cancelled) may still end, often
        # with an error other than CancelledError: d tells whose it was.
        d.addCallbacks(self._connected, self._connect_failed, callbackArgs=(d,), errbackArgs=(d,))
        d.addErrback(lambda f: self._log.failure("agent link {service_id}", f, service_id=self.service_id))

    def _endpoint(self) -> tuple[Any, WebSocketClientFactory]:
        url = self.record["agentAddr"]
        try:
            secure, host, port, _resource, _path, _params = parse_url(url)
        except Exception as e:  # noqa: BLE001 - autobahn raises plain Exception
            raise Unrepairable(f"agent address {url!r} is not usable: {e}") from None
        endpoint: Any = HostnameEndpoint(self._reactor, host, port, timeout=self._connect_timeout)
        if secure:
            try:
                tls = optionsForClientTLS(host)
            except Exception as e:  # noqa: BLE001 - an IDNA-invalid host name, for one
                raise Unrepairable(f"agent address {url!r} is not usable: {e}") from None
            endpoint = wrapClientTLS(tls, endpoint)
        factory = WebSocketClientFactory(
            url, headers={"Authorization": f"Bearer {self._secret}"}, reactor=self._reactor
        )
        factory.protocol = AgentLinkProtocol
        factory.setProtocolOptions(
            openHandshakeTimeout=self._connect_timeout,
            closeHandshakeTimeout=2,
            autoPingInterval=10,
            autoPingTimeout=5,
            maxMessagePayloadSize=self._max_message,
            maxFramePayloadSize=self._max_message,
        )
        link = self

        def build(addr: Any) -> AgentLinkProtocol:
            proto = typing.cast(AgentLinkProtocol, WebSocketClientFactory.buildProtocol(factory, addr))
            proto.link = link
            return proto

        factory.buildProtocol = build  # type: ignore[method-assign]
        return endpoint, factory

    def _connected(self, proto: AgentLinkProtocol, attempt: Deferred[Any]) -> None:
        if attempt is not self._attempt:
            proto.link = _DetachedLink()  # type: ignore[assignment]
            proto.dropConnection(abort=True)
            return
        # TCP is up; the WebSocket handshake goes on (onOpen or onClose next).
        self._attempt = None
        self._proto = proto

    def _connect_failed(self, failure: Failure, attempt: Deferred[Any]) -> None:
        if attempt is not self._attempt or failure.check(defer.CancelledError):
            return
        self._attempt = None
        if failure.check(error.DNSLookupError):
            self._failed(f"agent host unknown: {self._host()}", repairable=False)
        elif failure.check(error.ConnectionRefusedError):
            self._failed("agent unreachable: connection refused", repairable=True)
        elif failure.check(error.TimeoutError, defer.TimeoutError):
            self._failed("agent unreachable: connecting timed out", repairable=True)
        else:
            self._failed(f"agent unreachable: {failure.getErrorMessage()}", repairable=True)

    def _host(self) -> str:
        try:
            return str(parse_url(self.record["agentAddr"])[1])
        except Exception:  # noqa: BLE001
            return str(self.record["agentAddr"])

    # -- the open link ------------------------------------------------------------

    def _opened(self, proto: AgentLinkProtocol) -> None:
        self._proto = proto
        self.state = LinkState.OPEN
        self._agent_status = (1, "ok")
        self._log.info("agent link {service_id} open", service_id=self.service_id)
        self._send_info()

    def _send_info(self) -> None:
        info = {"method": "agentInfoReq", "serviceId": self.service_id}
        info.update({f: self.record[f] for f in AGENT_FIELDS})
        self.send(info)

    def _frame(self, proto: AgentLinkProtocol, payload: bytes) -> None:
        if payload[:1] != b"{":
            self._relay.from_agent(self.service_id, payload)
            return
        try:
            message = json.loads(payload)
            method = message["method"]
        except (ValueError, KeyError, TypeError):
            self._log.warn("agent link {service_id}: unreadable frame", service_id=self.service_id)
            return
        if method == "agentInfoResp":
            if message.get("result") == 1:
                was_up = self.state is LinkState.UP
                self.state = LinkState.UP
                self.failures = 0
                self._update_health()
                if not was_up:
                    self._relay.service_status(self.service_id, 1, "ok")
                    for login in self._relay.logins_to_restore(self.service_id):
                        self.send(login)
            else:
                self.state = LinkState.OPEN
                self._agent_status = (0, f"agent refused the settings: {message.get('msg')}")
                self._update_health()
        elif method == "agentStatusReq":
            status = message.get("status")
            msg = message.get("msg")
            if status in (0, 1) and isinstance(msg, str):
                self._agent_status = (status, msg if status == 0 else "ok")
                self._update_health()
        else:
            self._log.warn(
                "agent link {service_id}: unexpected {method}", service_id=self.service_id, method=method
            )

    def _closed(self, proto: AgentLinkProtocol, code: int | None, reason: str | None) -> None:
        if proto is not self._proto and self._proto is not None:
            return
        self._proto = None
        was_up = self.state is LinkState.UP
        if self.state is LinkState.CONNECTING:
            why = f"agent refused the link: {reason}" if reason else "agent closed the link during the handshake"
        else:
            why = "agent link lost" + (f": {reason}" if reason else "")
        self._failed(why, repairable=True)
        if was_up:
            self._relay.service_status(self.service_id, 0, why)

    # -- failing and waiting ------------------------------------------------------

    def _failed(self, why: str, *, repairable: bool) -> None:
        if self.state is LinkState.STOPPED:
            return
        self._reason = why
        if repairable:
            delay = self._policy(self.failures)
            self.failures += 1
            self.state = LinkState.WAITING
            self._retry = self._reactor.callLater(delay, self._connect)
            self._log.info(
                "agent link {service_id} down ({why}); retrying in {delay:.1f} s",
                service_id=self.service_id, why=why, delay=delay,
            )
        else:
            self.state = LinkState.BROKEN
            self._log.warn(
                "agent link {service_id} down ({why}); not retrying until the address changes",
                service_id=self.service_id, why=why,
            )
        self._update_health()

    def _update_health(self) -> None:
        if self.state is LinkState.UP or self.state is LinkState.OPEN:
            health = self._agent_status if self.state is LinkState.UP else (
                self._agent_status if self._agent_status[0] == 0 else (0, "waiting for the agent's answer")
            )
        else:
            health = (0, self._reason)
        if health != self.health:
            self.health = health
            self._on_health(self)


class _DetachedLink:
    """Stands in for a link that dropped its connection on purpose."""

    service_id = 0

    def _opened(self, proto: Any) -> None:
        proto.dropConnection(abort=True)

    def _frame(self, proto: Any, payload: bytes) -> None:
        pass

    def _closed(self, proto: Any, code: Any, reason: Any) -> None:
        pass


class AgentLinks(service.Service):
    """
    Every service's link, kept in step with the registry.

    Also the mapping the L{Relay} looks links up in (C{links[serviceId]}).
    """

    _log = Logger()

    def __init__(
        self,
        registry: Any,
        relay: Relay,
        reactor: Any,
        *,
        secret: str,
        sync_interval: float = 30.0,
        policy: Policy | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self.registry = registry
        self.relay = relay
        self._reactor = reactor
        self._secret = secret
        self._sync_interval = sync_interval
        self._policy = policy or backoffPolicy(initialDelay=1.0, maxDelay=60.0, factor=2.0)
        self._connect_timeout = connect_timeout
        # The relay looks links up in this same dict.
        self.links: dict[int, AgentLink] = relay.links  # type: ignore[assignment]
        self._loop = LoopingCall(self.sync)
        self._loop.clock = reactor
        self._syncing: Deferred[None] | None = None
        self._again = False
        # (status, msg) last written to the registry per service
        self._written: dict[int, tuple[int, str]] = {}

    def startService(self) -> None:
        super().startService()
        # The first sync waits for the registry's first connection attempt,
        # so that a normal start does not wait a whole interval.
        d = self.registry.db.ready()
        d.addCallback(lambda _: self._start_loop())

    def _start_loop(self) -> None:
        if self.running and not self._loop.running:
            self._loop.start(self._sync_interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        for link in self.links.values():
            link.stop()

    def sync(self) -> Deferred[None] | None:
        """Re-read the registry and make the links match it. Never raises."""
        if self._syncing is not None:
            # The running sync may have read the registry before a change
            # that wants to be seen now: run once more when it ends.
            self._again = True
            return None
        d = self.registry.list_services()
        d.addCallback(self._reconcile)
        d.addErrback(self._sync_failed)

        def done(_: object) -> None:
            self._syncing = None
            if self._again and self.running:
                self._again = False
                self.sync()

        d.addBoth(done)
        self._syncing = d
        return d

    def _sync_failed(self, failure: Failure) -> None:
        if failure.check(DatabaseUnavailable):
            # Keep every link as it is; the next tick tries again.
            self._log.info("registry unavailable; links kept as they are")
        else:
            self._log.failure("syncing agent links with the registry", failure)

    def _reconcile(self, records: list[dict[str, Any]]) -> None:
        seen = set()
        for record in records:
            sid = record["serviceId"]
            seen.add(sid)
            link = self.links.get(sid)
            if link is None:
                link = AgentLink(
                    record, reactor=self._reactor, relay=self.relay, secret=self._secret,
                    on_health=self._health_changed, policy=self._policy,
                    connect_timeout=self._connect_timeout,
                )
                self.links[sid] = link
                self._written[sid] = (record["status"], record["msg"])
                link.start()
                continue
            if any(record[f] != link.record[f] for f in SERVICE_FIELDS):
                link.update(record)
            if (record["status"], record["msg"]) != link.health:
                # Someone else wrote it, or our write was lost: put it right.
                self._written[sid] = (record["status"], record["msg"])
                self._health_changed(link)
        for sid in list(self.links):
            if sid not in seen:
                self._log.info("service {service_id} deleted; dropping its link", service_id=sid)
                self.links.pop(sid).stop()
                self._written.pop(sid, None)
                self.relay.service_removed(sid)

    def _health_changed(self, link: AgentLink) -> None:
        status, msg = link.health
        if self._written.get(link.service_id) == (status, msg):
            return
        self._written[link.service_id] = (status, msg)
        d = self.registry.set_status(link.service_id, status, msg)

        def failed(failure: Failure) -> None:
            # Forget what we wrote so that the next sync writes it again.
            self._written.pop(link.service_id, None)
            if not failure.check(DatabaseUnavailable):
                self._log.failure("recording the health of service {service_id}", failure,
                                  service_id=link.service_id)

        d.addErrback(failed)

    def get(self, service_id: int) -> AgentLink | None:
        return self.links.get(service_id)
