"""
Several messages in one WebSocket message on the web ⇄ agent link.

Under load, many browsers' chats cross the one link between a web server
and an agent in the same reactor turn. Sending each as its own WebSocket
message costs a frame to build and, on the other side, a frame to parse,
validate and dispatch: about half of each hop's work (bench/relay's
profile). Queued in one turn, they leave as one message at the start of the
next turn, one per line, and nothing waits: a lone message leaves one turn
later, before the reactor next polls.

A line is a message's JSON (or an agent's routed frame, which ends in JSON);
JSON as json.dumps writes it holds no raw newline, so the newline cannot
occur inside a message. Both ends agree on this at the WebSocket handshake:
the web server offers the subprotocol L{SUBPROTOCOL} and an agent that knows
it accepts it; with an older agent (or web server) the link carries one
message per WebSocket message, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SUBPROTOCOL = "webtesting.batch"
SEPARATOR = b"\n"
#: A batch is sent at once when it reaches this size (well under both ends'
#: 1 MiB message limit; a larger single message goes alone).
BATCH_BYTES = 256 * 1024


class Batcher:
    """Messages for one WebSocket, queued in one reactor turn, sent as one."""

    __slots__ = ("_reactor", "_send", "_queue", "_size", "_call")

    def __init__(self, reactor: Any, send: Callable[[bytes], None]) -> None:
        self._reactor = reactor
        self._send = send
        self._queue: list[bytes] = []
        self._size = 0
        self._call: Any = None

    def add(self, message: bytes) -> None:
        self._queue.append(message)
        self._size += len(message) + 1
        if self._size >= BATCH_BYTES:
            self.flush()
        elif self._call is None:
            self._call = self._reactor.callLater(0, self._flush_later)

    def _flush_later(self) -> None:
        self._call = None
        self.flush()

    def flush(self) -> None:
        """Send what is queued now."""
        if self._call is not None:
            self._call.cancel()
            self._call = None
        queue, self._queue, self._size = self._queue, [], 0
        if len(queue) == 1:
            self._send(queue[0])
        elif queue:
            self._send(SEPARATOR.join(queue))

    def drop(self) -> None:
        """The connection is gone: forget what is queued."""
        if self._call is not None:
            self._call.cancel()
            self._call = None
        self._queue, self._size = [], 0


def split(payload: bytes) -> list[bytes]:
    """The messages of one WebSocket message of a batching link."""
    if SEPARATOR not in payload:
        return [payload]
    return [part for part in payload.split(SEPARATOR) if part]
