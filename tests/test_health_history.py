"""
Each service's health history: the pure stretches/buckets/outages, the two
tables on SQLite and on real MariaDB (events written with the status, first
events, samples, pruning by age and by size), the sampler on a fake clock,
the HTTP routes, and real ping round trips reaching an agent link.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.support import mariadb
from tests.support.http import JSONClient
from tests.support.registry import RunningRegistry, seed_service
from webtesting.config import MySQLConfig, RegistryConfig
from webtesting.web.healthhistory import (
    DOWN,
    NONE,
    PARTIAL,
    UP,
    Event,
    HealthHistory,
    HealthSampler,
    Stretch,
    buckets,
    outages,
    stretches,
)

H = 3_600_000  # an hour in ms


def ev(at: int, status: int, code: str = "ok", msg: str = "ok") -> Event:
    return Event(at, status, code, msg)


class PureTests(unittest.TestCase):
    def test_stretches_cut_at_each_change(self) -> None:
        """The window is cut at each event; the last event before it says the health at its start."""
        events = [ev(0, 1), ev(10, 0, "bot_unreachable", "refused"), ev(20, 1), ev(40, 0, "x", "late")]
        parts = stretches(events, 5, 30)
        self.assertEqual([(p.start, p.end, p.state) for p in parts], [(5, 10, UP), (10, 20, DOWN), (20, 30, UP)])

    def test_no_record_before_the_first_event(self) -> None:
        parts = stretches([ev(10, 1)], 0, 20)
        self.assertEqual([(p.start, p.end, p.state) for p in parts], [(0, 10, NONE), (10, 20, UP)])
        self.assertEqual([(p.start, p.end, p.state) for p in stretches([], 0, 20)], [(0, 20, NONE)])

    def test_partial_code(self) -> None:
        """redis_partial is a partial outage: chat works, some state does not."""
        self.assertEqual(ev(0, 0, "redis_partial").state, PARTIAL)
        self.assertEqual(ev(0, 0, "redis_unreachable").state, DOWN)

    def test_buckets(self) -> None:
        """Each bucket: up, down, partial (mixed) or none; the worst reason and when it began; the p50."""
        events = [ev(0, 1), ev(15, 0, "bot_unreachable", "refused"), ev(20, 1), ev(30, 0, "agent_unreachable", "gone")]
        parts = stretches(events, 0, 40)
        samples = [(1, 2.0), (2, 4.0), (3, 9.0), (35, 1.0)]
        out = buckets(parts, samples, 0, 40, 4)
        self.assertEqual([b["state"] for b in out], [UP, PARTIAL, UP, DOWN])
        self.assertEqual([b["notUpMs"] for b in out], [0, 5, 0, 10])
        self.assertEqual((out[1]["code"], out[1]["reason"], out[1]["at"]), ("bot_unreachable", "refused", 15))
        self.assertEqual((out[3]["code"], out[3]["at"]), ("agent_unreachable", 30))
        self.assertIsNone(out[0]["reason"])
        self.assertEqual([b["p50Ms"] for b in out], [4.0, None, None, 1.0])
        self.assertEqual([b["start"] for b in out], [0, 10, 20, 30])

    def test_bucket_with_no_record(self) -> None:
        out = buckets(stretches([ev(25, 1)], 0, 40), [], 0, 40, 4)
        self.assertEqual([b["state"] for b in out], [NONE, NONE, UP, UP])

    def test_down_beats_partial_as_the_worst(self) -> None:
        events = [ev(0, 0, "redis_partial", "half"), ev(3, 0, "redis_unreachable", "all"), ev(6, 1)]
        [bucket] = buckets(stretches(events, 0, 10), [], 0, 10, 1)
        self.assertEqual((bucket["state"], bucket["code"], bucket["notUpMs"]), (PARTIAL, "redis_unreachable", 6))

    def test_outages(self) -> None:
        """Consecutive times not up are one outage (its first reason, every reason); one still going has no
        end; newest first."""
        events = [ev(0, 1), ev(10, 0, "bot_unreachable", "refused"), ev(12, 0, "bot_unreachable", "timed out"),
                  ev(20, 1), ev(30, 0, "redis_partial", "half"), ev(40, 1), ev(50, 0, "agent_unreachable", "gone")]
        parts = stretches(events, 0, 60)
        out = outages(parts, 60)
        self.assertEqual([(o["start"], o["end"], o["durationMs"], o["state"], o["reason"]) for o in out], [
            (50, None, 10, DOWN, "gone"), (30, 40, 10, PARTIAL, "half"), (10, 20, 10, DOWN, "refused")])
        self.assertEqual(out[2]["reasons"], ["refused", "timed out"])
        self.assertEqual(outages([Stretch(0, 5, None)], 5), [])


class FakeLink:
    def __init__(self, status: int = 1, code: str = "ok", msg: str = "ok", rtts: list[float] | None = None) -> None:
        self.health = (status, msg)
        self.code = code
        self.rtts = rtts or []

    def take_rtts(self) -> list[float]:
        rtts, self.rtts = self.rtts, []
        return rtts


class TablesMixin:
    """The two tables on one database; run once per database."""

    def registry_config(self) -> RegistryConfig:
        raise NotImplementedError

    async def setUp(self) -> None:
        self.running = RunningRegistry(self.registry_config())
        self.client = await self.running.start()
        self.registry = self.running.registry
        self.now = 1_800_000_000.0
        self.history = HealthHistory(self.registry.db, self.registry.dialect_name, keep_days=7, max_rows=1000,
                                     clock=lambda: self.now)

    async def tearDown(self) -> None:
        await self.running.stop()

    async def add(self, n: int = 1) -> list[int]:
        await self.registry.add_services([seed_service(description=f"bot {i}") for i in range(n)])
        return [s["serviceId"] for s in await self.registry.list_services()][-n:]

    def rows(self, table: str) -> Any:
        return self.registry.db.run(lambda c: (c.execute(f"SELECT * FROM {table} ORDER BY 1, 2"), c.fetchall())[1])

    async def test_a_change_is_one_event(self) -> None:
        """set_status writes an event only when the stored health changes, with its code."""
        [sid] = await self.add()
        t0 = self.now
        self.assertTrue(await self.registry.set_status(sid, 1, "ok", "ok", at=t0))
        self.assertTrue(await self.registry.set_status(sid, 1, "ok", "ok", at=t0 + 1))  # the same: no event
        self.assertTrue(await self.registry.set_status(sid, 0, "bot refused", "bot_unreachable", at=t0 + 2))
        self.assertFalse(await self.registry.set_status(sid + 99, 0, "gone", "x", at=t0 + 3))
        rows = await self.rows("tb_health_event")
        self.assertEqual([tuple(r[1:]) for r in rows], [
            (sid, int(t0 * 1000), 1, "ok", "ok"), (sid, int((t0 + 2) * 1000), 0, "bot_unreachable", "bot refused")])

    async def test_seed_gives_each_new_service_one_event(self) -> None:
        a, b = await self.add(2)
        await self.registry.set_status(a, 1, "ok", "ok", at=self.now - 10)
        self.assertEqual(await self.history.seed([(a, 0, "x", "x"), (b, 0, "agent_unreachable", "gone")]), 1)
        self.assertEqual(await self.history.seed([(b, 1, "ok", "ok")]), 0)
        rows = await self.rows("tb_health_event")
        self.assertEqual([(r[1], r[3], r[4]) for r in rows], [(a, 1, "ok"), (b, 0, "agent_unreachable")])

    async def test_samples_once_per_time(self) -> None:
        """A second web server's sample for the same service and time is ignored, not an error."""
        a, b = await self.add(2)
        await self.history.record_samples(1000, {a: 1.5, b: 2.5})
        await self.history.record_samples(1000, {a: 9.0})
        await self.history.record_samples(2000, {})
        rows = await self.rows("tb_health_sample")
        self.assertEqual([tuple(r) for r in rows], [(a, 1000, 1.5), (b, 1000, 2.5)])

    async def test_prune_by_age_keeps_each_latest_event(self) -> None:
        a, b = await self.add(2)
        old = self.now - 8 * 86400
        await self.registry.set_status(a, 1, "ok", "ok", at=old)
        await self.registry.set_status(a, 0, "down", "x", at=old + 1)
        await self.registry.set_status(b, 1, "ok", "ok", at=old)
        await self.registry.set_status(b, 0, "down", "x", at=self.now - 10)
        await self.history.record_samples(int(old * 1000), {a: 1.0})
        await self.history.record_samples(int(self.now * 1000), {a: 2.0})
        self.assertEqual(await self.history.prune(), 2)  # a's first event, a's old sample
        # Each service keeps its last event before the cutoff: it says the health from then on.
        events = await self.rows("tb_health_event")
        self.assertEqual([(r[1], r[5]) for r in events], [(a, "down"), (b, "ok"), (b, "down")])
        self.assertEqual([r[1] for r in await self.rows("tb_health_sample")], [int(self.now * 1000)])
        # So the timeline still knows b was up until it went down, 10 s ago.
        [entry] = (await self.history.timeline([b], 24, 24))["services"]
        self.assertEqual([x["state"] for x in entry["buckets"]], [UP] * 23 + [PARTIAL])
        self.assertGreater(entry["uptime"], 99)

    async def test_prune_by_size(self) -> None:
        """Beyond max_rows, the oldest samples go."""
        [a] = await self.add()
        self.history.max_rows = 1000
        base = int(self.now * 1000) - 2000 * 1000
        for start in range(0, 1500, 500):
            await self.registry.db.run(lambda c, start=start: c.executemany(
                self.registry._dialect.sql("INSERT INTO tb_health_sample (serviceId, at, latencyMs) "
                                           "VALUES (%s, %s, %s)"),
                [[a, base + i * 1000, 1.0] for i in range(start, start + 500)]))
        await self.history.prune()
        rows = await self.rows("tb_health_sample")
        self.assertEqual(len(rows), 1000)
        self.assertEqual(rows[0][1], base + 500 * 1000)

    async def test_timeline_and_history(self) -> None:
        """A service down for an hour of the last day: its bucket, uptime, p50 and outage."""
        a, b = await self.add(2)
        day = self.now - 86400
        await self.registry.set_status(a, 1, "ok", "ok", at=day - 3600)
        await self.registry.set_status(a, 0, "bot refused", "bot_unreachable", at=self.now - 2 * 3600)
        await self.registry.set_status(a, 1, "ok", "ok", at=self.now - 3600)
        await self.history.record_samples(int((self.now - 600) * 1000), {a: 3.0})
        await self.history.record_samples(int((self.now - 300) * 1000), {a: 5.0})
        timeline = await self.history.timeline([a, b], 24, 24)
        first, second = timeline["services"]
        self.assertEqual(timeline["bucketMs"], H)
        self.assertEqual([x["state"] for x in first["buckets"]], [UP] * 22 + [DOWN, UP])
        self.assertEqual(first["buckets"][22]["reason"], "bot refused")
        self.assertEqual(first["buckets"][23]["p50Ms"], 4.0)
        self.assertAlmostEqual(first["uptime"], 100 * 23 / 24, places=3)
        self.assertEqual((second["uptime"], {x["state"] for x in second["buckets"]}), (None, {NONE}))
        history = await self.history.history(a)
        [outage] = history["outages"]
        self.assertEqual((outage["durationMs"], outage["code"], outage["reason"], outage["end"]),
                         (H, "bot_unreachable", "bot refused", int((self.now - 3600) * 1000)))

    async def test_deleting_a_service_drops_its_history(self) -> None:
        [a] = await self.add()
        await self.registry.set_status(a, 1, "ok", "ok")
        await self.history.record_samples(1000, {a: 1.0})
        await self.registry.delete_services([a])
        for table in ("tb_health_event", "tb_health_sample"):
            self.assertEqual(list(await self.rows(table)), [], table)

    async def test_http_routes(self) -> None:
        """Admins read the timeline and a service's outages; testers may not; bad queries are refused by name."""
        [a] = await self.add()
        await self.registry.set_status(a, 0, "bot refused", "bot_unreachable")
        status, answer = await self.client.call("GET", "/WebTesting/Health/timeline?hours=2&buckets=4")
        self.assertEqual(status, 200, answer)
        [service] = answer["services"]
        self.assertEqual((service["serviceId"], len(service["buckets"]), service["buckets"][-1]["state"]),
                         (a, 4, DOWN))
        status, answer = await self.client.call("GET", f"/WebTesting/Health/history?serviceId={a}")
        self.assertEqual(status, 200, answer)
        self.assertEqual([(o["end"], o["reason"]) for o in answer["outages"]], [(None, "bot refused")])
        for query, field in (("", "serviceId"), (f"?serviceId={a + 50}", "serviceId"), ("?serviceId=a", "serviceId")):
            status, answer = await self.client.call("GET", f"/WebTesting/Health/history{query}")
            self.assertEqual(status, 400, query)
            self.assertTrue(answer["msg"].startswith(field), answer)
        status, answer = await self.client.call("GET", f"/WebTesting/Health/history?serviceId={a}&days=3651")
        self.assertEqual((status, answer["msg"][:4]), (400, "days"))
        status, answer = await self.client.call("GET", "/WebTesting/Health/timeline?buckets=501")
        self.assertEqual((status, answer["msg"][:7]), (400, "buckets"))
        status, _answer = await self.client.call("POST", "/WebTesting/Health/timeline", {})
        self.assertEqual(status, 405)
        tester = JSONClient(self.client.base)
        self.addCleanup(tester.close)
        tester.cookie = await self.running.cookie("tess", "tester")
        for path in ("/WebTesting/Health/timeline", f"/WebTesting/Health/history?serviceId={a}"):
            status, _answer = await tester.call("GET", path)
            self.assertEqual(status, 403, path)


class SQLiteTablesTests(TablesMixin, unittest.TestCase):
    def registry_config(self) -> RegistryConfig:
        return RegistryConfig(sqlite_path=self.mktemp() + ".sqlite3")


class MariaDBTablesTests(TablesMixin, unittest.TestCase):
    def registry_config(self) -> RegistryConfig:
        database = mariadb.temporary_database(self)
        return RegistryConfig(mysql=MySQLConfig(host=mariadb.HOST, port=mariadb.PORT, user=mariadb.USER,
                                                password=mariadb.PASSWORD, database=database))


class FakeHistory:
    def __init__(self) -> None:
        self.seeded: list[Any] = []
        self.samples: list[Any] = []
        self.pruned = 0
        self.clock = Clock()

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def seed(self, rows: Any) -> Any:
        self.seeded.append(list(rows))
        return succeed(len(rows))

    def record_samples(self, at: int, samples: Any) -> Any:
        self.samples.append((at, dict(samples)))
        return succeed(None)

    def prune(self) -> Any:
        self.pruned += 1
        return succeed(0)


class SamplerTests(unittest.TestCase):
    def test_samples_medians_aligned_and_seeds_once(self) -> None:
        """Each interval: the median round trip per link in ms at an aligned time; a link with no pong has no
        sample; each service is seeded once; pruning runs at start and every prune interval."""
        history = FakeHistory()
        clock = history.clock
        links: dict[int, Any] = {1: FakeLink(rtts=[0.001, 0.003, 0.002]), 2: FakeLink(0, "agent_unreachable", "gone")}
        sampler = HealthSampler(history, links, clock, interval=60, prune_interval=3600)  # type: ignore[arg-type]
        clock.advance(5)
        sampler.startService()
        self.assertEqual(history.pruned, 1)
        clock.advance(60)
        self.assertEqual(history.seeded, [[(1, 1, "ok", "ok"), (2, 0, "agent_unreachable", "gone")]])
        self.assertEqual(history.samples, [(60_000, {1: 2.0})])
        links[3] = FakeLink(rtts=[0.01])
        clock.advance(60)
        self.assertEqual(history.seeded[-1], [(3, 1, "ok", "ok")])
        self.assertEqual(history.samples[-1], (120_000, {3: 10.0}))
        sampler.set_interval(300)
        clock.advance(299)
        self.assertEqual(len(history.samples), 2)
        clock.advance(1)
        self.assertEqual(len(history.samples), 3)
        clock.advance(3600)
        self.assertEqual(history.pruned, 2)
        sampler.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])
