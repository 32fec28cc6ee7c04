"""
Each service's health over time, for the admin page's timeline bars,
latency sparklines and outage lists.

Two tables in the registry database:

- ``tb_health_event``: every change of a service's health, with its reason,
  written by L{webtesting.web.registry.Registry.set_status} in the same
  transaction as the status itself. A service first watched gets an event
  with the health it has then (L{HealthHistory.seed}), so that every
  service's history starts somewhere.
- ``tb_health_sample``: every C{sample_interval} seconds, the median round
  trip of the WebSocket pings on each service's agent link in that interval
  (web -> agent -> web, in milliseconds); none while the link is down.

Both are kept C{keep_days} (7) and at most C{max_rows} rows each, the
oldest going first; a service's last event before the cutoff is kept
whatever its age (it says what the health has been since). L{HealthSampler} writes the samples
and prunes. The functions that turn rows into stretches, buckets and
outages are pure and tested on their own.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from webtesting.dbpool import DatabaseUnavailable
from webtesting.reload import with_interval
from webtesting.web.schema import dialect_sql as _sql

# Reason codes under which the service still works in part (chat does; some state reads do not).
PARTIAL_CODES = frozenset({"redis_partial"})

UP, PARTIAL, DOWN, NONE = "up", "partial", "down", "none"

_log = Logger()


def state_of(status: int, code: str) -> str:
    """"up", "partial" or "down" for a stored status and its reason code."""
    if status == 1:
        return UP
    return PARTIAL if code in PARTIAL_CODES else DOWN


@dataclass(frozen=True)
class Event:
    at: int  # Unix ms
    status: int
    code: str
    msg: str

    @property
    def state(self) -> str:
        return state_of(self.status, self.code)


@dataclass(frozen=True)
class Stretch:
    """A time in one health: [start, end) in Unix ms, with the event that began it (None: no record)."""

    start: int
    end: int
    event: Event | None

    @property
    def state(self) -> str:
        return NONE if self.event is None else self.event.state


def stretches(events: Sequence[Event], since: int, until: int) -> list[Stretch]:
    """
    The window [since, until) cut at each change. C{events} are in time
    order and may begin before C{since} (the last such one says the health
    at C{since}); time before the first event has no record.
    """
    out: list[Stretch] = []
    current: Event | None = None
    start = since
    for event in events:
        if event.at <= since:
            current = event
            continue
        if event.at >= until:
            break
        if event.at > start:
            out.append(Stretch(start, event.at, current))
        current, start = event, event.at
    if until > start:
        out.append(Stretch(start, until, current))
    return out


def buckets(parts: Sequence[Stretch], samples: Sequence[tuple[int, float]], since: int, until: int,
            count: int) -> list[dict[str, Any]]:
    """
    C{count} equal buckets over [since, until): each one's state (up, down,
    partial: some time not up but not all of it down, or a partial outage;
    none: no record), its time not up, the reason and time of its worst
    change, and the median of the latency samples in it (None without).
    """
    width = (until - since) / count
    out: list[dict[str, Any]] = []
    i = 0
    per_bucket: list[list[float]] = [[] for _ in range(count)]
    for at, latency in samples:
        b = int((at - since) // width)
        if 0 <= b < count:
            per_bucket[b].append(latency)
    for b in range(count):
        lo, hi = since + b * width, since + (b + 1) * width
        time_in = {UP: 0.0, PARTIAL: 0.0, DOWN: 0.0, NONE: 0.0}
        worst: Stretch | None = None
        while i < len(parts) and parts[i].end <= lo:
            i += 1
        j = i
        while j < len(parts) and parts[j].start < hi:
            part = parts[j]
            time_in[part.state] += min(hi, part.end) - max(lo, part.start)
            if part.state in (DOWN, PARTIAL) and (worst is None or (worst.state, part.state) == (PARTIAL, DOWN)):
                worst = part
            j += 1
        known = time_in[UP] + time_in[PARTIAL] + time_in[DOWN]
        if known == 0:
            state = NONE
        elif time_in[UP] == 0 and time_in[PARTIAL] == 0:
            state = DOWN
        elif time_in[DOWN] == 0 and time_in[PARTIAL] == 0:
            state = UP
        else:
            state = PARTIAL
        latencies = per_bucket[b]
        out.append({
            "start": int(lo),
            "state": state,
            "notUpMs": int(time_in[PARTIAL] + time_in[DOWN]),
            "code": worst.event.code if worst is not None and worst.event is not None else None,
            "reason": worst.event.msg if worst is not None and worst.event is not None else None,
            "at": worst.start if worst is not None else None,
            "p50Ms": round(statistics.median(latencies), 3) if latencies else None,
        })
    return out


def uptime(parts: Sequence[Stretch]) -> float | None:
    """The percentage of the recorded time that was up (None: nothing recorded)."""
    known = sum(p.end - p.start for p in parts if p.state != NONE)
    up = sum(p.end - p.start for p in parts if p.state == UP)
    return round(100 * up / known, 3) if known else None


def outages(parts: Sequence[Stretch], now: int) -> list[dict[str, Any]]:
    """
    Each time not up, newest first: its start, its end (None while it
    lasts), its duration, whether it was down or partial at worst, and its
    first reason (and every reason it had, in order).
    """
    out: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for part in parts:
        if part.state in (DOWN, PARTIAL):
            assert part.event is not None
            if current is None:
                current = {"start": part.start, "end": part.end, "state": part.state, "code": part.event.code,
                           "reason": part.event.msg, "reasons": []}
                out.append(current)
            current["end"] = part.end
            if part.state == DOWN:
                current["state"] = DOWN
            if not current["reasons"] or current["reasons"][-1] != part.event.msg:
                current["reasons"].append(part.event.msg)
        else:
            current = None
    for outage in out:
        if outage["end"] >= now:
            outage["end"] = None
        outage["durationMs"] = (now if outage["end"] is None else outage["end"]) - outage["start"]
    out.reverse()
    return out



class HealthHistory:
    """Reads and writes the two tables through the registry's L{webtesting.dbpool.Database}."""

    def __init__(self, db: Any, dialect_name: str, *, keep_days: float = 7, max_rows: int = 2_000_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._dialect = dialect_name
        self.keep_days = keep_days
        self.max_rows = max_rows
        self._clock = clock

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def seed(self, current: Iterable[tuple[int, int, str, str]]) -> Deferred[int]:
        """
        Give each service (serviceId, status, code, msg) that has no event
        yet one with its health now; fire with how many were written.
        """
        rows = list(current)
        if not rows:
            return succeed(0)
        ids = [r[0] for r in rows]
        marks = ", ".join(["%s"] * len(ids))
        select = _sql(self._dialect, f"SELECT DISTINCT serviceId FROM tb_health_event WHERE serviceId IN ({marks})")
        insert = _sql(self._dialect,
                      "INSERT INTO tb_health_event (serviceId, at, status, code, msg) VALUES (%s, %s, %s, %s, %s)")
        now = self.now_ms()

        def work(cursor: Any) -> int:
            cursor.execute(select, ids)
            have = {int(r[0]) for r in cursor.fetchall()}
            new = [[sid, now, status, code[:32], msg[:256]] for sid, status, code, msg in rows if sid not in have]
            if new:
                cursor.executemany(insert, new)
            return len(new)

        return self.db.run(work)

    def record_samples(self, at: int, samples: Mapping[int, float]) -> Deferred[None]:
        """One latency sample per service, all at C{at} (a sample another web server wrote first stays)."""
        if not samples:
            return succeed(None)
        verb = "INSERT IGNORE" if self._dialect == "mysql" else "INSERT OR IGNORE"
        statement = _sql(self._dialect, f"{verb} INTO tb_health_sample (serviceId, at, latencyMs) VALUES (%s, %s, %s)")
        rows = [[sid, at, latency] for sid, latency in sorted(samples.items())]

        def work(cursor: Any) -> None:
            cursor.executemany(statement, rows)

        return self.db.run(work)

    def prune(self) -> Deferred[int]:
        """Forget what is older than C{keep_days}, and the oldest beyond C{max_rows}; fire with rows deleted."""
        cutoff = self.now_ms() - int(self.keep_days * 86_400_000)
        # Each service's last event before the cutoff stays: it says the health from then on.
        latest = ("SELECT id FROM (SELECT MAX(id) AS id FROM tb_health_event WHERE at < %s GROUP BY serviceId) "
                  "latest")
        d = self._dialect
        old_events = _sql(d, f"DELETE FROM tb_health_event WHERE at < %s AND id NOT IN ({latest})")
        old_samples = _sql(d, "DELETE FROM tb_health_sample WHERE at < %s")
        nth_event = _sql(d, "SELECT at FROM tb_health_event ORDER BY at DESC LIMIT 1 OFFSET %s")
        nth_sample = _sql(d, "SELECT at FROM tb_health_sample ORDER BY at DESC LIMIT 1 OFFSET %s")
        keep = self.max_rows

        def work(cursor: Any) -> int:
            deleted = 0
            cursor.execute(old_events, [cutoff, cutoff])
            deleted += max(0, cursor.rowcount)
            cursor.execute(old_samples, [cutoff])
            deleted += max(0, cursor.rowcount)
            for nth, delete, repeat in ((nth_event, old_events, 2), (nth_sample, old_samples, 1)):
                cursor.execute(nth, [keep])
                row = cursor.fetchone()
                if row is not None:  # more than max_rows: the oldest go, up to the one that would be one too many
                    cursor.execute(delete, [int(row[0]) + 1] * repeat)
                    deleted += max(0, cursor.rowcount)
            return deleted

        return self.db.run(work)

    def _read(self, since: int, service_id: int | None) -> Deferred[tuple[dict[int, list[Event]],
                                                                        dict[int, list[tuple[int, float]]]]]:
        d = self._dialect
        one = " AND serviceId = %s" if service_id is not None else ""
        extra = [service_id] if service_id is not None else []
        before = _sql(d, "SELECT e.serviceId, e.at, e.status, e.code, e.msg, e.id FROM tb_health_event e JOIN "
                         f"(SELECT serviceId, MAX(id) AS id FROM tb_health_event WHERE at <= %s{one} "
                         "GROUP BY serviceId) p ON p.id = e.id")
        after = _sql(d, "SELECT serviceId, at, status, code, msg, id FROM tb_health_event "
                        f"WHERE at > %s{one} ORDER BY serviceId, at, id")
        samples = _sql(d, f"SELECT serviceId, at, latencyMs FROM tb_health_sample WHERE at >= %s{one} "
                          "ORDER BY serviceId, at")

        def work(cursor: Any) -> tuple[dict[int, list[Event]], dict[int, list[tuple[int, float]]]]:
            events: dict[int, list[Event]] = {}
            for statement in (before, after):
                cursor.execute(statement, [since, *extra])
                for sid, at, status, code, msg, _id in cursor.fetchall():
                    events.setdefault(int(sid), []).append(Event(int(at), int(status), str(code), str(msg)))
            latencies: dict[int, list[tuple[int, float]]] = {}
            cursor.execute(samples, [since, *extra])
            for sid, at, latency in cursor.fetchall():
                latencies.setdefault(int(sid), []).append((int(at), float(latency)))
            return events, latencies

        return self.db.run(work)

    async def timeline(self, service_ids: Sequence[int], hours: float = 24, count: int = 48) -> dict[str, Any]:
        """Each service's last C{hours} in C{count} buckets, and its share of known time up."""
        until = self.now_ms()
        since = until - int(hours * 3_600_000)
        events, latencies = await self._read(since, None)
        services = []
        for sid in service_ids:
            parts = stretches(events.get(sid, []), since, until)
            services.append({
                "serviceId": sid,
                "uptime": uptime(parts),
                "buckets": buckets(parts, latencies.get(sid, []), since, until, count),
            })
        return {"since": since, "until": until, "bucketMs": (until - since) // count, "services": services}

    async def history(self, service_id: int, days: float | None = None) -> dict[str, Any]:
        """One service's outages over the last C{days} (all that is kept), newest first."""
        until = self.now_ms()
        since = until - int((self.keep_days if days is None else days) * 86_400_000)
        events, latencies = await self._read(since, service_id)
        parts = stretches(events.get(service_id, []), since, until)
        samples = [latency for _at, latency in latencies.get(service_id, [])]
        return {
            "serviceId": service_id, "since": since, "until": until,
            "uptime": uptime(parts),
            "p50Ms": round(statistics.median(samples), 3) if samples else None,
            "outages": outages(parts, until),
        }


class HealthSampler(service.Service):
    """
    Every C{interval} seconds, one latency sample per service whose agent
    link answered pings; first, an event for each service with no history
    yet; every C{prune_interval} seconds, the old rows go.

    @param links: serviceId -> the service's link (C{take_rtts()},
        C{health}, C{code}), the registry sync's live mapping.
    """

    def __init__(self, history: HealthHistory, links: Mapping[int, Any], clock: Any, *,
                 interval: float = 60.0, prune_interval: float = 3600.0) -> None:
        self.history = history
        self._links = links
        self._clock = clock
        self.interval = interval
        self._seeded: set[int] = set()
        self._loop = LoopingCall(self.sample)
        self._loop.clock = clock
        self._prune = LoopingCall(self.prune)
        self._prune.clock = clock
        self._prune_interval = prune_interval

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=False)
        self._prune.start(self._prune_interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        for loop in (self._loop, self._prune):
            if loop.running:
                loop.stop()

    def set_interval(self, interval: float) -> None:
        """A live reload: samples every C{interval} seconds from now."""
        if interval == self.interval:
            return
        self.interval = interval
        self._loop = with_interval(self._loop, interval)

    def sample(self) -> Deferred[Any]:
        """Write this interval's samples (and first events); never fails."""
        links = dict(self._links)
        new = [(sid, link.health[0], link.code, link.health[1]) for sid, link in links.items()
               if sid not in self._seeded]
        step = int(self.interval * 1000)
        at = self.history.now_ms() // step * step  # aligned: two web servers write one sample
        samples = {}
        for sid, link in links.items():
            rtts = link.take_rtts()
            if rtts:
                samples[sid] = statistics.median(rtts) * 1000
        d = self.history.seed(new)
        d.addCallback(lambda _: self._seeded.update(row[0] for row in new))
        d.addCallback(lambda _: self.history.record_samples(at, samples))
        d.addErrback(self._failed, "recording health samples")
        return d

    def prune(self) -> Deferred[Any]:
        d = self.history.prune()
        d.addCallback(lambda n: _log.info("health history: pruned {n} old rows", n=n) if n else None)
        d.addErrback(self._failed, "pruning the health history")
        return d

    def _failed(self, failure: Failure, what: str) -> None:
        if failure.check(DatabaseUnavailable):
            _log.info("{what}: registry unavailable; next time", what=what)
        else:
            _log.failure(what, failure)
