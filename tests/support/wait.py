"""Waiting for something to become true in real-network tests, with a limit."""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater


async def eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> float:
    """Poll C{check} (sync or async) until it returns truthy; return the seconds it took."""
    started = time.monotonic()
    last: Any = None
    while True:
        last = check()
        if isinstance(last, Awaitable):  # type: ignore[misc]
            last = await last
        if last:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what or check}")
        await deferLater(reactor, 0.02, lambda: None)


_handed_out: set[int] = set()


def free_port() -> int:
    """
    A loopback port free now, and never one this process was given before:
    the kernel may hand the same free port to two calls made before either
    is bound (seen: the bot and the browser WebSocket of one test).
    """
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise AssertionError("no fresh free port in 100 tries")


def _autobahn_bucket_pending() -> bool:
    return any(getattr(call.func, "__name__", "") == "_notify_bucket" for call in reactor.getDelayedCalls())


async def autobahn_timers_settled(timeout: float = 3.0) -> None:
    """
    Wait for Autobahn's batched timers (txaio) to fire. A close handshake
    that the server starts arms a timeout in a one-second bucket; cancelling
    that timeout leaves the bucket's delayed call behind until it fires, and
    trial counts it as a dirty reactor.
    """
    await eventually(lambda: not _autobahn_bucket_pending(), timeout, "Autobahn's batched timers to fire")
