"""
The load mode (webtesting.loadtest, ``webtesting-test load``): its settings
and bounds, the figures and thresholds on a clock the test drives, and the
real command against the real product with a small N: a run that meets its
thresholds exits 0 with a report, one that misses them exits 1 saying which,
and a service the server does not list is refused.
"""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.support.browser import PASSWORD, PagesSystem
from webtesting import loadtest
from webtesting.cases import StepResult
from webtesting.loadtest import LoadError, LoadSettings, Stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASE = os.path.join(ROOT, "examples", "reference-bot", "remembers-a-name.yaml")


class SettingsTests(unittest.TestCase):
    def test_durations_and_shares(self) -> None:
        self.assertEqual(loadtest.parse_seconds("2s"), 2.0)
        self.assertEqual(loadtest.parse_seconds("500ms"), 0.5)
        self.assertEqual(loadtest.parse_seconds("1.5"), 1.5)
        self.assertEqual(loadtest.parse_fraction("1%"), 0.01)
        self.assertEqual(loadtest.parse_fraction("0.2"), 0.2)
        for bad in ("fast", "2 minutes"):
            self.assertRaises(LoadError, loadtest.parse_seconds, bad)
        for bad in ("lots", "150%", "-1"):
            self.assertRaises(LoadError, loadtest.parse_fraction, bad)

    def test_bounds(self) -> None:
        LoadSettings(1, users=loadtest.MAX_USERS, ramp=30, duration=120).check()
        for settings, word in (
            (LoadSettings(1, users=0, ramp=0, duration=10), "users"),
            (LoadSettings(1, users=loadtest.MAX_USERS + 1, ramp=0, duration=10), "users"),
            (LoadSettings(1, users=5, ramp=0, duration=loadtest.MAX_SECONDS + 1), "duration"),
            (LoadSettings(1, users=5, ramp=20, duration=10), "ramp"),
        ):
            with self.assertRaises(LoadError) as caught:
                settings.check()
            self.assertIn(word, str(caught.exception))


class StatsTests(unittest.TestCase):
    def setUp(self) -> None:
        self.now = 100.0
        self.stats = Stats(lambda: self.now)

    def step(self, latency: float | None, problems: list[str] | None = None, error: str = "") -> None:
        self.stats.step(StepResult(0, "hi", problems=list(problems or []), answered_in=latency, error=error))

    def test_figures_by_second_and_thresholds(self) -> None:
        self.stats.user_started()
        for _ in range(98):
            self.step(0.010)
        self.step(0.500)
        self.step(0.500)
        self.now += 1.2
        self.stats.user_started()
        self.step(0.020, problems=["replies[0].text: expected 'a', got 'b'"])
        self.step(None, problems=["say: timeout"], error="aichatResp: no answer in 10 s")
        self.assertEqual(self.stats.window()["roundTrips"], 100, "the live line shows the last whole second")
        settings = LoadSettings(1, users=2, ramp=0, duration=2, max_p99=0.1, max_errors=0.05)
        summary = self.stats.summary(settings)
        self.assertEqual((summary["roundTrips"], summary["errors"], summary["failedChecks"], summary["steps"]),
                         (101, 1, 1, 102))
        # p99 of 101 samples (98 × 10 ms, 20 ms, 2 × 500 ms) is the 100th smallest.
        self.assertEqual((summary["p50"], summary["p99"], summary["max"]), (10.0, 500.0, 500.0))
        self.assertEqual([row["roundTrips"] for row in summary["timeline"]], [100, 1])
        self.assertEqual(summary["peakUsers"], 2)
        verdicts = {v["threshold"]: v["passed"] for v in summary["thresholds"]}
        self.assertEqual(verdicts, {"p99 <= 100 ms": False, "errors <= 5 %": True})
        self.assertFalse(summary["passed"])
        self.assertTrue(self.stats.summary(LoadSettings(1, 2, 0, 2, max_p99=0.5))["passed"])
        self.assertFalse(self.stats.summary(LoadSettings(1, 2, 0, 2, max_errors=0.01))["passed"])
        self.assertEqual(summary["reasons"][0]["count"], 1)

    def test_no_round_trips_fails_a_latency_threshold(self) -> None:
        self.stats.error("WebSocket: 429", counts_as_step=True)
        summary = self.stats.summary(LoadSettings(1, 1, 0, 1, max_p99=2.0, max_errors=0.5))
        self.assertEqual([v["passed"] for v in summary["thresholds"]], [False, False])

    def test_report_files(self) -> None:
        for latency in (0.01, 0.02, 0.03):
            self.step(latency)
            self.now += 1
        summary = self.stats.summary(LoadSettings(1, 1, 0, 3, max_p99=1.0))
        prefix = self.mktemp()
        paths = loadtest.write_report(summary, prefix, "Load <test>")
        self.assertEqual(paths, [prefix + ".json", prefix + ".html"])
        with open(prefix + ".json") as f:
            self.assertEqual(json.load(f)["roundTrips"], 3)
        with open(prefix + ".html") as f:
            page = f.read()
        self.assertIn("<title>Load &lt;test&gt;</title>", page)
        svg = page[page.index("<svg"):page.index("</svg>") + 6]
        ET.fromstring(svg)  # well-formed
        self.assertEqual(svg.count("<rect"), 3, "one bar per second")
        self.assertIn("<polyline", svg)


class LoadCommandTests(unittest.TestCase):
    timeout = 180

    async def setUp(self) -> None:
        self.system = PagesSystem(self)
        await self.system.start()
        self.system.add_user("tess", "tester")
        self.sid = await self.system.add_service()
        await self.system.wait_status(self.sid, 1)
        self.url = f"http://127.0.0.1:{self.system.http_port}"

    async def load(self, *args: str, case: str = CASE) -> tuple[str, int]:
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "webtesting.testcli", "load", "--url", self.url, "--user", "tess", *args, case],
            env={**os.environ, "WEBTESTING_PASSWORD": PASSWORD}, path=ROOT, reactor=reactor)
        return (out + err).decode(), code

    async def test_thresholds_and_report(self) -> None:
        """A small real run: live lines, a report, exit 0 within the thresholds and 1 beyond them."""
        prefix = os.path.abspath(self.mktemp())
        text, code = await self.load("--service", str(self.sid), "--users", "3", "--ramp", "1", "--duration", "4",
                                     "--max-p99", "5s", "--max-errors", "0%", "--report", prefix)
        self.assertEqual(code, 0, text)
        self.assertIn("users    3", text, "a live line shows the users")
        self.assertIn("PASS  p99 <= 5000 ms", text)
        self.assertIn("PASS  errors <= 0 %", text)
        with open(prefix + ".json") as f:
            summary = json.load(f)
        self.assertGreater(summary["roundTrips"], 3)
        self.assertEqual((summary["errors"], summary["failedChecks"], summary["peakUsers"]), (0, 0, 3))
        self.assertTrue(os.path.exists(prefix + ".html"))

        text, code = await self.load("--service", str(self.sid), "--users", "2", "--duration", "2",
                                     "--max-p99", "0.001ms", "--report", prefix)
        self.assertEqual(code, 1, text)
        self.assertIn("FAIL  p99 <= 0.001 ms", text)

    async def test_failed_checks_count_against_the_error_threshold(self) -> None:
        wrong = os.path.abspath(self.mktemp() + ".yaml")
        with open(wrong, "w", encoding="utf-8") as f:
            f.write("name: expects the wrong name\nappid: '1.00002'\nsteps:\n"
                    "  - say: my name is Alice\n    within: 1\n    expect: {replies: [{contains: Bob}]}\n")
        text, code = await self.load("--service", str(self.sid), "--users", "2", "--duration", "2",
                                     "--max-errors", "1%", "--report", os.path.abspath(self.mktemp()), case=wrong)
        self.assertEqual(code, 1, text)
        self.assertIn("FAIL  errors <= 1 %: 100.00 %", text)
        self.assertIn("× check: reply 1: contains: 'Bob' not in", text)

    async def test_refuses_what_is_not_a_registered_service(self) -> None:
        text, code = await self.load("--service", str(self.sid + 100), "--users", "1", "--duration", "1")
        self.assertEqual(code, 2, text)
        self.assertIn(f"service {self.sid + 100} is not a registered service", text)
        text, code = await self.load("--service", str(self.sid), "--users", "5000", "--duration", "1")
        self.assertEqual(code, 2, text)
        self.assertIn("users: 1 to 1000", text)
