"""
Live reload: SIGHUP (C{systemctl reload}) reads the daemon's YAML again.

What can change without closing a listener changes at once; whatever else
changed is named in the log as needing a restart. A file that does not
load (bad YAML, a wrong type, an unknown key) changes nothing: every
problem is logged, and the daemon keeps the configuration it runs with.

Each daemon gives a L{Reloader} its loader and its own C{apply}, which
takes the old and the new configuration and the dotted keys that differ,
applies what it can, and returns the keys it applied.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from webtesting.config import ConfigError

Apply = Callable[[Any, Any, set[str]], set[str]]


def with_interval(loop: LoopingCall, interval: float) -> LoopingCall:
    """
    The same timer every C{interval} seconds from now on (a LoopingCall
    cannot change its interval): a running one is stopped and a new one
    started, the next call an interval away; one not running is left as it is.
    """
    if not loop.running:
        return loop
    loop.stop()
    again = LoopingCall(loop.f, *loop.a, **loop.kw)
    again.clock = loop.clock
    again.start(interval, now=False)
    return again


def changed_keys(old: Any, new: Any, prefix: str = "") -> set[str]:
    """The dotted keys whose values differ between two configurations (frozen dataclasses)."""
    if dataclasses.is_dataclass(old) and type(old) is type(new):
        keys: set[str] = set()
        for f in dataclasses.fields(old):
            keys |= changed_keys(getattr(old, f.name), getattr(new, f.name), f"{prefix}{f.name}.")
        return keys
    return set() if old == new else {prefix.rstrip(".")}


class Reloader(service.Service):
    """Reads the configuration again on SIGHUP while running; see the module's docstring."""

    _log = Logger()

    def __init__(self, what: str, path: str | None, config: Any, load: Callable[[str | None], Any],
                 apply: Apply, reactor: Any) -> None:
        self.what = what
        self.path = path
        self.config = config
        self._load = load
        self._apply = apply
        self._reactor = reactor
        self._previous: Any = None
        # Called after each SIGHUP's reload, whatever came of it (worker 0 passes the signal on).
        self.also: list[Callable[[], None]] = []

    def startService(self) -> None:
        super().startService()
        # Signal handlers run between two bytecodes of whatever runs: the
        # reload itself waits for the reactor.
        self._previous = signal.signal(signal.SIGHUP, lambda *_: self._reactor.callFromThread(self._hangup))

    def stopService(self) -> Any:
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
        return super().stopService()

    def _hangup(self) -> None:
        self.reload()
        for hook in self.also:
            hook()

    def reload(self) -> set[str]:
        """Read the file again and apply what can change now; the keys applied."""
        where = self.path or "the built-in defaults"
        try:
            new = self._load(self.path)
        except ConfigError as e:
            for problem in e.problems:
                self._log.error("reload of {where}: {problem}", where=where, problem=problem)
            self._log.error("reload of {where} refused ({count} problems): the {what} keeps running as it was",
                            where=where, count=len(e.problems), what=self.what)
            return set()
        changed = changed_keys(self.config, new)
        if not changed:
            self._log.info("reloaded {where}: nothing changed", where=where)
            return set()
        try:
            applied = self._apply(self.config, new, changed)
        except Exception:  # noqa: BLE001 - logged with its traceback; the daemon keeps running
            self._log.failure("reload of {where}: applying the new configuration", where=where)
            return set()
        for key in sorted(changed - applied):
            self._log.warn("reload of {where}: {key} changed, which takes effect after a restart",
                           where=where, key=key)
        if applied:
            self._log.info("reloaded {where}: now in effect: {keys}", where=where, keys=", ".join(sorted(applied)))
        self.config = new
        return applied
