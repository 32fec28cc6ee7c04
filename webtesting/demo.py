"""
``python -m webtesting.demo``: the whole system on one machine, for a person
trying WebTesting (``./wt run`` calls this).

It starts, under ``var/`` in the current folder:

- a 3-master Redis Cluster on 127.0.0.1:7000-7002 from the local
  ``redis-server`` (unless a cluster already answers there);
- the reference bot (``twistd webtesting-wxsim``, etc/wxsim.yaml), which keeps
  its dictionary tables in the MariaDB/MySQL on 127.0.0.1:3306;
- the agent (``twistd webtesting-agent``, etc/agent.yaml);
- the web server (``twistd webtesting-web``, etc/web.yaml) on the embedded
  SQLite registry;

creates the demo logins ``admin`` and ``tester`` (random passwords, kept in
``var/demo-logins.txt``), registers a demo service pointing at the reference
bot, prints where to go and how to log in, and stops everything on Ctrl-C.
Logs are in ``var/log/``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

REDIS_PORTS = (7000, 7001, 7002)
HTTP = "http://127.0.0.1:2019"
DEMO_DESCRIPTION = "Demo: the reference bot (webtesting-wxsim)"
DEMO_SERVICE = {
    "redisCluster": [{"host": "127.0.0.1", "port": p} for p in REDIS_PORTS],
    "mysqlAddr": "127.0.0.1",
    "mysqlPort": 3306,
    "mysqlUser": "root",
    "mysqlPwd": "",
    "mysqlDbname": "wxsim",
    "wxServiceAddr": "ws://127.0.0.1:1443/5.00034",
    "agentAddr": "ws://127.0.0.1:2021/WebTesting/Agent",
    "allowedAppids": ["1.00002", "1.00003"],
    "description": DEMO_DESCRIPTION,
}


def say(text: str) -> None:
    print(f"[webtesting] {text}", flush=True)


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


def wait_for(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"[webtesting] {what} did not happen within {timeout:g} s")
        time.sleep(0.2)


class Demo:
    def __init__(self, root: str) -> None:
        self.root = root
        self.var = os.path.join(root, "var")
        self.logs = os.path.join(self.var, "log")
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start_redis(self) -> None:
        if all(answers(p) for p in REDIS_PORTS):
            if all(cluster_ok(p) for p in REDIS_PORTS):
                say(f"using the Redis Cluster already on ports {REDIS_PORTS[0]}-{REDIS_PORTS[-1]}")
                return
            raise SystemExit("[webtesting] something answers on 7000-7002 but is not a working Redis Cluster")
        busy = [p for p in REDIS_PORTS if answers(p)]
        if busy:
            raise SystemExit(f"[webtesting] ports {busy} are taken by something else; the demo needs 7000-7002")
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            raise SystemExit("[webtesting] redis-server and redis-cli are needed (apt-get install redis-server)")
        folder = os.path.join(self.var, "redis")
        shutil.rmtree(folder, ignore_errors=True)  # a fresh cluster each run
        os.makedirs(folder)
        for port in REDIS_PORTS:
            self.spawn(f"redis-{port}", [
                "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                "--dir", folder, "--save", "", "--appendonly", "no", "--daemonize", "no",
            ])
        wait_for(lambda: all(answers(p) for p in REDIS_PORTS), "Redis nodes answering")
        subprocess.run(
            ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in REDIS_PORTS],
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        wait_for(lambda: all(cluster_ok(p) for p in REDIS_PORTS), "the Redis Cluster forming")
        say(f"started a Redis Cluster on 127.0.0.1:{REDIS_PORTS[0]}-{REDIS_PORTS[-1]} (data in var/redis)")

    def check_mysql(self) -> None:
        import pymysql

        try:
            pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", connect_timeout=3).close()
        except pymysql.err.MySQLError as e:
            raise SystemExit(
                f"[webtesting] the reference bot keeps its dictionaries in MariaDB/MySQL on 127.0.0.1:3306 "
                f"(root, no password), which is not answering: {e}"
            ) from None

    def spawn(self, name: str, argv: list[str]) -> None:
        log = open(os.path.join(self.logs, f"{name}.log"), "ab")
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                 start_new_session=True)
        self.children.append((name, child))

    def twistd(self, plugin: str, config: str) -> None:
        bindir = os.path.dirname(sys.executable)
        self.spawn(plugin, [
            os.path.join(bindir, "twistd"), "--nodaemon", "--pidfile=",
            "--logfile", os.path.join(self.logs, f"{plugin}.log"),
            plugin, "--config", os.path.join(self.root, "etc", config),
        ])

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
        config = load(WebConfig, os.path.join(self.root, "etc", "web.yaml"))
        connection, dialect = connect_sync(config.registry)
        try:
            for name, password in logins.items():
                add_user_sync(connection, dialect, name, password, name)
        finally:
            connection.close()
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.writelines(f"{name} {password}\n" for name, password in logins.items())
        return logins

    def call(self, method: str, path: str, body: Any = None, cookie: str = "") -> tuple[Any, str]:
        request = urllib.request.Request(
            f"{HTTP}{path}", data=None if body is None else json.dumps(body).encode(), method=method,
            headers={"Content-Type": "application/json", "Cookie": cookie},
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            set_cookie = r.headers.get("Set-Cookie", "")
            return json.load(r), set_cookie.split(";", 1)[0]

    def register_demo_service(self, admin_password: str) -> None:
        _, cookie = self.call("POST", "/WebTesting/Account/login", {"username": "admin", "password": admin_password})
        services = self.call("GET", "/WebTesting/Service/getServices", cookie=cookie)[0]["servicdLists"]
        if any(s["description"] == DEMO_DESCRIPTION for s in services):
            return
        answer, _ = self.call("PUT", "/WebTesting/Service/addServices", [DEMO_SERVICE], cookie=cookie)
        if answer.get("result") != 1:
            raise SystemExit(f"[webtesting] registering the demo service failed: {answer}")
        say("registered the demo service (it turns healthy within a few seconds)")

    def web_answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{HTTP}/WebTesting/index.html", timeout=1):
                return True
        except (urllib.error.URLError, OSError):
            return False

    def check_children(self) -> None:
        for name, child in self.children:
            if child.poll() is not None:
                raise SystemExit(f"[webtesting] {name} stopped (exit {child.returncode}); see var/log/{name}.log")

    def stop(self) -> None:
        for _, child in reversed(self.children):
            if child.poll() is None:
                child.terminate()
        for name, child in reversed(self.children):
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()

    def run(self) -> None:
        os.makedirs(self.logs, exist_ok=True)
        for name in ("agent.secret", "session.secret"):
            secret = os.path.join(self.var, name)
            if not os.path.exists(secret) or os.path.getsize(secret) == 0:
                with open(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                    f.write(secrets.token_hex(32) + "\n")
        self.check_mysql()
        logins = self.demo_accounts()
        for port, what in ((1443, "the reference bot"), (2019, "HTTP"), (2020, "the browser WebSocket"),
                           (2021, "the agent")):
            if answers(port):
                raise SystemExit(f"[webtesting] port {port} ({what}) is already in use; is the demo running?")
        self.start_redis()
        self.twistd("webtesting-wxsim", "wxsim.yaml")
        self.twistd("webtesting-agent", "agent.yaml")
        self.twistd("webtesting-web", "web.yaml")
        deadline = time.monotonic() + 30
        while not self.web_answers():
            self.check_children()
            if time.monotonic() > deadline:
                raise SystemExit("[webtesting] the web server did not answer within 30 s; see var/log/")
            time.sleep(0.2)
        self.register_demo_service(logins["admin"])
        say("WebTesting is running:")
        say(f"  pages      {HTTP}/WebTesting/login.html")
        say(f"  logins     admin / {logins['admin']}    tester / {logins['tester']}   (var/demo-logins.txt)")
        say("  WebSocket  ws://127.0.0.1:2020/WebTesting")
        say("  logs       var/log/   (Ctrl-C stops everything)")
        while True:
            self.check_children()
            time.sleep(0.5)


def main() -> None:
    demo = Demo(os.getcwd())

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        demo.run()
    except KeyboardInterrupt:
        pass
    finally:
        say("stopping")
        demo.stop()


if __name__ == "__main__":
    main()
