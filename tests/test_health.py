"""The agent's health checks and their hysteresis, driven by a Clock and fake probes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from webtesting.agent.health import Finding, HealthMonitor, verdict
from webtesting.lifecycle import UP, Health

REDIS_DOWN = Finding("redis", False, "redis_partial", "Redis Cluster nodes unavailable: 127.0.0.1:7001")
BOT_DOWN = Finding("wxservice", False, "bot_unreachable", "WxService unreachable: connection refused")


class Probes:
    """Fake enough of a service's parts for the monitor: each round answers what the test set, at once or later."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.rounds = 0
        self.hold = False
        self.held: list[Deferred[Sequence[Finding]]] = []

    def check(self) -> Deferred[Sequence[Finding]]:
        self.rounds += 1
        if self.hold:
            d: Deferred[Sequence[Finding]] = Deferred()
            self.held.append(d)
            return d
        return defer.succeed(list(self.findings))


class HealthMonitorTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.probes = Probes()
        self.reports: list[Health] = []
        self.times: list[float] = []
        self.monitor = HealthMonitor("service 1", self.probes.check, self.report, self.clock,
                                     interval=5.0, interval_down=1.0, confirm=2)

    def report(self, health: Health) -> None:
        self.reports.append(health)
        self.times.append(self.clock.seconds())

    def tearDown(self) -> None:
        self.monitor.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def run_for(self, seconds: float, step: float = 0.125) -> None:
        for _ in range(int(round(seconds / step))):
            self.clock.advance(step)

    def test_first_verdict_at_once(self) -> None:
        """The first check runs at start and its verdict is reported at once, up or down."""
        self.probes.findings = [BOT_DOWN]
        self.monitor.start()
        self.clock.advance(0)
        self.assertEqual(self.reports, [Health(False, "bot_unreachable", BOT_DOWN.msg)])

    def test_checks_every_interval_while_up(self) -> None:
        """While up, the parts are checked every 5 s and nothing more is reported."""
        self.monitor.start()
        self.run_for(20.125)
        self.assertEqual(self.probes.rounds, 5)
        self.assertEqual(self.reports, [UP])

    def test_down_reported_after_two_agreeing_checks(self) -> None:
        """An idle service whose part goes down is reported down once, one interval_down after the first failing
        check."""
        self.monitor.start()
        self.clock.advance(0)
        self.probes.findings = [REDIS_DOWN]
        self.run_for(5.125)  # the check at 5 s fails: not reported yet
        self.assertEqual(self.reports, [UP])
        self.run_for(1.0)  # the check at 6 s agrees
        self.assertEqual(self.reports, [UP, verdict([REDIS_DOWN])])
        self.run_for(10)  # checked every second while down, nothing more to say
        self.assertEqual(len(self.reports), 2)
        self.assertEqual(self.probes.rounds, 2 + 1 + 10)

    def test_recovery_within_two_seconds(self) -> None:
        """While down, checks run every second, so a part back is reported up about two seconds later."""
        self.probes.findings = [BOT_DOWN]
        self.monitor.start()
        self.run_for(3)
        self.probes.findings = []
        back = self.clock.seconds()
        self.run_for(3)
        self.assertEqual([r.up for r in self.reports], [False, True])
        self.assertLessEqual(self.times[-1] - back, 2.0)

    def test_flapping_part_is_not_reported(self) -> None:
        """A part that fails every other check changes nothing: no flapping in the registry."""
        self.monitor.start()
        self.clock.advance(0)
        for n in range(20):
            self.probes.findings = [REDIS_DOWN] if n % 2 == 0 else []
            self.monitor.suspect()
            self.run_for(1.0)
        self.assertEqual(self.reports, [UP])

    def test_sign_checks_now(self) -> None:
        """A passive sign (a user link lost) starts a check at once, so detection does not wait for the interval."""
        self.monitor.start()
        self.clock.advance(0)
        self.probes.findings = [BOT_DOWN]
        self.clock.advance(0.5)
        self.monitor.suspect()
        self.clock.advance(0)
        self.assertEqual(self.probes.rounds, 2)
        self.run_for(1.0)
        self.assertEqual(self.reports, [UP, verdict([BOT_DOWN])])

    def test_many_signs_one_check(self) -> None:
        """Twenty signs at once (twenty users' links lost) start one check, and one more after it ends."""
        self.monitor.start()
        self.clock.advance(0)
        self.probes.hold = True
        self.clock.advance(0.5)
        for _ in range(20):
            self.monitor.suspect()
        self.clock.advance(0)
        self.assertEqual(self.probes.rounds, 2)
        for _ in range(20):
            self.monitor.suspect()
        self.probes.held.pop().callback([BOT_DOWN])
        self.clock.advance(0.2)
        self.assertEqual(self.probes.rounds, 3)
        self.probes.held.pop().callback([BOT_DOWN])
        self.assertEqual(self.reports, [UP, verdict([BOT_DOWN])])

    def test_new_details_confirmed_too(self) -> None:
        """A partial outage that spreads to another node is reported again, once confirmed."""
        self.probes.findings = [REDIS_DOWN]
        self.monitor.start()
        self.clock.advance(0)
        worse = Finding("redis", False, "redis_partial",
                        "Redis Cluster nodes unavailable: 127.0.0.1:7001; 127.0.0.1:7002")
        self.probes.findings = [worse]
        self.run_for(2.125)
        self.assertEqual(self.reports, [verdict([REDIS_DOWN]), verdict([worse])])

    def test_reset_reports_next_verdict_at_once(self) -> None:
        """After the settings change (a wrong wxServiceAddr), the next check's verdict is reported without waiting."""
        self.monitor.start()
        self.clock.advance(0)
        self.probes.findings = [BOT_DOWN]
        self.monitor.reset()
        self.clock.advance(0)
        self.assertEqual(self.reports, [UP, verdict([BOT_DOWN])])

    def test_verdict_names_every_failing_part(self) -> None:
        """The service is up exactly when every part answered; down, the first part's code and all the details."""
        self.assertEqual(verdict([Finding("redis", True), Finding("mysql", True)]), UP)
        both = verdict([Finding("wxservice", True), REDIS_DOWN, Finding("mysql", False, "mysql_unreachable", "m")])
        self.assertEqual((both.up, both.code), (False, "redis_partial"))
        self.assertEqual(both.msg, f"{REDIS_DOWN.msg}; m")

    def test_a_failing_check_keeps_the_timer(self) -> None:
        """A check that raises is logged and the timer goes on."""
        def broken() -> Any:
            raise RuntimeError("a bug")

        monitor = HealthMonitor("service 2", broken, self.reports.append, self.clock)
        monitor.start()
        self.run_for(3)
        monitor.stop()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)

    def test_check_of_old_settings_is_ignored_after_reset(self) -> None:
        """A check that started before the settings changed does not report its verdict unconfirmed."""
        self.monitor.start()
        self.clock.advance(0)
        self.assertEqual(self.reports, [UP])
        self.probes.hold = True
        self.run_for(5)
        [old_round] = self.probes.held
        self.monitor.reset()
        old_round.callback([REDIS_DOWN])  # the old, closed source failing
        self.assertEqual(self.reports, [UP])
        self.probes.hold = False
        self.run_for(1)
        # The first check of the new settings is reported at once: up.
        self.assertEqual(self.reports, [UP, UP])
