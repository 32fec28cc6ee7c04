"""
What the benchmarks share: child processes pinned to a CPU, with their CPU
time and memory read from /proc, and the WebTesting daemons (twistd, on the
shipped etc/*.yaml with ports, secrets and paths changed) with an admin's
and a tester's API tokens.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support.rediscluster import free_ports  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def child_setup(cpu: int | None) -> Callable[[], None]:
    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # The bench opens thousands of sockets per process (10,000 sessions).
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        with contextlib.suppress(OSError):  # die with the bench, whatever kills it
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    return setup


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: str

    def cpu_seconds(self) -> float:
        user, system = self.cpu_split()
        return user + system

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) seconds of CPU so far, every thread, with the processes it started (workers: N)."""
        user = system = 0.0
        for pid in descendants(self.popen.pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            user += int(fields[11]) / CLK_TCK
            system += int(fields[12]) / CLK_TCK
        return user, system

    def rss_kib(self) -> int:
        total = 0
        for pid in descendants(self.popen.pid):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total


    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)

    def tail(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""


def descendants(pid: int) -> list[int]:
    """C{pid} and every process under it."""
    found, todo = [], [pid]
    while todo:
        one = todo.pop()
        found.append(one)
        with contextlib.suppress(OSError), open(f"/proc/{one}/task/{one}/children") as f:
            todo.extend(int(p) for p in f.read().split())
    return found


class Bench:
    def __init__(self, folder: str, pin: bool) -> None:
        self.folder = folder
        cpus = sorted(os.sched_getaffinity(0))
        self.server_cpu = cpus[0] if pin and len(cpus) > 1 else None
        self.load_cpu = cpus[1] if pin and len(cpus) > 1 else None
        self.procs: list[Proc] = []
        self.cleanups: list[Callable[[], None]] = []

    def start(self, name: str, argv: list[str], port: int | None = None, *, cpu: Any = "server",
              env: dict[str, str] | None = None) -> Proc:
        log = os.path.join(self.folder, f"{name}.log")
        with open(log, "wb") as out:
            popen = subprocess.Popen(argv, cwd=self.folder, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=child_setup(self.server_cpu if cpu == "server" else cpu))
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        if port is not None:
            wait_port(port, proc)
        return proc

    def stop(self, procs: list[Proc]) -> None:
        for proc in procs:
            proc.stop()
            if proc in self.procs:
                self.procs.remove(proc)

    def close(self) -> None:
        self.stop(list(self.procs))
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception as e:  # noqa: BLE001 - a bench's teardown says and goes on
                say(f"cleanup: {e}")


def wait_port(port: int, proc: Proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.popen.poll() is not None:
            raise SystemExit(f"{proc.name} exited at start:\n{proc.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{proc.name} did not listen on {port} within {timeout} s:\n{proc.tail()}") from None
            time.sleep(0.05)


def merge(into: dict[str, Any], what: dict[str, Any]) -> dict[str, Any]:
    """C{what} merged into C{into}, nested mappings key by key; C{into}."""
    for key, value in what.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


def write_config(bench: Bench, name: str, changes: dict[str, Any], suffix: str = "", root: str = ROOT) -> str:
    """The shipped etc/<name>.yaml (of the checkout at C{root}) with C{changes} merged in, written to the
    bench's folder."""
    with open(os.path.join(root, "etc", f"{name}.yaml"), encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    merge(data, changes)
    path = os.path.join(bench.folder, f"{name}{suffix}.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f, allow_unicode=True)
    return path


def api(base: str, token: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}/WebTesting/{path}", data=data, method=method, headers={
        "Cookie": f"wt_session={token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())



@dataclass
class WebTesting:
    web: Proc
    agent: Proc
    base: str  # http://127.0.0.1:port
    ws_port: int
    agent_port: int
    tokens: dict[str, str] = field(default_factory=dict)  # role -> API token
    agent_metrics_port: int = 0


def checkout_env(checkout: str) -> dict[str, str]:
    """
    The environment that runs the daemons from another checkout of WebTesting
    (its code first on the path, this .venv's packages behind it), checked.
    """
    env = {**os.environ, "PYTHONPATH": os.path.abspath(checkout)}
    found = subprocess.run([sys.executable, "-c", "import webtesting; print(webtesting.__file__)"], env=env,
                           capture_output=True, text=True, check=True, cwd="/").stdout.strip()
    if not found.startswith(os.path.abspath(checkout) + os.sep):
        raise SystemExit(f"{checkout}: webtesting would be imported from {found}, not from there")
    return env


def start_webtesting(bench: Bench, web_changes: dict[str, Any] | None = None,
                     agent_changes: dict[str, Any] | None = None, name: str = "",
                     checkout: str = "") -> WebTesting:
    """
    twistd webtesting-web (registry on SQLite) and webtesting-agent, with an
    admin and a tester; from another C{checkout} of WebTesting if given.
    """
    env = checkout_env(checkout) if checkout else None
    http_port, ws_port, agent_port, agent_metrics_port = free_ports(4)
    secret = "bench-agent-secret-" + os.urandom(8).hex()
    changes: dict[str, Any] = {
        "http": {"listen": f"tcp:{http_port}:interface=127.0.0.1",
                 "webroot": os.path.join(os.path.abspath(checkout) if checkout else ROOT, "webroot"),
                 "sessions": {"secret": os.urandom(16).hex(), "secret_file": ""},
                 "access_log": {"path": os.path.join(bench.folder, f"access{name}.log")}},
        "websocket": {"listen": f"tcp:{ws_port}:interface=127.0.0.1"},
        "agents": {"auth": {"secret": secret, "secret_file": ""}},
        "registry": {"sqlite_path": os.path.join(bench.folder, f"registry{name}.sqlite3")},
    }
    merge(changes, web_changes or {})
    root = os.path.abspath(checkout) if checkout else ROOT
    web_config = write_config(bench, "web", changes, name, root)
    agent_config = write_config(bench, "agent", merge({
        "websocket": {"listen": f"tcp:{agent_port}:interface=127.0.0.1"},
        "auth": {"secret": secret, "secret_file": ""},
        "metrics": {"listen": f"tcp:{agent_metrics_port}:interface=127.0.0.1"},  # not the shipped :2022
    }, agent_changes or {}), name, root)
    bindir = os.path.dirname(sys.executable)
    tokens = {}
    for user, role in (("bench-admin", "admin"), ("bench-tester", "tester")):
        account = [os.path.join(bindir, "webtesting-account"), "--config", web_config]
        subprocess.run(account + ["add", user, "--role", role, "--password-stdin"],
                       input=os.urandom(12).hex().encode() + b"\n", check=True, cwd=bench.folder,
                       capture_output=True, env=env)
        made = subprocess.run(account + ["token", user, "--label", "bench"], check=True, cwd=bench.folder,
                              capture_output=True, env=env)
        tokens[role] = made.stdout.decode().strip().splitlines()[-1]
    # The reactor the shipped units run, where that checkout has it (an older --compare one may not).
    reactor = (["--reactor", "webtesting-epoll"] if os.path.exists(os.path.join(root, "webtesting", "reactor.py"))
               else [])
    twistd = [os.path.join(bindir, "twistd"), *reactor]
    agent = bench.start(f"webtesting{name}-agent", [*twistd, "-n", "--pidfile=", "--logfile",
                                                    os.path.join(bench.folder, f"agent{name}.twistd.log"),
                                                    "webtesting-agent", "--config", agent_config], agent_port,
                        env=env)
    web = bench.start(f"webtesting{name}-web", [*twistd, "-n", "--pidfile=", "--logfile",
                                                os.path.join(bench.folder, f"web{name}.twistd.log"),
                                                "webtesting-web", "--config", web_config], http_port, env=env)
    base = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 30
    while True:  # 503 while the registry database opens
        try:
            api(base, tokens["admin"], "GET", "Service/getServiceList")
            break
        except OSError as e:
            if time.monotonic() > deadline:
                raise SystemExit(f"the web server did not answer: {e}\n{web.tail()}") from e
            time.sleep(0.2)
    return WebTesting(web, agent, base, ws_port, agent_port, tokens, agent_metrics_port)
