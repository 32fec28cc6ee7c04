"""Smaller Autobahn connections (webtesting.leanws): options at class level, one shared TrafficStats."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest

from tests.support.wait import eventually
from webtesting.leanws import SHARED_TRAFFIC, LeanFactory, LeanProtocol


class Echo(LeanProtocol, WebSocketServerProtocol):  # type: ignore[misc]
    pass


class Factory(LeanFactory, WebSocketServerFactory):
    protocol = Echo


class LeanTests(unittest.TestCase):
    def connect(self, factory: Factory) -> Echo:
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        return protocol

    def test_options_are_not_copied_into_each_connection(self) -> None:
        """A connection reads the factory's options from its class; its own dict holds none of them."""
        factory = Factory(reactor=MemoryReactorClock())
        factory.setProtocolOptions(maxMessagePayloadSize=1234, autoPingInterval=7, openHandshakeTimeout=0)
        protocol = self.connect(factory)
        self.assertIsInstance(protocol, Echo)
        self.assertEqual((protocol.maxMessagePayloadSize, protocol.autoPingInterval), (1234, 7))
        self.assertEqual(set(vars(protocol)) & set(Echo.CONFIG_ATTRS), set())
        self.assertIs(protocol.trafficStats, SHARED_TRAFFIC)
        # A function option is called as Autobahn calls it (a class attribute must not bind it to the
        # connection): a browser offering permessage-deflate would otherwise fail its handshake.
        self.assertIsNone(protocol.perMessageCompressionAccept([]))

    def test_link_factories_share_one_class(self) -> None:
        """The agent's reconnecting link factories (one per bot user) with the same options share one
        protocol class and one batched timer, and hold only the options set on them."""
        from twisted.internet.testing import MemoryReactor

        from webtesting.lifecycle import Backoff
        from webtesting.wslink import BOT, LinkFactory

        class Dialer:
            names, gate = BOT, None

        reactor = MemoryReactor()
        one, two = (LinkFactory(Dialer(), "ws://127.0.0.1:1/x", reactor=reactor,  # type: ignore[arg-type]
                                backoff=Backoff(), headers={}, options={"autoPingInterval": 30})
                    for _ in range(2))
        self.assertIs(one.protocol, two.protocol)
        self.assertIs(one._batched_timer, two._batched_timer)
        self.assertEqual(one.protocol.autoPingInterval, 30)
        self.assertNotIn("utf8validateIncoming", vars(one))
        self.assertIsNone(one.perMessageCompressionAccept([]))

    def test_factories_with_the_same_options_share_a_class(self) -> None:
        """Two factories with the same options share one protocol class, though Autobahn gives each factory
        a lambda of its own (perMessageCompressionAccept): the classes made stay as many as the option sets."""
        one, two = Factory(reactor=MemoryReactorClock()), Factory(reactor=MemoryReactorClock())
        for factory in (one, two):
            factory.setProtocolOptions(maxMessagePayloadSize=99, openHandshakeTimeout=0)
        self.assertIsNot(one.perMessageCompressionAccept, two.perMessageCompressionAccept)
        self.assertIs(one.protocol, two.protocol)

    def test_later_options_for_later_connections(self) -> None:
        """Options set after a connection opened apply to the next ones, as Autobahn's copy did."""
        factory = Factory(reactor=MemoryReactorClock())
        factory.setProtocolOptions(maxMessagePayloadSize=1, openHandshakeTimeout=0)
        first = self.connect(factory)
        factory.setProtocolOptions(maxMessagePayloadSize=2)
        second = self.connect(factory)
        self.assertEqual((first.maxMessagePayloadSize, second.maxMessagePayloadSize), (1, 2))
        self.assertIs(type(second).__mro__[1], Echo)  # one subclass of the base, not a chain


_HANDSHAKE = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


class OpenConnectionTests(unittest.TestCase):
    """An open connection keeps only what it still needs, in a dict of its size."""

    def open(self) -> tuple[Echo, MemoryReactorClock]:
        reactor = MemoryReactorClock()
        factory = Factory(reactor=reactor)
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, failByDrop=False)
        protocol = factory.buildProtocol(None)
        from tests.test_fastframes import Transport
        protocol.makeConnection(Transport())
        protocol.dataReceived(_HANDSHAKE)
        self.assertEqual(protocol.state, protocol.STATE_OPEN)
        protocol.transport.clear()
        return protocol, reactor

    def test_handshake_leftovers_and_defaults_are_dropped(self) -> None:
        import sys

        from webtesting.leanws import HANDSHAKE_ONLY, STATE_DEFAULTS
        protocol, _ = self.open()
        kept = set(vars(protocol))
        self.assertEqual(kept & HANDSHAKE_ONLY, set())
        self.assertEqual(kept & set(STATE_DEFAULTS), set())
        self.assertLessEqual(sys.getsizeof(vars(protocol)), 832)  # it was 3,328 bytes with ~90 attributes
        # Reads find the class's values.
        self.assertEqual((protocol.failedByMe, protocol.current_frame, protocol.autoPingPendingSeq), (False, None, 0))

    def test_autobahn_parser_after_shrinking(self) -> None:
        """Autobahn's own parser (fragments, UTF-8 validation) works on a shrunk connection: its validator
        is made when first used."""
        from tests.test_fastframes import wire
        protocol, _ = self.open()
        self.assertNotIn("utf8validator", vars(protocol))
        got: list[bytes] = []
        protocol.onMessage = lambda payload, binary: got.append(payload)  # type: ignore[method-assign]
        protocol.dataReceived(wire(1, "caf\u00e9".encode()[:4], fin=False) + wire(0, "caf\u00e9".encode()[4:]))
        self.assertEqual(got, ["caf\u00e9".encode()])
        self.assertIn("utf8validator", vars(protocol))
        protocol.dataReceived(wire(1, b"\xff\xfe", fin=False))
        self.assertEqual(protocol.localCloseCode, 1007)
        close = protocol.transport.value()
        self.assertEqual((close[0], close[2:4]), (0x88, (1007).to_bytes(2, "big")))  # a close frame, 1007

    def test_is_closed_fires_after_shrinking(self) -> None:
        """The close Deferred, made when first read, fires on close; one taken before close is the one fired."""
        protocol, _ = self.open()
        self.assertNotIn("is_closed", vars(protocol))
        self.assertNotIn("_results", vars(protocol))
        protocol.dropConnection(abort=True)
        self.assertTrue(protocol.is_closed.called)
        # Taken before the connection opened (and only held): the one fired.
        factory = Factory(reactor=MemoryReactorClock())
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        from tests.test_fastframes import Transport
        waiting = factory.buildProtocol(None)
        early = waiting.is_closed
        waiting.makeConnection(Transport())
        waiting.dataReceived(_HANDSHAKE)
        self.assertEqual(waiting.state, waiting.STATE_OPEN)
        self.assertFalse(early.called)
        waiting.dropConnection(abort=True)
        self.assertIs(waiting.is_closed, early)
        self.assertTrue(early.called)

    def test_custom_events_are_kept(self) -> None:
        """A connection that asks for other observer events keeps its own list."""
        protocol, _ = self.open()
        protocol.set_valid_events(["message", "custom"])
        protocol._shrink()
        protocol.on("custom", lambda: None)
        self.assertEqual(protocol._valid_events, ["message", "custom"])

    def test_state_changes_after_shrinking(self) -> None:
        """Autobahn sets its state again on the instance as it changes: a close handshake runs as before."""
        protocol, _ = self.open()
        protocol.sendClose(4000, "bye")
        self.assertTrue(protocol.closedByMe)
        self.assertEqual(protocol.localCloseCode, 4000)
        self.assertFalse(type(protocol).closedByMe)  # the class's default is untouched
        self.assertEqual(protocol.transport.value()[:2], b"\x88\x05")

    @inlineCallbacks
    def test_chopped_sends_use_the_small_queue(self) -> Any:
        """Autobahn's send queue (chopped and synchronous sends, on the global reactor) still delivers, in order."""
        protocol, _ = self.open()
        protocol.sendData(b"abcdefgh", chopsize=3)
        protocol.sendData(b"ij")
        yield Deferred.fromCoroutine(eventually(lambda: protocol.transport.value() == b"abcdefghij",
                                                timeout=5, what="the queued sends"))
        self.assertEqual(protocol.transport.value(), b"abcdefghij")


class CompactTests(unittest.TestCase):
    def test_keeps_what_differs_from_the_class(self) -> None:
        from webtesting.leanws import compact

        shared = object()

        class Thing:
            flag = False
            count = 0
            ratio = 1.5
            nothing = None
            timer = shared

        thing = Thing()
        thing.flag, thing.count, thing.ratio, thing.nothing, thing.timer = False, 0, 1.5, None, shared
        thing.other, thing.changed, thing.zero = [], True, 0.0
        thing.count_as_bool = False
        compact(thing, frozenset({"other"}))
        self.assertEqual(vars(thing), {"changed": True, "zero": 0.0, "count_as_bool": False})
        # A value equal to the class's but of another type stays (False is not 0).
        thing.count = False
        compact(thing)
        self.assertIs(thing.count, False)
