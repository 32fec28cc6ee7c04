"""
The login throttle (webtesting/web/throttle.py): a bound on guesses that
holds against parallel guessing, measured over a simulated hour and over
real sockets, without slowing the real user down.
"""

from __future__ import annotations

import time

from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.support.http import JSONClient
from tests.support.registry import RunningRegistry
from webtesting.config import RegistryConfig
from webtesting.web.accounts import add_user_sync
from webtesting.web.registry import connect_sync
from webtesting.web.throttle import LoginThrottle, Throttled

LOGIN = "/WebTesting/Account/login"


def guesses_in_an_hour(throttle: LoginThrottle, clock: Clock, usernames: list[str], address: str,
                       step: float = 0.05) -> int:
    """Guess as fast as allowed for one simulated hour; how many got their password checked."""
    checked = 0
    for i in range(int(3600 / step)):
        try:
            attempt = throttle.begin(usernames[i % len(usernames)], address)
        except Throttled:
            pass
        else:
            checked += 1
            attempt.done(False)
        clock.advance(step)
    return checked


class ThrottleFigures(unittest.TestCase):
    def test_guesses_per_hour_per_username(self) -> None:
        """One username, guessed from many addresses: at most 100 an hour, plus the burst of 5."""
        clock = Clock()
        throttle = LoginThrottle(clock.seconds)
        checked = 0
        for i in range(int(3600 / 0.05)):
            try:
                throttle.begin("ann", f"10.0.{i % 250}.{i % 7}").done(False)
                checked += 1
            except Throttled:
                pass
            clock.advance(0.05)
        self.assertLessEqual(checked, 105)
        self.assertGreaterEqual(checked, 100)

    def test_guesses_per_hour_per_address(self) -> None:
        """One address, guessing many usernames: at most 1,000 an hour, plus the burst of 20."""
        clock = Clock()
        throttle = LoginThrottle(clock.seconds)
        checked = guesses_in_an_hour(throttle, clock, [f"user{i}" for i in range(5000)], "127.0.0.2")
        self.assertLessEqual(checked, 1020)
        self.assertGreaterEqual(checked, 1000)

    def test_counted_before_the_check_and_one_at_a_time(self) -> None:
        """An attempt counts as soon as it starts; a second one for the same username or address meanwhile is
        refused."""
        clock = Clock()
        throttle = LoginThrottle(clock.seconds)
        first = throttle.begin("ann", "127.0.0.2")
        with self.assertRaises(Throttled) as busy:
            throttle.begin("ann", "127.0.0.3")  # same username, elsewhere
        self.assertEqual(busy.exception.retry_after, 1)
        with self.assertRaises(Throttled):
            throttle.begin("bob", "127.0.0.2")  # same address, another username
        first.done(False)
        for _ in range(4):
            throttle.begin("ann", "127.0.0.2").done(False)
        with self.assertRaises(Throttled) as spent:
            throttle.begin("ann", "127.0.0.2")
        self.assertEqual(spent.exception.retry_after, 36)  # one token per 36 s at 100 an hour
        clock.advance(36)
        throttle.begin("ann", "127.0.0.2").done(True)  # a success gives its token back
        throttle.begin("ann", "127.0.0.2").done(False)

    def test_the_real_user_has_their_own_lane(self) -> None:
        """With the username's bucket spent by an attacker, a device cookie or a known address still gets through."""
        clock = Clock()
        throttle = LoginThrottle(clock.seconds)
        throttle.begin("ann", "127.0.0.1").done(True)  # the real user, once
        for _ in range(5):
            throttle.begin("ann", "127.0.0.2").done(False)
        with self.assertRaises(Throttled):
            throttle.begin("ann", "127.0.0.9")
        throttle.begin("ann", "127.0.0.1").done(True)  # known address
        throttle.begin("ann", "127.0.0.9", device="d1").done(True)  # device cookie
        # The attacker holding a check open for the username does not block the device lane either.
        clock.advance(36)
        attacker = throttle.begin("ann", "127.0.0.2")
        throttle.begin("ann", "127.0.0.5", device="d1").done(True)
        attacker.done(False)

    def test_memory_is_bounded(self) -> None:
        """Keys beyond max_keys evict the oldest."""
        throttle = LoginThrottle(Clock().seconds, max_keys=100)
        for i in range(1000):
            throttle.begin(f"u{i}", f"10.0.0.{i % 200}").done(False)
        self.assertLessEqual(len(throttle._buckets), 100)


class ThrottleOverHTTP(unittest.TestCase):
    async def setUp(self) -> None:
        config = RegistryConfig(sqlite_path=self.mktemp() + ".sqlite3")
        connection, dialect = connect_sync(config)
        add_user_sync(connection, dialect, "ann", "ann-password-1", "admin")
        connection.close()
        self.running = RunningRegistry(config)
        self.client = await self.running.start(role=None)
        self.addCleanup(self.running.stop)
        self.base = self.client.base

    def attacker(self, address: str = "127.0.0.2") -> JSONClient:
        client = JSONClient(self.base, persistent=True, bind=address)
        self.addCleanup(client.close)
        return client

    async def test_parallel_guesses_are_counted(self) -> None:
        """200 parallel wrong guesses: each gets an answer, at most the burst are checked, the rest get 429 with Retry-
        After."""
        attacker = self.attacker()
        started = time.monotonic()
        answers = await DeferredList(
            [ensureDeferred(attacker.call("POST", LOGIN, {"username": "ann", "password": f"guess-{i}"}))
             for i in range(200)],
            consumeErrors=True)
        took = time.monotonic() - started
        statuses = [result[0] for ok, result in answers if ok]
        self.assertEqual(len(statuses), 200)
        self.assertEqual(statuses.count(401) + statuses.count(429), 200)
        refused = next(result[1] for ok, result in answers if ok and result[0] == 429)
        self.assertEqual(refused["code"], "too_many_attempts")
        self.assertLess(took, 10)
        # Then one after another until the bucket says no: still only the burst was ever checked.
        checked = statuses.count(401)
        for i in range(10):
            status, _ = await attacker.call("POST", LOGIN, {"username": "ann", "password": f"again-{i}"})
            if status == 429:
                break
            checked += 1
        self.assertEqual(status, 429)
        self.assertLessEqual(checked, 6)  # the burst of 5, and one token refilled meanwhile at most
        retry = int(attacker.last_headers.getRawHeaders("retry-after")[0])
        self.assertTrue(1 <= retry <= 36, retry)

    async def test_real_user_is_not_slowed(self) -> None:
        """While an attacker hammers the admin's username from another address, the admin logs in at once."""
        admin = JSONClient(self.base)
        self.addCleanup(admin.close)
        self.assertEqual((await admin.login("ann", "ann-password-1"))[0], 200)
        self.assertTrue(admin.device.startswith("wt_device="))
        attacker = self.attacker()
        stop = [False]

        async def hammer() -> None:
            while not stop[0]:
                await attacker.call("POST", LOGIN, {"username": "ann", "password": "guess"})

        hammering = [hammer() for _ in range(20)]
        running = [ensureDeferred(h) for h in hammering]
        try:
            # The username's own bucket is spent by now (and a check may be open for it).
            status, _ = await self.attacker("127.0.0.3").call("POST", LOGIN, {"username": "ann", "password": "x" * 9})
            self.assertEqual(status, 429)
            for device in (admin.device, ""):  # with the device cookie, and from the known address without it
                fresh = JSONClient(self.base)
                self.addCleanup(fresh.close)
                fresh.device = device
                started = time.monotonic()
                status, _ = await fresh.login("ann", "ann-password-1")
                took = time.monotonic() - started
                self.assertEqual(status, 200, device)
                self.assertLess(took, 3.0)  # scrypt (about 0.5 s) and at most one attacker check ahead
        finally:
            stop[0] = True
            await DeferredList(running, consumeErrors=True)
