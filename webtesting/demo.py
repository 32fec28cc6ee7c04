"""
``python -m webtesting.demo``: the whole system on one machine, for a person
trying WebTesting (``./wt run`` calls this).

It starts, under ``var/`` in the current folder:

- a 3-master Redis Cluster on 127.0.0.1:7000-7002 from the local
  ``redis-server`` (unless a cluster already answers there);
- the reference bot (``twistd webtesting-wxsim``, etc/wxsim.yaml) on :1443,
  which keeps its dictionary tables in the MariaDB/MySQL on 127.0.0.1:3306;
- the agent (``twistd webtesting-agent``, etc/agent.yaml) on :2021;
- the web server (``twistd webtesting-web``, etc/web.yaml) on :2019 (HTTP)
  and :2020 (browser WebSocket), on the embedded SQLite registry;

creates the demo logins ``admin`` and ``tester`` (random passwords, kept in
``var/demo-logins.txt``), registers a demo service pointing at the reference
bot, and prints where to go and how to log in. Logs are in ``var/log/``.

Then it guards them (L{webtesting.guardian}): a daemon that dies is
restarted after a growing delay, with a line in the output, while the others
keep running. Ctrl-C or SIGTERM stops everything.

Every port can be moved (options or environment, see L{parse_options}), so a
second demo, e.g. the tests', runs beside one on the default ports. The
daemons then run on copies of etc/*.yaml in var/ with the ports replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import select
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater, react
from twisted.internet.threads import deferToThreadPool

from webtesting.guardian import Guardian, Processes

DEMO_DESCRIPTION = "Demo: the reference bot (webtesting-wxsim)"
MYSQL_PORT = 3306
# The reactor the systemd units choose (webtesting/reactor.py), where there is epoll.
REACTOR = ["--reactor=webtesting-epoll"] if hasattr(select, "epoll") else []


def say(text: str) -> None:
    print(f"[webtesting] {text}", flush=True)


@dataclass(frozen=True)
class Ports:
    """Where the demo's daemons listen, all on 127.0.0.1."""

    bot: int = 1443
    http: int = 2019
    websocket: int = 2020
    agent: int = 2021
    redis: tuple[int, ...] = (7000, 7001, 7002)
    agent_metrics: int = 2022
    # Worker processes of the web server and of the agent (workers: N); 1: one each.
    workers: int = 1

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def daemons(self) -> dict[int, str]:
        """Each port the daemons will listen on, with what listens there."""
        return {self.bot: "the reference bot", self.http: "HTTP", self.websocket: "the browser WebSocket",
                self.agent: "the agent", self.agent_metrics: "the agent's metrics"}


# Option, environment variable, field of Ports.
_PORT_OPTIONS = (
    ("--bot-port", "WT_BOT_PORT", "bot"),
    ("--http-port", "WT_HTTP_PORT", "http"),
    ("--websocket-port", "WT_WEBSOCKET_PORT", "websocket"),
    ("--agent-port", "WT_AGENT_PORT", "agent"),
    ("--agent-metrics-port", "WT_AGENT_METRICS_PORT", "agent_metrics"),
)


def parse_options(argv: Sequence[str], environ: Mapping[str, str]) -> Ports:
    """
    The demo's ports: an option wins over its environment variable, which
    wins over today's default (L{Ports}).
    """
    defaults = Ports()
    parser = argparse.ArgumentParser(
        prog="./wt run", description="Run WebTesting on this machine: web server, agent, reference bot, Redis Cluster.",
    )

    def port(text: str) -> int:
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise argparse.ArgumentTypeError(f"not a port: {text!r}")
        return int(text)

    def redis_ports(text: str) -> tuple[int, ...]:
        ports = tuple(port(p.strip()) for p in text.split(","))
        if len(ports) != 3:
            raise argparse.ArgumentTypeError(f"three ports separated by commas are needed, not {text!r}")
        if max(ports) > 55535:
            # A cluster node also listens on its port + 10000 (the cluster bus); redis-server refuses otherwise.
            raise argparse.ArgumentTypeError(f"Redis Cluster ports must be 55535 or less, not {text!r}")
        return ports

    for option, variable, name in _PORT_OPTIONS:
        default = environ.get(variable) or str(getattr(defaults, name))
        parser.add_argument(option, dest=name, type=port, default=default,
                            help=f"default ${variable} or {getattr(defaults, name)}")
    parser.add_argument("--redis-ports", dest="redis", type=redis_ports,
                        default=environ.get("WT_REDIS_PORTS") or ",".join(map(str, defaults.redis)),
                        help="the Redis Cluster's three master ports; default $WT_REDIS_PORTS or 7000,7001,7002")
    def workers(text: str) -> int:
        if not text.isdigit() or not 1 <= int(text) <= 64:
            raise argparse.ArgumentTypeError(f"not a number of workers from 1 to 64: {text!r}")
        return int(text)

    parser.add_argument("--workers", type=workers, default=environ.get("WT_WORKERS") or "1",
                        help="worker processes of the web server and of the agent each; default $WT_WORKERS or 1")
    args = parser.parse_args(list(argv))
    ports = Ports(args.bot, args.http, args.websocket, args.agent, args.redis, args.agent_metrics, args.workers)
    every = [ports.bot, ports.http, ports.websocket, ports.agent, ports.agent_metrics, *ports.redis]
    if len(set(every)) != len(every):
        parser.error(f"the ports must all differ: {ports}")
    return ports


def answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def redis_cli(port: int, *args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True, text=True, timeout=10,
    ).stdout


def cluster_ok(port: int) -> bool:
    return "cluster_state:ok" in redis_cli(port, "CLUSTER", "INFO")


def with_port(description: str, port: int) -> str:
    """Endpoint string C{description} ("tcp:2019:interface=...") listening on C{port} instead."""
    moved, n = re.subn(r"^(tcp6?|ssl):\d+(?=:|$)", rf"\g<1>:{port}", description)
    if not n:
        moved, n = re.subn(r"(?<=:)port=\d+(?=:|$)", f"port={port}", description)
    if not n:
        raise SystemExit(f"[webtesting] the demo can only move a tcp/ssl endpoint to port {port}, not {description!r}")
    return moved


class Demo:
    def __init__(self, root: str, ports: Ports, reactor: Any) -> None:
        self.root = root
        self.ports = ports
        self.reactor = reactor
        self.var = os.path.join(root, "var")
        self.logs = os.path.join(self.var, "log")
        self.commands: dict[str, list[str]] = {}
        self.guardian = Guardian(Processes(reactor, self.commands, root, self.logs), reactor, say, logs="var/log")

    # -- preparation (nothing runs yet) ------------------------------------------

    def service(self) -> dict[str, Any]:
        """The demo service's registry record."""
        return {
            "redisCluster": [{"host": "127.0.0.1", "port": p} for p in self.ports.redis],
            "mysqlAddr": "127.0.0.1",
            "mysqlPort": MYSQL_PORT,
            "mysqlUser": "root",
            "mysqlPwd": "",
            "mysqlDbname": "wxsim",
            "wxServiceAddr": f"ws://127.0.0.1:{self.ports.bot}/5.00034",
            "agentAddr": f"ws://127.0.0.1:{self.ports.agent}/WebTesting/Agent",
            "allowedAppids": ["1.00002", "1.00003"],
            "description": DEMO_DESCRIPTION,
            # The demo's bot is a test bot: test cases may set its users' starting state.
            "allowStateWrites": True,
        }

    def config(self, name: str) -> str:
        """The demo's copy of etc/<name>.yaml."""
        # var/ is as deep as etc/, so the relative paths in the copy ("../var/...") still mean the same files.
        return os.path.join(self.var, f"{name}.yaml")

    def write_configs(self) -> None:
        """Copy etc/*.yaml to var/ with the demo's ports, so changes in etc/ still count."""
        p = self.ports

        def listen(config: dict[str, Any], section: str, default: str, port: int) -> None:
            part = config.setdefault(section, {})
            part["listen"] = with_port(part.get("listen", default), port)

        def web(c: dict[str, Any]) -> None:
            listen(c, "http", "tcp:2019", p.http)
            listen(c, "websocket", "tcp:2020", p.websocket)
            c["workers"] = p.workers

        def agent(c: dict[str, Any]) -> None:
            listen(c, "websocket", "tcp:2021", p.agent)
            c["workers"] = p.workers
            listen(c, "metrics", "tcp:2022:interface=127.0.0.1", p.agent_metrics)

        def wxsim(c: dict[str, Any]) -> None:
            listen(c, "websocket", "tcp:1443", p.bot)
            c.setdefault("redis", {})["nodes"] = [{"host": "127.0.0.1", "port": n} for n in p.redis]

        changes: dict[str, Callable[[dict[str, Any]], None]] = {"web": web, "agent": agent, "wxsim": wxsim}
        for name, change in changes.items():
            with open(os.path.join(self.root, "etc", f"{name}.yaml")) as f:
                config = yaml.safe_load(f) or {}
            change(config)
            with open(self.config(name), "w") as f:
                f.write(f"# Written by ./wt run from etc/{name}.yaml with the demo's ports; edit that file instead.\n")
                yaml.safe_dump(config, f, sort_keys=False, allow_unicode=True)

    def check_mysql(self) -> None:
        import pymysql

        try:
            pymysql.connect(host="127.0.0.1", port=MYSQL_PORT, user="root", password="", connect_timeout=3).close()
        except pymysql.err.MySQLError as e:
            raise SystemExit(
                f"[webtesting] the reference bot keeps its dictionaries in MariaDB/MySQL on 127.0.0.1:{MYSQL_PORT} "
                f"(root, no password), which is not answering: {e}"
            ) from None

    def demo_accounts(self) -> dict[str, str]:
        """Create (or reset) the demo's admin and tester; their passwords are in var/demo-logins.txt."""
        from webtesting.config import WebConfig, load
        from webtesting.web.accounts import add_user_sync
        from webtesting.web.registry import connect_sync

        path = os.path.join(self.var, "demo-logins.txt")
        logins: dict[str, str] = {}
        if os.path.exists(path):
            with open(path) as f:
                logins = dict(line.split(None, 1) for line in f.read().splitlines() if line.strip())
        logins = {name: logins.get(name) or secrets.token_urlsafe(9) for name in ("admin", "tester")}
        config = load(WebConfig, self.config("web"))
        connection, dialect = connect_sync(config.registry)
        try:
            for name, password in logins.items():
                add_user_sync(connection, dialect, name, password, name)
        finally:
            connection.close()
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.writelines(f"{name} {password}\n" for name, password in logins.items())
        return logins

    def prepare(self) -> dict[str, str]:
        """Everything before the first process: secrets, configs, checks, logins."""
        os.makedirs(self.logs, exist_ok=True)
        # var/ holds the secrets, the demo's passwords and the registry (with MySQL passwords): owner only.
        os.chmod(self.var, 0o700)
        for name in ("agent.secret", "session.secret"):
            secret = os.path.join(self.var, name)
            if not os.path.exists(secret) or os.path.getsize(secret) == 0:
                with open(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                    f.write(secrets.token_hex(32) + "\n")
        for name in ("agent.secret", "session.secret", "demo-logins.txt"):
            if os.path.exists(os.path.join(self.var, name)):
                os.chmod(os.path.join(self.var, name), 0o600)  # made by an older version, maybe 0644
        self.write_configs()
        self.check_mysql()
        logins = self.demo_accounts()
        for port, what in self.ports.daemons().items():
            if answers(port):
                raise SystemExit(f"[webtesting] port {port} ({what}) is already in use; is the demo running? "
                                 f"(./wt run --help says how to move it)")
        return logins

    # -- running -------------------------------------------------------------------

    async def blocking(self, f: Callable[..., Any], *args: Any) -> Any:
        """C{f(*args)} on a thread: the reactor keeps guarding the daemons meanwhile."""
        return await deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args)

    async def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        deadline = self.reactor.seconds() + timeout
        while not await self.blocking(check):
            if self.reactor.seconds() > deadline:
                raise SystemExit(f"[webtesting] {what} did not happen within {timeout:g} s; see var/log/")
            await deferLater(self.reactor, 0.2, lambda: None)

    def guard(self, name: str, argv: list[str]) -> None:
        self.commands[name] = argv
        self.guardian.add(name)

    def twistd(self, plugin: str, config: str) -> None:
        bindir = os.path.dirname(sys.executable)
        self.guard(plugin, [
            os.path.join(bindir, "twistd"), *REACTOR, "--nodaemon", "--pidfile=",
            "--logfile", os.path.join(self.logs, f"{plugin}.log"),
            plugin, "--config", self.config(config),
        ])

    async def start_redis(self) -> None:
        ports = self.ports.redis
        span = ", ".join(map(str, ports))
        if all(answers(p) for p in ports):
            if await self.blocking(lambda: all(cluster_ok(p) for p in ports)):
                say(f"using the Redis Cluster already on ports {span}")
                return
            raise SystemExit(f"[webtesting] something answers on {span} but is not a working Redis Cluster")
        busy = [p for p in ports if answers(p)]
        if busy:
            raise SystemExit(f"[webtesting] ports {busy} are taken by something else; the demo needs {span} "
                             f"(or --redis-ports)")
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise SystemExit("[webtesting] redis-server and redis-cli are needed (apt-get install redis-server)")
        folder = os.path.join(self.var, "redis")
        shutil.rmtree(folder, ignore_errors=True)  # a fresh cluster each run
        os.makedirs(folder)
        for port in ports:
            # A node restarted by the guardian rejoins with its slots from nodes-<port>.conf (its data is gone).
            self.guard(f"redis-{port}", [
                server, "--port", str(port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                "--dir", folder, "--save", "", "--appendonly", "no", "--daemonize", "no",
            ])
        await self.wait_for(lambda: all(answers(p) for p in ports), "Redis nodes answering")
        await self.blocking(lambda: subprocess.run(
            [cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        ))
        await self.wait_for(lambda: all(cluster_ok(p) for p in ports), "the Redis Cluster forming")
        say(f"started a Redis Cluster on 127.0.0.1 ports {span} (data in var/redis)")

    def call(self, method: str, path: str, body: Any = None, cookie: str = "") -> tuple[Any, str]:
        request = urllib.request.Request(
            f"{self.ports.http_url}{path}", data=None if body is None else json.dumps(body).encode(), method=method,
            headers={"Content-Type": "application/json", "Cookie": cookie},
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            set_cookie = next((c for c in r.headers.get_all("Set-Cookie") or [] if c.startswith("wt_session=")), "")
            return json.load(r), set_cookie.split(";", 1)[0]

    def register_demo_service(self, admin_password: str) -> None:
        """Add the demo service, or point the one from an earlier run at this run's ports."""
        wanted = self.service()
        _, cookie = self.call("POST", "/WebTesting/Account/login", {"username": "admin", "password": admin_password})
        services = self.call("GET", "/WebTesting/Service/getServices", cookie=cookie)[0]["servicdLists"]
        known = [s for s in services if s["description"] == DEMO_DESCRIPTION]
        if not known:
            answer, _ = self.call("PUT", "/WebTesting/Service/addServices", [wanted], cookie=cookie)
        elif any(known[0].get(k) != wanted[k] for k in ("redisCluster", "wxServiceAddr", "agentAddr")):
            answer, _ = self.call("POST", "/WebTesting/Service/updateServices",
                                  [{**wanted, "serviceId": known[0]["serviceId"]}], cookie=cookie)
        else:
            return
        if answer.get("result") != 1:
            raise SystemExit(f"[webtesting] registering the demo service failed: {answer}")
        say("registered the demo service (it turns healthy within a few seconds)")

    def web_answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.ports.http_url}/WebTesting/index.html", timeout=1):
                return True
        except (urllib.error.URLError, OSError):
            return False

    async def run(self) -> None:
        logins = self.prepare()
        await self.start_redis()
        self.twistd("webtesting-wxsim", "wxsim")
        self.twistd("webtesting-agent", "agent")
        self.twistd("webtesting-web", "web")
        await self.wait_for(self.web_answers, "the web server answering")
        await self.blocking(self.register_demo_service, logins["admin"])
        say("WebTesting is running:")
        say(f"  pages      {self.ports.http_url}/WebTesting/login.html")
        say(f"  logins     admin / {logins['admin']}    tester / {logins['tester']}   (var/demo-logins.txt)")
        say(f"  WebSocket  ws://127.0.0.1:{self.ports.websocket}/WebTesting")
        say("  logs       var/log/   (a daemon that dies is restarted; Ctrl-C stops everything)")

    def stop(self) -> Deferred[None]:
        say("stopping")
        return self.guardian.stop()


async def main(reactor: Any, argv: Sequence[str]) -> None:
    ports = parse_options(argv, os.environ)
    demo = Demo(os.getcwd(), ports, reactor)
    # The reactor stops on Ctrl-C and SIGTERM; it waits for this before it does.
    reactor.addSystemEventTrigger("before", "shutdown", demo.stop)
    await demo.run()
    await Deferred()  # guard until a signal stops the reactor


if __name__ == "__main__":
    react(main, [sys.argv[1:]])
