"""
The registry while its database is away (SPEC §5 item 5), for real: MariaDB
behind a TCP proxy that the tests cut, freeze and restore.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pymysql
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.support import mariadb
from tests.support.registry import RunningRegistry, seed_service
from tests.support.tcpproxy import TCPProxy
from webtesting.config import MySQLConfig, RegistryConfig
from webtesting.dbpool import mysql_is_fault

RETRY = 0.2


class RegistryFaultTests(unittest.TestCase):
    async def setUp(self) -> None:
        self.database = mariadb.temporary_database(self)
        self.proxy = TCPProxy(reactor, mariadb.HOST, mariadb.PORT)
        self.proxy.start()
        self.running = RunningRegistry(self.config())

    def config(self, **changes: Any) -> RegistryConfig:
        config = RegistryConfig(
            mysql=MySQLConfig(
                host="127.0.0.1", port=self.proxy.port, user=mariadb.USER, password=mariadb.PASSWORD,
                database=self.database, connect_timeout=1.0, read_timeout=1.5, write_timeout=1.5,
            ),
            request_timeout=0.5,
            retry_interval=RETRY,
        )
        return replace(config, **changes)

    async def tearDown(self) -> None:
        await self.proxy.stop()
        await self.running.stop()

    async def timed(self, method: str, endpoint: str, body: Any = None) -> tuple[int, Any, float]:
        assert self.running.client is not None
        started = time.monotonic()
        status, answer = await self.running.client.call(method, f"/WebTesting/Service/{endpoint}", body)
        return status, answer, time.monotonic() - started

    def assertUnavailable(self, status: int, answer: Any, elapsed: float) -> None:
        self.assertEqual((status, answer["result"]), (503, 503), answer)
        self.assertIn("database is unavailable", answer["msg"])
        self.assertLess(elapsed, 1.0, "a request must fail within 1 s while the database is away")

    async def until_available(self, limit: float = 10.0) -> float:
        """Poll getServices until it succeeds; return how long that took."""
        started = time.monotonic()
        while time.monotonic() - started < limit:
            status, answer, _ = await self.timed("GET", "getServices")
            if status == 200:
                return time.monotonic() - started
            await deferLater(reactor, 0.05, lambda: None)
        self.fail(f"the registry did not recover within {limit} s: {self.running.registry.db.reason}")

    async def test_down_at_start(self) -> None:
        """With the database away at start, requests fail fast; once it is back they succeed with no restart."""
        await self.proxy.cut()
        await self.running.start()
        self.assertFalse(self.running.registry.db.available)
        for _ in range(3):
            self.assertUnavailable(*await self.timed("GET", "getServices"))
            self.assertUnavailable(*await self.timed("PUT", "addServices", [seed_service()]))
        self.proxy.restore()
        self.assertLess(await self.until_available(), 2.0)
        status, answer, _ = await self.timed("PUT", "addServices", [seed_service()])
        self.assertEqual((status, answer["affectedRows"]), (200, 1))

    async def test_goes_away_later(self) -> None:
        """When the connection drops mid-life, requests fail fast, then recover and nothing stored is lost."""
        await self.running.start()
        status, _, _ = await self.timed("PUT", "addServices", [seed_service(description="kept")])
        self.assertEqual(status, 200)
        await self.proxy.cut()
        for _ in range(5):
            self.assertUnavailable(*await self.timed("GET", "getServiceList"))
        self.assertUnavailable(*await self.timed("PUT", "addServices", [seed_service(description="lost")]))
        self.proxy.restore()
        await self.until_available()
        _, answer, _ = await self.timed("GET", "getServices")
        self.assertEqual([s["description"] for s in answer["servicdLists"]], ["kept"])

    async def test_frozen_database(self) -> None:
        """A database that stops answering costs one request its deadline; the next fail at once; it recovers."""
        await self.running.start()
        self.assertEqual((await self.timed("GET", "getServices"))[0], 200)
        self.proxy.freeze()
        self.assertUnavailable(*await self.timed("GET", "getServices"))
        status, answer, elapsed = await self.timed("GET", "getServices")
        self.assertUnavailable(status, answer, elapsed)
        self.assertLess(elapsed, 0.2, "while known to be away, requests must not wait")
        self.proxy.restore()
        await self.until_available()

    async def test_table_dropped(self) -> None:
        """A registry table dropped behind our back is an error answer, and it is recreated on reconnect."""
        await self.running.start()
        mariadb.execute(self.database, "DROP TABLE tb_service_info")
        status, answer, _ = await self.timed("GET", "getServices")
        self.assertEqual((status, answer["result"]), (500, 500))
        self.assertEqual(len(self.flushLoggedErrors(pymysql.err.ProgrammingError)), 1)
        # A reconnect (here forced by a cut) prepares the database again.
        await self.proxy.cut()
        self.assertUnavailable(*await self.timed("GET", "getServices"))
        self.proxy.restore()
        await self.until_available()


    async def test_timed_out_add_is_not_duplicated(self) -> None:
        """An add whose answer is a 503 after its deadline was rolled back: the admin's retry makes exactly one row."""
        await self.running.start()
        service = seed_service(description="once")
        # Frozen while the INSERT is on its way: no answer within the deadline.
        self.proxy.freeze()
        status, answer, elapsed = await self.timed("PUT", "addServices", [service])
        self.assertEqual((status, answer["result"]), (503, 503), answer)
        self.assertGreaterEqual(elapsed, 0.5)
        # Back before the driver's read timeout: the held INSERT reaches the
        # server and is answered; the thread must roll it back, not commit.
        self.proxy.restore()
        await self.until_available()
        status, answer, _ = await self.timed("PUT", "addServices", [service])
        self.assertEqual((status, answer["affectedRows"]), (200, 1), answer)
        # Past the read timeout (1.5 s) every thread has ended, so a late
        # commit of the first add would show by now.
        await deferLater(reactor, 1.6, lambda: None)
        rows = mariadb.execute(self.database, "SELECT COUNT(*) FROM tb_service_info WHERE description = 'once'")
        self.assertEqual(rows, [(1,)])

    async def test_queued_burst_is_not_failed_for_waiting(self) -> None:
        """Eight adds at once on two threads, each 0.3 s of work, all succeed though most wait longer than the
        deadline."""
        self.running = RunningRegistry(self.config(threads=2, request_timeout=1.0))
        await self.running.start()
        # Each insert takes 0.3 s on the server.
        mariadb.execute(self.database, "CREATE TRIGGER slow_insert BEFORE INSERT ON tb_service_info "
                                       "FOR EACH ROW SET @slept = SLEEP(0.3)")
        started = time.monotonic()
        answers = await gatherResults([
            Deferred.fromCoroutine(self.timed("PUT", "addServices", [seed_service(description=f"burst {i}")]))
            for i in range(8)
        ])
        self.assertGreater(time.monotonic() - started, 1.1, "the adds must have queued for the two threads")
        self.assertEqual([a[0] for a in answers], [200] * 8, [a[1] for a in answers])
        self.assertEqual(mariadb.execute(self.database, "SELECT COUNT(*) FROM tb_service_info"), [(8,)])
        self.assertTrue(self.running.registry.db.available)


class FaultClassificationTests(unittest.TestCase):
    def test_mysql_faults(self) -> None:
        """Errors meaning the server is away are faults; errors in the statement are not."""
        err = pymysql.err
        self.assertTrue(mysql_is_fault(err.OperationalError(2003, "Can't connect")))
        self.assertTrue(mysql_is_fault(err.OperationalError(2013, "Lost connection")))
        self.assertTrue(mysql_is_fault(err.OperationalError(1045, "Access denied")))
        self.assertTrue(mysql_is_fault(err.InterfaceError(0, "")))
        self.assertTrue(mysql_is_fault(ConnectionResetError()))
        self.assertFalse(mysql_is_fault(err.OperationalError(1644, "trigger said no")))
        self.assertFalse(mysql_is_fault(err.ProgrammingError(1146, "no such table")))
        self.assertFalse(mysql_is_fault(err.IntegrityError(1062, "duplicate")))
