"""The twistd plugins and the service trees they build."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactor
from twisted.plugin import getPlugins
from twisted.trial import unittest

from tests.support.wait import free_port
from webtesting.agent import tap as agent_tap
from webtesting.web import tap as web_tap
from webtesting.web.history import HISTORY_SCHEMA_MYSQL
from webtesting.web.schema import SERVICE_SCHEMA_MYSQL
from webtesting.web.testruns import CASE_SCHEMA_MYSQL

SECRET = "test-secret-0123456789"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PluginTests(unittest.TestCase):
    def test_plugins_are_found(self) -> None:
        """twistd finds webtesting-web, webtesting-agent and webtesting-wxsim."""
        from twisted import plugins

        names = {p.tapname for p in getPlugins(IServiceMaker, plugins)}
        self.assertTrue({"webtesting-web", "webtesting-agent", "webtesting-wxsim"} <= names, names)

    def test_plugin_module_is_lazy(self) -> None:
        """Loading the plugin file imports none of webtesting's modules."""
        code = (
            "import sys, runpy; runpy.run_path(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m.startswith('webtesting')))"
        )
        out = subprocess.check_output(
            [sys.executable, "-c", code, os.path.join(ROOT, "twisted", "plugins", "webtesting_plugins.py")]
        )
        self.assertEqual(out.strip(), b"[]")


class ServiceTreeTests(unittest.TestCase):
    def test_web_service_listens_only_when_started(self) -> None:
        """makeService builds the tree without listening; starting it listens on the configured endpoint."""
        options = web_tap.Options()
        path = self.mktemp() + ".yaml"
        with open(path, "w") as f:
            f.write(
                f"http:\n  listen: 'tcp:3019'\n  sessions:\n    secret: {SECRET}\n"
                f"registry:\n  sqlite_path: '{self.mktemp()}.sqlite3'\n"
                f"agents:\n  auth:\n    secret: {SECRET}\n"
            )
        options.parseOptions(["--config", path])
        reactor = MemoryReactor()
        top = web_tap.makeService(options, reactor)
        self.assertIsInstance(top, MultiService)
        self.assertEqual(reactor.tcpServers, [])
        http = top.getServiceNamed("http")
        http.startService()
        self.addCleanup(http.stopService)
        self.assertEqual(reactor.tcpServers[0][0], 3019)

    def test_agent_service_listens_on_2021(self) -> None:
        """The agent's tree listens on the SPEC's port 2021 by default."""
        path = self.mktemp() + ".yaml"
        with open(path, "w") as f:
            f.write(f"auth:\n  secret: {SECRET}\n")
        options = agent_tap.Options()
        options.parseOptions(["--config", path])
        reactor = MemoryReactor()
        top = agent_tap.makeService(options, reactor)
        top.getServiceNamed("websocket").startService()
        self.assertEqual(reactor.tcpServers[0][0], 2021)


class SchemaFileTests(unittest.TestCase):
    def test_schema_file_matches_code(self) -> None:
        """etc/schema.sql holds the same DDL the web server runs."""
        with open(os.path.join(ROOT, "etc", "schema.sql"), encoding="utf-8") as f:
            text = f.read()
        from webtesting.web.registry import MYSQL

        for statement in MYSQL.schema:  # every table the web server makes
            self.assertIn(statement.rstrip() + ";", text)
        self.assertIn(SERVICE_SCHEMA_MYSQL.rstrip() + ";", text)
        self.assertIn(HISTORY_SCHEMA_MYSQL.rstrip() + ";", text)
        self.assertIn(CASE_SCHEMA_MYSQL.rstrip() + ";", text)
        self.assertIn("ENGINE=InnoDB DEFAULT CHARSET=utf8mb4", text)


class TwistdWebTests(unittest.TestCase):
    async def start_web(self) -> tuple[Any, Any, int, str]:
        """Start `twistd -n webtesting-web` on free ports with one admin, logged in; (process, client, ws port,
        folder)."""
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        from tests.support.http import JSONClient

        port, ws_port = free_port(), free_port()
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "web.yaml")
        with open(path, "w") as f:
            f.write(
                f"http:\n  listen: 'tcp:{port}:interface=127.0.0.1'\n"
                f"  sessions:\n    secret: {SECRET}\n"
                f"websocket:\n  listen: 'tcp:{ws_port}:interface=127.0.0.1'\n"
                f"registry:\n  sqlite_path: registry.sqlite3\n"
                f"agents:\n  auth:\n    secret: {SECRET}\n"
            )
        # The first admin is made with the command the README gives.
        account = os.path.join(os.path.dirname(sys.executable), "webtesting-account")
        subprocess.run([account, "--config", path, "add", "boss", "--role", "admin", "--password-stdin"],
                       input=b"correct horse battery\n", check=True, cwd=folder)
        listed = subprocess.run([account, "--config", path, "list"], check=True, cwd=folder,
                                capture_output=True).stdout
        self.assertEqual(listed, b"boss\tadmin\n")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        proc = subprocess.Popen(
            # The reactor the shipped units choose.
            [twistd, "--reactor=webtesting-epoll", "--nodaemon", "--pidfile=", "--logfile",
             os.path.join(folder, "web.log"), "webtesting-web", "--config", path],
            cwd=folder,
        )
        self.addCleanup(proc.wait, 10)
        self.addCleanup(lambda: proc.terminate() if proc.poll() is None else None)
        client = JSONClient(f"http://127.0.0.1:{port}")
        self.addCleanup(client.close)
        answer: Any = None
        for _ in range(100):
            try:
                status, answer = await client.login("boss", "correct horse battery")
                if status != 503:  # 503: its registry database is not connected yet
                    break
            except Exception:  # noqa: BLE001 - not listening yet; the assertion below says whether it died
                self.assertIsNone(proc.poll(), "twistd exited")
            await deferLater(reactor, 0.1, lambda: None)
        else:
            self.fail(f"twistd webtesting-web did not answer within 10 s: {answer}")
        self.assertEqual((status, answer.get("role")), (200, "admin"), answer)
        return proc, client, ws_port, folder

    async def test_sigterm_says_goodbye_to_browsers(self) -> None:
        """On SIGTERM the web server closes every open browser WebSocket with 1001, then exits cleanly."""
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        from tests.support import wsclient

        proc, client, ws_port, folder = await self.start_web()
        url = f"ws://127.0.0.1:{ws_port}/WebTesting"
        browsers = [await wsclient.connect(url, headers={"Cookie": client.cookie}) for _ in range(2)]
        proc.send_signal(signal.SIGTERM)
        for browser in browsers:
            browser.closed.addTimeout(10, reactor)
            _clean, code, reason = await browser.closed
            self.assertEqual((code, reason), (1001, "the server is shutting down"))
        for _ in range(100):
            if proc.poll() is not None:
                break
            await deferLater(reactor, 0.1, lambda: None)
        # twistd ends itself with the signal that stopped it, once stopped.
        self.assertEqual(proc.returncode, -signal.SIGTERM)
        with open(os.path.join(folder, "web.log"), encoding="utf-8") as f:
            log = f.read()
        self.assertIn("saying goodbye (1001) to 2 browsers", log)
        self.assertIn("reactor class: webtesting.reactor.ShortDispatchEPollReactor", log)
        self.assertIn("Main loop terminated", log)
        self.assertNotIn("Traceback", log)

    async def test_twistd_answers_the_seed_examples(self) -> None:
        """`twistd -n webtesting-web --config …` serves the five endpoints with the seed's payloads."""
        from tests.support.registry import SERVICE, seed_service

        proc, client, ws_port, folder = await self.start_web()
        status, answer = await client.call("GET", f"{SERVICE}/getServiceList")
        self.assertEqual((status, answer["serviceLists"]), (200, []))
        self.assertEqual(answer["wsAddr"], f"ws://127.0.0.1:{ws_port}/WebTesting")

        status, answer = await client.call("PUT", f"{SERVICE}/addServices", [seed_service()])
        self.assertEqual(answer, {"affectedRows": 1, "result": 1, "msg": "ok"})
        _, answer = await client.call("GET", f"{SERVICE}/getServices")
        [service] = answer["servicdLists"]
        sid = service["serviceId"]
        _, answer = await client.call(
            "POST", f"{SERVICE}/updateServices", [seed_service(serviceId=sid, description="changed")]
        )
        self.assertEqual((answer["result"], answer["msg"]), (1, "ok"))
        _, answer = await client.call("GET", f"{SERVICE}/getServiceList")
        self.assertEqual(answer["serviceLists"][0]["description"], "changed")
        _, answer = await client.call("DELETE", f"{SERVICE}/delServices", {"serviceIds": [sid]})
        self.assertEqual(answer, {"affectedRows": 1, "result": 1, "msg": "ok"})
        self.assertTrue(os.path.exists(os.path.join(folder, "registry.sqlite3")))


class PortTakenTests(unittest.TestCase):
    def test_a_taken_port_stops_the_daemon_at_start(self) -> None:
        """A port that is taken stops twistd webtesting-web (one worker or two) and webtesting-agent at start,
        saying which port; they do not run on without it."""
        import socket

        taken = socket.socket()
        taken.bind(("127.0.0.1", free_port()))
        taken.listen(1)
        self.addCleanup(taken.close)
        port = taken.getsockname()[1]
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        web = (f"http:\n  listen: 'tcp:{free_port()}:interface=127.0.0.1'\n  sessions:\n    secret: {SECRET}\n"
               f"websocket:\n  listen: 'tcp:{port}:interface=127.0.0.1'\n"
               f"registry:\n  sqlite_path: registry.sqlite3\nagents:\n  auth:\n    secret: {SECRET}\n")
        agent = f"websocket:\n  listen: 'tcp:{port}:interface=127.0.0.1'\nauth:\n  secret: {SECRET}\n"
        for name, plugin, text in (("web", "webtesting-web", web), ("web2", "webtesting-web", web + "workers: 2\n"),
                                   ("agent", "webtesting-agent", agent)):
            path = os.path.join(folder, f"{name}.yaml")
            with open(path, "w") as f:
                f.write(text)
            done = subprocess.run([twistd, "--nodaemon", "--pidfile=", "--logfile", "-", plugin, "--config", path],
                                  cwd=folder, capture_output=True, timeout=60)
            output = (done.stdout + done.stderr).decode(errors="replace")
            self.assertNotEqual(done.returncode, 0, f"{name}: {output[-2000:]}")
            self.assertIn(f"Couldn't listen on 127.0.0.1:{port}", output, name)
