"""
The web server's registry sync: L{AgentLinks} re-reads the registry every
C{sync_interval} seconds and makes the set of agent links (one
L{webtesting.web.agentlink.AgentLink} per service) match it: new services
connect, deleted ones are dropped, a changed ``agentAddr`` reconnects, other
changed settings are sent again. Each link's health change is written to
the registry here, once per change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from webtesting.dbpool import DatabaseUnavailable
from webtesting.lifecycle import Backoff
from webtesting.metrics import HEALTH_CHANGES
from webtesting.protocol import SERVICE_FIELDS
from webtesting.reload import with_interval
from webtesting.web.agentlink import AgentLink
from webtesting.web.sessions import Relay


class AgentLinks(service.Service):
    """
    Every service's link, kept in step with the registry.

    Also the mapping the L{Relay} looks links up in (C{links[serviceId]}).
    """

    _log = Logger()

    def __init__(
        self,
        registry: Any,
        relay: Relay,
        reactor: Any,
        *,
        secret: str,
        sync_interval: float = 30.0,
        backoff: Backoff | None = None,
        connect_timeout: float = 5.0,
        ping_interval: float = 2.0,
        ping_timeout: float = 2.0,
        tls: Callable[[str], Any] | None = None,
    ) -> None:
        self.registry = registry
        self._tls = tls
        self.relay = relay
        self._reactor = reactor
        self._secret = secret
        self._sync_interval = sync_interval
        self._backoff = backoff or Backoff(initial=0.5, maximum=4.0)
        self._connect_timeout = connect_timeout
        self._ping = (ping_interval, ping_timeout)
        # The relay looks links up in this same dict.
        self.links: dict[int, AgentLink] = relay.links  # type: ignore[assignment]
        self._loop = LoopingCall(self.sync)
        self._loop.clock = reactor
        self._syncing: Deferred[None] | None = None
        self._again = False
        # A sync the registry could not answer is tried again soon (1 s, doubling up to the interval),
        # not a whole interval later: a worker starting beside another, or a database back.
        self._retry: Any = None
        self._retry_delay = 1.0
        # (status, msg) last written to the registry per service
        self._written: dict[int, tuple[int, str]] = {}
        self._writing: set[int] = set()  # services whose health write is in flight
        self._to_write: dict[int, tuple[int, str, str]] = {}  # ... and what to write next

    def startService(self) -> None:
        super().startService()
        # The first sync waits for the registry's first connection attempt,
        # so that a normal start does not wait a whole interval.
        d = self.registry.db.ready()
        d.addCallback(lambda _: self._start_loop())

    def _start_loop(self) -> None:
        if self.running and not self._loop.running:
            self._loop.start(self._sync_interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        for link in self.links.values():
            link.stop()
        self.relay.stop()

    def sync(self) -> Deferred[None] | None:
        """Re-read the registry and make the links match it. Never raises."""
        if self._syncing is not None:
            # The running sync may have read the registry before a change
            # that wants to be seen now: run once more when it ends.
            self._again = True
            return None
        d = self.registry.list_services()
        # Marked before the callbacks are added: a registry that answers at once (a database known
        # to be down fails at once) runs them right here, and the mark must not outlive them.
        self._syncing = d
        d.addCallback(self._synced)
        d.addErrback(self._sync_failed)

        def done(_: object) -> None:
            self._syncing = None
            if self._again and self.running:
                self._again = False
                self.sync()

        d.addBoth(done)
        return d

    def _synced(self, records: list[dict[str, Any]]) -> None:
        self._retry_delay = 1.0
        if self.running:  # a sync that answers after the stop starts no link
            self._reconcile(records)

    def _sync_failed(self, failure: Failure) -> None:
        if failure.check(DatabaseUnavailable):
            # Keep every link as it is, and try again soon.
            if self._retry_delay == 1.0:
                self._log.info("registry unavailable; links kept as they are")
            if self.running and (self._retry is None or not self._retry.active()):
                self._retry = self._reactor.callLater(self._retry_delay, self.sync)
                self._retry_delay = min(self._retry_delay * 2, self._sync_interval)
        else:
            self._log.failure("syncing agent links with the registry", failure)

    def _reconcile(self, records: list[dict[str, Any]]) -> None:
        seen = set()
        for record in records:
            sid = record["serviceId"]
            seen.add(sid)
            link = self.links.get(sid)
            if link is None:
                link = AgentLink(
                    record, reactor=self._reactor, relay=self.relay, secret=self._secret,
                    on_health=self._health_changed, backoff=self._backoff,
                    connect_timeout=self._connect_timeout,
                    ping_interval=self._ping[0], ping_timeout=self._ping[1], tls=self._tls,
                )
                self.links[sid] = link
                self._written[sid] = (record["status"], record["msg"])
                link.start()
                continue
            if any(record[f] != link.record[f] for f in SERVICE_FIELDS):
                link.update(record)
            if (record["status"], record["msg"]) != link.health:
                # Someone else wrote it, or our write was lost: put it right.
                self._written[sid] = (record["status"], record["msg"])
                self._health_changed(link)
        for sid in list(self.links):
            if sid not in seen:
                self._log.info("service {service_id} deleted; dropping its link", service_id=sid)
                self.links.pop(sid).stop()
                self._written.pop(sid, None)
                self.relay.service_removed(sid)

    def _health_changed(self, link: AgentLink) -> None:
        status, msg = link.health
        sid = link.service_id
        if self._written.get(sid) == (status, msg):
            return
        self._written[sid] = (status, msg)
        HEALTH_CHANGES.labels("web", str(sid), str(status)).inc()
        # One write per service at a time, the latest health next: two writes in flight could
        # commit in either order (the pool has several threads), and the registry would keep
        # the older one ("waiting for the agent's answer" after "ok") until the next change.
        self._to_write[sid] = (status, msg, link.code)
        if sid not in self._writing:
            self._write(sid)

    def _write(self, sid: int) -> None:
        status, msg, code = self._to_write.pop(sid)
        self._writing.add(sid)
        d = self.registry.set_status(sid, status, msg, code)

        def failed(failure: Failure) -> None:
            # Forget what we wrote so that the next sync writes it again.
            if self._written.get(sid) == (status, msg):
                self._written.pop(sid, None)
            if not failure.check(DatabaseUnavailable):
                self._log.failure("recording the health of service {service_id}", failure, service_id=sid)

        def done(_: object) -> None:
            self._writing.discard(sid)
            if sid in self._to_write:
                self._write(sid)

        d.addErrback(failed)
        d.addBoth(done)

    def reconfigure(self, *, sync_interval: float | None = None, secret: str | None = None) -> None:
        """A live reload: the registry sync's interval now; the secret for every authentication from now on."""
        if sync_interval is not None and sync_interval != self._sync_interval:
            self._sync_interval = sync_interval
            self._loop = with_interval(self._loop, sync_interval)
        if secret is not None:
            self._secret = secret
            for link in self.links.values():
                link.secret = secret

    async def list_logins(self) -> tuple[list[dict[str, Any]], list[int]]:
        """Every agent's bot logins, and the services whose agent could not say (down, or no answer in 2 s)."""
        links = sorted(self.links.values(), key=lambda link: link.service_id)
        results = await DeferredList([link.list_logins() for link in links], consumeErrors=True)
        logins: list[dict[str, Any]] = []
        unknown: list[int] = []
        for link, (ok, value) in zip(links, results, strict=False):
            if ok:
                logins.extend(entry for entry in value
                              if isinstance(entry, dict) and entry.get("serviceId") == link.service_id)
            else:
                unknown.append(link.service_id)
        return logins, unknown

    def get(self, service_id: int) -> AgentLink | None:
        return self.links.get(service_id)

    def code(self, service: dict[str, Any]) -> str:
        """
        The reason code for a registry record's status: its link's, when this
        process's link says the same as the record (another web node may
        have written it), else what the status alone tells.
        """
        link = self.links.get(service["serviceId"])
        if link is not None and link.health == (service["status"], service["msg"]):
            return link.code
        return "ok" if service["status"] == 1 else "unavailable"
