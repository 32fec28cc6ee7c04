"""
A TCP proxy a test can cut, freeze and restore: a real network fault between
our code and a real server, without touching the server itself.

- L{TCPProxy.cut}: existing connections are reset and new ones refused, as
  when the server stops or the network drops.
- L{TCPProxy.freeze}: connections are accepted and held but nothing is
  forwarded, as when the server hangs.
- L{TCPProxy.restore}: back to forwarding on the same port.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IListeningPort


class _Upstream(protocol.Protocol):
    def __init__(self, peer: _Downstream) -> None:
        self.peer = peer

    def connectionMade(self) -> None:
        self.peer.upstream = self
        self.peer.flush()

    def dataReceived(self, data: bytes) -> None:
        self.peer.forward_down(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.peer.transport.loseConnection()


class _Downstream(protocol.Protocol):
    factory: _ProxyFactory

    def __init__(self) -> None:
        self.upstream: _Upstream | None = None
        self.pending: list[bytes] = []
        self.held: list[bytes] = []

    def connectionMade(self) -> None:
        proxy = self.factory.proxy
        proxy.connections.add(self)
        client = protocol.ClientCreator(proxy.reactor, _Upstream, self)
        d = client.connectTCP(proxy.target_host, proxy.target_port)
        d.addErrback(lambda _: self.transport.abortConnection())

    def flush(self) -> None:
        if self.factory.proxy.frozen or self.upstream is None:
            return
        for data in self.pending:
            self.upstream.transport.write(data)
        for data in self.held:
            self.transport.write(data)
        self.pending, self.held = [], []

    def forward_down(self, data: bytes) -> None:
        if self.factory.proxy.frozen:
            self.held.append(data)
        else:
            self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        if self.factory.proxy.frozen or self.upstream is None:
            self.pending.append(data)
        else:
            self.upstream.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.proxy.connections.discard(self)
        if self.upstream is not None:
            self.upstream.transport.loseConnection()

    def abort(self) -> None:
        self.transport.abortConnection()
        if self.upstream is not None:
            self.upstream.transport.abortConnection()


class _ProxyFactory(protocol.ServerFactory):
    protocol = _Downstream

    def __init__(self, proxy: TCPProxy) -> None:
        self.proxy = proxy


class TCPProxy:
    def __init__(self, reactor: Any, target_host: str, target_port: int) -> None:
        self.reactor = reactor
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.frozen = False
        self.connections: set[_Downstream] = set()
        self._listening: IListeningPort | None = None

    def start(self) -> int:
        self._listening = self.reactor.listenTCP(self.port, _ProxyFactory(self), interface="127.0.0.1")
        self.port = self._listening.getHost().port
        return self.port

    @defer.inlineCallbacks
    def cut(self) -> Any:
        """Reset every connection and refuse new ones."""
        if self._listening is not None:
            listening, self._listening = self._listening, None
            yield listening.stopListening()
        for conn in list(self.connections):
            conn.abort()

    def freeze(self) -> None:
        self.frozen = True

    def restore(self) -> None:
        self.frozen = False
        if self._listening is None:
            self.start()
        for conn in list(self.connections):
            conn.flush()

    @defer.inlineCallbacks
    def stop(self) -> Any:
        self.frozen = False
        yield self.cut()
