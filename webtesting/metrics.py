"""
Prometheus metrics of the web server and the agent (prometheus_client).

One rule keeps them cheap: the relay's hot paths only add 1 to a plain
integer here (L{FRAMES}); what can be read from the live objects (sessions,
logins, links, users, the history's backlog) is read when C{/metrics} is
scraped, by one collector that walks the objects each daemon registered
with L{watch_web} or L{watch_agent} (weakly: a stopped server's objects just
go away). Latencies are histograms.

The web server serves them at C{/metrics} on its HTTP port
(C{http.metrics}); the agent on a small listener of its own
(C{metrics.listen} in etc/agent.yaml). README.md lists every metric with a
sample scrape.
"""

from __future__ import annotations

import gc
import time
import weakref
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Histogram, disable_created_metrics, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

__all__ = [
    "CONTENT_TYPE_LATEST", "DB_FAILURES", "FRAMES", "HEALTH_CHANGES", "HTTP_SECONDS",
    "HOPS", "POLL_SECONDS", "observe_hop", "scrape", "watch_agent", "watch_web",
]

_log = Logger()

# No *_created series: a scrape is long enough without a timestamp per label set.
disable_created_metrics()

# (daemon, leg, direction) -> frames: ("web", "browser", "in"), ("agent", "bot", "out"), ...
FRAMES: Counter[tuple[str, str, str]] = Counter()

HTTP_SECONDS = Histogram(
    "webtesting_web_http_request_seconds", "Time from a request's arrival to its answer, per API route",
    ["route"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
POLL_SECONDS = Histogram(
    "webtesting_agent_state_poll_seconds", "Time one state poll of a service's watched users took",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DB_FAILURES = PromCounter(
    "webtesting_db_failures", "Database requests that failed (the registry, a bot's MySQL)", ["database"],
)
HEALTH_CHANGES = PromCounter(
    "webtesting_health_changes", "Changes of a service's health: as the agent reports them, and as the web "
    "server records them in the registry", ["daemon", "service", "status"],
)

# A chat reply's time per hop, per service: a histogram kept as plain counts
# (one bisect and two additions per reply, no lock) and exported at scrape.
HOP_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# (serviceId, hop) -> [count per bucket (the last: above every bound)..., sum of seconds]
HOPS: dict[tuple[int, str], list[float]] = {}


def observe_hop(service_id: int, hop: str, seconds: float) -> None:
    """One chat reply's time in one hop."""
    cells = HOPS.get((service_id, hop))
    if cells is None:
        cells = HOPS[(service_id, hop)] = [0] * (len(HOP_BOUNDS) + 2)
    cells[bisect_left(HOP_BOUNDS, seconds)] += 1
    cells[-1] += seconds


def _hop_family() -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        "webtesting_chat_hop_seconds",
        "Time a chat and its reply spent behind each server, per service: web (web in to web out: the agent "
        "link both ways, the agent and the bot), agent (agent in to agent out: the bot and the agent) and bot "
        "(agent in to the bot's reply reaching the agent). web less agent is the link; the page shows each "
        "reply's hops",
        labels=["service", "hop"],
    )
    for (sid, hop), cells in sorted(HOPS.items()):
        _add_counts(family, [str(sid), hop], HOP_BOUNDS, cells)
    return family


def _add_counts(family: HistogramMetricFamily, labels: list[str], bounds: tuple[float, ...],
                cells: list[float]) -> None:
    """One histogram kept as plain counts (one per bucket, the last above every bound, then the sum)."""
    running, buckets = 0.0, []
    for bound, count in zip((*bounds, float("inf")), cells[:-1], strict=True):
        running += count
        buckets.append((str(bound) if bound != float("inf") else "+Inf", running))
    family.add_metric(labels, buckets, cells[-1])


# Python's garbage collector stops the process while it walks its objects: with 10,000 sessions a
# full collection walks millions, and every answer waits. Its pauses, per generation, as plain counts.
GC_BOUNDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
GC_PAUSES: dict[int, list[float]] = {generation: [0] * (len(GC_BOUNDS) + 2) for generation in (0, 1, 2)}
_gc_started = 0.0


def _gc_timed(phase: str, info: dict[str, Any]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
        return
    took = time.perf_counter() - _gc_started
    cells = GC_PAUSES.get(info.get("generation", 2))
    if cells is not None:
        cells[bisect_left(GC_BOUNDS, took)] += 1
        cells[-1] += took


gc.callbacks.append(_gc_timed)


def _gc_family() -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        "webtesting_gc_pause_seconds",
        "Pauses of Python's garbage collector, per generation (2: a full collection, which walks every "
        "object the process holds)", labels=["generation"])
    for generation, cells in sorted(GC_PAUSES.items()):
        _add_counts(family, [str(generation)], GC_BOUNDS, cells)
    return family


_web: weakref.WeakSet[Any] = weakref.WeakSet()
_agent: weakref.WeakSet[Any] = weakref.WeakSet()


class WebParts:
    """What the web server's collector reads: set by the web server's service tree."""

    def __init__(self, relay: Any, browsers: Any, links: Any, history: Any = None) -> None:
        self.relay = relay
        self.browsers = browsers
        self.links = links
        self.history = history


class AgentParts:
    """What the agent's collector reads."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory


def watch_web(parts: WebParts) -> WebParts:
    _web.add(parts)
    return parts


def watch_agent(parts: AgentParts) -> AgentParts:
    _agent.add(parts)
    return parts


class _Collector:
    """Reads the live objects at scrape time."""

    def collect(self) -> Iterator[Any]:
        frames = CounterMetricFamily("webtesting_frames", "WebSocket messages per daemon, leg and direction",
                                     labels=["daemon", "leg", "direction"])
        for (daemon, leg, direction), count in sorted(FRAMES.items()):
            frames.add_metric([daemon, leg, direction], count)
        yield frames
        yield _gc_family()
        if HOPS:
            yield _hop_family()
        # Each daemon's scrape shows its own families (both, in a test process running both).
        if _web:
            yield from self._web()
        if _agent:
            yield from self._agent()

    def _web(self) -> Iterator[Any]:
        sessions = GaugeMetricFamily("webtesting_web_browser_sessions", "Open browser WebSockets")
        logins = GaugeMetricFamily("webtesting_web_bot_logins", "Bot logins held by browsers, per service",
                                   labels=["service"])
        links = GaugeMetricFamily("webtesting_web_agent_links", "Agent links by state", labels=["state"])
        up = GaugeMetricFamily("webtesting_web_service_up", "1 while a service's agent link and everything "
                               "behind it answer", labels=["service"])
        lag = GaugeMetricFamily("webtesting_web_history_lag_seconds",
                                "Age of the oldest conversation event not yet written")
        waiting = GaugeMetricFamily("webtesting_web_history_waiting_events", "Events waiting to be written")
        dropped = CounterMetricFamily("webtesting_web_history_dropped_events",
                                      "Events dropped while the database was away too long")
        total_sessions = 0
        per_service: Counter[int] = Counter()
        per_state: Counter[str] = Counter()
        service_up: dict[int, int] = {}
        lag_seconds = 0.0
        waiting_events = dropped_events = 0
        for parts in list(_web):
            total_sessions += len(parts.browsers.open_protocols)
            for sid, uuids in parts.relay.logins_by_service().items():
                per_service[sid] += uuids
            for sid, link in list(parts.links.links.items()):
                per_state[link.lifecycle.state] += 1
                service_up[sid] = max(service_up.get(sid, 0), int(bool(link.up)))
            if parts.history is not None:
                backlog = parts.history.backlog()
                lag_seconds = max(lag_seconds, backlog["lagSeconds"])
                waiting_events += backlog["waiting"]
                dropped_events += backlog["dropped"]
        sessions.add_metric([], total_sessions)
        for sid, count in sorted(per_service.items()):
            logins.add_metric([str(sid)], count)
        for state, count in sorted(per_state.items()):
            links.add_metric([state], count)
        for sid, value in sorted(service_up.items()):
            up.add_metric([str(sid)], value)
        lag.add_metric([], lag_seconds)
        waiting.add_metric([], waiting_events)
        dropped.add_metric([], dropped_events)
        yield from (sessions, logins, links, up, lag, waiting, dropped)

    def _agent(self) -> Iterator[Any]:
        web_links = GaugeMetricFamily("webtesting_agent_web_links", "Open links from web servers")
        users = GaugeMetricFamily("webtesting_agent_bot_users", "Logged-in bot users per service and state",
                                  labels=["service", "state"])
        polls = CounterMetricFamily("webtesting_agent_state_polls", "State polls per service", labels=["service"])
        skipped = CounterMetricFamily("webtesting_agent_state_polls_skipped",
                                      "Poll ticks skipped because the last poll was still running",
                                      labels=["service"])
        watched = GaugeMetricFamily("webtesting_agent_state_watched_users", "Users whose state is polled",
                                    labels=["service"])
        open_links = 0
        per_user: Counter[tuple[int, str]] = Counter()
        poll_counts: Counter[int] = Counter()
        skip_counts: Counter[int] = Counter()
        watch_counts: Counter[int] = Counter()
        for parts in list(_agent):
            for proto in list(parts.factory.open_links):
                open_links += 1
                link = proto.link
                if link is None:
                    continue
                for user in list(link.users.values()):
                    per_user[(user.service_id, user.state.name.lower())] += 1
                source = link.source
                poller = getattr(source, "poller", None)
                if poller is not None and link.service is not None:
                    sid = int(link.service["serviceId"])
                    poll_counts[sid] += poller.polls
                    skip_counts[sid] += poller.skipped
                    watch_counts[sid] += len(poller.watching())
        web_links.add_metric([], open_links)
        for (sid, state), count in sorted(per_user.items()):
            users.add_metric([str(sid), state], count)
        for sid in sorted(poll_counts):
            polls.add_metric([str(sid)], poll_counts[sid])
            skipped.add_metric([str(sid)], skip_counts[sid])
            watched.add_metric([str(sid)], watch_counts[sid])
        yield from (web_links, users, polls, skipped, watched)


REGISTRY.register(_Collector())


def scrape(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The text exposition format of every metric of this process."""
    return generate_latest(registry)


def merge_workers(scrapes: dict[int, bytes]) -> bytes:
    """
    Several worker processes' scrapes as one (workers: N): every sample gets
    a C{worker} label, each family keeps one group; sum over C{worker} for
    the daemon's figures.
    """
    families: dict[str, Metric] = {}
    for worker, text in sorted(scrapes.items()):
        for family in text_string_to_metric_families(text.decode("utf-8")):
            into = families.get(family.name)
            if into is None:
                into = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            into.samples.extend(
                Sample(s.name, {**s.labels, "worker": str(worker)}, s.value, s.timestamp, s.exemplar)
                for s in family.samples)

    class _Merged:
        def collect(self) -> Iterator[Metric]:
            return iter(families.values())

    merged = CollectorRegistry(auto_describe=False)
    merged.register(_Merged())  # type: ignore[arg-type]
    return generate_latest(merged)


class _Metrics(Resource):
    """C{GET /metrics} (the agent's own listener); everything else is 404."""

    isLeaf = True

    def __init__(self, gather: Callable[[], Deferred[bytes]] | None = None) -> None:
        super().__init__()
        self.gather = gather

    def render_GET(self, request: Any) -> Any:
        if request.postpath not in ([b"metrics"], [b"metrics", b""]):
            request.setResponseCode(404)
            return b"not found; the metrics are at /metrics\n"
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        if self.gather is None:
            return scrape()

        def write(body: bytes) -> None:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(body)
                request.finish()

        def failed(failure: Any) -> None:
            _log.failure("gathering the workers' metrics", failure)
            if not request.finished and not getattr(request, "_disconnected", False):
                request.setResponseCode(500)
                request.write(b"the metrics could not be gathered; see the agent's log\n")
                request.finish()

        self.gather().addCallbacks(write, failed)
        return NOT_DONE_YET


def resource(gather: Callable[[], Deferred[bytes]] | None = None) -> Resource:
    """The agent's C{/metrics}: this process's, or with C{gather} every worker's (L{merge_workers})."""
    return _Metrics(gather)
