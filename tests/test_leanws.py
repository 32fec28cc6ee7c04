"""Smaller Autobahn connections (webtesting.leanws): options at class level, one shared TrafficStats."""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest

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
