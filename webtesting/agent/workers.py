"""
The agent's workers (``workers: N``; L{webtesting.workers}).

Web server links are few and long: one per web server process and service,
each carrying all of its users. Left to the kernel, two links could well
land on one worker and leave the other idle. So worker 0 accepts every
connection itself (L{Handoff}) and hands it, before reading a byte, to the
worker holding the fewest links (itself included), passing the socket over
that worker's channel; the worker adopts it as if it had accepted it. Each
worker reports its number of open links as it changes.

Worker 0 also keeps the L{LoginBook}: one login per bot user over them all.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections import deque
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from webtesting.agent.loginbook import LocalBook, LoginBook, RemoteBook, book_handlers
from webtesting.config import LISTEN_BACKLOG, listen_address
from webtesting.workers import Channel, Worker0Link, WorkerPool

_log = Logger()

# Seconds worker 0 waits for the other workers before it accepts links.
READY_WAIT = 10.0

# Connections accepted in one go before the reactor serves others.
_ACCEPTS_PER_READ = 64


@implementer(IReadDescriptor)
class Handoff(Service):
    """Worker 0's listening socket: each connection goes to the worker with the fewest links."""

    def __init__(self, reactor: Any, description: str, factory: Any) -> None:
        address = listen_address(description)
        if address is None or address[0]:
            raise ValueError(f"{description}: worker 0 hands on plain tcp connections only")
        _tls, self.interface, self.port = address
        self.reactor = reactor
        self.factory = factory
        self.book = LoginBook(self._evict)
        factory.book = LocalBook(self.book)
        self.pool: WorkerPool | None = None
        self.counts: dict[int, int] = {}  # links per other worker, as last reported (plus those handed since)
        self._unconfirmed: dict[int, deque[socket.socket]] = {}  # handed on, not yet adopted
        self._socket: socket.socket | None = None
        self._turn = 0

    def share_with(self, pool: WorkerPool) -> None:
        self.pool = pool
        pool.handlers.update(book_handlers(self.book, self._number))
        pool.handlers["links"] = self._links
        pool.handlers["took"] = self._took
        pool.on_channel_closed.append(self._gone)

    def _number(self, channel: Channel) -> int:
        return int(channel.name.rsplit("-", 1)[1])

    # -- listening ---------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        # Bound before twistd drops privileges (a port below 1024 with --uid), as Twisted's listeners are.
        family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
        self._socket = socket.create_server((self.interface or "", self.port), family=family,
                                            backlog=LISTEN_BACKLOG)
        self._socket.setblocking(False)
        super().privilegedStartService()

    def startService(self) -> None:
        if self._socket is None:  # started without privilegedStartService (tests)
            self.privilegedStartService()
        super().startService()
        # Links that come before the workers run would all stay here: the kernel keeps them
        # (the backlog) until every worker runs, or READY_WAIT seconds.
        ready = self.pool.all_ready(READY_WAIT) if self.pool is not None else None
        if ready is None:
            self.reactor.addReader(self)
        else:
            ready.addCallback(lambda _: self.reactor.addReader(self) if self._socket is not None else None)

    def stopService(self) -> None:
        super().stopService()
        if self._socket is not None:
            self.reactor.removeReader(self)
            self._socket.close()
            self._socket = None

    def fileno(self) -> int:
        return self._socket.fileno() if self._socket is not None else -1

    def logPrefix(self) -> str:
        return "agent-handoff"

    def connectionLost(self, reason: Any) -> None:
        pass

    def doRead(self) -> None:
        for _ in range(_ACCEPTS_PER_READ):
            if self._socket is None:
                return
            try:
                conn, _address = self._socket.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    _log.error("accepting a web server link: {why}", why=e.strerror)
                return
            with contextlib.ExitStack() as done:
                done.callback(conn.close)
                try:
                    self._place(conn, done)
                except Exception:  # noqa: BLE001 - one connection's trouble (reset while queued: ENOTCONN)
                    # must not stop the accepting: the reactor would drop this reader for good.
                    _log.failure("handing on a web server link")

    def _place(self, conn: socket.socket, done: contextlib.ExitStack) -> None:
        channels = self.pool.channels if self.pool is not None else {}
        loads = [(self.factory.connections, 0)]
        ready = self.pool.ready if self.pool is not None else set()
        loads += [(self.counts.get(k, 0), k) for k, ch in channels.items() if ch.connected and k in ready]
        fewest = min(count for count, _k in loads)
        candidates = sorted(k for count, k in loads if count == fewest)
        self._turn += 1
        chosen = candidates[self._turn % len(candidates)]
        if chosen == 0:
            self.reactor.adoptStreamConnection(conn.fileno(), conn.family, self.factory)
            return
        channels[chosen].send_fd(conn.fileno(), "link", family=int(conn.family))
        self.counts[chosen] = self.counts.get(chosen, 0) + 1
        # The descriptor is sent when the channel next writes: it stays open until the worker took it.
        done.pop_all()
        self._unconfirmed.setdefault(chosen, deque()).append(conn)

    # -- the other workers ---------------------------------------------------------------

    def _links(self, channel: Channel, count: int) -> None:
        self.counts[self._number(channel)] = int(count)

    def _took(self, channel: Channel) -> None:
        waiting = self._unconfirmed.get(self._number(channel))
        if waiting:
            waiting.popleft().close()

    def _gone(self, number: int) -> None:
        self.counts.pop(number, None)
        for conn in self._unconfirmed.pop(number, deque()):
            conn.close()
        self.book.worker_gone(number)

    def _evict(self, worker: int, key: tuple[int, str, str], uuid: str, account: str) -> None:
        if worker == 0:
            self.factory.evict(key, uuid, account)
            return
        channel = self.pool.channels.get(worker) if self.pool is not None else None
        if channel is not None:
            channel.send("evict", key=list(key), uuid=uuid, account=account)


def worker_side(link: Worker0Link, factory: Any, reactor: Any) -> None:
    """Another worker: links come from worker 0, logins go into its book, and its links count there."""
    channel = link.channel

    def take(channel: Channel, family: int) -> None:
        fd = channel.take_fd()
        try:
            reactor.adoptStreamConnection(fd, family, factory)
        finally:
            os.close(fd)
            channel.send("took")

    def evict(channel: Channel, key: Any, uuid: str, account: str) -> None:
        sid, appid, uname = key
        factory.evict((sid, appid, uname), uuid, account)

    channel.handlers.update({"link": take, "evict": evict})
    factory.book = RemoteBook(channel)
    factory.links_changed = lambda count: channel.send("links", count=count)
