"""The one connection lifecycle, driven by a Clock and fake attempts."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial import unittest

from webtesting.lifecycle import UP, Backoff, DeferredDialer, Fault, Health, Lifecycle, Reason

NO_JITTER = Backoff(initial=1.0, maximum=8.0, factor=2.0, jitter=0.0)


class Attempts:
    """Fake enough of a connect function for a lifecycle: each call is an attempt the test ends."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []
        self.closed: list[Any] = []
        self.made = 0

    def open(self) -> Deferred[Any]:
        self.made += 1
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d

    def succeed(self, conn: Any = "conn") -> None:
        self.pending.pop(0).callback(conn)

    def fail(self, why: str = "refused") -> None:
        self.pending.pop(0).errback(Failure(ConnectionRefusedError(why)))


def classify(failure: Failure) -> Reason:
    text = failure.getErrorMessage()
    if text == "unknown":
        return Reason("x_unknown_host", "host unknown", Fault.UNKNOWN_HOST)
    if text == "bad address":
        return Reason("x_address_invalid", "cannot parse", Fault.UNUSABLE)
    return Reason("x_unreachable", f"refused: {text}")


class LifecycleTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.reports: list[Health] = []
        self.life = Lifecycle("test link", self.reports.append)
        self.attempts = Attempts()
        self.opened: list[Any] = []
        self.dialer = DeferredDialer(
            self.life, self.attempts.open, classify, clock=self.clock, backoff=NO_JITTER,
            on_open=self.opened.append, close=self.attempts.closed.append,
        )

    def tearDown(self) -> None:
        self.life.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_up_after_first_attempt(self) -> None:
        """A first attempt that works makes the link up, reported once, with the connection handed over."""
        self.life.start()
        self.assertEqual(self.life.state, "connecting")
        self.attempts.succeed("c1")
        self.assertEqual(self.life.state, "up")
        self.assertEqual(self.opened, ["c1"])
        self.assertEqual(self.reports, [UP])
        self.assertEqual(self.life.health, UP)

    def test_backoff_grows_and_resets(self) -> None:
        """Failures wait 1, 2, 4, 8, 8 s; once up, the next failure waits 1 s again."""
        self.life.start()
        delays = []
        for _ in range(5):
            self.attempts.fail()
            self.assertEqual(self.life.state, "backing off")
            (call,) = self.clock.getDelayedCalls()
            delays.append(call.getTime() - self.clock.seconds())
            self.clock.advance(delays[-1])
            self.assertEqual(self.life.state, "connecting")
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 8.0])
        self.attempts.succeed()
        self.life.lost(Reason("x_lost", "connection lost"))
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime() - self.clock.seconds(), 1.0)
        self.clock.advance(1.0)
        self.assertEqual(self.attempts.made, 7)

    def test_health_reported_once_per_change(self) -> None:
        """Repeated failures with the same reason report one change; a different reason reports again."""
        self.life.start()
        self.attempts.fail("refused")
        self.clock.advance(1)
        self.attempts.fail("refused")
        self.clock.advance(2)
        self.attempts.fail("reset")
        self.assertEqual(
            self.reports,
            [Health(False, "x_unreachable", "refused: refused"), Health(False, "x_unreachable", "refused: reset")],
        )

    def test_unknown_host_retried_at_longest_delay(self) -> None:
        """An unknown host is retried, at the longest delay, so a resolver hiccup needs no admin."""
        self.life.start()
        self.attempts.fail("unknown")
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime() - self.clock.seconds(), 8.0)
        self.assertEqual(self.life.health, Health(False, "x_unknown_host", "host unknown"))
        self.clock.advance(8)
        self.attempts.succeed()
        self.assertTrue(self.life.is_up)

    def test_unusable_waits_for_change(self) -> None:
        """An address that cannot parse is not retried until it changes; then it is tried at once."""
        self.life.start()
        self.attempts.fail("bad address")
        self.assertEqual(self.life.state, "unusable")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1000)
        self.assertEqual(self.attempts.made, 1)
        self.life.changed()
        self.assertEqual(self.attempts.made, 2)
        self.attempts.succeed()
        self.assertTrue(self.life.is_up)

    def test_changed_while_up_hangs_up_and_dials(self) -> None:
        """A changed address closes the open connection and dials the new one at once."""
        self.life.start()
        self.attempts.succeed("old")
        self.life.changed()
        self.assertEqual(self.attempts.closed, ["old"])
        self.assertEqual(self.life.state, "connecting")
        self.assertEqual(self.life.health, Health(False, "connecting", "connecting to the changed address"))
        self.attempts.succeed("new")
        self.assertEqual(self.opened, ["old", "new"])

    def test_changed_while_backing_off_cancels_timer(self) -> None:
        """A change while waiting dials now and leaves no retry timer behind."""
        self.life.start()
        self.attempts.fail()
        self.life.changed()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.attempts.made, 2)

    def test_stop_cancels_everything(self) -> None:
        """Stopping cancels the attempt under way and any timer, and reports nothing more."""
        self.life.start()
        pending = self.attempts.pending[0]
        self.life.stop()
        self.assertTrue(pending.called)  # cancelled
        self.assertEqual(self.life.state, "stopped")
        before = list(self.reports)
        self.life.lost(Reason("x", "late"))
        self.life.changed()
        self.assertEqual(self.reports, before)
        self.assertEqual(self.attempts.made, 1)

    def test_late_success_of_abandoned_attempt_is_closed(self) -> None:
        """An attempt given up on (changed address) that still succeeds is closed, not used."""
        self.life.start()
        first = self.attempts.pending[0]
        self.dialer._attempt = None  # the lifecycle moved on without cancelling
        first.callback("stale")
        self.assertEqual(self.attempts.closed, ["stale"])
        self.assertEqual(self.life.state, "connecting")

    def test_synchronous_failure(self) -> None:
        """A connect function that raises at once is a failure, not a crash."""
        life = Lifecycle("sync", self.reports.append)

        def boom() -> Deferred[Any]:
            raise ValueError("bad address")

        DeferredDialer(life, boom, classify, clock=self.clock, backoff=NO_JITTER)
        life.start()
        self.assertEqual(life.state, "unusable")
        self.assertEqual(life.health, Health(False, "x_address_invalid", "cannot parse"))

    def test_long_outage_logs_rarely(self) -> None:
        """A link down for 25 attempts logs its first failure, each new reason and every tenth attempt."""
        self.life.start()
        with capturedLogs() as events:
            for i in range(25):
                self.attempts.fail("reset" if i == 4 else "refused")
                self.clock.advance(8)
        attempts = [e["attempt"] for e in events if e.get("log_format", "").startswith("{name} down")]
        self.assertEqual(attempts, [1, 5, 6, 10, 20])
        self.assertEqual(self.life.failures, 25)
        self.attempts.succeed()
        self.assertEqual(self.life.failures, 0)

    def test_lost_while_backing_off_is_ignored(self) -> None:
        """A late loss report while already backing off schedules no second retry."""
        self.life.start()
        self.attempts.fail()
        self.life.lost(Reason("x", "late"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)


class KeptInputsTests(LifecycleTests):
    """The same, with the machine's inputs made once (as the web server's agent links do)."""

    def setUp(self) -> None:
        super().setUp()
        self.life = Lifecycle("test link", self.reports.append, keep_inputs=True)
        self.dialer = DeferredDialer(
            self.life, self.attempts.open, classify, clock=self.clock, backoff=NO_JITTER,
            on_open=self.opened.append, close=self.attempts.closed.append,
        )

    def test_inputs_are_kept_only_when_asked(self) -> None:
        """Kept inputs live on the instance (9 KB of code copies); by default nothing does."""
        self.assertIn("attempting", vars(self.life))
        self.assertNotIn("attempting", vars(Lifecycle("another", self.reports.append)))


class BackoffTests(unittest.TestCase):
    def test_jitter_spreads_within_bounds(self) -> None:
        """Jitter spreads a delay by at most its fraction either way, and never beyond the longest."""
        b = Backoff(initial=1.0, maximum=4.0, factor=2.0, jitter=0.1)
        self.assertAlmostEqual(b.delay(0, lambda: 0.0), 0.9)
        self.assertAlmostEqual(b.delay(0, lambda: 1.0), 1.1)
        self.assertAlmostEqual(b.delay(10, lambda: 0.5), 4.0)
        self.assertAlmostEqual(b.longest(lambda: 0.5), 4.0)

    def test_slow_after_a_long_outage(self) -> None:
        """Away slow_after seconds or more, the delay is slow_maximum at once; 0 never slows."""
        b = Backoff(initial=1.0, maximum=4.0, factor=2.0, jitter=0.0, slow_after=60.0, slow_maximum=15.0)
        self.assertEqual([b.delay(n) for n in range(4)], [1.0, 2.0, 4.0, 4.0])
        self.assertEqual((b.delay(20, down_for=59.9), b.delay(20, down_for=60.0), b.delay(0, down_for=61)),
                         (4.0, 15.0, 15.0))
        self.assertEqual((b.longest(down_for=10), b.longest(down_for=60)), (4.0, 15.0))
        never = Backoff(initial=1.0, maximum=4.0, factor=2.0, jitter=0.0)
        self.assertEqual(never.delay(1000, down_for=1e6), 4.0)

    def test_dialer_slows_down_after_a_long_outage(self) -> None:
        """A DeferredDialer counts the outage from its first failure; success starts the count over."""
        clock = Clock()
        life = Lifecycle("slow", lambda health: None)
        attempts = Attempts()
        DeferredDialer(life, attempts.open, classify, clock=clock,
                       backoff=Backoff(initial=1.0, maximum=8.0, jitter=0.0, slow_after=30.0, slow_maximum=20.0))
        life.start()
        waits = []
        for _ in range(8):
            attempts.fail()
            (call,) = clock.getDelayedCalls()
            waits.append(call.getTime() - clock.seconds())
            clock.advance(waits[-1])
        self.assertEqual(waits, [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 20.0, 20.0])
        life.stop()


class ReentrancyTests(unittest.TestCase):
    def test_stop_from_the_health_listener_leaves_no_retry(self) -> None:
        """A listener that stops the lifecycle when it hears of a failure gets no retry behind its back."""
        clock = Clock()
        life = Lifecycle("stopping", lambda health: life.stop())
        attempts = Attempts()
        DeferredDialer(life, attempts.open, classify, clock=clock, backoff=NO_JITTER)
        life.start()
        attempts.fail()
        self.assertEqual(life.state, "stopped")
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(attempts.made, 1)

    def test_change_from_unusable_is_reported(self) -> None:
        """Leaving an unusable address reports 'connecting' at once instead of the old reason."""
        clock = Clock()
        reports: list[Health] = []
        life = Lifecycle("moving", reports.append)
        attempts = Attempts()
        DeferredDialer(life, attempts.open, classify, clock=clock, backoff=NO_JITTER)
        life.start()
        attempts.fail("bad address")
        life.changed()
        self.assertEqual(reports[-1], Health(False, "connecting", "connecting to the changed address"))
        life.stop()
