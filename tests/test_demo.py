"""The README's run command: the whole system on one machine, chatting with the reference bot, guarded."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import urllib.request
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.support import wsclient
from tests.support.rediscluster import free_ports
from tests.support.wait import eventually, free_port
from webtesting.demo import Ports, answers, parse_options, with_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DemoOptionsTests(unittest.TestCase):
    def test_defaults_are_todays_ports(self) -> None:
        """With no option and no environment variable the demo keeps its usual ports."""
        self.assertEqual(parse_options([], {}), Ports(1443, 2019, 2020, 2021, (7000, 7001, 7002)))

    def test_options_win_over_environment(self) -> None:
        """An environment variable moves a port, and an option wins over it."""
        ports = parse_options(["--http-port", "8019", "--redis-ports", "8000, 8001,8002"],
                              {"WT_HTTP_PORT": "9019", "WT_AGENT_PORT": "9021"})
        self.assertEqual(ports, Ports(1443, 8019, 2020, 9021, (8000, 8001, 8002)))

    def test_workers(self) -> None:
        """--workers (or $WT_WORKERS) sets the web server's and the agent's worker processes; one each otherwise."""
        self.assertEqual(parse_options([], {}).workers, 1)
        self.assertEqual(parse_options([], {"WT_WORKERS": "2"}).workers, 2)
        self.assertEqual(parse_options(["--workers", "3"], {"WT_WORKERS": "2"}).workers, 3)

    def test_bad_ports_are_refused(self) -> None:
        """A bad port, a Redis port without room for its bus port, or two daemons on one port stop the demo."""
        self.patch(sys, "stderr", io.StringIO())
        for argv in (["--bot-port", "70000"], ["--redis-ports", "1,2"], ["--redis-ports", "7000,7001,60000"],
                     ["--http-port", "2020"], ["--workers", "0"], ["--workers", "65"]):
            with self.assertRaises(SystemExit, msg=argv):
                parse_options(argv, {})

    def test_endpoint_keeps_its_options(self) -> None:
        """Moving an endpoint string to another port keeps its interface and other options."""
        self.assertEqual(with_port("tcp:2019:interface=127.0.0.1", 8019), "tcp:8019:interface=127.0.0.1")
        self.assertEqual(with_port("tcp:port=2019:backlog=5", 8019), "tcp:port=8019:backlog=5")
        with self.assertRaises(SystemExit):
            with_port("unix:/tmp/sock", 8019)


class RunningDemo(unittest.TestCase):
    """A test that runs `python -m webtesting.demo` on free ports (with C{demo_args} too), and cleans up after."""

    timeout = 90
    demo_args: tuple[str, ...] = ()

    def setUp(self) -> None:
        # Redis Cluster nodes also need their port + 10000 free: free_ports checks that.
        self.ports = Ports(free_port(), free_port(), free_port(), free_port(), tuple(free_ports(3)), free_port())
        self.http = f"http://127.0.0.1:{self.ports.http}"
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        shutil.copytree(os.path.join(ROOT, "etc"), os.path.join(self.folder, "etc"))
        shutil.copytree(os.path.join(ROOT, "webroot"), os.path.join(self.folder, "webroot"))
        self.out_path = os.path.join(self.folder, "demo.out")
        out = open(self.out_path, "wb")  # noqa: SIM115 - closed by the cleanup below
        self.addCleanup(out.close)
        p = self.ports
        self.demo = subprocess.Popen(
            [sys.executable, "-m", "webtesting.demo", "--bot-port", str(p.bot), "--http-port", str(p.http),
             "--agent-port", str(p.agent), "--agent-metrics-port", str(p.agent_metrics),
             "--redis-ports", ",".join(map(str, p.redis)), *self.demo_args],
            # One port through the environment, as the README shows.
            env={**os.environ, "WT_WEBSOCKET_PORT": str(p.websocket)},
            cwd=self.folder, stdout=out, stderr=subprocess.STDOUT,
        )
        self.addCleanup(self.leave_nothing)

    def leave_nothing(self) -> None:
        """Whatever the test's outcome, the demo and every daemon it started are gone."""
        if self.demo.poll() is None:
            self.demo.send_signal(signal.SIGTERM)
            try:
                self.demo.wait(30)
            except subprocess.TimeoutExpired:
                self.demo.kill()
                self.demo.wait()
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def output(self) -> str:
        with open(self.out_path, errors="replace") as f:
            return f.read()

    def pids(self, name: str | None = None) -> list[int]:
        """The pids the demo said it started (C{name}'s only, the latest last)."""
        return [int(pid) for daemon, pid in re.findall(r"started (\S+) \(pid (\d+)\)", self.output())
                if name is None or daemon == name]

    def call(self, path: str, body: Any = None, cookie: str = "") -> tuple[Any, str]:
        request = urllib.request.Request(
            f"{self.http}{path}", method="GET" if body is None else "POST",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Cookie": cookie},
        )
        with urllib.request.urlopen(request, timeout=2) as r:
            cookies = [c for c in r.headers.get_all("Set-Cookie") or [] if c.startswith("wt_session=")]
            return json.load(r), (cookies[0].split(";", 1)[0] if cookies else "")

    async def chat(self, cookie: str, service: dict[str, Any], name: str) -> None:
        client = await wsclient.connect(service["wsAddr"], headers={"Cookie": cookie})
        try:
            sid = service["serviceId"]
            client.send({"method": "loginReq", "serviceId": sid, "appid": "1.00002", "uname": name.lower()})
            self.assertEqual((await client.expect("loginResp"))["result"], 1)
            client.send({"method": "aichatReq", "serviceId": sid, "appid": "1.00002", "content": f"my name is {name}"})
            self.assertIn(name, (await client.expect("aichatResp"))["content"])
        finally:
            await client.close()

    def running(self) -> bool:
        self.assertIsNone(self.demo.poll(), self.output())
        return "WebTesting is running" in self.output()

    def logins(self) -> dict[str, str]:
        with open(os.path.join(self.folder, "var", "demo-logins.txt")) as f:
            return dict(line.split() for line in f)


class DemoTests(RunningDemo):
    async def test_demo_restarts_dead_daemons(self) -> None:
        """The demo restarts the agent and the bot killed with -9 until chat works again; SIGTERM stops all."""
        def running() -> bool:
            self.assertIsNone(self.demo.poll(), self.output())
            return "WebTesting is running" in self.output()

        await eventually(running, timeout=60, what="the demo to start")
        var = os.path.join(self.folder, "var")
        # var/ holds the secrets, the demo's passwords and the registry (MySQL passwords): owner only.
        self.assertEqual(stat.S_IMODE(os.stat(var).st_mode), 0o700)
        for name in ("agent.secret", "session.secret", "demo-logins.txt", "registry.sqlite3"):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(var, name)).st_mode), 0o600, name)
        with open(os.path.join(self.folder, "var", "demo-logins.txt")) as f:
            logins = dict(line.split() for line in f)
        _, cookie = self.call("/WebTesting/Account/login", {"username": "tester", "password": logins["tester"]})

        def status() -> int:
            listing = self.call("/WebTesting/Service/getServiceList", cookie=cookie)[0]
            self.listing = listing
            return int(listing["serviceLists"][0]["status"]) if listing["serviceLists"] else -1

        await eventually(lambda: status() == 1, timeout=20, what="the demo service healthy")
        self.assertEqual(self.listing["wsAddr"], f"ws://127.0.0.1:{self.ports.websocket}/WebTesting")
        await self.chat(cookie, {**self.listing["serviceLists"][0], "wsAddr": self.listing["wsAddr"]}, "Ann")

        daemons = ("webtesting-wxsim", "webtesting-agent")
        killed = {name: self.pids(name)[-1] for name in daemons}
        for pid in killed.values():
            os.kill(pid, signal.SIGKILL)
        await eventually(lambda: status() != 1, timeout=10, what="the agent's death seen by the web server")
        for name in daemons:
            await eventually(lambda name=name: f"restarted {name} (pid" in self.output(), timeout=15,
                             what=f"{name} restarted")
            self.assertIn(f"{name} died (killed by SIGKILL)", self.output())
        self.assertIsNone(self.demo.poll(), "the demo keeps running")
        await eventually(lambda: status() == 1, timeout=30, what="the demo service healthy again")
        await self.chat(cookie, {**self.listing["serviceLists"][0], "wsAddr": self.listing["wsAddr"]}, "Bob")

        children = self.pids()
        self.assertEqual(len(children), 3 + 3 + 2, self.output())  # Redis nodes, daemons, restarts
        self.demo.send_signal(signal.SIGTERM)
        await eventually(lambda: self.demo.poll() is not None, timeout=30, what="the demo to stop")
        self.assertEqual(self.demo.returncode, 0, self.output())
        await deferLater(reactor, 0.2, lambda: None)
        left = []
        for pid in children:
            try:
                os.kill(pid, 0)
                left.append(pid)
            except ProcessLookupError:
                pass
        self.assertEqual(left, [], "every process the demo started is gone")
        every = [*self.ports.daemons(), *self.ports.redis]
        self.assertEqual([p for p in every if answers(p)], [], "every port the demo used is free")
