"""
The web server's link to one agent: one WebSocket per registered service.

An L{AgentLink} is one L{webtesting.lifecycle.Lifecycle} dialled by a
L{webtesting.wslink.WebSocketDialer} (Twisted's ReconnectingClientFactory
mixed into Autobahn's client factory): it connects, answers the agent's
challenge and checks the agent's proof (L{webtesting.linkauth}: the secret
never crosses the wire), only then sends ``agentInfoReq``, and after a
failure waits a growing delay (the longest one when authentication or the
pinned TLS certificate failed); an
unknown host is retried at the longest delay, and only an address that
cannot parse waits for the registry record to change. A frozen agent is
found by WebSocket ping/pong within C{ping_interval + ping_timeout}.

Its health — the link's, then what the agent itself reports with
``agentStatusReq`` — is worked out in one place (L{AgentLink._update_health}),
written to the registry and pushed to the browsers logged in there
(``servStatus``). When the link drops, every request still waiting there is
answered at once (L{Relay.link_lost}); when it comes back, the browsers'
logins are restored and each hears ``servStatus`` 1 after its ``loginResp``.

The registry sync that keeps one link per service is L{webtesting.web.links}.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger

from webtesting import framebatch, linkauth
from webtesting.lifecycle import Backoff, Fault, Health, Lifecycle, Reason
from webtesting.metrics import FRAMES
from webtesting.protocol import SERVICE_FIELDS, json_data, tester_reason
from webtesting.web.sessions import Relay
from webtesting.wslink import AGENT, LinkProtocol, WebSocketDialer

# The settings an agent is given (agentInfoReq); agentAddr is the link itself.
AGENT_FIELDS = tuple(f for f in SERVICE_FIELDS if f != "agentAddr")

WAITING = Health(False, "waiting_for_agent", "waiting for the agent link")
WAITING_ANSWER = Health(False, "waiting_for_agent", "waiting for the agent's answer")

_AGENT_IN, _AGENT_OUT = ("web", "agent", "in"), ("web", "agent", "out")


class LinkDown(Exception):
    """The service's agent link is not up (or went down before it answered)."""


# Round trips kept between two health samples (a 60 s interval at 2 s pings holds 30).
_MAX_RTTS = 4096


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
        on_health: Callable[[AgentLink], None],
        backoff: Backoff,
        connect_timeout: float = 5.0,
        max_message: int = 1024 * 1024,
        ping_interval: float = 2.0,
        ping_timeout: float = 2.0,
        tls: Callable[[str], Any] | None = None,
    ) -> None:
        self.service_id: int = record["serviceId"]
        self._reactor = reactor
        self.record = record
        self._relay = relay
        self.secret = secret  # what the agent must prove it knows (a live reload may change it)
        self._on_health = on_health
        self.lifecycle = Lifecycle(f"agent link {self.service_id}", lambda _: self._update_health(),
                                   initial=WAITING, keep_inputs=True)
        self._dialer = WebSocketDialer(
            self.lifecycle, self, AGENT, reactor=reactor, backoff=backoff,
            url=lambda: str(self.record["agentAddr"]),
            connect_timeout=connect_timeout,
            options={
                "openHandshakeTimeout": connect_timeout,
                "closeHandshakeTimeout": 2,
                "autoPingInterval": ping_interval,
                "autoPingTimeout": ping_timeout,
                "maxMessagePayloadSize": max_message,
                "maxFramePayloadSize": max_message,
            },
            protocols=[framebatch.SUBPROTOCOL],
            tls=tls if tls is not None else optionsForClientTLS,
        )
        self._proto: LinkProtocol | None = None
        self._batch: framebatch.Batcher | None = None  # the agent takes several messages per frame
        self._auth: linkauth.WebSide | None = None  # set while the agent has not proved itself
        self._auth_timer: Any = None
        self._asked: dict[int, Deferred[list[dict[str, Any]]]] = {}  # listLoginsReq waiting, by reqId
        self._next_req = 0
        self._answered = False  # agentInfoResp said ok on this connection
        self._agent_status = Health(True, "ok", "ok")  # what the agent reports (agentStatusReq)
        self._refused: Health | None = None  # the agent refused our settings
        self.current = WAITING
        self.up = False  # requests flow: the link is up and the agent took its settings
        self._rtts: list[float] = []  # ping round trips (seconds) since the health history's last sample

    # -- what the relay sees -------------------------------------------------

    @property
    def health(self) -> tuple[int, str]:
        """(status, msg) as the registry keeps them."""
        return (1 if self.current.up else 0), self.current.msg

    @property
    def code(self) -> str:
        return self.current.code

    @property
    def connected(self) -> bool:
        return self._proto is not None

    @property
    def reason(self) -> str:
        """Why the link is down, as testers may see it (no addresses, no credentials)."""
        return tester_reason(self.current.code, self.current.msg, self.record)

    @property
    def state(self) -> str:
        return self.lifecycle.state

    def link_pong(self, proto: LinkProtocol, rtt: float) -> None:
        # Autobahn stamps pings with the wall clock: a clock step can make one negative or huge.
        if 0 <= rtt < 60 and len(self._rtts) < _MAX_RTTS:
            self._rtts.append(rtt)

    def take_rtts(self) -> list[float]:
        """The ping round trips (seconds) since the last call."""
        rtts, self._rtts = self._rtts, []
        return rtts

    def send(self, message: dict[str, Any]) -> None:
        if self._proto is not None and self._proto.state == LinkProtocol.STATE_OPEN:
            data = json_data(message)
            FRAMES[_AGENT_OUT] += 1
            if self._batch is not None:
                self._batch.add(data)
            else:
                self._proto.sendMessage(data)

    def _send_now(self, data: bytes) -> None:
        if self._proto is not None and self._proto.state == LinkProtocol.STATE_OPEN:
            self._proto.sendMessage(data)

    # -- life ------------------------------------------------------------------

    def start(self) -> None:
        self.lifecycle.start()

    def stop(self) -> None:
        """Stop for good (the service was deleted, or the server stops)."""
        self._cancel_auth_timer()
        self._auth = None
        self._proto = None
        self.up = False
        self.lifecycle.stop()

    def update(self, record: dict[str, Any]) -> None:
        """The registry record changed: reconnect or resend what changed."""
        old, self.record = self.record, record
        if record["agentAddr"] != old["agentAddr"] or self.lifecycle.state == "unusable":
            self._log.info("agent link {service_id}: record changed, reconnecting", service_id=self.service_id)
            if self._proto is not None:
                self._lost(Reason("agent_unreachable", "the agent moved; reconnecting"))
            self.lifecycle.changed()
        elif any(record[f] != old[f] for f in AGENT_FIELDS) and self._proto is not None:
            self._send_info()

    # -- LinkOwner: what the dialer tells us -------------------------------------

    def link_opened(self, proto: LinkProtocol) -> None:
        # Open, but not up: the agent must prove it knows the secret first.
        self._proto = proto
        if self._batch is not None:
            self._batch.drop()
        self._batch = (framebatch.Batcher(self._reactor, self._send_now)
                       if proto.websocket_protocol_in_use == framebatch.SUBPROTOCOL else None)
        self._answered = False
        self._refused = None
        self._agent_status = Health(True, "ok", "ok")
        self._auth = linkauth.WebSide(self.secret, self.service_id)
        self._auth_timer = self._reactor.callLater(
            linkauth.DEADLINE, self._auth_failed, proto, "the agent did not authenticate in time")

    def _authenticate(self, proto: LinkProtocol, payload: bytes) -> None:
        auth = self._auth
        assert auth is not None
        try:
            try:
                message = json.loads(payload)
            except ValueError:
                raise linkauth.AuthFailed("the agent sent something else than JSON") from None
            if isinstance(message, dict) and message.get("method") == "authChallenge":
                self.send(auth.answer(message))
                return
            auth.verify(message)
        except linkauth.AuthFailed as e:
            self._auth_failed(proto, str(e))
            return
        self._auth = None
        self._cancel_auth_timer()
        self._log.info("agent link {service_id} open and authenticated", service_id=self.service_id)
        self._send_info()
        self.lifecycle.connected()

    def _auth_failed(self, proto: LinkProtocol, why: str) -> None:
        """The peer did not prove it is our agent: it gets nothing, and we try again later."""
        self._cancel_auth_timer()
        self._auth = None
        if proto is not self._proto:
            return
        self._proto = None
        self._log.warn("agent link {service_id}: the peer did not prove it is the agent ({why})",
                       service_id=self.service_id, why=why)
        self.lifecycle.failed(Reason(
            "agent_auth_failed", f"the peer at the agent address could not prove it is the agent: {why}",
            Fault.REFUSED))
        # Not a peer to wait for: the connection goes now, before the next attempt is due.
        if proto.state == LinkProtocol.STATE_OPEN:
            proto.sendCloseFrame(code=linkauth.CLOSE_CODE, reasonUtf8=linkauth.CLOSE_REASON.encode(), isReply=False)
        proto.dropConnection(abort=True)

    def _cancel_auth_timer(self) -> None:
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None

    def link_frame(self, proto: LinkProtocol, payload: bytes, is_binary: bool) -> None:
        if proto is not self._proto:
            return
        if self._batch is not None:
            for part in framebatch.split(payload):
                if proto is self._proto:
                    self._link_message(proto, part)
            return
        self._link_message(proto, payload)

    def _link_message(self, proto: LinkProtocol, payload: bytes) -> None:
        FRAMES[_AGENT_IN] += 1
        if self._auth is not None:
            self._authenticate(proto, payload)
            return
        if payload[:1] != b"{":
            self._relay.from_agent(self.service_id, payload)
            return
        try:
            message = json.loads(payload)
            method = message["method"]
        except (ValueError, KeyError, TypeError):
            self._log.warn("agent link {service_id}: unreadable frame", service_id=self.service_id)
            return
        if message.get("serviceId", self.service_id) != self.service_id:
            # Each link carries its own service: a frame about another is not believed.
            self._log.warn("agent link {service_id}: dropped a {method} naming service {other}",
                           service_id=self.service_id, method=method, other=message.get("serviceId"))
            return
        if method == "agentInfoResp":
            if message.get("result") == 1:
                # Restored logins first: each page hears servStatus 1 right
                # after its loginResp, never before it can chat again.
                restore = [] if self._answered else self._relay.logins_to_restore(self.service_id)
                self._answered = True
                self._refused = None
                self._update_health()
                for login in restore:
                    self.send(login)
            else:
                self._refused = Health(False, "settings_refused",
                                       f"agent refused the settings: {message.get('msg')}")
                self._update_health()
        elif method == "listLoginsResp":
            waiting = self._asked.pop(message.get("reqId"), None)  # type: ignore[arg-type]
            logins = message.get("logins")
            if waiting is not None and not waiting.called:
                waiting.callback(logins if isinstance(logins, list) else [])
        elif method == "agentStatusReq":
            status, msg, code = message.get("status"), message.get("msg"), message.get("code")
            if status in (0, 1) and isinstance(msg, str):
                if status == 1:
                    self._agent_status = Health(True, "ok", "ok")
                else:
                    self._agent_status = Health(False, code if isinstance(code, str) and code else "unavailable", msg)
                self._update_health()
        else:
            self._log.warn(
                "agent link {service_id}: unexpected {method}", service_id=self.service_id, method=method
            )

    def link_closed(self, proto: LinkProtocol, reason: Reason) -> None:
        if proto is self._proto:
            self._cancel_auth_timer()
            self._auth = None
            self._lost(reason)

    def _lost(self, reason: Reason) -> None:
        asked, self._asked = self._asked, {}
        for d in asked.values():
            if not d.called:
                d.errback(LinkDown(self.service_id))
        self._proto = None
        self._answered = False
        was_up = self.up
        self.up = False
        self._relay.link_lost(self.service_id, reason.code, tester_reason(reason.code, reason.detail, self.record))
        if was_up:
            self._log.info("agent link {service_id} lost: {why}", service_id=self.service_id, why=reason.detail)

    # -- health: the one place it is worked out -----------------------------------

    def _update_health(self) -> None:
        if not self.lifecycle.is_up or self._proto is None:
            health = self.lifecycle.health if not self.lifecycle.is_up else WAITING
        elif self._refused is not None:
            health = self._refused
        elif not self._answered:
            health = WAITING_ANSWER
        else:
            health = self._agent_status
        self.up = self.lifecycle.is_up and self._answered and self._proto is not None
        if health == self.current:
            return
        # Pages hear of the link itself (Relay.link_lost, and servStatus 1
        # after each restored login); what the agent reports about its bot
        # reaches each logged-in user from the agent, in order with that
        # user's own answers, never ahead of them from here.
        self.current = health
        self._on_health(self)

    def list_logins(self, timeout: float = 2.0) -> Deferred[list[dict[str, Any]]]:
        """Who holds which bot user of this service, as the agent says (fails if it does not answer in time)."""
        if not self.up:
            return fail(LinkDown(self.service_id))
        self._next_req += 1
        req_id = self._next_req
        def forget(_: object) -> None:
            self._asked.pop(req_id, None)

        d: Deferred[list[dict[str, Any]]] = Deferred(forget)
        self._asked[req_id] = d
        d.addTimeout(timeout, self._reactor)
        self.send({"method": "listLoginsReq", "reqId": req_id})
        return d

    def _send_info(self) -> None:
        info = {"method": "agentInfoReq", "serviceId": self.service_id}
        info.update({f: self.record[f] for f in AGENT_FIELDS})
        self.send(info)
