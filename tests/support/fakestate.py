"""
Fake enough of a StateSource (webtesting.agent.server) for link and health
tests that are not about user state: it records who is watched and the
settings it was made with, and lets a test set each part's health: a call
to C{on_health(part, ok, why)} is what the part's next check finds (and a
sign that makes the agent check now). The real source is tested against a
real Redis Cluster, MariaDB and the reference bot elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from webtesting.agent.health import Finding
from webtesting.agent.status import StatusUpdate

CODES = {"redis": "redis_unreachable", "mysql": "mysql_unreachable", "wxservice": "bot_unreachable"}


class FakeStateSource:
    def __init__(self, service: dict[str, Any], on_health: Callable[[str, bool, str], None]) -> None:
        self.service = service
        self._signs = on_health
        self.watched: dict[str, tuple[str, str]] = {}
        self.closed = False
        self.findings: dict[str, Finding] = {part: Finding(part, True) for part in CODES}
        self.checked: list[str] = []

    def on_health(self, part: str, ok: bool, why: str, code: str | None = None) -> None:
        """What C{part}'s next check finds (and a sign to the agent to check now)."""
        self.findings[part] = Finding(part, True) if ok else Finding(part, False, code or CODES[part], why)
        self._signs(part, ok, why)

    def check(self, wx_url: str) -> Deferred[Any]:
        self.checked.append(wx_url)
        return defer.succeed(list(self.findings.values()))

    def watch(self, key: str, appid: str, uid: str, push: Callable[[Any], None], *, auto: bool = True) -> None:
        self.watched[key] = (appid, uid)

    def unwatch(self, key: str) -> None:
        self.watched.pop(key, None)

    def set_auto(self, key: str, auto: bool) -> None:
        pass

    def current(self, key: str) -> Deferred[Any]:
        return defer.succeed(StatusUpdate({}))

    def pipeline(self, commands: Any) -> Deferred[list[Any]]:
        self.written = list(commands)
        return defer.succeed([1 for _ in commands])

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
