"""
One lifecycle for every connection WebTesting keeps up, and its health.

Every link the daemons keep open — the web server's link to an agent, an
agent's WebSocket to WxService for one user, an agent's Redis Cluster and
MySQL, the reference bot's Redis, the registry database — goes through the
same states::

    idle ──start──▶ connecting ──connected──▶ up
                      │   ▲                    │
               failed │   │ (timer)       lost │
                      ▼   │                    │
                   backing off ◀───────────────┘
                      (an address that cannot parse: unusable, until changed)
    any ──stop──▶ stopped

and reports its health (up or down, a stable reason code and the details)
from one place, L{Lifecycle._report}, only when it changes.

The machine decides; a L{Dialer} does the I/O: it starts an attempt, starts
one after a backoff delay, resets its backoff once connected and hangs up.
Two dialers cover every connection: L{DeferredDialer} for anything opened by
a function returning a Deferred (Redis, MySQL probes), with its own timer on
an injected clock, and L{webtesting.wslink}'s reconnecting WebSocket client
factory, which is Twisted's C{ReconnectingClientFactory}.

Failures come in three kinds (L{Fault}): most are repaired by waiting
(refused, reset, timed out) and are retried with a growing delay; an unknown
host is retried at the longest delay, because a resolver may be down for a
moment; only an address that cannot parse is not retried until its record
changes (L{Lifecycle.changed}).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from automat import MethodicalMachine
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

T = TypeVar("T")


class Fault(enum.Enum):
    """What kind of failure an attempt met, which decides what happens next."""

    REPAIRABLE = "repairable"  # retried with a growing delay
    UNKNOWN_HOST = "unknown host"  # retried at the longest delay
    REFUSED = "refused"  # the peer refused us (authentication, certificate): retried at the longest delay
    UNUSABLE = "unusable"  # not retried until the address changes


@dataclass(frozen=True)
class Reason:
    """Why a connection is not up: a stable code for pages, and the details."""

    code: str
    detail: str
    fault: Fault = Fault.REPAIRABLE


@dataclass(frozen=True)
class Health:
    """What a lifecycle reports: up or not, a stable reason code, and the details."""

    up: bool
    code: str
    msg: str


UP = Health(True, "ok", "ok")


@dataclass(frozen=True)
class Backoff:
    """
    Delays between attempts: C{initial} × C{factor}ⁿ, at most C{maximum},
    each spread by ±C{jitter} so that many links that failed together do not
    all come back at the same instant.
    """

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0
    jitter: float = 0.1
    # Once a peer has been away this many seconds (0: never), the longest
    # delay becomes C{slow_maximum}: it is still noticed when it comes back,
    # but a thousand such peers do not keep a core busy with attempts.
    slow_after: float = 0.0
    slow_maximum: float = 0.0

    def ceiling(self, down_for: float = 0.0) -> float:
        """The longest delay for a peer away for C{down_for} seconds."""
        if self.slow_after and down_for >= self.slow_after:
            return max(self.maximum, self.slow_maximum)
        return self.maximum

    def delay(self, attempt: int, rand: Callable[[], float] = random.random, down_for: float = 0.0) -> float:
        ceiling = self.ceiling(down_for)
        # Slow: straight to the slow delay; else doubling up to the maximum.
        base = ceiling if ceiling > self.maximum else min(self.initial * self.factor ** min(attempt, 64), ceiling)
        return self._spread(base, rand)

    def longest(self, rand: Callable[[], float] = random.random, down_for: float = 0.0) -> float:
        return self._spread(self.ceiling(down_for), rand)

    def around(self, base: float, rand: Callable[[], float] = random.random) -> float:
        """C{base} spread by ±C{jitter}."""
        return self._spread(base, rand)

    def _spread(self, base: float, rand: Callable[[], float]) -> float:
        return base * (1 + self.jitter * (2 * rand() - 1)) if self.jitter else base


class Dialer(Protocol):
    """The I/O side of a L{Lifecycle}: it makes attempts, the machine decides when."""

    def dial(self) -> None:
        """Start an attempt now; its end comes back as an input of the lifecycle."""

    def redial(self, longest: bool) -> float:
        """Start an attempt after the backoff delay (the longest one if asked); return the delay."""

    def reset(self) -> None:
        """The connection is up: the next failure starts again from the shortest delay."""

    def hang_up(self) -> None:
        """Cancel a pending or running attempt and close the connection, if any."""


class Lifecycle:
    """
    The states of one connection and the one place its health is reported.

    @param name: names the connection in the log ("agent link 3").
    @param on_health: called with the new L{Health} whenever it changes.
    @param initial: the health reported before the first attempt ends.
    @param keep_inputs: make the machine's inputs once, for a connection
        that is retried often and of which there are few (see below).
    """

    _machine = MethodicalMachine()
    _log = Logger()

    def __init__(
        self,
        name: str,
        on_health: Callable[[Health], None],
        *,
        initial: Health = Health(False, "connecting", "connecting"),
        keep_inputs: bool = False,
    ) -> None:
        self.name = name
        self._on_health = on_health
        self.dialer: Dialer | None = None
        self._initial = initial
        self._reason = Reason(initial.code, initial.msg)
        self.health = initial
        self.state = "idle"  # mirrors the machine's state, for the log and for tests
        # Failed attempts since last up, and the detail last logged: a link
        # down for hours logs its first failure, each new reason and every
        # tenth attempt, not every retry.
        self.failures = 0
        self._logged_detail: str | None = None
        # Automat makes a new function (copying its code object: 6 us) each
        # time an input is looked up on an instance; a thousand dead agent
        # links look up two per attempt. Those keep their own, made once; but
        # the copies weigh 9 KB, so the agent's per-user links (10,000 of
        # them, retried only while their bot is away) make them as they go.
        if keep_inputs:
            for name in ("start", "attempting", "connected", "failed", "lost", "changed", "stop",
                         "_unusable_input"):
                setattr(self, name, getattr(self, name))

    # -- states --------------------------------------------------------------

    @_machine.state(initial=True)
    def _idle(self) -> None:
        "Not started."

    @_machine.state()
    def _connecting(self) -> None:
        "An attempt is under way."

    @_machine.state()
    def _up(self) -> None:
        "Connected: requests flow."

    @_machine.state()
    def _backing_off(self) -> None:
        "An attempt failed or the connection was lost; the dialer will try again."

    @_machine.state()
    def _unusable(self) -> None:
        "The address cannot be used; waiting for it to change."

    @_machine.state()
    def _stopped(self) -> None:
        "Stopped for good."

    # -- inputs --------------------------------------------------------------

    @_machine.input()
    def start(self) -> None:
        "Make the first attempt."

    @_machine.input()
    def attempting(self) -> None:
        "The dialer started an attempt after its backoff delay."

    @_machine.input()
    def connected(self) -> None:
        "The attempt succeeded (for a WebSocket: the handshake is done)."

    @_machine.input()
    def failed(self, reason: Reason) -> None:
        "The attempt failed."

    @_machine.input()
    def lost(self, reason: Reason) -> None:
        "An up connection was lost (closed, reset, or found frozen)."

    @_machine.input()
    def changed(self) -> None:
        "The address or settings changed: start over at once."

    @_machine.input()
    def stop(self) -> None:
        "Stop for good: cancel attempts, close the connection."

    # -- outputs -------------------------------------------------------------

    @_machine.output()
    def _now_connecting(self) -> None:
        self.state = "connecting"

    @_machine.output()
    def _now_up(self) -> None:
        self.state = "up"
        self.failures = 0
        self._logged_detail = None
        self._log.info("{name} up", name=self.name)

    @_machine.output()
    def _now_backing_off(self) -> None:
        self.state = "backing off"

    @_machine.output()
    def _now_unusable(self) -> None:
        self.state = "unusable"

    @_machine.output()
    def _now_stopped(self) -> None:
        self.state = "stopped"

    @_machine.output()
    def _remember(self, reason: Reason) -> None:
        self._reason = reason

    @_machine.output()
    def _moved(self) -> None:
        self._reason = Reason(self._initial.code, "connecting to the changed address")

    @_machine.output()
    def _dial(self) -> None:
        assert self.dialer is not None, "a lifecycle needs a dialer before it starts"
        self.dialer.dial()

    @_machine.output()
    def _redial(self) -> None:
        if self.state != "backing off":
            return  # the health report's listener stopped or changed us meanwhile
        assert self.dialer is not None
        longest = self._reason.fault in (Fault.UNKNOWN_HOST, Fault.REFUSED)
        delay = self.dialer.redial(longest)
        self.failures += 1
        detail = self._reason.detail
        if self.failures == 1 or self.failures % 10 == 0 or detail != self._logged_detail:
            self._logged_detail = detail
            self._log.info(
                "{name} down ({detail}); retrying in {delay:.1f} s (attempt {attempt})",
                name=self.name, detail=detail, delay=delay, attempt=self.failures,
            )

    @_machine.output()
    def _reset(self) -> None:
        assert self.dialer is not None
        self.dialer.reset()

    @_machine.output()
    def _hang_up(self) -> None:
        if self.dialer is not None:
            self.dialer.hang_up()

    @_machine.output()
    def _give_up(self) -> None:
        if self.dialer is not None:
            self.dialer.hang_up()
        self._log.warn(
            "{name} down ({detail}); not retrying until the address changes",
            name=self.name, detail=self._reason.detail,
        )

    @_machine.output()
    def _report(self) -> None:
        # The one place health changes are reported. The state is the
        # machine's current one even when a dialer fed an input back while
        # an earlier output of the same transition ran.
        health = UP if self.state == "up" else Health(False, self._reason.code, self._reason.detail)
        if self.state == "stopped" or health == self.health:
            return
        self.health = health
        try:
            self._on_health(health)
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            self._log.failure("{name}: reporting its health", name=self.name)

    # -- transitions ---------------------------------------------------------
    # Dialing is always the last output: a dialer may feed an input back at
    # once (an address that cannot parse fails synchronously).

    _idle.upon(start, enter=_connecting, outputs=[_now_connecting, _report, _dial])
    _idle.upon(changed, enter=_idle, outputs=[])
    _idle.upon(stop, enter=_stopped, outputs=[_now_stopped])

    _connecting.upon(connected, enter=_up, outputs=[_now_up, _reset, _report])
    _connecting.upon(failed, enter=_backing_off, outputs=[_now_backing_off, _remember, _report, _redial])
    _connecting.upon(lost, enter=_backing_off, outputs=[_now_backing_off, _remember, _report, _redial])
    _connecting.upon(changed, enter=_connecting, outputs=[_hang_up, _dial])
    _connecting.upon(stop, enter=_stopped, outputs=[_now_stopped, _hang_up])

    _up.upon(lost, enter=_backing_off, outputs=[_now_backing_off, _remember, _report, _redial])
    _up.upon(failed, enter=_backing_off, outputs=[_now_backing_off, _remember, _report, _redial])
    _up.upon(changed, enter=_connecting, outputs=[_now_connecting, _moved, _hang_up, _report, _dial])
    _up.upon(stop, enter=_stopped, outputs=[_now_stopped, _hang_up])

    _backing_off.upon(attempting, enter=_connecting, outputs=[_now_connecting])
    _backing_off.upon(changed, enter=_connecting, outputs=[_now_connecting, _hang_up, _moved, _report, _dial])
    _backing_off.upon(stop, enter=_stopped, outputs=[_now_stopped, _hang_up])
    # A late word from an attempt that was already given up on.
    _backing_off.upon(lost, enter=_backing_off, outputs=[])
    _backing_off.upon(failed, enter=_backing_off, outputs=[])

    _unusable.upon(changed, enter=_connecting, outputs=[_now_connecting, _moved, _report, _dial])
    _unusable.upon(stop, enter=_stopped, outputs=[_now_stopped])
    _unusable.upon(lost, enter=_unusable, outputs=[])
    _unusable.upon(failed, enter=_unusable, outputs=[])

    for _input in (start, attempting, connected, failed, lost, changed, stop):
        _stopped.upon(_input, enter=_stopped, outputs=[])
    for _input in (attempting,):
        _idle.upon(_input, enter=_idle, outputs=[])
        _connecting.upon(_input, enter=_connecting, outputs=[])
        _up.upon(_input, enter=_up, outputs=[])
        _unusable.upon(_input, enter=_unusable, outputs=[])
    _unusable.upon(connected, enter=_unusable, outputs=[])
    _backing_off.upon(connected, enter=_backing_off, outputs=[])
    _up.upon(connected, enter=_up, outputs=[])
    _up.upon(start, enter=_up, outputs=[])
    _connecting.upon(start, enter=_connecting, outputs=[])
    _backing_off.upon(start, enter=_backing_off, outputs=[])
    _unusable.upon(start, enter=_unusable, outputs=[])
    del _input

    # An unusable address fails for good: the same failed input, told apart
    # by the reason's fault.
    def fail(self, reason: Reason) -> None:
        """The attempt failed: back off and retry, or wait for a change when the address is unusable."""
        if reason.fault is Fault.UNUSABLE:
            self._unusable_input(reason)
        else:
            self.failed(reason)

    @_machine.input()
    def _unusable_input(self, reason: Reason) -> None:
        "The address cannot be used."

    _connecting.upon(_unusable_input, enter=_unusable,
                     outputs=[_now_unusable, _remember, _give_up, _report])
    _backing_off.upon(_unusable_input, enter=_unusable,
                      outputs=[_now_unusable, _remember, _give_up, _report])
    _up.upon(_unusable_input, enter=_unusable, outputs=[_now_unusable, _remember, _give_up, _report])
    _idle.upon(_unusable_input, enter=_unusable, outputs=[_now_unusable, _remember, _give_up, _report])
    _unusable.upon(_unusable_input, enter=_unusable, outputs=[_remember, _report])
    _stopped.upon(_unusable_input, enter=_stopped, outputs=[])

    @property
    def is_up(self) -> bool:
        return self.state == "up"


class DeferredDialer(Generic[T]):
    """
    A L{Dialer} for anything opened by a function returning a Deferred.

    @param open: makes one attempt; fires with the connection.
    @param classify: turns an attempt's failure into a L{Reason}.
    @param on_open: given each new connection once the lifecycle is up; the
        owner watches it and calls C{lifecycle.lost(reason)} when it goes.
    @param close: closes a connection this dialer opened (on hang-up).
    """

    _log = Logger()

    def __init__(
        self,
        lifecycle: Lifecycle,
        open: Callable[[], Deferred[T]],
        classify: Callable[[Failure], Reason],
        *,
        clock: Any,
        backoff: Backoff,
        on_open: Callable[[T], None] = lambda conn: None,
        close: Callable[[T], Any] = lambda conn: None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._lifecycle = lifecycle
        self._open = open
        self._classify = classify
        self._clock = clock
        self._backoff = backoff
        self._on_open = on_open
        self._close = close
        self._rand = rand
        self._timer: Any = None
        self._attempt: Deferred[T] | None = None
        self._down_since = 0.0  # when the first of the failures in a row came
        self.connection: T | None = None
        lifecycle.dialer = self

    def dial(self) -> None:
        self._timer = None
        try:
            d = self._open()
        except Exception:  # noqa: BLE001 - whatever the opener raised is this attempt's failure
            d = defer.fail()
        self._attempt = d
        d.addCallbacks(self._opened, self._failed, callbackArgs=(d,), errbackArgs=(d,))
        d.addErrback(lambda f: self._log.failure("{name}: after an attempt", f, name=self._lifecycle.name))

    def _opened(self, connection: T, attempt: Deferred[T]) -> None:
        if attempt is not self._attempt:
            self._close(connection)  # an attempt given up on that still succeeded
            return
        self._attempt = None
        self.connection = connection
        # The owner holds the connection before anyone hears it is up.
        self._on_open(connection)
        self._lifecycle.connected()

    def _failed(self, failure: Failure, attempt: Deferred[T]) -> None:
        if attempt is not self._attempt:
            return  # given up on (hang_up clears it before cancelling)
        self._attempt = None
        self._lifecycle.fail(self._classify(failure))

    def redial(self, longest: bool) -> float:
        # The lifecycle counts the failures since it was last up.
        failures = self._lifecycle.failures
        now = self._clock.seconds()
        if failures == 0:
            self._down_since = now
        down_for = now - self._down_since
        delay = (self._backoff.longest(self._rand, down_for) if longest
                 else self._backoff.delay(failures, self._rand, down_for))
        self._timer = self._clock.callLater(delay, self._fire)
        return delay

    def _fire(self) -> None:
        self._timer = None
        if self._lifecycle.state != "backing off":
            return
        self._lifecycle.attempting()
        self.dial()

    def reset(self) -> None:
        pass  # the lifecycle's failure count restarts when it is up

    def hang_up(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._attempt is not None:
            attempt, self._attempt = self._attempt, None
            attempt.cancel()
        if self.connection is not None:
            connection, self.connection = self.connection, None
            self._close(connection)

    def forget(self) -> None:
        """The owner saw the connection go (it will call C{lost}): nothing left to close."""
        self.connection = None
