"""
The edges an unauthenticated client reaches, over real sockets: endless or
countless handshake headers on both WebSocket servers and on the HTTP
server, odd paths, directory listings and symlinks out of the webroot, and
the registry file's mode.
"""

from __future__ import annotations

import os
import stat
import time
from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial import unittest

from tests.support.agent import RunningAgent
from tests.support.fakestate import fake_state_factory
from tests.support.registry import RunningRegistry
from tests.support.sessions import sqlite_store
from tests.support.wait import autobahn_timers_settled, free_port
from tests.test_fuzz import LogWatch
from webtesting.config import RegistryConfig
from webtesting.web.registry import open_registry
from webtesting.web.sessions import Relay
from webtesting.web.ws import BrowserFactory


class Streamer(protocol.Protocol):
    """Sends a request line, then header lines without end, until the server closes."""

    def __init__(self, path: bytes, line: bytes = b"X-Filler: " + b"a" * 100 + b"\r\n",
                 limit: int = 4 * 1024 * 1024, finish_after: int | None = None) -> None:
        self.path = path
        self.line = line
        self.limit = limit
        self.finish_after = finish_after  # lines, then the blank line
        self.sent = 0
        self.lines = 0
        self.received = b""
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET " + self.path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
        self._more()

    def _more(self) -> None:
        if self.done.called or not self.transport.connected:
            return
        if self.finish_after is not None and self.lines >= self.finish_after:
            self.transport.write(b"\r\n")
            return
        if self.sent >= self.limit:
            return
        self.transport.write(self.line * 10)
        self.sent += len(self.line) * 10
        self.lines += 10
        reactor.callLater(0, self._more)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(None)


async def stream(port: int, streamer: Streamer) -> Streamer:
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), streamer)
    streamer.done.addTimeout(20, reactor)
    await streamer.done
    return streamer


class HandshakeLimitTests(unittest.TestCase):
    async def setUp(self) -> None:
        self.addCleanup(autobahn_timers_settled)
        sessions = await sqlite_store(self)
        factory = BrowserFactory(Relay({}), sessions, path="/WebTesting")
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.browser_port = listening.getHost().port
        agent = RunningAgent(free_port(), fake_state_factory([]))
        agent.start()
        self.addCleanup(agent.kill)
        self.agent_port = agent.port

    async def test_endless_headers_are_cut_off(self) -> None:
        """A client streaming handshake headers without end gets 431 and is closed after 16 KiB, on :2020 and :2021."""
        for port, path in ((self.browser_port, b"/WebTesting"), (self.agent_port, b"/WebTesting/Agent")):
            started = time.monotonic()
            s = await stream(port, Streamer(path))
            self.assertTrue(s.received.startswith(b"HTTP/1.1 431"), s.received[:80])
            self.assertLess(s.sent, 256 * 1024, "closed soon after the limit")
            self.assertLess(time.monotonic() - started, 5)

    async def test_too_many_headers(self) -> None:
        """More than 100 headers, however short, get 431 on both WebSocket servers."""
        for port, path in ((self.browser_port, b"/WebTesting"), (self.agent_port, b"/WebTesting/Agent")):
            s = await stream(port, Streamer(path, line=b"X-A: b\r\n", finish_after=110))
            self.assertTrue(s.received.startswith(b"HTTP/1.1 431"), s.received[:80])

    async def test_ordinary_handshake_still_answered(self) -> None:
        """A handshake with a few dozen headers is answered as before (here: 401, no session)."""
        s = await stream(self.browser_port, Streamer(b"/WebTesting", line=b"X-A: b\r\n", finish_after=30))
        self.assertTrue(s.received.startswith(b"HTTP/1.1 401"), s.received[:80])


class HTTPEdgeTests(unittest.TestCase):
    async def setUp(self) -> None:
        self.watch = LogWatch(self)
        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, "js"))
        with open(os.path.join(root, "index.html"), "w") as f:
            f.write("<!doctype html><title>x</title>")
        with open(os.path.join(root, "js", "app.js"), "w") as f:
            f.write("export {};")
        outside = os.path.abspath(self.mktemp())
        with open(outside, "w") as f:
            f.write("SECRET OUTSIDE THE WEBROOT")
        os.symlink(outside, os.path.join(root, "leak.txt"))
        os.symlink(os.path.join(root, "index.html"), os.path.join(root, "inside.html"))
        self.running = RunningRegistry(RegistryConfig(sqlite_path=self.mktemp() + ".sqlite3"))
        self.running.api.webroot = root
        self.client = await self.running.start(role=None)
        self.addCleanup(self.running.stop)

    async def get(self, path: str) -> tuple[int, bytes]:
        response = await self.client.http.get(self.client.base.encode() + path.encode("latin-1"))
        return response.code, await response.content()

    async def test_odd_paths_are_404_without_a_traceback(self) -> None:
        """Odd unauthenticated paths are 404, never 500, and log no failure."""
        for path in ("//etc/passwd", "/WebTesting/%2f", "/WebTesting/%00", "/WebTesting/..%2f..%2fetc%2fpasswd",
                     "/WebTesting/js/%2e%2e/%2e%2e/etc/passwd", "/WebTesting/%2e%2e", "/WebTesting//etc/passwd",
                     "/%00", "/WebTesting/Service/%00", "/WebTesting/index.html%00.js", "/WebTesting/\\..\\x"):
            status, body = await self.get(path)
            self.assertEqual(status, 404, path)
            self.assertNotIn(b"Traceback", body)
            self.assertNotIn(b"root:", body)
        self.assertEqual(self.watch.bad, [])

    async def test_no_directory_listing(self) -> None:
        """A folder under /WebTesting/ is not listed."""
        for path in ("/WebTesting/js/", "/WebTesting/js"):
            status, body = await self.get(path)
            self.assertEqual(status, 404, path)
            self.assertNotIn(b"app.js", body)
        status, _ = await self.get("/WebTesting/js/app.js")
        self.assertEqual(status, 200)

    async def test_symlinks_out_of_the_webroot_are_not_followed(self) -> None:
        """A symlink that leaves the webroot is 404; one that stays inside is served."""
        status, body = await self.get("/WebTesting/leak.txt")
        self.assertEqual(status, 404)
        self.assertNotIn(b"SECRET", body)
        status, _ = await self.get("/WebTesting/inside.html")
        self.assertEqual(status, 200)

    async def test_endless_http_headers(self) -> None:
        """The HTTP server (:2019) also cuts off a client streaming headers without end."""
        s = await stream(self.client_port(), Streamer(b"/WebTesting/index.html"))
        self.assertLess(s.sent, 1024 * 1024)
        self.assertTrue(s.received.startswith(b"HTTP/1.1 4"), s.received[:80])

    def client_port(self) -> int:
        return int(self.client.base.rsplit(":", 1)[1])


class FileModeTests(unittest.TestCase):
    async def test_registry_file_is_private(self) -> None:
        """The SQLite registry (it holds MySQL passwords) is created 0600, and an existing 0644 one is made 0600."""
        path = os.path.abspath(self.mktemp() + ".sqlite3")
        registry = open_registry(RegistryConfig(sqlite_path=path), reactor)
        registry.db.startService()
        await registry.db.ready()
        await registry.db.stopService()
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        os.chmod(path, 0o644)
        registry = open_registry(RegistryConfig(sqlite_path=path), reactor)
        registry.db.startService()
        await registry.db.ready()
        await registry.db.stopService()
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
