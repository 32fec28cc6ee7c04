"""
``twistd webtesting-agent``: the agent's service tree.

For now the agent only listens for the web server's WebSocket and logs who
connects; relaying (SPEC §4, §5 "Agent") builds on this tree.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from webtesting.config import AgentConfig, ConfigError, load


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, "YAML configuration file (see etc/agent.yaml); built-in defaults if left out"],
    ]

    def postOptions(self) -> None:
        try:
            self.config: AgentConfig = load(AgentConfig, self["config"])
            self.secret = self.config.auth.read(f"{self['config'] or '<defaults>'}: auth")
        except ConfigError as e:
            raise usage.UsageError(f"configuration errors:\n{e}") from None


class AgentServerProtocol(WebSocketServerProtocol):
    """One web server link; it is only logged until the relay exists."""

    _log = Logger()

    def onConnect(self, request: ConnectionRequest) -> None:
        self._log.info("web server link from {peer} on {path}", peer=request.peer, path=request.path)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._log.info("web server link closed ({code})", code=code)


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    config = options.config
    top = MultiService()
    factory = WebSocketServerFactory()
    factory.protocol = AgentServerProtocol
    factory.setProtocolOptions(maxMessagePayloadSize=1024 * 1024, autoPingInterval=10, autoPingTimeout=5)
    listener = StreamServerEndpointService(serverFromString(reactor, config.websocket.listen), factory)
    listener.setName("websocket")
    listener.setServiceParent(top)
    return top
