"""
``twistd webtesting-agent``: the agent's service tree.

    MultiService
    ├── Reloader       SIGHUP
    └── WS listener    web server links (SPEC §4), authenticated with the
                       shared secret; each link carries one service
        with workers: N (webtesting.agent.workers), in worker 0 instead:
    ├── Handoff        accepts each link and hands it to the worker with the fewest
    └── WorkerPool     workers 1..N-1; worker 0 keeps the login book
        or in the others:
    └── Worker0Link    the channel to worker 0: links handed over, logins claimed
"""

from __future__ import annotations

import dataclasses
import os
from functools import partial
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.python import usage
from twisted.web.server import Site

from webtesting import metrics
from webtesting.agent.backend import state_source_factory
from webtesting.agent.server import AgentFactory, AgentSettings
from webtesting.agent.workers import Handoff, worker_side
from webtesting.config import AgentConfig, ConfigError, listen_address, listening_endpoint, load
from webtesting.gctune import GCTuning
from webtesting.logs import LOG_FORMAT_OPTION, apply_log_format
from webtesting.reload import Reloader
from webtesting.workers import (
    WORKER_OPTION,
    Worker0Link,
    WorkerPool,
    gather_metrics,
    metrics_handler,
    worker_number,
)


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, "YAML configuration file (see etc/agent.yaml); built-in defaults if left out"],
        LOG_FORMAT_OPTION,
        WORKER_OPTION,
    ]

    def postOptions(self) -> None:
        try:
            apply_log_format(self)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        try:
            self.config: AgentConfig = load(AgentConfig, self["config"])
            self.secret = self.config.auth.read(f"{self['config'] or '<defaults>'}: auth")
        except ConfigError as e:
            raise usage.UsageError(f"configuration errors:\n{e}") from None
        self.worker = worker_number(self, self.config.workers)
        if self.config.workers > 1:
            address = listen_address(self.config.websocket.listen)
            if address is None or address[0]:
                raise usage.UsageError(f"workers: {self.config.workers} needs a tcp websocket.listen (worker 0 "
                                       "hands plain connections on): end TLS in a proxy in front, or run one worker")


def _load_checked(path: str | None) -> AgentConfig:
    """The configuration, its secret readable (ConfigError otherwise), for a reload."""
    new = load(AgentConfig, path)
    new.auth.read(f"{path or '<defaults>'}: auth")
    return new


_FOR_NEW_LOGINS = {"users.login_timeout", "users.link_ping_interval", "users.ping_timeout", "users.retry_initial",
                   "users.retry_max"}


def _apply_agent(old: AgentConfig, new: AgentConfig, changed: set[str], *, factory: AgentFactory) -> set[str]:
    """A live reload (webtesting.reload): apply what can change while the listeners stay open."""
    users = new.users
    applied: set[str] = set()
    if any(key.startswith("auth.") for key in changed):
        factory.secret = new.auth.read("reload: auth")  # every web server link authenticates with it from now on
        applied |= {key for key in changed if key.startswith("auth.")}
    settings = dataclasses.replace(
        factory.settings, poll_interval=users.poll_interval, login_timeout=users.login_timeout,
        link_ping_interval=users.link_ping_interval, ping_timeout=users.ping_timeout,
        retry_initial=users.retry_initial, retry_max=users.retry_max, connects_in_flight=users.connects_in_flight)
    factory.settings = settings
    for proto in list(factory.open_links):
        if proto.link is not None:
            proto.link.reconfigure(settings)
    applied |= changed & (_FOR_NEW_LOGINS | {"users.poll_interval", "users.connects_in_flight"})
    return applied


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    config = options.config
    top = MultiService()
    users, backends, health = config.users, config.backends, config.health
    factory = AgentFactory(
        secret=options.secret,
        reactor=reactor,
        state_factory=state_source_factory(backends.timeout, backends.retry_initial, backends.retry_max,
                                           watch_ping=(users.ping_interval, users.ping_timeout)),
        settings=AgentSettings(
            layout=config.state,
            poll_interval=users.poll_interval,
            retry_initial=users.retry_initial,
            retry_max=users.retry_max,
            login_timeout=users.login_timeout,
            ping_interval=users.ping_interval,
            ping_timeout=users.ping_timeout,
            link_ping_interval=users.link_ping_interval,
            connects_in_flight=users.connects_in_flight,
            health_interval=health.interval,
            health_interval_down=health.interval_down,
            health_confirm=health.confirm,
        ),
        path=config.websocket.path,
    )
    worker = getattr(options, "worker", 0)
    reloader = Reloader("agent", options["config"], config, _load_checked,
                        partial(_apply_agent, factory=factory), reactor)
    reloader.setName("reload")
    reloader.setServiceParent(top)
    pool: WorkerPool | None = None
    if worker:
        link = Worker0Link(reactor, worker, {"metrics": metrics_handler})
        link.setName("worker-0")
        link.setServiceParent(top)
        worker_side(link, factory, reactor)
    elif config.workers > 1:
        handoff = Handoff(reactor, config.websocket.listen, factory)
        handoff.setName("websocket")
        handoff.setServiceParent(top)
        pool = WorkerPool(reactor, "webtesting-agent", config.workers, listening=lambda: [],
                          arguments=lambda k: [*(["--config", os.path.abspath(options["config"])]
                                                 if options["config"] else []), "--worker", str(k)])
        handoff.share_with(pool)
        pool.setName("workers")
        pool.setServiceParent(top)
        reloader.also.append(lambda: pool.signal_all("HUP"))
    else:
        listener = StreamServerEndpointService(listening_endpoint(reactor, config.websocket.listen), factory)
        listener._raiseSynchronously = True  # a port that cannot be had stops the agent at start
        listener.setName("websocket")
        listener.setServiceParent(top)
    # The metrics read the factory while the service tree lives (webtesting.metrics).
    top.metrics = metrics.watch_agent(metrics.AgentParts(factory))  # type: ignore[attr-defined]
    if config.metrics.listen and not worker:  # worker 0 answers for every worker (README: Workers)
        site = Site(metrics.resource(partial(gather_metrics, pool) if pool is not None else None))
        site.displayTracebacks = False
        scrape = StreamServerEndpointService(listening_endpoint(reactor, config.metrics.listen), site)
        scrape._raiseSynchronously = True
        scrape.setName("metrics")
        scrape.setServiceParent(top)
    tuning = GCTuning(reactor)  # last: once everything it holds for good is there
    tuning.setName("gc")
    tuning.setServiceParent(top)
    return top
