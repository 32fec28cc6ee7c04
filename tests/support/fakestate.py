"""
Fake enough of a StateSource (webtesting.agent.server) for link and health
tests that are not about user state: it serves snapshots from a dict and
records the settings it was made with. The real source is tested against a
real Redis Cluster and MariaDB elsewhere.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred


class FakeStateSource:
    made: list["FakeStateSource"] = []

    def __init__(self, service: dict[str, Any], on_health: Callable[[str, bool, str], None]) -> None:
        self.service = service
        self.on_health = on_health
        self.states: dict[tuple[str, str], Any] = {}
        self.closed = False

    def read(self, users: list[tuple[str, str]]) -> Deferred[list[Any]]:
        return defer.succeed([self.states.get(u, {}) for u in users])

    def view(self, previous: Any, snapshot: Any) -> dict[str, Any]:
        return {"state": snapshot}

    def changed(self, previous: Any, snapshot: Any) -> bool:
        return bool(previous != snapshot)

    def close(self) -> Deferred[None]:
        self.closed = True
        return defer.succeed(None)


def fake_state_factory(sources: list[FakeStateSource]) -> Any:
    def make(service: dict[str, Any], reactor: Any, layout: Any, on_health: Callable[[str, bool, str], None]) -> Any:
        source = FakeStateSource(service, on_health)
        sources.append(source)
        return source

    return make
