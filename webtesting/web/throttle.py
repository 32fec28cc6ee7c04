"""
The login throttle: a bound on password guesses that holds against parallel
guessing, without locking the real user out.

Every attempt takes a token, before its password is checked, from a bucket
per username and a bucket per address (token buckets: a small burst, then a
steady rate per hour), and gives it back if the password was right. Only one
check at a time runs per username and per address; a second one arriving
meanwhile is answered at once (429), not queued. So guesses sent in parallel
count exactly like guesses sent one after another.

The real user is not slowed by an attack from elsewhere: an attempt that
shows a device cookie (OWASP's "device cookies": signed, bound to the
username, set at a successful login) or comes from an address that logged
in as that user before, goes through its own lane: its own bucket per device
(or per address), not the username's bucket or lock. The address bucket
applies to everyone.

The figures (README, "Security"): at most C{per_username_hour} (100) guesses
per hour at one username from anywhere without its device cookie, plus the
burst; at most C{per_address_hour} (1,000) from one address over all
usernames. State is per web server process and bounded (C{max_keys}).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field


class Throttled(Exception):
    """Too many attempts: try again after C{retry_after} whole seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many login attempts; try again in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass(frozen=True)
class Limit:
    burst: float
    per_hour: float

    @property
    def per_second(self) -> float:
        return self.per_hour / 3600.0


@dataclass
class Attempt:
    """One login attempt let through; say how it ended with L{done}."""

    throttle: LoginThrottle
    keys: list[tuple[str, Limit]]
    username: str
    address: str
    _ended: bool = field(default=False, repr=False)

    def done(self, succeeded: bool) -> None:
        if self._ended:
            return
        self._ended = True
        self.throttle._finish(self, succeeded)


class LoginThrottle:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        per_username_hour: float = 100,
        per_address_hour: float = 1000,
        per_device_hour: float = 100,
        username_burst: float = 5,
        address_burst: float = 20,
        device_burst: float = 10,
        max_keys: int = 100_000,
        trust_for: float = 30 * 86400,
    ) -> None:
        self._clock = clock
        self.username = Limit(username_burst, per_username_hour)
        self.address = Limit(address_burst, per_address_hour)
        self.device = Limit(device_burst, per_device_hour)
        self._max_keys = max_keys
        self._trust_for = trust_for
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._busy: set[str] = set()
        # (username, address) pairs that logged in, and when: their own lane.
        self._trusted: OrderedDict[tuple[str, str], float] = OrderedDict()

    # -- the buckets -------------------------------------------------------------

    def _bucket(self, key: str, limit: Limit, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(limit.burst, now)
            self._buckets[key] = bucket
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            bucket.tokens = min(limit.burst, bucket.tokens + (now - bucket.stamp) * limit.per_second)
            bucket.stamp = now
            self._buckets.move_to_end(key)
        return bucket

    def trusted(self, username: str, address: str) -> bool:
        when = self._trusted.get((username, address))
        return when is not None and self._clock() - when < self._trust_for

    # -- attempts ------------------------------------------------------------------

    def begin(self, username: str, address: str, device: str | None = None) -> Attempt:
        """
        Let one attempt for C{username} from C{address} through, or raise
        L{Throttled}. C{device} is the id of a valid device cookie for this
        username, if the browser showed one.
        """
        now = self._clock()
        username = username.lower()
        if device is not None:
            lane = [(f"device:{username}:{device}", self.device)]
        elif self.trusted(username, address):
            lane = [(f"known:{username}:{address}", self.device)]
        else:
            lane = [(f"user:{username}", self.username)]
        keys = lane + [(f"addr:{address}", self.address)]
        if any(key in self._busy for key, _ in keys):
            raise Throttled(1)
        wait = 0.0
        for key, limit in keys:
            bucket = self._bucket(key, limit, now)
            if bucket.tokens < 1:
                wait = max(wait, (1 - bucket.tokens) / limit.per_second)
        if wait:
            raise Throttled(max(1, math.ceil(wait)))
        for key, limit in keys:
            self._bucket(key, limit, now).tokens -= 1  # counted now: as a failure until it succeeds
            self._busy.add(key)
        return Attempt(self, keys, username, address)

    def _finish(self, attempt: Attempt, succeeded: bool) -> None:
        now = self._clock()
        for key, limit in attempt.keys:
            self._busy.discard(key)
            if succeeded:
                bucket = self._bucket(key, limit, now)
                bucket.tokens = min(limit.burst, bucket.tokens + 1)
        if succeeded:
            pair = (attempt.username, attempt.address)
            self._trusted[pair] = now
            self._trusted.move_to_end(pair)
            while len(self._trusted) > self._max_keys:
                self._trusted.popitem(last=False)
