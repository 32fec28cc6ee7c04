"""The garbage collector's tuning (webtesting.gctune) and its pauses in the metrics."""

from __future__ import annotations

import gc

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial import unittest

from webtesting import gctune, metrics


class GCTuningTests(unittest.TestCase):
    def setUp(self) -> None:
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)

    def test_started_daemon_tunes_and_freezes(self) -> None:
        """Starting the service (last in each daemon's tree) sets the thresholds and freezes what is there;
        stopping it puts both back."""
        gc.set_threshold(700, 10, 10)
        from twisted.internet.task import Clock

        tuning = gctune.GCTuning(Clock())
        tuning.startService()
        self.assertEqual(gc.get_threshold(), gctune.THRESHOLDS)
        self.assertGreater(gc.get_freeze_count(), 0)
        tuning.stopService()
        self.assertEqual((gc.get_threshold(), gc.get_freeze_count()), ((700, 10, 10), 0))

    def test_full_collection_every_ten_minutes(self) -> None:
        """An idle daemon allocates little, so its full collections may not come: one runs every FULL_EVERY s
        (sessions that lived long and closed wait in the oldest generation for one); none once stopped."""
        from twisted.internet.task import Clock

        clock = Clock()
        tuning = gctune.GCTuning(clock)
        tuning.startService()
        before = gc.get_stats()[2]["collections"]
        clock.advance(gctune.FULL_EVERY - 1)
        self.assertEqual(gc.get_stats()[2]["collections"], before)
        clock.advance(1)
        self.assertEqual(gc.get_stats()[2]["collections"], before + 1)
        tuning.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_daemons_have_it_last(self) -> None:
        """Both daemons' trees end with it, so that it starts once everything else has."""
        from twisted.internet.testing import MemoryReactorClock

        from webtesting.agent import tap as agent_tap
        from webtesting.web import tap as web_tap

        secret = "0123456789abcdef0123"
        for tap, text in ((web_tap, f"agents: {{auth: {{secret: {secret}}}}}\n"
                                    f"http: {{sessions: {{secret: {secret}}}}}\n"
                                    f"registry: {{sqlite_path: {self.mktemp()}.sqlite3}}\n"),
                          (agent_tap, f"auth: {{secret: {secret}}}\n")):
            path = self.mktemp() + ".yaml"
            with open(path, "w") as f:
                f.write(text)
            options = tap.Options()
            options.parseOptions(["--config", path])
            tree = tap.makeService(options, MemoryReactorClock())
            self.assertIsInstance(list(tree)[-1], gctune.GCTuning, tap.__name__)

    def test_pauses_are_counted(self) -> None:
        """Every collection's pause lands in webtesting_gc_pause_seconds, per generation."""
        def count() -> float:
            for family in text_string_to_metric_families(metrics.scrape().decode()):
                for sample in family.samples:
                    if sample.name == "webtesting_gc_pause_seconds_count" and sample.labels["generation"] == "2":
                        return sample.value
            raise AssertionError("no webtesting_gc_pause_seconds")

        before = count()
        gc.collect()
        self.assertEqual(count(), before + 1)
