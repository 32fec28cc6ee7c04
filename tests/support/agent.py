"""An agent server running in this process on a loopback port, that a test can kill and start again."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor

from webtesting.agent.server import AgentFactory, AgentSettings, StateSourceFactory

SECRET = "test-agent-secret-0123456789"


class RunningAgent:
    def __init__(self, port: int, state_factory: StateSourceFactory, secret: str = SECRET,
                 settings: AgentSettings | None = None, tls: Any = None) -> None:
        self.port = port
        self.tls = tls  # a server TLS context factory: listen for wss://
        self.factory = AgentFactory(
            secret=secret, reactor=reactor, state_factory=state_factory,
            settings=settings or AgentSettings(retry_initial=0.1, retry_max=0.4),
        )
        self._listening: Any = None

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}/WebTesting/Agent"

    def start(self) -> None:
        if self.tls is not None:
            self._listening = reactor.listenSSL(self.port, self.factory, self.tls, interface="127.0.0.1")
        else:
            self._listening = reactor.listenTCP(self.port, self.factory, interface="127.0.0.1")

    async def kill(self) -> None:
        """Stop listening and drop every link, as when the process dies."""
        if self._listening is not None:
            listening, self._listening = self._listening, None
            await listening.stopListening()
        for proto in list(self.factory.open_links):
            proto.dropConnection(abort=True)
        from tests.support.wait import eventually

        await eventually(lambda: not self.factory.open_links, what="the agent's links closed")

    def links(self) -> list[Any]:
        return [p.link for p in self.factory.open_links if p.link is not None]
