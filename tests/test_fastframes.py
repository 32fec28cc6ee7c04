"""
The short way through Autobahn (webtesting.fastframes): every frame is read
and written as Autobahn would, and whatever the short way does not take
reaches Autobahn unchanged.

The main test is differential: the same bytes, cut into the same pieces,
go to a plain Autobahn protocol and to one with L{FastFrames}; the messages
delivered, the bytes written back (pongs, close frames with their codes and
reasons) and the final state must be the same, for well-formed frames,
fragments, control frames, oversized, unmasked, non-minimal and invalid
UTF-8 frames alike.
"""

from __future__ import annotations

import os
from typing import Any

from autobahn.exception import PayloadExceededError
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.error import ConnectionLost
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.test import iosim
from twisted.trial import unittest

from webtesting.fastframes import FastFrames, frame, unmask

LIMIT = 1000
_HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


class Transport(StringTransport):
    def unregisterProducer(self) -> None:
        # Autobahn unregisters when it drops a connection, registered or not, as real transports allow.
        self.producer = None


class Recording:
    received: list[tuple[bytes, bool]]
    pongs: list[bytes]
    closed: tuple[Any, ...] | None = None

    def onOpen(self) -> None:
        self.received, self.pongs = [], []

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append((payload, isBinary))

    def onPong(self, payload: bytes) -> None:
        self.pongs.append(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.closed = (wasClean, code, reason)


class PlainServer(Recording, WebSocketServerProtocol):  # type: ignore[misc]
    pass


class FastServer(Recording, FastFrames, WebSocketServerProtocol):  # type: ignore[misc]
    pass


class PlainClient(Recording, WebSocketClientProtocol):  # type: ignore[misc]
    pass


class FastClient(Recording, FastFrames, WebSocketClientProtocol):  # type: ignore[misc]
    pass


_OPTIONS = dict(maxMessagePayloadSize=LIMIT, maxFramePayloadSize=LIMIT, openHandshakeTimeout=0,
                closeHandshakeTimeout=0, failByDrop=False, autoPingInterval=0)


def server(cls: type, **factory_attrs: Any) -> Any:
    """
    A server protocol of C{cls} with its handshake done, on a StringTransport
    emptied after it (C{factory_attrs}: Autobahn options set on the factory).
    """
    factory = WebSocketServerFactory("ws://127.0.0.1:1/ws", reactor=MemoryReactorClock())
    factory.protocol = cls
    factory.setProtocolOptions(**_OPTIONS)
    for name, value in factory_attrs.items():
        setattr(factory, name, value)
    protocol = factory.buildProtocol(None)
    transport = Transport()
    protocol.makeConnection(transport)
    protocol.dataReceived(_HANDSHAKE)
    assert protocol.state == protocol.STATE_OPEN, transport.value()
    transport.clear()
    return protocol


def pair(server_cls: type, client_cls: type) -> tuple[Any, Any, iosim.IOPump]:
    """A server and a client of these classes, open, joined by an iosim pump."""
    reactor = MemoryReactorClock()
    server_factory = WebSocketServerFactory("ws://127.0.0.1:1/ws", reactor=reactor)
    server_factory.protocol = server_cls
    server_factory.setProtocolOptions(**_OPTIONS)
    client_factory = WebSocketClientFactory("ws://127.0.0.1:1/ws", reactor=reactor)
    client_factory.protocol = client_cls
    client_factory.setProtocolOptions(**{k: v for k, v in _OPTIONS.items() if k != "autoPingInterval"})
    c, s, pump = iosim.connectedServerAndClient(
        lambda: server_factory.buildProtocol(None), lambda: client_factory.buildProtocol(None))
    pump.flush()
    assert s.state == s.STATE_OPEN and c.state == c.STATE_OPEN
    return s, c, pump


def wire(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bytes | None = b"abcd",
         length_form: int = 0) -> bytes:
    """One frame as a peer could send it, valid or not (C{length_form} 126 or 127 forces a longer length)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask is not None else 0
    if length_form == 127 or n > 65535:
        head = bytes((b0, mask_bit | 127)) + n.to_bytes(8, "big")
    elif length_form == 126 or n > 125:
        head = bytes((b0, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, mask_bit | n))
    if mask is None:
        return head + payload
    return head + mask + unmask(payload, mask)


class CodecTests(unittest.TestCase):
    def test_unmask_matches_the_rfc(self) -> None:
        """Byte i is XORed with mask byte i mod 4, for every length around the 4-byte boundary."""
        mask = b"\x01\x80\xff\x10"
        for n in range(0, 13):
            payload = os.urandom(n)
            expected = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            self.assertEqual(unmask(payload, mask), expected)

    def test_frames_as_autobahn_writes_them(self) -> None:
        """The server's frames are byte for byte Autobahn's, at each length form the short way writes."""
        for n in (0, 1, 125, 126, LIMIT):
            payload = b"x" * n
            plain, fast = server(PlainServer), server(FastServer)
            plain.sendMessage(payload, isBinary=n % 2 == 1)
            fast.sendMessage(payload, isBinary=n % 2 == 1)
            self.assertEqual(fast.transport.value(), plain.transport.value(), n)
            self.assertEqual(frame(payload, n % 2 == 1, False), plain.transport.value())


class PairTests(unittest.TestCase):
    """Fast and plain protocols talk to each other, in both roles."""

    def exchange(self, server_cls: type, client_cls: type) -> None:
        plain = self.talk(PlainServer, PlainClient)
        self.assertEqual(self.talk(server_cls, client_cls), plain)
        self.assertEqual(plain[1][1], 1009)  # the client heard why: too large

    def talk(self, server_cls: type, client_cls: type) -> tuple[Any, ...]:
        s, c, pump = pair(server_cls, client_cls)
        messages = [(b"", False), (b"{}", False), ("\u4f60\u597d".encode() * 40, False),
                    (os.urandom(126), True), (b"y" * LIMIT, False)]
        for payload, binary in messages:
            c.sendMessage(payload, isBinary=binary)
            s.sendMessage(payload, isBinary=binary)
        c.sendPing(b"p1")
        c.sendMessage(b"after the ping")
        c.sendMessage(b"z" * 50, fragmentSize=7)  # a fragmented message: Autobahn's way, whole at the end
        s.sendMessage(b"last")
        pump.flush()
        self.assertEqual(s.received, [*messages, (b"after the ping", False), (b"z" * 50, False)])
        self.assertEqual(c.received, [*messages, (b"last", False)])
        self.assertEqual(c.pongs, [b"p1"])
        # Too large for the limit: the receiver closes with 1009, as Autobahn does.
        c.transport.write(wire(1, b"q" * (LIMIT + 1)))  # the sender's own limit would refuse it
        pump.flush()
        return s.closed, c.closed

    def test_fast_server_plain_client(self) -> None:
        self.exchange(FastServer, PlainClient)

    def test_plain_server_fast_client(self) -> None:
        self.exchange(PlainServer, FastClient)

    def test_fast_both(self) -> None:
        self.exchange(FastServer, FastClient)

    def test_client_masks_every_frame(self) -> None:
        """A fast client's frames are masked (a plain server refuses unmasked ones), with varying keys."""
        s, c, pump = pair(PlainServer, FastClient)
        c.sendMessage(b"one")
        c.sendMessage(b"one")
        sent = c.transport.stream
        self.assertEqual(len(sent), 2)
        self.assertTrue(all(chunk[1] & 0x80 for chunk in sent))
        self.assertNotEqual(sent[0], sent[1])  # different masks
        pump.flush()
        self.assertEqual(s.received, [(b"one", False)] * 2)

    def test_closing_from_onmessage_leaves_the_rest_to_autobahn(self) -> None:
        """A message that makes the server close stops the short way; Autobahn decides about the rest
        (it still delivers data frames while closing)."""
        results = []
        for base in (FastServer, PlainServer):
            class Closing(base):  # type: ignore[valid-type,misc]
                def onMessage(self, payload: bytes, isBinary: bool) -> None:
                    super().onMessage(payload, isBinary)
                    if self.state == self.STATE_OPEN:
                        self.sendClose(4000, "enough")
            s = server(Closing)
            s.dataReceived(wire(1, b"first") + wire(1, b"second"))
            self.assertEqual(s.state, s.STATE_CLOSING)
            results.append((s.received, s.transport.value()))
        self.assertEqual(results[0], results[1])

    def test_data_arriving_while_onmessage_runs_comes_after_the_rest(self) -> None:
        """A synchronous transport delivering more bytes from inside onMessage keeps the order."""
        class Reentrant(FastServer):
            def onMessage(self, payload: bytes, isBinary: bool) -> None:
                super().onMessage(payload, isBinary)
                if payload == b"1":
                    self.dataReceived(wire(1, b"3"))
        s = server(Reentrant)
        s.dataReceived(wire(1, b"1") + wire(1, b"2"))
        self.assertEqual([p for p, _ in s.received], [b"1", b"2", b"3"])


# -- the differential fuzz ---------------------------------------------------------------

_frames = st.one_of(
    # Well-formed whole text and binary frames: the short way's own.
    st.builds(lambda t: wire(1, t.encode()), st.text(max_size=60)),
    st.builds(lambda b: wire(2, b), st.binary(max_size=300)),
    st.builds(lambda n: wire(1, b"a" * n), st.integers(LIMIT - 2, LIMIT + 2)),
    # Everything else, for Autobahn.
    st.builds(lambda b: wire(1, b), st.binary(min_size=1, max_size=20)),  # often invalid UTF-8
    st.builds(lambda t: wire(1, t, fin=False) + wire(0, b"end"), st.binary(max_size=10)),
    st.builds(lambda b: wire(9, b), st.binary(max_size=20)),  # ping
    st.builds(lambda b: wire(10, b), st.binary(max_size=20)),  # pong
    st.builds(lambda b: wire(1, b, rsv=1), st.binary(max_size=10)),
    st.builds(lambda b: wire(1, b, mask=None), st.binary(max_size=10)),
    st.builds(lambda b, form: wire(2, b, length_form=form), st.binary(max_size=10), st.sampled_from([126, 127])),
    st.builds(lambda op: wire(op, b"x"), st.sampled_from([0, 3, 7, 11])),
    st.builds(lambda: wire(8, (1000).to_bytes(2, "big") + b"bye")),
    st.binary(max_size=6),  # noise
)


def run(cls: type, data: bytes, cuts: list[int]) -> tuple[Any, ...]:
    protocol = server(cls)
    pos = 0
    for cut in sorted(set(cuts)):
        if 0 < cut < len(data):
            protocol.dataReceived(data[pos:cut])
            pos = cut
    protocol.dataReceived(data[pos:])
    return (protocol.received, protocol.pongs, protocol.transport.value(), protocol.state,
            protocol.closed, protocol.transport.disconnecting)


class OptionsTests(unittest.TestCase):
    """Autobahn's options, read once the WebSocket is open, keep frames off the short way where they must."""

    def counting(self, **factory_attrs: Any) -> tuple[Any, list[int]]:
        calls: list[int] = []

        class Counting(FastServer):
            def processData(self) -> bool:
                calls.append(1)
                return super().processData()
        return server(Counting, **factory_attrs), calls

    def test_frames_logged_by_autobahn_are_read_by_autobahn(self) -> None:
        s, calls = self.counting(logFrames=True)
        s.dataReceived(wire(1, b"a"))
        self.assertEqual((s.received, bool(calls)), ([(b"a", False)], True))
        s, calls = self.counting()
        s.dataReceived(wire(1, b"a"))
        self.assertEqual((s.received, calls), ([(b"a", False)], []))

    def test_unmasked_frames_from_a_client_are_autobahns_to_answer(self) -> None:
        s, calls = self.counting()
        s.dataReceived(wire(1, b"a", mask=None))
        self.assertTrue(calls)
        self.assertEqual(s.received, [])
        self.assertNotEqual(s.state, s.STATE_OPEN)  # a protocol error: Autobahn fails the connection

    def test_frames_not_to_be_unmasked_are_read_by_autobahn(self) -> None:
        """applyMask off: Autobahn hands the payload over as it came; the short way would unmask it."""
        s, calls = self.counting(applyMask=False)
        plain = server(PlainServer, applyMask=False)
        for p in (s, plain):
            p.dataReceived(wire(1, b"abc"))
        self.assertTrue(calls)
        self.assertEqual(s.received, plain.received)
        self.assertNotEqual(s.received, [(b"abc", False)])

    def sends(self, **factory_attrs: Any) -> tuple[Any, list[int]]:
        """A fast server and the messages it left to Autobahn's sendMessage."""
        calls: list[int] = []

        class AutobahnSends(WebSocketServerProtocol):  # type: ignore[misc]
            def sendMessage(self, payload: bytes, *args: Any, **kwargs: Any) -> None:
                calls.append(len(payload))
                super().sendMessage(payload, *args, **kwargs)

        class Server(Recording, FastFrames, AutobahnSends):  # type: ignore[misc]
            pass
        return server(Server, **factory_attrs), calls

    def test_auto_fragmented_messages_are_written_by_autobahn(self) -> None:
        s, calls = self.sends(autoFragmentSize=8)
        s.sendMessage(b"x" * 20)
        sent = s.transport.value()
        self.assertEqual(sent[0], 0x01)  # text, FIN clear: the first of three fragments
        self.assertEqual(len(sent), 3 * 2 + 20)
        s.transport.clear()
        s.sendMessage(b"x" * 8)  # fits one fragment: the short way
        s.sendMessage(b"x" * 9)
        self.assertEqual(calls, [20, 9])

    def test_messages_within_the_limits_are_written_the_short_way(self) -> None:
        s, calls = self.sends()
        s.sendMessage(b"x" * LIMIT)
        self.assertEqual((calls, s.transport.value()), ([], frame(b"x" * LIMIT, False, False)))

    def test_masked_server_frames_are_written_by_autobahn_unless_masking_applies(self) -> None:
        s, calls = self.sends(maskServerFrames=True)
        s.sendMessage(b"abc")
        self.assertEqual(calls, [])
        self.assertEqual(s.transport.value()[1] & 0x80, 0x80)  # masked, by the short way
        s, calls = self.sends(maskServerFrames=True, applyMask=False)
        s.sendMessage(b"abc")
        self.assertEqual(calls, [3])

    def test_a_message_over_the_size_limit_is_autobahns_to_refuse(self) -> None:
        s = server(FastServer)
        with self.assertRaises(PayloadExceededError):
            s.sendMessage(b"x" * (LIMIT + 1))
        self.assertEqual(s.transport.value(), b"")


class DifferentialTests(unittest.TestCase):
    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.lists(_frames, max_size=8), st.lists(st.integers(0, 2500), max_size=6))
    def test_same_as_autobahn(self, frames: list[bytes], cuts: list[int]) -> None:
        data = b"".join(frames)
        self.assertEqual(run(FastServer, data, cuts), run(PlainServer, data, cuts))

    def test_the_fuzz_reaches_the_short_way(self) -> None:
        """The fuzz is not vacuous: whole frames do take the short way (Autobahn's parser is not called)."""
        calls: list[int] = []

        class Counting(FastServer):
            def processData(self) -> bool:
                calls.append(1)
                return super().processData()
        s = server(Counting)
        s.dataReceived(wire(1, b"a") + wire(2, b"b" * 300))
        self.assertEqual((s.received, calls), ([(b"a", False), (b"b" * 300, True)], []))
        s.dataReceived(wire(9, b"ping") + wire(1, b"c"))
        self.assertEqual(s.received[-1], (b"c", False))
        self.assertTrue(calls)


class WriteNowTests(unittest.TestCase):
    """write_now on real TCP: at once when nothing waits, in order always."""

    async def connected(self) -> tuple[Any, list[bytes], Any]:
        from twisted.internet import protocol
        from twisted.internet.defer import Deferred

        received: list[bytes] = []
        done: Deferred[None] = Deferred()

        class Sink(protocol.Protocol):
            def dataReceived(self, data: bytes) -> None:
                received.append(data)

            def connectionLost(self, reason: Any = None) -> None:
                done.callback(None)

        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Sink), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = await protocol.ClientCreator(reactor, protocol.Protocol).connectTCP(
            "127.0.0.1", port.getHost().port)

        async def close() -> None:
            client.transport.loseConnection()
            await done
        self.addCleanup(lambda: Deferred.fromCoroutine(close()))
        return client.transport, received, reactor

    async def test_sent_at_once_when_nothing_waits(self) -> None:
        from tests.support.wait import eventually
        from webtesting.fastframes import write_now

        transport, received, reactor = await self.connected()
        write_now(transport, b"hello")
        self.assertNotIn(transport, reactor.getWriters())  # not left for the next poll
        self.assertEqual((transport.dataBuffer, transport._tempDataLen), (b"", 0))
        await eventually(lambda: b"".join(received) == b"hello", what="the bytes")

    async def test_order_kept_behind_buffered_bytes(self) -> None:
        """Behind bytes Twisted still holds (a small write, then more than the socket takes), in order."""
        from tests.support.wait import eventually
        from webtesting.fastframes import write_now

        transport, received, _ = await self.connected()
        transport.write(b"first;")
        write_now(transport, b"second;")
        big = os.urandom(8 * 1024 * 1024)
        write_now(transport, big)  # more than a socket takes at once: the rest waits in Twisted's buffer
        write_now(transport, b";last")
        expected = b"first;second;" + big + b";last"
        await eventually(lambda: sum(map(len, received)) >= len(expected), timeout=20, what="all the bytes")
        self.assertEqual(b"".join(received), expected)

    async def test_nothing_sent_after_an_abort(self) -> None:
        """After abortConnection (its close still a turn away) nothing more reaches the peer."""
        from tests.support.wait import eventually
        from webtesting.fastframes import write_now

        transport, received, _ = await self.connected()
        write_now(transport, b"before;")
        await eventually(lambda: received, what="the first bytes")
        transport.abortConnection()
        write_now(transport, b"after")
        await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(b"".join(received), b"before;")

    async def test_a_reset_is_a_lost_connection(self) -> None:
        """A send that finds the peer's reset ends the connection as lost, not as closed cleanly."""
        import socket
        import struct
        import time as time_

        from twisted.internet import protocol
        from twisted.internet.defer import Deferred

        from webtesting.fastframes import write_now

        lost: Deferred[Any] = Deferred()
        made: Deferred[Any] = Deferred()

        class Server(protocol.Protocol):
            def connectionMade(self) -> None:
                made.callback(self.transport)

            def connectionLost(self, reason: Any = None) -> None:
                lost.callback([reason])  # a Failure as the result would be an errback

        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        peer = socket.create_connection(("127.0.0.1", port.getHost().port))
        transport = await made
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # a reset
        time_.sleep(0.1)  # the reset arrives; the reactor has not looked yet
        write_now(transport, b"into a reset connection")
        [reason] = await lost
        self.assertTrue(reason.check(ConnectionLost), reason)
