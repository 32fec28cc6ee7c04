"""
Fake enough of a StateSource (webtesting.agent.server) for link and health
tests that are not about user state: it records who is watched and the
settings it was made with, and lets a test report health. The real source
is tested against a real Redis Cluster and MariaDB elsewhere.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred

from webtesting.agent.status import StatusUpdate


class FakeStateSource:
    def __init__(self, service: dict[str, Any], on_health: Callable[[str, bool, str], None]) -> None:
        self.service = service
        self.on_health = on_health
        self.watched: dict[str, tuple[str, str]] = {}
        self.closed = False

    def watch(self, key: str, appid: str, uid: str, push: Callable[[Any], None], *, auto: bool = True) -> None:
        self.watched[key] = (appid, uid)

    def unwatch(self, key: str) -> None:
        self.watched.pop(key, None)

    def set_auto(self, key: str, auto: bool) -> None:
        pass

    def current(self, key: str) -> Deferred[Any]:
        return defer.succeed(StatusUpdate({}))

    def close(self) -> Deferred[None]:
        self.closed = True
        return defer.succeed(None)


def fake_state_factory(sources: list[FakeStateSource]) -> Any:
    def make(service: dict[str, Any], reactor: Any, layout: Any, on_health: Callable[[str, bool, str], None],
             poll_interval: float) -> Any:
        source = FakeStateSource(service, on_health)
        sources.append(source)
        return source

    return make
