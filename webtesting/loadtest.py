"""
The load mode (``webtesting-test load``): simulated testers that follow a
test case through the real relay, with live figures, a report and
thresholds.

Each simulated tester (a virtual user, VU) opens its own WebSocket, as a
browser does, and runs the case again and again (L{webtesting.cases.run_case}:
log in, the steps with their checks, log out) until the run's time is up.
VUs start evenly over the ramp. A step that says something measures the
time from saying to the bot's answer (a round trip through web, agent and
bot); a step whose message got no answer (an error answer, a timeout, a
lost connection) is an error; a step whose checks failed is a failed check.

The run is bounded (L{MAX_USERS}, L{MAX_SECONDS}) and only ever talks to a
service that the web server lists for the account: the relay is the only
way out, so no other address can be loaded through it.
"""

from __future__ import annotations

import html
import json
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, gatherResults

from webtesting.cases import Case, StepResult, run_case
from webtesting.client import Client, ClientError

MAX_USERS = 1000
MAX_SECONDS = 3600.0


class LoadError(Exception):
    """The run cannot start (bad settings, unknown service)."""


@dataclass(frozen=True)
class LoadSettings:
    service: int
    users: int
    ramp: float
    duration: float
    max_p99: float | None = None  # seconds
    max_errors: float | None = None  # a fraction of the steps (0.01 = 1 %)

    def check(self) -> None:
        if not 1 <= self.users <= MAX_USERS:
            raise LoadError(f"users: 1 to {MAX_USERS}, not {self.users}")
        if not 0 < self.duration <= MAX_SECONDS:
            raise LoadError(f"duration: more than 0 and at most {MAX_SECONDS:g} s, not {self.duration:g}")
        if not 0 <= self.ramp <= self.duration:
            raise LoadError(f"ramp: 0 to the duration ({self.duration:g} s), not {self.ramp:g}")


def parse_seconds(text: str) -> float:
    """``2s``, ``500ms``, ``1.5`` (seconds) → seconds."""
    text = text.strip().lower()
    try:
        if text.endswith("ms"):
            return float(text[:-2]) / 1000
        if text.endswith("s"):
            return float(text[:-1])
        return float(text)
    except ValueError:
        raise LoadError(f"not a duration: {text!r} (e.g. 2s, 500ms)") from None


def parse_fraction(text: str) -> float:
    """``1%`` or ``0.01`` → 0.01."""
    text = text.strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise LoadError(f"not a share: {text!r} (e.g. 1%, 0.01)") from None
    if not 0 <= value <= 1:
        raise LoadError(f"a share is 0 to 100 %, not {text!r}")
    return value


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


@dataclass
class Second:
    """What happened in one second of the run."""

    t: int
    users: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    failed_checks: int = 0

    def row(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {"t": self.t, "users": self.users, "roundTrips": len(ordered),
                "p50": _ms(percentile(ordered, 0.5)), "p99": _ms(percentile(ordered, 0.99)),
                "errors": self.errors, "failedChecks": self.failed_checks}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


class Stats:
    """Every round trip, error and failed check of a run, by second."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.seconds: dict[int, Second] = {}
        self.latencies: list[float] = []
        self.steps = 0
        self.errors = 0
        self.failed_checks = 0
        self.reasons: Counter[str] = Counter()
        self.users = 0
        self.peak_users = 0

    def _second(self) -> Second:
        t = int(self._clock() - self.started)
        second = self.seconds.get(t)
        if second is None:
            second = self.seconds[t] = Second(t, self.users)
        second.users = max(second.users, self.users)
        return second

    def user_started(self) -> None:
        self.users += 1
        self.peak_users = max(self.peak_users, self.users)
        self._second()

    def user_stopped(self) -> None:
        self.users -= 1

    def step(self, result: StepResult) -> None:
        second = self._second()
        self.steps += 1
        if result.error:
            self.error(result.error)
            return
        if result.answered_in is not None:
            second.latencies.append(result.answered_in)
            self.latencies.append(result.answered_in)
        if result.problems:
            second.failed_checks += 1
            self.failed_checks += 1
            self.reasons["check: " + result.problems[0][:120]] += 1

    def error(self, reason: str, counts_as_step: bool = False) -> None:
        second = self._second()
        self.steps += counts_as_step
        second.errors += 1
        self.errors += 1
        self.reasons[reason[:160]] += 1

    def window(self) -> dict[str, Any]:
        """The last whole second, for the live line."""
        t = int(self._clock() - self.started) - 1
        row = self.seconds.get(t, Second(t, self.users)).row()
        row["users"] = self.users
        return row

    def summary(self, settings: LoadSettings) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        elapsed = max(self._clock() - self.started, 1e-9)
        bad = self.errors + self.failed_checks
        rate = bad / self.steps if self.steps else (1.0 if bad else 0.0)
        p99 = percentile(ordered, 0.99)
        verdicts = []
        if settings.max_p99 is not None:
            ok = p99 is not None and p99 <= settings.max_p99
            verdicts.append({"threshold": f"p99 <= {settings.max_p99 * 1000:g} ms", "passed": ok,
                             "got": f"{_ms(p99)} ms" if p99 is not None else "no round trips"})
        if settings.max_errors is not None:
            verdicts.append({"threshold": f"errors <= {settings.max_errors * 100:g} %",
                             "passed": rate <= settings.max_errors, "got": f"{rate * 100:.2f} %"})
        return {
            "settings": asdict(settings),
            "seconds": round(elapsed, 2),
            "peakUsers": self.peak_users,
            "steps": self.steps,
            "roundTrips": len(ordered),
            "rtPerSecond": round(len(ordered) / elapsed, 1),
            "p50": _ms(percentile(ordered, 0.5)),
            "p90": _ms(percentile(ordered, 0.9)),
            "p99": _ms(p99),
            "max": _ms(ordered[-1] if ordered else None),
            "errors": self.errors,
            "failedChecks": self.failed_checks,
            "errorRate": round(rate, 4),
            "reasons": [{"reason": r, "count": n} for r, n in self.reasons.most_common(10)],
            "thresholds": verdicts,
            "passed": all(v["passed"] for v in verdicts),
            "timeline": [self.seconds[t].row() for t in sorted(self.seconds)],
        }


def progress_line(row: dict[str, Any], elapsed: float) -> str:
    p50 = "-" if row["p50"] is None else f"{row['p50']:.0f} ms"
    p99 = "-" if row["p99"] is None else f"{row['p99']:.0f} ms"
    return (f"{elapsed:6.0f} s  users {row['users']:4d}  RT/s {row['roundTrips']:5d}  p50 {p50:>8}  "
            f"p99 {p99:>8}  errors {row['errors']}  failed checks {row['failedChecks']}")


class LoadRun:
    """One load run: C{settings.users} VUs running C{case} on C{client}'s server."""

    def __init__(self, client: Client, case: Case, settings: LoadSettings, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.case = case
        self.settings = settings
        self.reactor = client.reactor
        self.stats = Stats(clock)
        self.run_id = uuidlib.uuid4().hex[:8]
        self._clock = clock
        self._end = 0.0
        self.stopped = False

    async def check_target(self) -> None:
        """Refuse anything but a service the web server lists for this account."""
        services = await self.client.services()
        if not any(s.get("serviceId") == self.settings.service for s in services):
            known = ", ".join(str(s.get("serviceId")) for s in services) or "none"
            raise LoadError(f"service {self.settings.service} is not a registered service of this server "
                            f"(registered: {known})")

    def stop(self) -> None:
        """End the run early: each VU stops after its current case."""
        self.stopped = True

    def _over(self) -> bool:
        return self.stopped or self._clock() >= self._end

    async def run(self) -> dict[str, Any]:
        self.settings.check()
        await self.check_target()
        self.stats = Stats(self._clock)
        self._end = self.stats.started + self.settings.duration
        users = self.settings.users
        await gatherResults([ensureDeferred(self._user(i, self.settings.ramp * i / users)) for i in range(users)])
        return self.stats.summary(self.settings)

    async def _user(self, index: int, delay: float) -> None:
        if delay:
            await self._sleep(delay)
        connection = None
        self.stats.user_started()
        try:
            while not self._over():
                if connection is None:
                    try:
                        connection = await self.client.connect()
                    except ClientError as e:
                        self.stats.error(f"WebSocket: {e}", counts_as_step=True)
                        await self._sleep(1.0)
                        continue
                result = await run_case(self.case, connection, self.settings.service,
                                        run_id=f"load-{self.run_id}-{index}", on_step=self.stats.step)
                if result.error:
                    self.stats.error(result.error, counts_as_step=True)
                    if connection.closed.called:
                        connection = None
                    await self._sleep(1.0)
        finally:
            self.stats.user_stopped()
            if connection is not None:
                await connection.close()

    def _sleep(self, seconds: float) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.reactor.callLater(max(0.0, min(seconds, self._end - self._clock())), d.callback, None)
        return d


# -- the report ----------------------------------------------------------------------


def write_report(summary: dict[str, Any], prefix: str, title: str) -> list[str]:
    """C{prefix}.json (everything) and C{prefix}.html (the summary and a latency-over-time plot)."""
    with open(prefix + ".json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, ensure_ascii=False)
    with open(prefix + ".html", "w", encoding="utf-8") as f:
        f.write(report_html(summary, title))
    return [prefix + ".json", prefix + ".html"]


def summary_text(summary: dict[str, Any]) -> str:
    s = summary
    lines = [
        f"{s['peakUsers']} users, {s['seconds']:.0f} s: {s['roundTrips']} round trips ({s['rtPerSecond']:.1f}/s), "
        f"p50 {s['p50']} ms, p90 {s['p90']} ms, p99 {s['p99']} ms, max {s['max']} ms",
        f"errors {s['errors']}, failed checks {s['failedChecks']} of {s['steps']} steps "
        f"({s['errorRate'] * 100:.2f} %)",
    ]
    lines += [f"  {r['count']}× {r['reason']}" for r in s["reasons"][:5]]
    lines += [f"{'PASS' if v['passed'] else 'FAIL'}  {v['threshold']}: {v['got']}" for v in s["thresholds"]]
    return "\n".join(lines)


def _svg(timeline: list[dict[str, Any]], width: int = 760, height: int = 240) -> str:
    """p50 and p99 per second (ms, left axis) and round trips per second (bars), as inline SVG."""
    pad = 40
    if not timeline:
        return "<p>No data.</p>"
    last_t = max(r["t"] for r in timeline) or 1
    top_ms = max([r["p99"] or 0 for r in timeline] + [1])
    top_rt = max([r["roundTrips"] for r in timeline] + [1])

    def x(t: float) -> float:
        return pad + (width - 2 * pad) * t / last_t

    def y(value: float, top: float) -> float:
        return height - pad - (height - 2 * pad) * value / top

    bars = "".join(
        f'<rect x="{x(r["t"]) - 1:.1f}" y="{y(r["roundTrips"], top_rt):.1f}" width="2" '
        f'height="{height - pad - y(r["roundTrips"], top_rt):.1f}" fill="#cde"><title>{r["t"]} s: '
        f'{r["roundTrips"]} RT, {r["errors"]} errors</title></rect>'
        for r in timeline)

    def line(key: str, colour: str) -> str:
        points = " ".join(f"{x(r['t']):.1f},{y(r[key], top_ms):.1f}" for r in timeline if r[key] is not None)
        return f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>'

    errors = "".join(f'<circle cx="{x(r["t"]):.1f}" cy="{pad / 2}" r="3" fill="#c33"><title>{r["t"]} s: '
                     f'{r["errors"]} errors</title></circle>' for r in timeline if r["errors"])
    ticks = "".join(
        f'<text x="{pad - 4}" y="{y(v, top_ms) + 4:.1f}" text-anchor="end" font-size="10">{v:.0f}</text>'
        for v in (0, top_ms / 2, top_ms))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="latency over time">{bars}{line("p50", "#36c")}{line("p99", "#c63")}{errors}{ticks}'
            f'<text x="{pad}" y="{height - 10}" font-size="11">0 s</text>'
            f'<text x="{width - pad}" y="{height - 10}" font-size="11" text-anchor="end">{last_t} s</text>'
            f'<text x="{pad}" y="14" font-size="11">ms: p50 (blue), p99 (orange); bars: round trips per second '
            f'(max {top_rt}); red dots: errors</text></svg>')


def report_html(summary: dict[str, Any], title: str) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(summary[k]))}</td></tr>"
                   for k in ("peakUsers", "seconds", "steps", "roundTrips", "rtPerSecond", "p50", "p90", "p99",
                             "max", "errors", "failedChecks", "errorRate"))
    verdicts = "".join(f"<li class=\"{'pass' if v['passed'] else 'fail'}\">{'PASS' if v['passed'] else 'FAIL'} "
                       f"{html.escape(v['threshold'])}: {html.escape(v['got'])}</li>" for v in summary["thresholds"])
    reasons = "".join(f"<li>{r['count']}× {html.escape(r['reason'])}</li>" for r in summary["reasons"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em}} th{{text-align:left;padding-right:1em}}
.pass{{color:#272}} .fail{{color:#c22}}</style></head>
<body><h1>{html.escape(title)}</h1>
{_svg(summary["timeline"])}
<table>{rows}</table>
<ul>{verdicts}</ul>
<h2>Reasons</h2><ul>{reasons or "<li>none</li>"}</ul>
</body></html>
"""
