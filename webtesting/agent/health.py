"""
A service's health as the agent reports it (``agentStatusReq``): checked on
the agent's own timer, not only when a user logs in, and reported with
hysteresis so that one change is one report.

A round of checks asks every part of the service at once (its WxService, every
master of its Redis Cluster, its MySQL) and gives one L{Finding} per part; the
service is up exactly when every part answered (L{verdict}).

L{HealthMonitor} decides when to check and what to report, and does no I/O
itself (the round is a function it is given; time comes from an injected
clock):

- Checks run every C{interval} seconds while the service looks up, every
  C{interval_down} seconds while it does not (or while a change waits to be
  confirmed).
- A change (up/down or the reason code or its details) is reported only after
  C{confirm} checks in a row agree on it, so a part that answers every other
  time does not make the status flap. The first verdict, and the first after
  the settings changed, is reported at once: there is nothing to confirm it
  against.
- A passive sign of trouble (a user's WxService link lost or not answering
  pings, a read error while polling user state) calls L{HealthMonitor.suspect},
  which starts a check now; many signs at once start one check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from webtesting.lifecycle import UP, Health


@dataclass(frozen=True)
class Finding:
    """What one check of one part showed: C{part} is "wxservice", "redis" or "mysql"."""

    part: str
    ok: bool
    code: str = "ok"
    msg: str = "ok"


def verdict(findings: Sequence[Finding]) -> Health:
    """Up when every part answered; otherwise the first failing part's code and every failing part's details."""
    bad = [f for f in findings if not f.ok]
    if not bad:
        return UP
    return Health(False, bad[0].code, "; ".join(f.msg for f in bad))


Check = Callable[[], "Deferred[Sequence[Finding]]"]


class HealthMonitor:
    """
    When to check a service, and which verdicts to report.

    @param check: runs one round of checks; fires with the findings (it
        should not fail: each part bounds its own time and reports its own
        failure as a finding).
    @param report: called with each reported L{Health}.
    @param min_gap: passive signs never start checks closer together than
        this (seconds), however many arrive.
    """

    _log = Logger()

    def __init__(
        self,
        name: str,
        check: Check,
        report: Callable[[Health], None],
        clock: Any,
        *,
        interval: float = 5.0,
        interval_down: float = 1.0,
        confirm: int = 2,
        min_gap: float = 0.2,
    ) -> None:
        self.name = name
        self._check = check
        self._report = report
        self._clock = clock
        self.interval = interval
        self.interval_down = interval_down
        self.confirm = max(1, confirm)
        self.min_gap = min_gap
        self.reported: Health | None = None  # the last verdict reported
        self.last: Health | None = None  # the last verdict seen
        self._candidate: Health | None = None  # a change waiting to be confirmed
        self._streak = 0
        self._timer: Any = None
        self._running: Deferred[Any] | None = None
        self._started_at = float("-inf")
        self._again = False  # a sign arrived while a check ran: check again after it
        self._stopped = True
        self.checks = 0
        self._generation = 0  # bumped by reset(): older checks' verdicts are ignored

    # -- control --------------------------------------------------------------

    def start(self) -> None:
        """Check now, then on the timer."""
        self._stopped = False
        self._schedule(0)

    def stop(self) -> None:
        """Stop checking; a check under way is cancelled (its connections dropped)."""
        self._stopped = True
        self._cancel()
        if self._running is not None:
            self._running.cancel()

    def suspect(self) -> None:
        """A passive sign of trouble: check now (or right after the check under way)."""
        if self._stopped:
            return
        if self._running is not None:
            self._again = True
            return
        self._schedule(max(0.0, self._started_at + self.min_gap - self._clock.seconds()))

    def reset(self) -> None:
        """The settings changed: the next verdict is reported at once, and it is checked now."""
        self._generation += 1
        self.reported = None
        self._candidate, self._streak = None, 0
        if self._running is not None:
            self._again = True
        elif not self._stopped:
            self._schedule(0)

    # -- the timer ---------------------------------------------------------------

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self, delay: float) -> None:
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= self._clock.seconds() + delay:
                return  # already due sooner
            self._timer.cancel()
        self._timer = self._clock.callLater(delay, self._run)

    def _run(self) -> None:
        self._timer = None
        if self._stopped or self._running is not None:
            return
        self._started_at = self._clock.seconds()
        self.checks += 1
        try:
            d = self._check()
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            self._log.failure("{name}: starting a health check", name=self.name)
            self._ended()
            return
        self._running = d
        generation = self._generation
        d.addCallbacks(self._judged, self._check_failed, callbackArgs=(generation,))
        d.addBoth(lambda _: self._ended())

    def _check_failed(self, failure: Failure) -> None:
        if self._stopped:
            return  # cancelled by stop()
        self._log.failure("{name}: a health check", failure, name=self.name)

    def _ended(self) -> None:
        self._running = None
        if self._stopped:
            return
        if self._again:
            self._again = False
            self._schedule(max(0.0, self._started_at + self.min_gap - self._clock.seconds()))
            return
        calm = self.last is not None and self.last.up and self._candidate is None
        self._schedule(self.interval if calm else self.interval_down)

    # -- judging -------------------------------------------------------------------

    def _judged(self, findings: Sequence[Finding], generation: int) -> None:
        if self._stopped or generation != self._generation:
            return  # a check of the settings before a reset: its word no longer counts
        self.judge(verdict(findings))

    def judge(self, health: Health) -> None:
        """Take one check's verdict: report it once C{confirm} checks in a row agree on a change."""
        self.last = health
        if self.reported is None:
            self._tell(health)
            return
        if health == self.reported:
            self._candidate, self._streak = None, 0
            return
        same_kind = (
            self._candidate is not None
            and (self._candidate.up, self._candidate.code) == (health.up, health.code)
        )
        self._streak = self._streak + 1 if same_kind else 1
        self._candidate = health
        if self._streak >= self.confirm:
            self._tell(health)

    def _tell(self, health: Health) -> None:
        self.reported = health
        self._candidate, self._streak = None, 0
        if health.up:
            self._log.info("{name}: up", name=self.name)
        else:
            self._log.warn("{name}: down ({code}: {msg})", name=self.name, code=health.code, msg=health.msg)
        try:
            self._report(health)
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            self._log.failure("{name}: reporting its health", name=self.name)
