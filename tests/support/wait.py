"""Waiting for something to become true in real-network tests, with a limit."""

from __future__ import annotations

import random
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


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Test servers listen below the kernel's ephemeral range: a port the kernel handed out (bind to port 0)
# could be taken a moment later as the local port of some outgoing connection, and the server that
# wanted it then fails to listen (seen: a demo's web server, six times over, in a clean-clone run).
PORT_RANGE = (10000, max(10001, min(_ephemeral_low(), 65536) - 1))


def port_is_free(port: int, host: str = "") -> bool:
    """Nothing listens on C{port} or holds it, on any address (C{host} "": all of them)."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """
    A port free now on every address, below the ephemeral range, and never
    one this process was given before (two calls made before either port is
    bound must not get the same one).
    """
    for _ in range(1000):
        port = random.randint(*PORT_RANGE)
        if port not in _handed_out and port_is_free(port):
            _handed_out.add(port)
            return port
    raise AssertionError(f"no fresh free port in {PORT_RANGE} in 1000 tries")


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
