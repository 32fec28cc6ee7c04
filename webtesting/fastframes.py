"""
A short way through Autobahn for the frames every chat is made of.

Each chat crosses every WebTesting process as small, whole (unfragmented,
uncompressed) text frames. Autobahn takes each through its general
machinery: a frame header object, a masker and a UTF-8 validator set up per
frame, some fifteen method calls (frame begin, data, end; message begin,
frame, end), traffic counters and debug logs whose arguments are built
whether or not they are logged. The relay bench's profiles put most of each
hop's Python time there.

L{FastFrames}, mixed in before Autobahn's protocol class, reads and writes
those frames itself, and hands everything else back to Autobahn
unchanged:

- Reading (C{dataReceived}), while the WebSocket is open and Autobahn is
  not in the middle of a frame or a message: each whole frame with FIN set,
  no RSV bits, opcode text or binary, masked as the RFC requires of the
  peer (clients mask, servers do not), a 7- or 16-bit length no larger than
  L{FastFrames.fast_limit} and the protocol's size limits, and (for text)
  valid UTF-8, goes straight to C{onMessage}. At the first frame that is
  anything else (a ping, a close, a fragment, a large or compressed frame,
  invalid UTF-8, a protocol violation) the rest of the bytes go to
  Autobahn's own parser, which answers as it always does (1002, 1007,
  1009, ...). A frame not yet whole waits in Autobahn's buffer, where
  either parser can pick it up.
- Writing (C{sendMessage}): a whole message that fits in a 16-bit length
  frame, with no compression negotiated, nothing queued and no
  fragmentation asked for, is framed (and masked, from the client side) in
  one step and written; anything else goes through Autobahn.

A class that overrides Autobahn's streaming hooks (C{onMessageBegin},
C{onMessageFrameBegin}, ...) must keep the frames those hooks are for off
the short way with L{FastFrames._fast_in_limit}, as the browser WebSocket
does for its size limit. Invalid UTF-8 in a text frame is found once the
frame is whole (Autobahn finds it at the first bad byte): the close (1007)
is the same, a little later.

What the short way depends on and cannot change once the WebSocket is
open (the negotiated compression; Autobahn's log, timing, masking and size
options, copied from the factory when the connection is made) is read
then, once per connection (L{FastFrames._fast_open}). Whole frames go to
C{onMessage} directly, as Autobahn's Twisted adapter (C{_onMessage}) does.

What is not done on the short way: Autobahn's traffic counters (shared and
never read here: L{webtesting.leanws}), its per-frame debug logs, and its
C{"message"} observer event (nothing here subscribes; the C{onMessage}
callback is what WebTesting uses). A data frame still counts as traffic
for the automatic ping, as in Autobahn.
"""

from __future__ import annotations

import errno
from random import getrandbits
from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import tcp
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

_OPEN = WebSocketProtocol.STATE_OPEN
_TEXT = 0x81  # FIN + text
_BINARY = 0x82  # FIN + binary


def unmask(payload: bytes, mask: bytes) -> bytes:
    """C{payload} XOR the repeated 4-byte C{mask} (RFC 6455 5.3), as one big-integer operation."""
    n = len(payload)
    if not n:
        return b""
    key = (mask * ((n + 3) >> 2))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def frame(payload: bytes, binary: bool, masked: bool) -> bytes:
    """One whole data frame for C{payload} (at most 65,535 bytes), masked with a random key if C{masked}."""
    n = len(payload)
    first = _BINARY if binary else _TEXT
    mask_bit = 0x80 if masked else 0
    head = bytes((first, mask_bit | n)) if n < 126 else bytes((first, mask_bit | 126, n >> 8, n & 0xFF))
    if not masked:
        return head + payload
    # As Autobahn does (random.getrandbits): the mask guards proxies' caches, not secrets.
    mask = getrandbits(32).to_bytes(4, "big")
    return head + mask + unmask(payload, mask)


_PLAIN_TCP = (tcp.Server, tcp.Client)

_SHAPES: dict[tuple[int, int, int, bool], tuple[int, int, int, bool]] = {}


def write_now(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport}, sending it at once when the transport is
    plain TCP with nothing waiting in its buffer.

    Twisted's C{write} buffers, asks the reactor to watch the socket for
    writing, sends at the next poll and stops watching: two C{epoll_ctl}
    calls and one more reactor event per message, for a socket that could
    have taken the bytes at once. Here they are sent at once; what the
    socket does not take (and anything on TLS, on a transport with bytes
    already waiting, or that is closing) goes through C{write} as before,
    so the order of bytes never changes.
    """
    if (type(transport) in _PLAIN_TCP and not transport._tempDataLen
            and len(transport.dataBuffer) == transport.offset and not transport.TLS
            and transport.connected and not transport.disconnecting and not transport._writeDisconnected
            and not transport._aborting and transport.producer is None):
        try:
            sent = transport.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                sent = 0
            else:
                _send_failed(transport)
                return
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def _send_failed(transport: Any) -> None:
    """
    A send found the connection gone (reset, broken pipe). The kernel has
    now reported its error and will not report it again, so the connection
    ends here with the reason Twisted gives a failed send (ConnectionLost),
    on the next reactor turn, the way Twisted's own C{abortConnection} ends
    one (rather than as "closed cleanly" when the next read finds the end).
    """
    if transport.disconnected or transport._aborting:
        return
    transport._aborting = True
    transport.stopReading()
    transport.stopWriting()
    transport.doRead = transport.doWrite = lambda *args, **kwargs: None
    transport.reactor.callLater(0, transport.connectionLost, Failure(ConnectionLost()))


class FastFrames:
    """Mixed in before Autobahn's protocol class (server or client)."""

    # Frames larger than this go through Autobahn (also bounded by the protocol's own size limits).
    fast_limit = 65535

    # What cannot change once the WebSocket is open, read then (L{_fast_open}): the mask bit the
    # peer's frames carry, or -1 if no frame is read on the short way; the largest payload read
    # on it by Autobahn's own limits; the largest message written on it, or -1 if none is; and
    # whether written frames are masked. None until open.
    _fast: tuple[int, int, int, bool] | None = None

    # Autobahn's, from the class this is mixed into.
    state: int
    data: bytes
    factory: Any
    current_frame: Any
    inside_message: bool
    transport: Any

    def _fast_open(self) -> tuple[int, int, int, bool]:
        """
        Read, once open, what the short way depends on and cannot change
        any more: compression is negotiated, Autobahn's options (logs,
        timings, masking, size limits) were copied from the factory when
        the connection was made.
        """
        server = bool(self.factory.isServer)
        plain = (self._perMessageCompress is None  # type: ignore[attr-defined]
                 and not (self.logOctets or self.logFrames or self.trackedTimings))  # type: ignore[attr-defined]
        read_mask = -1
        if plain and (not server or (self.requireMaskedClientFrames and self.applyMask)):  # type: ignore[attr-defined]
            read_mask = int(server)  # clients mask, servers do not
        read_limit = self.fast_limit
        for option in (self.maxFramePayloadSize, self.maxMessagePayloadSize):  # type: ignore[attr-defined]
            if 0 < option < read_limit:
                read_limit = option
        masked = bool(self.maskServerFrames if server else self.maskClientFrames)  # type: ignore[attr-defined]
        write_limit = -1
        if plain and (not masked or self.applyMask):  # type: ignore[attr-defined]
            write_limit = 65535
            for option in (self.autoFragmentSize, self.maxMessagePayloadSize):  # type: ignore[attr-defined]
                if 0 < option < write_limit:
                    write_limit = option
        # One tuple for every connection alike (a few kinds in a process), not one each.
        shape = (read_mask, read_limit, write_limit, masked)
        fast = _SHAPES.setdefault(shape, shape)
        if self.state == _OPEN:  # kept only once nothing of it can change (compression is negotiated)
            self._fast = fast
        return fast

    def _fast_in_limit(self) -> int:
        """The largest frame payload read on the short way (once open)."""
        fast = self._fast
        return (fast or self._fast_open())[1]

    def dataReceived(self, data: bytes) -> None:
        if self.state != _OPEN or self.current_frame is not None or self.inside_message:
            self._dataReceived(data)  # type: ignore[attr-defined]
            return
        fast = self._fast or self._fast_open()
        masked = fast[0]
        if masked < 0:
            self._dataReceived(data)  # type: ignore[attr-defined]
            return
        buf = self.data + data if self.data else data
        limit = self._fast_in_limit()
        on_message = self.onMessage  # type: ignore[attr-defined]  # what Autobahn's _onMessage calls
        whole = True  # what is left is (the start of) a frame the short way can take
        while True:
            end = len(buf)
            if end < 2:
                break
            b0 = buf[0]
            b1 = buf[1]
            if (b0 != _TEXT and b0 != _BINARY) or (b1 >> 7) != masked:
                whole = False
                break
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if end < 4:
                    break
                length = (buf[2] << 8) | buf[3]
                head = 4
                if length < 126:  # not the minimal encoding: Autobahn's answer
                    whole = False
                    break
            elif length == 127:
                whole = False
                break
            if length > limit:
                whole = False
                break
            if masked:
                start = head + 4
                stop = start + length
                if stop > end:
                    break
                payload = unmask(buf[start:stop], buf[head:start])
            else:
                stop = head + length
                if stop > end:
                    break
                payload = buf[head:stop]
            if b0 == _TEXT:
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    whole = False
                    break
            # What is left stays in Autobahn's buffer while onMessage runs: data that arrives
            # meanwhile (a synchronous transport calling dataReceived again) goes after it.
            self.data = buf[stop:]
            if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:  # type: ignore[attr-defined]
                self._cancelAutoPingTimeoutCall()  # type: ignore[attr-defined]
            on_message(payload, b0 == _BINARY)
            buf = self.data
            if self.state != _OPEN:
                # Closed or closing from onMessage: Autobahn decides what the rest is worth.
                whole = False
                break
        self.data = buf
        if not whole:
            self.consumeData()  # type: ignore[attr-defined]

    def sendMessage(self, payload: bytes, isBinary: bool = False, fragmentSize: int | None = None,
                    sync: bool = False, doNotCompress: bool = False) -> None:
        if self.state == _OPEN and fragmentSize is None and not sync and type(payload) is bytes:
            fast = self._fast or self._fast_open()
            if len(payload) <= fast[2] and not self.send_queue:  # type: ignore[attr-defined]
                write_now(self.transport, frame(payload, isBinary, fast[3]))
                return
        super().sendMessage(payload, isBinary, fragmentSize, sync, doNotCompress)  # type: ignore[misc]
