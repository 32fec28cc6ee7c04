"""
Smaller Autobahn connections: what every browser session (web server) and
every bot user (agent) pays for its WebSocket.

Autobahn copies some 40 options from its factory into each new protocol
(C{_connectionMade}: "only if not already set on protocol instance", and
C{hasattr} finds class attributes), and gives each its own C{TrafficStats}
of 12 counters that nobody here reads. Measured with
bench/bench_session_memory.py, that is about 2.3 KB of a connection's
Python heap. So:

- L{LeanFactory} keeps, after each C{setProtocolOptions}, a subclass of its
  protocol whose class attributes are the factory's options: new
  connections find them there and copy nothing. (Options set later apply to
  later connections, as with Autobahn's copy.)
- L{LeanProtocol} points every connection at one shared C{TrafficStats}.
"""

from __future__ import annotations

from typing import Any

from autobahn.websocket.protocol import TrafficStats

# One for every connection of this process: counted into, never read.
SHARED_TRAFFIC = TrafficStats()


class LeanProtocol:
    """Mixed in before Autobahn's protocol class."""

    def _connectionMade(self) -> None:
        super()._connectionMade()  # type: ignore[misc]
        self.trafficStats = SHARED_TRAFFIC


class LeanFactory:
    """Mixed in before Autobahn's factory class; its C{protocol} should mix in L{LeanProtocol}."""

    _lean_base: Any = None

    def setProtocolOptions(self, *args: Any, **options: Any) -> None:
        super().setProtocolOptions(*args, **options)  # type: ignore[misc]
        self._lean()

    def _lean(self) -> None:
        base = self._lean_base
        if base is None:
            base = self._lean_base = getattr(self, "protocol")  # noqa: B009 - Autobahn's, untyped
        options = {name: getattr(self, name) for name in base.CONFIG_ATTRS if hasattr(self, name)}
        self.protocol = type(base.__name__, (base,), {**options, "__module__": base.__module__})
