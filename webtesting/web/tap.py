"""
``twistd webtesting-web``: the service tree of the web server.

    MultiService
    ├── store             stops its children in turn, the last first:
    │   ├── Database      the registry's connection pool and reconnect timer
    │   └── History       records every turn, written in batches to the registry database
    ├── AgentLinks        one WebSocket link per service; registry sync timer
    ├── HealthSampler     latency samples of each agent link; prunes the health history
    ├── HTTP listener     Klein: registry API (SPEC §2) and pages
    ├── WS listener       browsers' WebSocket (SPEC §3), routed by the Relay;
    │                     stopped first, it closes every browser with 1001
    │   with workers: N (webtesting.workers), in worker 0:
    ├── runs door         the same site on a loopback port, for the others' requests about runs
    └── WorkerPool        workers 1..N-1, sharing both listening sockets
        or in the others:
    └── Worker0Link       the channel to worker 0 (the listeners adopt the inherited sockets)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Generator
from functools import partial
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger
from twisted.python import usage

from webtesting import metrics
from webtesting.config import ConfigError, WebConfig, default_webroot, listen_address, listening_endpoint, load
from webtesting.gctune import GCTuning
from webtesting.lifecycle import Backoff
from webtesting.logs import LOG_FORMAT_OPTION, apply_log_format
from webtesting.reload import Reloader
from webtesting.web.accounts import DeviceSigner, SessionStore
from webtesting.web.healthhistory import HealthHistory, HealthSampler
from webtesting.web.history import History
from webtesting.web.http import HTTPListener, LimitedRequest, RegistryAPI, make_site
from webtesting.web.links import AgentLinks
from webtesting.web.origins import Origins, public_urls
from webtesting.web.registry import open_registry
from webtesting.web.sessions import Relay
from webtesting.web.testruns import TestRuns
from webtesting.web.throttle import Limit, LoginThrottle
from webtesting.web.ws import BrowserFactory, BrowserListener
from webtesting.workers import (
    FIRST_LISTENING_FD,
    WORKER_OPTION,
    InheritedPort,
    RecordedEndpoint,
    Worker0Link,
    WorkerPool,
    gather_metrics,
    metrics_handler,
    worker_number,
)
from webtesting.wslink import pinned_tls


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, "YAML configuration file (see etc/web.yaml); built-in defaults if left out"],
        LOG_FORMAT_OPTION,
        WORKER_OPTION,
        ["door", None, "", "worker 0's UNIX socket for the Tests page's runs and the metrics: set by worker 0 "
         "likewise"],
    ]

    def postOptions(self) -> None:
        try:
            apply_log_format(self)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        try:
            self.config: WebConfig = load(WebConfig, self["config"])
            source = self["config"] or "<defaults>"
            self.secret = self.config.agents.auth.read(f"{source}: agents.auth")
            self.session_secret = self.config.http.sessions.read(f"{source}: http.sessions")
            ca_file = self.config.agents.ca_file
            try:
                self.agent_tls = pinned_tls(ca_file) if ca_file else None
            except (OSError, ValueError) as e:
                raise ConfigError(source, [f"agents.ca_file: {e}"]) from None
        except ConfigError as e:
            raise usage.UsageError(f"configuration errors:\n{e}") from None
        self.worker = worker_number(self, self.config.workers)
        self.door = self["door"]
        if self.worker and not self.door:
            raise usage.UsageError("--worker needs --door: worker 0's socket for the Tests page's runs")
        if self.config.workers > 1:
            for key, description in (("http.listen", self.config.http.listen),
                                     ("websocket.listen", self.config.websocket.listen)):
                address = listen_address(description)
                if address is None or address[0]:
                    raise usage.UsageError(f"workers: {self.config.workers} needs a tcp {key} (workers share "
                                           "plain sockets): end TLS in a proxy in front, or run one worker")


class StopInTurn(MultiService):
    """A MultiService whose children stop one after another, the last started first."""

    _log = Logger()

    @inlineCallbacks
    def stopService(self) -> Generator[Any, Any, None]:
        Service.stopService(self)
        for child in reversed(list(self)):
            try:
                yield child.stopService()
            except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
                self._log.failure("stopping {child}", child=child)


def ws_addr_for(config: WebConfig) -> Any:
    """
    How getServiceList tells browsers where the WebSocket is: the configured
    public URL, else one built from the configuration (never from the Host
    header of a request, which whoever sends it chooses).
    """
    _page, ws = public_urls(config.http.listen, config.http.public_url, config.websocket.listen,
                            config.websocket.public_url, config.websocket.path)
    return lambda request: ws


def origins_for(config: WebConfig) -> Origins:
    page, _ws = public_urls(config.http.listen, config.http.public_url, config.websocket.listen,
                            config.websocket.public_url, config.websocket.path)
    return Origins(page, config.websocket.allowed_origins)


def _load_checked(path: str | None) -> WebConfig:
    """The configuration, its secrets readable (ConfigError otherwise), for a reload."""
    new = load(WebConfig, path)
    source = path or "<defaults>"
    new.agents.auth.read(f"{source}: agents.auth")
    new.http.sessions.read(f"{source}: http.sessions")
    return new


def _apply_web(old: WebConfig, new: WebConfig, changed: set[str], *, relay: Relay, browsers: BrowserFactory,
               api: RegistryAPI, site: Any, links: AgentLinks, history: History,
               sampler: HealthSampler, workers: int = 1) -> set[str]:
    """A live reload (webtesting.reload): apply what can change while the listeners stay open."""
    ws, http, agents, h = new.websocket, new.http, new.agents, new.history
    now: dict[str, Callable[[], None]] = {
        "websocket.request_deadline": lambda: setattr(relay, "deadline", ws.request_deadline),
        "websocket.login_deadline": lambda: setattr(relay, "login_deadline", ws.login_deadline),
        "websocket.max_logins_per_account": lambda: setattr(relay, "max_logins_per_account",
                                                            ws.max_logins_per_account),
        "websocket.max_per_account": lambda: setattr(browsers, "max_per_account", ws.max_per_account),
        "websocket.max_message_bytes": lambda: browsers.set_max_message(ws.max_message_bytes),
        "http.max_body_bytes": lambda: setattr(site, "requestFactory",
                                               partial(LimitedRequest, max_body=http.max_body_bytes)),
        "http.metrics": lambda: setattr(api, "serve_metrics", http.metrics),
        "http.sessions.lifetime": lambda: setattr(api.sessions, "lifetime", http.sessions.lifetime),
        # Split between the workers, as at start.
        "http.login_throttle.per_username_hour": lambda: setattr(
            api.throttle, "username",
            Limit(api.throttle.username.burst, http.login_throttle.per_username_hour / workers)),
        "http.login_throttle.per_address_hour": lambda: setattr(
            api.throttle, "address",
            Limit(api.throttle.address.burst, http.login_throttle.per_address_hour / workers)),
        "agents.sync_interval": lambda: links.reconfigure(sync_interval=agents.sync_interval),
        "history.flush_interval": lambda: setattr(history, "flush_interval", h.flush_interval),
        "history.batch": lambda: setattr(history, "batch", h.batch),
        "history.max_buffer": lambda: setattr(history, "max_buffer", h.max_buffer),
        "history.record": lambda: setattr(relay, "history", history if h.record else None),
        "health_history.sample_interval": lambda: sampler.set_interval(new.health_history.sample_interval),
        "health_history.keep_days": lambda: setattr(sampler.history, "keep_days", new.health_history.keep_days),
        "health_history.max_rows": lambda: setattr(sampler.history, "max_rows", new.health_history.max_rows),
    }
    applied = set()
    for key in sorted(changed & set(now)):
        now[key]()
        applied.add(key)
    if "websocket.allowed_origins" in changed:
        origins = origins_for(new)
        browsers.origins = api.origins = origins
        applied.add("websocket.allowed_origins")
    source = "reload"
    secrets = {key for key in changed if key.startswith(("agents.auth.", "http.sessions.secret"))}
    if any(key.startswith("agents.auth.") for key in secrets):
        links.reconfigure(secret=agents.auth.read(f"{source}: agents.auth"))
        applied |= {key for key in secrets if key.startswith("agents.auth.")}
    if any(key.startswith("http.sessions.secret") for key in secrets):
        api.device = DeviceSigner(http.sessions.read(f"{source}: http.sessions"))
        applied |= {key for key in secrets if key.startswith("http.sessions.secret")}
    return applied


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    config = options.config
    worker = getattr(options, "worker", 0)
    top = MultiService()

    registry = open_registry(config.registry, reactor)
    # The database and what writes to it in the background stop in turn:
    # history writes what waits, then the database closes.
    store = StopInTurn()
    store.setName("store")
    store.setServiceParent(top)
    registry.db.setName("registry")
    registry.db.setServiceParent(store)

    relay = Relay({}, clock=reactor, deadline=config.websocket.request_deadline,
                  login_deadline=config.websocket.login_deadline,
                  max_logins_per_account=config.websocket.max_logins_per_account)
    h = config.history
    history = History(registry.db, registry.dialect_name, reactor, turns=h.turns, flush_interval=h.flush_interval,
                      batch=h.batch, max_buffer=h.max_buffer)
    history.setName("history")
    history.setServiceParent(store)
    if h.record:
        relay.history = history
    agents = config.agents
    links = AgentLinks(
        registry, relay, reactor,
        secret=options.secret,
        sync_interval=agents.sync_interval,
        backoff=Backoff(initial=agents.retry_initial, maximum=agents.retry_max,
                        slow_after=agents.retry_slow_after, slow_maximum=agents.retry_slow_max),
        connect_timeout=agents.connect_timeout,
        ping_interval=agents.ping_interval,
        ping_timeout=agents.ping_timeout,
        tls=options.agent_tls,
    )
    links.setName("agent-links")
    links.setServiceParent(top)
    hh = config.health_history
    health = HealthHistory(registry.db, registry.dialect_name, keep_days=hh.keep_days, max_rows=hh.max_rows)
    sampler = HealthSampler(health, links.links, reactor, interval=hh.sample_interval)
    sampler.setName("health-history")
    sampler.setServiceParent(top)

    sessions = SessionStore(registry.db, registry.dialect_name, config.http.sessions.lifetime)
    purge = TimerService(3600, lambda: sessions.purge().addErrback(lambda _: None))  # next hour, then
    purge.clock = reactor
    purge.setName("session-purge")
    purge.setServiceParent(top)
    browsers = BrowserFactory(
        relay, sessions, path=config.websocket.path, max_message=config.websocket.max_message_bytes,
        origins=origins_for(config), max_per_account=config.websocket.max_per_account,
    )
    # A change to the registry: this process's links follow at once, and so do the other workers'.
    others: list[Callable[[], None]] = []

    def registry_changed() -> None:
        links.sync()
        for tell in others:
            tell()

    api = RegistryAPI(
        registry, config.http.webroot or default_webroot(), ws_addr_for(config), sessions, registry_changed,
        sessions_ended=browsers.recheck, codes=links.code, logins=links.list_logins, reactor=reactor,
        # Each worker keeps its own throttle; together they allow what the configuration says.
        throttle=LoginThrottle(per_username_hour=config.http.login_throttle.per_username_hour / config.workers,
                               per_address_hour=config.http.login_throttle.per_address_hour / config.workers),
        device=DeviceSigner(options.session_secret),
        origins=origins_for(config),
        public_url=public_urls(config.http.listen, config.http.public_url, config.websocket.listen,
                               config.websocket.public_url, config.websocket.path)[0],
        history=history,
        # The Tests page's runs and loads live in worker 0; the others pass their requests on.
        runs=TestRuns(public_urls(config.http.listen, config.http.public_url, config.websocket.listen,
                                  config.websocket.public_url, config.websocket.path)[0], reactor)
        if worker == 0 else None,
        worker0_door=options.door if worker else None,
        serve_metrics=config.http.metrics,
        health=health,
    )
    # The metrics read these while the service tree lives (webtesting.metrics).
    top.metrics = metrics.watch_web(metrics.WebParts(relay, browsers, links, history))  # type: ignore[attr-defined]
    access = config.http.access_log
    access_path = access.path
    if worker and access_path:  # a file of its own: each process rotates what it writes
        stem, ext = os.path.splitext(access_path)
        access_path = f"{stem}-worker{worker}{ext}"
    site = make_site(api.app.resource(), config.http.max_body_bytes, access_log=access_path,
                     max_bytes=access.max_bytes, keep=access.keep)
    reloader = Reloader("web server", options["config"], config, _load_checked,
                        partial(_apply_web, relay=relay, browsers=browsers, api=api, site=site, links=links,
                                history=history, sampler=sampler, workers=config.workers), reactor)
    reloader.setName("reload")
    reloader.setServiceParent(top)
    if worker:
        http_at: Any = InheritedPort(reactor, FIRST_LISTENING_FD)
        ws_at: Any = InheritedPort(reactor, FIRST_LISTENING_FD + 1)
    else:
        http_at = RecordedEndpoint(listening_endpoint(reactor, config.http.listen))
        ws_at = RecordedEndpoint(listening_endpoint(reactor, config.websocket.listen))
    http = HTTPListener(http_at, site)
    http.setName("http")
    http.setServiceParent(top)

    ws = BrowserListener(ws_at, browsers)
    ws.setName("websocket")
    ws.setServiceParent(top)
    if worker:
        link = Worker0Link(reactor, worker, {"sync": lambda channel: links.sync(), "metrics": metrics_handler})
        link.setName("worker-0")
        link.setServiceParent(top)
        others.append(lambda: link.channel.send("changed"))
    elif config.workers > 1:
        # The door for the other workers' requests about runs and metrics: the same site (and the same
        # logins) on a UNIX socket in a folder of our own (mode 0700: other local users cannot reach it).
        door_folder = tempfile.mkdtemp(prefix="webtesting-web-")
        door = os.path.join(door_folder, "worker0.sock")
        door_listener = HTTPListener(endpoints.UNIXServerEndpoint(reactor, door, mode=0o600, wantPID=False), site)
        door_listener.setName("door")
        door_listener.setServiceParent(top)
        reactor.addSystemEventTrigger("after", "shutdown", shutil.rmtree, door_folder, True)
        pool = WorkerPool(
            reactor, "webtesting-web", config.workers,
            listening=lambda: [http_at.port.fileno(), ws_at.port.fileno()],
            arguments=lambda k: [*(["--config", os.path.abspath(options["config"])] if options["config"] else []),
                                 "--worker", str(k), "--door", door])
        pool.setName("workers")
        pool.setServiceParent(top)  # last: it starts once the sockets it passes on listen, and stops first
        reloader.also.append(lambda: pool.signal_all("HUP"))

        def tell_workers(but: Any = None) -> None:
            for channel in list(pool.channels.values()):
                if channel is not but:
                    channel.send("sync")

        def changed_elsewhere(channel: Any) -> None:
            links.sync()
            tell_workers(but=channel)

        others.append(tell_workers)
        pool.handlers["changed"] = changed_elsewhere
        api.gather_metrics = partial(gather_metrics, pool)
    tuning = GCTuning(reactor)  # last: once everything it holds for good is there
    tuning.setName("gc")
    tuning.setServiceParent(top)
    return top
