"""The demo's guardian decides restarts and stops with a Clock and no process."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.task import Clock
from twisted.trial import unittest

from webtesting.guardian import Guardian


class FakeLauncher:
    """Fake enough of L{webtesting.guardian.Processes} for the guardian: records starts and signals."""

    def __init__(self) -> None:
        self.starts: list[str] = []
        self.signals: list[tuple[str, str]] = []
        self.ended: dict[str, Callable[[str], None]] = {}
        self.broken: set[str] = set()

    def start(self, name: str, ended: Callable[[str], None]) -> int:
        if name in self.broken:
            raise OSError("no such file")
        self.starts.append(name)
        self.ended[name] = ended
        return 1000 + len(self.starts)

    def signal(self, name: str, signal: str) -> None:
        self.signals.append((name, signal))

    def die(self, name: str, why: str = "killed by SIGKILL") -> None:
        self.ended[name](why)


class GuardianTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.launcher = FakeLauncher()
        self.lines: list[str] = []
        self.guardian = Guardian(self.launcher, self.clock, self.lines.append,
                                 initial=1.0, factor=2.0, maximum=30.0, stable_after=60.0, grace=10.0)

    def tearDown(self) -> None:
        stopped = self.guardian.stop()
        for name in self.guardian.running():
            self.launcher.die(name, "exit code 0")
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_restart_after_backoff(self) -> None:
        """A daemon that dies is restarted after the initial delay, with one line each, and the others keep running."""
        self.guardian.add("agent")
        self.guardian.add("bot")
        self.launcher.die("agent")
        self.assertEqual(self.guardian.running(), ["bot"])
        self.assertIn("agent died (killed by SIGKILL) after 0.0 s; restarting it in 1 s", self.lines[-1])
        self.clock.advance(0.9)
        self.assertEqual(self.launcher.starts, ["agent", "bot"])
        self.clock.advance(0.1)
        self.assertEqual(self.launcher.starts, ["agent", "bot", "agent"])
        self.assertEqual(self.guardian.running(), ["agent", "bot"])
        self.assertEqual(self.lines[-1], "restarted agent (pid 1003)")
        self.assertEqual(self.launcher.signals, [])

    def test_backoff_grows_caps_and_resets(self) -> None:
        """Quick deaths double the delay up to the cap, still retried and said so; a long run resets it."""
        self.guardian.add("agent")
        delays = []
        for _ in range(7):
            self.launcher.die("agent")
            (restart,) = self.clock.getDelayedCalls()
            delays.append(restart.getTime() - self.clock.seconds())  # type: ignore[misc]
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [1, 2, 4, 8, 16, 30, 30])
        self.assertIn("it keeps dying: retried every 30 s until it stays up", self.lines[-2])
        self.assertNotIn("keeps dying", self.lines[-8])
        self.clock.advance(60)
        self.launcher.die("agent")
        self.assertIn("after 60.0 s; restarting it in 1 s", self.lines[-1])
        self.clock.advance(1)
        self.assertEqual(self.guardian.running(), ["agent"])

    def test_unstartable_daemon_is_retried(self) -> None:
        """A daemon that cannot even be started counts as a death and is retried with the backoff."""
        self.launcher.broken.add("bot")
        self.guardian.add("bot")
        self.assertIn("bot died (could not start: no such file)", self.lines[-1])
        self.launcher.broken.clear()
        self.clock.advance(1)
        self.assertEqual(self.guardian.running(), ["bot"])
        self.assertEqual(self.lines[-1], "restarted bot (pid 1001)")

    def test_stop_cancels_pending_restarts(self) -> None:
        """Stopping cancels a pending restart, asks the running daemons to stop, and ends when they have."""
        self.guardian.add("redis")
        self.guardian.add("agent")
        self.guardian.add("web")
        self.launcher.die("agent")
        stopped = self.guardian.stop()
        self.assertEqual(self.launcher.signals, [("web", "TERM"), ("redis", "TERM")])
        self.assertNoResult(stopped)
        self.launcher.die("web", "killed by SIGTERM")
        self.launcher.die("redis", "exit code 0")
        self.successResultOf(stopped)
        self.assertEqual(self.lines[-1], "redis stopped (exit code 0)")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(self.launcher.starts, ["redis", "agent", "web"])
        self.guardian.add("late")
        self.assertEqual(self.launcher.starts, ["redis", "agent", "web"])

    def test_stop_kills_after_grace(self) -> None:
        """A daemon that ignores SIGTERM gets SIGKILL after the grace time."""
        self.guardian.add("stubborn")
        self.guardian.add("meek")
        stopped = self.guardian.stop()
        self.launcher.die("meek", "exit code 0")
        self.clock.advance(9.9)
        self.assertNotIn(("stubborn", "KILL"), self.launcher.signals)
        self.clock.advance(0.1)
        self.assertEqual(self.launcher.signals[-1], ("stubborn", "KILL"))
        self.assertEqual(self.lines[-1], "stubborn did not stop within 10 s: killing")
        self.launcher.die("stubborn")
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_gives_up_on_a_survivor(self) -> None:
        """Should a daemon survive SIGKILL, stopping still ends after another grace time."""
        self.guardian.add("zombie")
        stopped = self.guardian.stop()
        self.clock.advance(10)
        self.assertNoResult(stopped)
        self.clock.advance(10)
        self.successResultOf(stopped)
        self.assertIn("zombie still running after SIGKILL", self.lines[-1])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.launcher.die("zombie")

    def test_stop_with_nothing_running(self) -> None:
        """Stopping a guardian whose only daemon is waiting to restart ends at once."""
        self.guardian.add("agent")
        self.launcher.die("agent")
        self.successResultOf(self.guardian.stop())
        self.assertEqual(self.launcher.signals, [])
