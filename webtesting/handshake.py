"""
Bounds on a WebSocket opening handshake, for both servers (the browsers'
:2020 and the agent's :2021).

Autobahn keeps every byte of an opening handshake until it sees the blank
line that ends the headers, and searches the whole buffer again on each
arrival: a client that streams header lines without end keeps a core busy
and memory growing. L{BoundedHandshake} answers 431 and closes as soon as
the headers pass L{MAX_HEADER_BYTES} or L{MAX_HEADERS}, before anyone has
proved who they are.
"""

from __future__ import annotations

from typing import Any

MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 100
_END = b"\r\n\r\n"
# Bytes a client may send after its request before the handshake is answered.
_PIPELINED = 1024 * 1024


class BoundedHandshake:
    """Mixed in before Autobahn's C{WebSocketServerProtocol}."""

    data: bytes
    dropConnection: Any  # Autobahn's, from the class this is mixed into
    failHandshake: Any
    max_header_bytes = MAX_HEADER_BYTES
    max_headers = MAX_HEADERS

    _handed_over = False

    def processHandshake(self) -> None:
        if self._handed_over:
            # The request is being answered (onConnect may wait for the database);
            # whatever the client sent after it waits, bounded, until the WebSocket opens.
            if len(self.data) > self.max_header_bytes + _PIPELINED:
                self.dropConnection(abort=True)
            return
        end = self.data.find(_END, 0, self.max_header_bytes + len(_END))
        if end < 0:
            if len(self.data) > self.max_header_bytes:
                self._refuse_headers(f"the handshake's headers are larger than {self.max_header_bytes} bytes")
            return  # wait for the rest
        if self.data.count(b"\r\n", 0, end) > self.max_headers:  # the request line and the headers
            self._refuse_headers(f"the handshake has more than {self.max_headers} headers")
            return
        self._handed_over = True
        super().processHandshake()  # type: ignore[misc]

    def _refuse_headers(self, why: str) -> None:
        self.data = b""
        self.failHandshake(why, 431)
