"""
The agent's state poll: L{StatusPoller} reads the watched users' state
every second (a chunk of users at a time, through
L{webtesting.agent.statereader.StateReader}) and pushes each change to its
watcher; a poll still running when the next one is due makes that one skip.
What a change is: L{webtesting.agent.snapshot}.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from webtesting.agent.snapshot import Snapshot, User, changed, status_fields
from webtesting.agent.statereader import ReadError, StateReader
from webtesting.metrics import POLL_SECONDS

_log = Logger()


# -- polling ----------------------------------------------------------------


@dataclass(frozen=True)
class StatusUpdate:
    """
    What to tell a browser: the state fields (L{status_fields}), or why the
    state cannot be read (C{error}; C{fields} is None then).
    """

    fields: dict[str, Any] | None
    error: str | None = None


class _Watch:
    def __init__(self, user: User, push: Callable[[StatusUpdate], None], auto: bool) -> None:
        self.user = user
        self.push = push
        self.auto = auto
        self.sent: Snapshot | None = None
        self.error: str | None = None


class StatusPoller:
    """
    Polls the state of the watched users every C{interval} seconds and
    pushes each change (and each new read error, and its end) to the
    watcher's C{push}.

    A poll reads the watched users C{chunk} at a time, one
    L{StateReader.read} after the other, and pushes each chunk's changes as
    they come, so a poll of many users never holds the reactor for long.
    When a poll is still running at the next tick, that tick is skipped
    (counted in C{skipped}), so slow nodes never make polls pile up.
    """

    def __init__(self, reader: StateReader, clock: Any, interval: float = 1.0, *, chunk: int = 1000) -> None:
        self._reader = reader
        self._clock = clock
        self._interval = interval
        self.chunk = chunk
        self._watches: dict[Hashable, _Watch] = {}
        self._loop: LoopingCall | None = None
        self._running: Deferred[None] | None = None
        self.skipped = 0
        self.polls = 0
        self.last_seconds = 0.0  # how long the last poll took
        self.slowest = 0.0

    # -- who --

    def watch(
        self, key: Hashable, appid: str, uid: str, push: Callable[[StatusUpdate], None], *, auto: bool = True
    ) -> None:
        """Start watching a user for C{key} (e.g. a browser session): the first state has nothing new."""
        old = self._watches.get(key)
        if old is not None and old.user != (appid, uid):
            self._forget_user(old.user, key)
        self._watches[key] = _Watch((appid, uid), push, auto)

    def unwatch(self, key: Hashable) -> None:
        watch = self._watches.pop(key, None)
        if watch is not None:
            self._forget_user(watch.user, key)

    def _forget_user(self, user: User, key: Hashable) -> None:
        if not any(w.user == user for k, w in self._watches.items() if k != key):
            self._reader.forget(user)

    def set_auto(self, key: Hashable, auto: bool) -> None:
        """Turn automatic pushes for C{key} on or off."""
        watch = self._watches.get(key)
        if watch is not None:
            watch.auto = auto

    def watching(self) -> list[Hashable]:
        return list(self._watches)

    # -- on demand --

    def current(self, key: Hashable) -> Deferred[StatusUpdate]:
        """
        Read C{key}'s user now: the state with what changed since the last
        one sent for C{key} (which this becomes), or the read error.
        """
        watch = self._watches.get(key)
        if watch is None:
            return defer.fail(KeyError(key))
        d = self._reader.read([watch.user])

        def got(results: dict[User, Snapshot | ReadError]) -> StatusUpdate:
            result = results[watch.user]
            if isinstance(result, ReadError):
                watch.error = str(result)
                return StatusUpdate(None, str(result))
            update = StatusUpdate(status_fields(watch.sent, result))
            watch.sent, watch.error = result, None
            return update

        return d.addCallback(got)

    # -- the timer --

    def start(self) -> None:
        if self._loop is not None:
            return
        self._loop = LoopingCall(self._tick_quietly)
        self._loop.clock = self._clock
        d = self._loop.start(self._interval, now=False)
        d.addErrback(lambda f: _log.failure("state poll timer stopped", f))

    def set_interval(self, interval: float) -> None:
        """Poll every C{interval} seconds from now on (a live reload)."""
        self._interval = interval
        if self._loop is not None and self._loop.running:
            self._loop.stop()
            self._loop = None
            self.start()

    def stop(self) -> Deferred[None]:
        """Stop polling; fire once the poll that may be running has ended."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._running is None:
            return defer.succeed(None)
        done: Deferred[None] = Deferred()

        def ended(result: object) -> object:
            done.callback(None)
            return result

        self._running.addBoth(ended)
        return done

    def _tick_quietly(self) -> None:
        # Not returning the poll's Deferred: the LoopingCall keeps its own
        # schedule and tick() decides what to skip.
        try:
            self.tick()
        except Exception:  # noqa: BLE001 - a LoopingCall dies on its first exception
            _log.failure("state poll")

    def tick(self) -> Deferred[None] | None:
        """Poll once, unless the last poll is still running (then None)."""
        if self._running is not None:
            self.skipped += 1
            _log.debug("state poll skipped: the last one is still running")
            return None
        watches = [(k, w) for k, w in self._watches.items() if w.auto]
        if not watches:
            return None
        self.polls += 1
        started = self._clock.seconds()
        d: Deferred[Any] = defer.ensureDeferred(self._poll(watches))
        d.addErrback(lambda f: _log.failure("state poll", f))
        self._running = d

        def ended(_: object) -> None:
            self._running = None
            self.last_seconds = took = self._clock.seconds() - started
            self.slowest = max(self.slowest, took)
            POLL_SECONDS.observe(took)
            if took > self._interval:
                _log.warn("the state poll of {users} users took {took:.2f} s, more than its interval: "
                          "the next poll is late", users=len(watches), took=took)

        d.addBoth(ended)
        return d

    async def _poll(self, watches: list[tuple[Hashable, _Watch]]) -> None:
        # Users are read C{chunk} at a time, one read after the other, so
        # that with many users the reactor serves everyone else between
        # chunks (and the first changes are pushed sooner).
        by_user: dict[User, list[tuple[Hashable, _Watch]]] = {}
        for key, watch in watches:
            by_user.setdefault(watch.user, []).append((key, watch))
        users = list(by_user)
        for start in range(0, len(users), self.chunk):
            part = users[start : start + self.chunk]
            results = await self._reader.read(part)
            self._deliver(results, [kw for user in part for kw in by_user[user]])

    def _deliver(self, results: dict[User, Snapshot | ReadError], watches: list[tuple[Hashable, _Watch]]) -> None:
        for key, watch in watches:
            if self._watches.get(key) is not watch or not watch.auto:
                continue  # unwatched or paused while the poll ran
            try:
                update = self._update(watch, results.get(watch.user))
                if update is not None:
                    watch.push(update)
            except Exception:  # noqa: BLE001 - one watcher's failure must not stop the others
                _log.failure("pushing the state of {appid}:{uid}", appid=watch.user[0], uid=watch.user[1])

    @staticmethod
    def _update(watch: _Watch, result: Snapshot | ReadError | None) -> StatusUpdate | None:
        """What to push to C{watch} for this poll's C{result}, if anything."""
        if result is None:
            return None
        if isinstance(result, ReadError):
            if watch.error == str(result):
                return None  # said already
            watch.error = str(result)
            return StatusUpdate(None, str(result))
        if watch.error is None and not changed(watch.sent, result):
            return None
        update = StatusUpdate(status_fields(watch.sent, result))
        watch.sent, watch.error = result, None
        return update
