"""
WebSocket links kept up by the lifecycle: ReconnectingClientFactory's
retries on a MemoryReactorClock, and real sockets for open, loss and a frozen peer.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import error, reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.support.wait import eventually, free_port
from webtesting.lifecycle import UP, Backoff, Health, Lifecycle, Reason
from webtesting.wslink import AGENT, DialGate, LinkProtocol, WebSocketDialer

NO_JITTER = Backoff(initial=1.0, maximum=8.0, factor=2.0, jitter=0.0)


class Owner:
    """Fake enough of a link's owner: records what it hears, calls the link up when it opens."""

    def __init__(self) -> None:
        self.lifecycle: Lifecycle | None = None
        self.opened: list[LinkProtocol] = []
        self.frames: list[bytes] = []
        self.closed: list[Reason] = []

    def link_opened(self, proto: LinkProtocol) -> None:
        self.opened.append(proto)
        assert self.lifecycle is not None
        self.lifecycle.connected()

    def link_frame(self, proto: LinkProtocol, payload: bytes, is_binary: bool) -> None:
        self.frames.append(payload)

    def link_closed(self, proto: LinkProtocol, reason: Reason) -> None:
        self.closed.append(reason)


def make(url: str, the_reactor: Any, **options: Any) -> tuple[Lifecycle, WebSocketDialer, Owner, list[Health]]:
    reports: list[Health] = []
    life = Lifecycle("agent link 1", reports.append)
    owner = Owner()
    owner.lifecycle = life
    dialer = WebSocketDialer(life, owner, AGENT, reactor=the_reactor, backoff=NO_JITTER,
                             url=lambda: url, connect_timeout=2, options=options)
    return life, dialer, owner, reports


class RetryTests(unittest.TestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.life, self.dialer, self.owner, self.reports = make("ws://127.0.0.1:9/x", self.reactor)
        self.connects = 0

    def tearDown(self) -> None:
        self.life.stop()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def _start(self) -> Any:
        self.life.start()
        (host, port, factory, timeout, _) = self.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("127.0.0.1", 9, 2))
        connector = self.reactor.connectors[0]

        def connect() -> None:
            self.connects += 1
            factory.startedConnecting(connector)

        connector.connect = connect
        return factory, connector

    def test_refused_is_retried_with_growing_delay(self) -> None:
        """A refused connection is retried by the factory after 1, 2, 4 s, each time reported once."""
        factory, connector = self._start()
        waits = []
        for n in range(3):
            factory.clientConnectionFailed(connector, Failure(error.ConnectionRefusedError()))
            self.assertEqual(self.life.state, "backing off")
            (call,) = self.reactor.getDelayedCalls()
            waits.append(call.getTime() - self.reactor.seconds())
            self.reactor.advance(waits[-1])
            self.assertEqual(self.connects, n + 1)
            self.assertEqual(self.life.state, "connecting")
        self.assertEqual(waits, [1.0, 2.0, 4.0])
        self.assertEqual(self.reports, [Health(False, "agent_unreachable", "agent unreachable: connection refused")])

    def test_a_long_outage_is_retried_slowly(self) -> None:
        """Away slow_after seconds, the link waits slow_maximum; reported once all along."""
        self.life.stop()
        self.reactor = MemoryReactorClock()
        self.life, self.dialer, self.owner, self.reports = make("ws://127.0.0.1:9/x", self.reactor)
        self.dialer._backoff = Backoff(initial=1.0, maximum=8.0, factor=2.0, jitter=0.0, slow_after=30.0,
                                       slow_maximum=60.0)
        factory, connector = self._start()
        factory._backoff = self.dialer._backoff
        waits = []
        for _ in range(8):
            factory.clientConnectionFailed(connector, Failure(error.ConnectionRefusedError()))
            (call,) = self.reactor.getDelayedCalls()
            waits.append(call.getTime() - self.reactor.seconds())
            self.reactor.advance(waits[-1])
        # Away 1+2+4+8+8+8 = 31 s at the seventh failure.
        self.assertEqual(waits, [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 60.0, 60.0])
        self.assertEqual(len(self.reports), 1, "reported once, not at every attempt")

    def test_unknown_host_waits_longest(self) -> None:
        """An unknown host keeps being retried, at the longest delay."""
        factory, connector = self._start()
        factory.clientConnectionFailed(connector, Failure(error.DNSLookupError("nowhere")))
        (call,) = self.reactor.getDelayedCalls()
        self.assertEqual(call.getTime() - self.reactor.seconds(), 8.0)
        self.assertEqual(self.life.health.code, "agent_unknown_host")
        self.reactor.advance(8)
        self.assertEqual(self.connects, 1)

    def test_unparseable_address_is_not_dialled(self) -> None:
        """An address that cannot parse makes no connection and waits for a change."""
        life, _dialer, _owner, _reports = make("not a url", self.reactor)
        life.start()
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(life.state, "unusable")
        self.assertEqual(life.health.code, "agent_address_invalid")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_changed_address_stops_the_old_factory(self) -> None:
        """After a change the old factory stops trying and a new one dials."""
        factory, connector = self._start()
        factory.clientConnectionFailed(connector, Failure(error.ConnectionRefusedError()))
        self.life.changed()
        self.assertFalse(factory.continueTrying)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        # A late failure of the old factory changes nothing.
        factory.clientConnectionFailed(connector, Failure(error.ConnectionRefusedError()))
        self.assertEqual(self.life.state, "connecting")


class Frozen(WebSocketServerProtocol):
    """A server that stops reading after the handshake (as a process under SIGSTOP)."""

    def onOpen(self) -> None:
        self.factory.protos.append(self)  # type: ignore[attr-defined]
        if self.factory.freeze:  # type: ignore[attr-defined]
            # Once the handshake answer is out, stop reading (no pongs).
            call = reactor.callLater(0.1, self.transport.pauseProducing)  # type: ignore[attr-defined,union-attr]
            self.factory.calls.append(call)  # type: ignore[attr-defined]

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload)


class RealSocketTests(unittest.TestCase):
    def serve(self, freeze: bool) -> tuple[str, Any]:
        port = free_port()
        factory = WebSocketServerFactory(f"ws://127.0.0.1:{port}/x")
        factory.protocol = Frozen
        factory.protos = []  # type: ignore[attr-defined]
        factory.freeze = freeze  # type: ignore[attr-defined]
        factory.calls = []  # type: ignore[attr-defined]
        listening = reactor.listenTCP(port, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(listening.stopListening)

        def drop_all() -> None:
            for p in factory.protos:  # type: ignore[attr-defined]
                p.dropConnection(abort=True)
            for c in factory.calls:  # type: ignore[attr-defined]
                if c.active():
                    c.cancel()

        self.addCleanup(drop_all)
        return f"ws://127.0.0.1:{port}/x", factory

    async def test_frozen_peer_found_by_ping(self) -> None:
        """A peer that stops answering is found by ping/pong within interval + timeout, and redialled."""
        url, _server = self.serve(freeze=True)
        life, _dialer, owner, reports = make(url, reactor, autoPingInterval=0.5, autoPingTimeout=0.5)
        self.addCleanup(life.stop)
        life.start()
        await eventually(lambda: owner.opened, what="link open")
        self.assertEqual(reports[0], UP)
        took = await eventually(lambda: owner.closed, timeout=3, what="frozen link noticed")
        self.assertLess(took, 2.5)
        self.assertEqual(owner.closed[0].code, "agent_not_responding")
        self.assertEqual(reports[1].code, "agent_not_responding")
        await eventually(lambda: len(owner.opened) == 2, timeout=5, what="redialled")

    async def test_open_echo_and_loss(self) -> None:
        """An open link carries frames; when the peer drops it, the owner and the health hear it once."""
        url, server = self.serve(freeze=False)
        life, dialer, owner, reports = make(url, reactor)
        self.addCleanup(life.stop)
        life.start()
        await eventually(lambda: life.is_up, what="link up")
        assert dialer.proto is not None
        dialer.proto.sendMessage(b"hello")
        await eventually(lambda: owner.frames == [b"hello"], what="echo")
        server.protos[0].dropConnection(abort=True)
        await eventually(lambda: not life.is_up, what="loss noticed")
        self.assertEqual(life.health.code, "agent_unreachable")
        self.assertEqual(reports[0], UP)
        self.assertEqual(len(owner.closed), 1)


class SilentTests(unittest.TestCase):
    async def test_silent_peer_is_not_responding(self) -> None:
        """A peer that takes the TCP connection but never answers the handshake is 'not responding', not 'refused'."""
        from twisted.internet.protocol import Factory, Protocol

        accepted: list[Any] = []

        class Silent(Protocol):
            def connectionMade(self) -> None:
                accepted.append(self.transport)

        port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: [t.abortConnection() for t in accepted])
        reports: list[Health] = []
        life = Lifecycle("agent link 1", reports.append)
        owner = Owner()
        owner.lifecycle = life
        WebSocketDialer(life, owner, AGENT, reactor=reactor, backoff=NO_JITTER,
                        url=lambda: f"ws://127.0.0.1:{port.getHost().port}/x", connect_timeout=0.5)
        self.addCleanup(life.stop)
        life.start()
        await eventually(lambda: reports, timeout=5, what="the handshake timeout")
        self.assertEqual(reports[0].code, "agent_not_responding")
        self.assertEqual(owner.opened, [])


class DialGateTests(unittest.TestCase):
    def test_bound_and_order(self) -> None:
        """At most `limit` run; the others go in order as tickets leave; a waiting ticket that leaves is skipped."""
        gate = DialGate(2)
        ran: list[int] = []
        tickets = [gate.enter(lambda n=n: ran.append(n)) for n in range(5)]  # type: ignore[misc]
        self.assertEqual((ran, gate.busy, gate.waiting), ([0, 1], 2, 3))
        tickets[2].leave()  # given up on while waiting
        tickets[0].leave()
        tickets[0].leave()  # twice is once
        self.assertEqual((ran, gate.busy, gate.waiting), ([0, 1, 3], 2, 1))
        tickets[1].leave()
        tickets[3].leave()
        self.assertEqual((ran, gate.busy, gate.waiting), ([0, 1, 3, 4], 1, 0))
        tickets[4].leave()
        self.assertEqual(gate.busy, 0)

    def test_retries_wait_their_turn(self) -> None:
        """A factory's retry connects only once the gate has room; a detached link leaves its place."""
        clock = MemoryReactorClock()
        gate = DialGate(1)
        links = []
        for _ in range(2):
            life, dialer, _owner, _reports = make("ws://127.0.0.1:9/x", clock)
            dialer.gate = gate
            links.append((life, dialer))
        links[0][0].start()
        links[1][0].start()
        self.assertEqual(len(clock.tcpClients), 1)  # the second waits
        first = links[0][1].factory
        assert first is not None
        first.clientConnectionFailed(clock.connectors[0], Failure(error.ConnectionRefusedError()))
        self.assertEqual(len(clock.tcpClients), 2)  # the failure made room
        # The first one's retry is due, but the second holds the gate.
        connects = []
        clock.connectors[0].connect = lambda: connects.append(1)  # type: ignore[method-assign]
        clock.advance(1.0)
        self.assertEqual(connects, [])
        links[1][0].stop()  # detached: its place is free
        self.assertEqual(connects, [1])
        links[0][0].stop()
        self.assertEqual(gate.busy, 0)
        self.assertEqual(clock.getDelayedCalls(), [])


class SlowHandshake(WebSocketServerProtocol):
    """A server that takes 0.2 s over each handshake and counts those in progress."""

    def connectionMade(self) -> None:
        super().connectionMade()
        f: Any = self.factory
        f.in_handshake += 1
        f.most = max(f.most, f.in_handshake)
        f.protos.append(self)

    def onConnect(self, request: Any) -> Any:
        from twisted.internet import task

        return task.deferLater(reactor, 0.2, lambda: None)

    def onOpen(self) -> None:
        self.factory.in_handshake -= 1  # type: ignore[attr-defined]


class GateRealSocketTests(unittest.TestCase):
    async def test_storm_is_paced(self) -> None:
        """Twelve links sharing a gate of 3: never more than 3 handshakes at the server, and all open."""
        port = free_port()
        factory = WebSocketServerFactory(f"ws://127.0.0.1:{port}/x")
        factory.protocol = SlowHandshake
        factory.in_handshake = factory.most = 0  # type: ignore[attr-defined]
        factory.protos = []  # type: ignore[attr-defined]
        listening = reactor.listenTCP(port, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(listening.stopListening)
        self.addCleanup(lambda: [p.dropConnection(abort=True) for p in factory.protos])  # type: ignore[attr-defined]
        gate = DialGate(3)
        lives = []
        for _ in range(12):
            life, dialer, _owner, _reports = make(f"ws://127.0.0.1:{port}/x", reactor)
            dialer.gate = gate
            self.addCleanup(life.stop)
            life.start()
            lives.append(life)
        await eventually(lambda: all(life.is_up for life in lives), timeout=10, what="all links up")
        self.assertEqual(factory.most, 3)  # type: ignore[attr-defined]
        self.assertEqual(gate.busy, 0)
