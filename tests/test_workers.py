"""Several worker processes on one port (workers: N): the parts, then the whole system with two workers each."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, eventAsJSON, globalLogPublisher
from twisted.python import usage
from twisted.trial import unittest

import twisted
from tests.support import wsclient
from tests.support.wait import eventually
from tests.test_demo import RunningDemo
from webtesting.agent.loginbook import LoginBook
from webtesting.workers import Channel, ChannelClosed, RemoteError, relay_log_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPID = "1.00002"
# A key and certificate that ship with Twisted, for endpoint strings that must load.
PEM = os.path.join(os.path.dirname(twisted.__file__), "test", "server.pem")


class LoginBookTests(unittest.TestCase):
    """Worker 0's book of who holds each bot user over all workers."""

    def setUp(self) -> None:
        self.evicted: list[tuple[int, Any, str, str]] = []
        self.book = LoginBook(lambda worker, key, uuid, account: self.evicted.append((worker, key, uuid, account)))
        self.key = (1, APPID, "ann")

    def test_newer_login_elsewhere_evicts(self) -> None:
        """A login on another worker ends the older one there; on the same worker the worker does it itself."""
        self.assertIsNone(self.book.claim(1, self.key, "u1", "tess", 10, False))
        self.assertIsNone(self.book.claim(1, self.key, "u2", "tess", 11, False))
        self.assertEqual(self.evicted, [])
        self.assertIsNone(self.book.claim(2, self.key, "u3", "boss", 12, False))
        self.assertEqual(self.evicted, [(1, self.key, "u2", "boss")])  # the one it replaced, by its uuid
        self.assertEqual(self.book.logins(1), [{"serviceId": 1, "appid": APPID, "uname": "ann", "account": "boss",
                                                "since": 12}])
        self.assertEqual(self.book.logins(2), [])

    def test_restore_does_not_take_over(self) -> None:
        """A restored login held on another worker is refused, naming the holder; nothing is evicted."""
        self.book.claim(1, self.key, "u1", "tess", 10, False)
        self.assertEqual(self.book.claim(2, self.key, "u2", "boss", 11, True), "tess")
        self.assertEqual(self.evicted, [])
        self.assertEqual(self.book.held[self.key].uuid, "u1")
        self.assertIsNone(self.book.claim(1, self.key, "u3", "tess", 12, True))

    def test_release_only_by_the_holder(self) -> None:
        """A late release of an older login leaves the newer one in the book."""
        self.book.claim(1, self.key, "u1", "tess", 10, False)
        self.book.claim(2, self.key, "u2", "boss", 11, False)
        self.book.release(1, self.key, "u1")
        self.assertEqual(self.book.held[self.key].uuid, "u2")
        self.book.release(2, self.key, "u2")
        self.assertEqual(self.book.held, {})

    def test_worker_gone(self) -> None:
        """A worker that dies takes its logins out of the book, and only its own."""
        self.book.claim(1, self.key, "u1", "tess", 10, False)
        self.book.claim(2, (1, APPID, "bob"), "u2", "boss", 11, False)
        self.book.worker_gone(1)
        self.assertEqual([e["uname"] for e in self.book.logins(1)], ["bob"])


class ChannelTests(unittest.TestCase):
    """The channel between worker 0 and another worker, over a real UNIX socket pair."""

    def setUp(self) -> None:
        from webtesting.workers import _adopt_channel

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.calls: list[Any] = []

        def double(channel: Channel, n: int) -> int:
            self.calls.append(n)
            return n * 2

        def fail(channel: Channel) -> None:
            raise ValueError("no good")

        def slow(channel: Channel) -> Deferred[int]:
            return Deferred()  # never answers

        def fd(channel: Channel, text: str) -> None:
            received = channel.take_fd()
            os.write(received, text.encode())
            os.close(received)

        self.a = Channel({}, "worker-1")
        self.b = Channel({"double": double, "fail": fail, "slow": slow, "fd": fd}, "worker-0")
        _adopt_channel(reactor, ours.fileno(), self.a)
        _adopt_channel(reactor, theirs.fileno(), self.b)
        ours.close()
        theirs.close()
        self.addCleanup(self.close)

    async def close(self) -> None:
        for channel in (self.a, self.b):
            if channel.connected:
                channel.transport.loseConnection()  # type: ignore[union-attr]
        await self.a.closed
        await self.b.closed

    async def test_call_and_answer(self) -> None:
        """A call gets its handler's value; a failing handler's reason comes back; an unknown operation is named."""
        self.assertEqual(await self.a.call("double", n=21), 42)
        with self.assertRaises(RemoteError) as e:
            await self.a.call("fail")
        self.assertIn("no good", str(e.exception))
        with self.assertRaises(RemoteError) as e:
            await self.a.call("nothing")
        self.assertIn("no such operation", str(e.exception))
        self.a.send("double", n=1)  # no answer wanted
        await eventually(lambda: self.calls == [21, 1], what="the one-way message handled")
        self.flushLoggedErrors(ValueError)

    async def test_file_descriptor(self) -> None:
        """A descriptor sent with a message reaches the handler, which uses it; the sender's copy stays its own."""
        r, w = os.pipe()
        self.a.send_fd(w, "fd", text="through the pipe")
        self.assertEqual(await self.a.call("double", n=0), 0)  # the one before it was handled
        os.close(w)
        self.assertEqual(os.read(r, 100), b"through the pipe")
        os.close(r)

    async def test_close_fails_pending_calls(self) -> None:
        """Calls waiting when the channel closes fail with ChannelClosed; a call on a closed channel fails at once."""
        waiting = self.a.call("slow")
        self.b.transport.loseConnection()  # type: ignore[union-attr]
        with self.assertRaises(ChannelClosed):
            await waiting
        with self.assertRaises(ChannelClosed):
            await self.a.call("double", n=1)


class LogRelayTests(unittest.TestCase):
    def test_worker_events_join_worker0s_log(self) -> None:
        """A worker's JSON event is re-published with its fields, its level, and the worker named in its system."""
        seen: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        event = {"log_format": "service {n}: up", "n": 7, "log_level": LogLevel.warn, "log_namespace": "w.x",
                 "log_time": 1.0}
        relay_log_line(3, eventAsJSON(event).encode())
        relay_log_line(3, b"not JSON at all")
        first, second = [e for e in seen if e.get("log_system", "").startswith("worker-3")]
        self.assertEqual((first["n"], first["log_level"], first["log_system"]), (7, LogLevel.warn, "worker-3 w.x#warn"))
        self.assertEqual(second["line"], "not JSON at all")


class MergedMetricsTests(unittest.TestCase):
    def test_merge_workers(self) -> None:
        """Two workers' scrapes become one: one group per family, each sample labelled with its worker."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

        from webtesting.metrics import merge_workers

        scrapes = {}
        for worker in (0, 1):
            registry = CollectorRegistry()
            Counter("frames", "Frames", ["leg"], registry=registry).labels("bot").inc(10 + worker)
            Gauge("sessions", "Sessions", registry=registry).set(worker + 2)
            scrapes[worker] = generate_latest(registry)
        merged = merge_workers(scrapes).decode()
        self.assertEqual(merged.count("# TYPE sessions gauge"), 1)
        samples = {(s.name, s.labels.get("worker")): s.value for f in text_string_to_metric_families(merged)
                   for s in f.samples}
        self.assertEqual(samples[("sessions", "0")], 2)
        self.assertEqual(samples[("sessions", "1")], 3)
        self.assertEqual(samples[("frames_total", "1")], 11)


class Worker0ProxyTests(unittest.TestCase):
    """What another web worker passes on to worker 0's door (a UNIX socket), over real sockets."""

    async def setUp(self) -> None:
        from twisted.internet import endpoints
        from twisted.web.resource import Resource

        from tests.support.http import JSONClient
        from webtesting.web.http import Worker0Proxy, make_site

        seen: list[tuple[bytes, bytes, dict[bytes, list[bytes]], bytes]] = []
        self.seen = seen

        class Echo(Resource):
            isLeaf = True

            def render(self, request: Any) -> bytes:
                seen.append((request.method, request.uri, dict(request.requestHeaders.getAllRawHeaders()),
                             request.content.read()))
                request.setHeader(b"Content-Type", b"application/json")
                request.setResponseCode(201)
                return b'{"result": 1, "msg": "from worker 0"}'

        class Front(Resource):
            isLeaf = True

            def render(self, request: Any) -> Any:
                return Worker0Proxy(door, reactor).render(request)

        import shutil
        import tempfile

        folder = tempfile.mkdtemp(prefix="wt-door-")  # short: a UNIX socket's path has ~100 bytes
        self.addCleanup(shutil.rmtree, folder, True)
        door = os.path.join(folder, "worker0.sock")
        self.door_port = await endpoints.UNIXServerEndpoint(reactor, door).listen(make_site(Echo(), 1000))
        self.addCleanup(lambda: self.door_port.stopListening())
        port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(make_site(Front(), 100))
        self.addCleanup(port.stopListening)
        self.client = JSONClient(f"http://127.0.0.1:{port.getHost().port}")
        self.addCleanup(self.client.close)

    async def test_passed_on(self) -> None:
        """Method, path, query, cookie and body reach worker 0 (framing headers rebuilt); its answer comes back."""
        self.client.cookie = "wt_session=abc"
        status, answer = await self.client.call("POST", "/WebTesting/Cases/run?x=1", {"caseIds": [1]})
        self.assertEqual((status, answer["msg"]), (201, "from worker 0"))
        [(method, uri, headers, body)] = self.seen
        self.assertEqual((method, uri, json.loads(body)), (b"POST", b"/WebTesting/Cases/run?x=1", {"caseIds": [1]}))
        self.assertEqual(headers[b"Cookie"], [b"wt_session=abc"])
        self.assertEqual(headers[b"Content-Length"], [str(len(body)).encode()])

    async def test_too_large_answered_here(self) -> None:
        """A body over the limit is answered 413 here, and nothing reaches worker 0."""
        status, answer = await self.client.call("POST", "/WebTesting/Cases/run", {"yaml": "x" * 500})
        self.assertEqual((status, answer["result"]), (413, 413))
        self.assertEqual(self.seen, [])

    async def test_worker0_gone(self) -> None:
        """Worker 0 not there: the API's own 503, naming no address."""
        await self.door_port.stopListening()
        status, answer = await self.client.call("GET", "/WebTesting/Cases/run/r1")
        self.assertEqual((status, answer["code"]), (503, "worker_unavailable"))


class OptionsTests(unittest.TestCase):
    def options(self, module: Any, yaml_text: str, *argv: str) -> Any:
        path = self.mktemp() + ".yaml"
        with open(path, "w") as f:
            f.write(yaml_text)
        options = module.Options()
        options.parseOptions(["--config", path, *argv])
        return options

    def test_web(self) -> None:
        """--worker must be one of the configured workers, with worker 0's door; TLS and UNIX listeners are
        refused."""
        from webtesting.web import tap

        base = "agents: {auth: {secret: 0123456789abcdef0123}}\nhttp: {sessions: {secret: 0123456789abcdef0123}}\n"
        self.assertEqual(self.options(tap, base + "workers: 2\n").worker, 0)
        self.assertEqual(self.options(tap, base + "workers: 2\n", "--worker", "1", "--door", "/x/w0.sock").worker, 1)
        for yaml_text, argv in ((base + "workers: 2\n", ("--worker", "2", "--door", "/x/w0.sock")),
                                (base + "workers: 2\n", ("--worker", "1")),
                                (base, ("--worker", "1", "--door", "/x/w0.sock")),
                                (base + "workers: 2\nhttp: {listen: 'ssl:443:privateKey=" + PEM + "'}\n", ()),
                                (base + "workers: 2\nwebsocket: {listen: 'unix:/tmp/ws.sock'}\n", ())):
            with self.assertRaises(usage.UsageError, msg=(yaml_text, argv)):
                self.options(tap, yaml_text, *argv)

    def test_agent(self) -> None:
        from webtesting.agent import tap

        base = "auth: {secret: 0123456789abcdef0123}\n"
        self.assertEqual(self.options(tap, base + "workers: 3\n", "--worker", "2").worker, 2)
        for yaml_text in (base + "workers: 2\nwebsocket: {listen: 'ssl:2021:privateKey=" + PEM + "'}\n",
                          base + "workers: 2\nwebsocket: {listen: 'unix:/tmp/agent.sock'}\n"):
            with self.assertRaises(usage.UsageError, msg=yaml_text):
                self.options(tap, yaml_text)


# -- the whole system ----------------------------------------------------------------------


def _socket_owners() -> dict[int, int]:
    """socket inode -> pid, for every process we can see."""
    owners = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        owners[int(target[8:-1])] = int(pid)
    return owners


def established(port: int) -> dict[int, int]:
    """The established connections accepted on loopback C{port}: the peer's port -> the pid holding ours."""
    owners = _socket_owners()
    found = {}
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            if state == "01" and int(local.split(":")[1], 16) == port and inode in owners:
                found[int(remote.split(":")[1], 16)] = owners[inode]
    return found


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


class TwoWorkersTests(RunningDemo):
    """`./wt run --workers 2`: the web server and the agent each in two processes, behaving as one."""

    timeout = 150
    demo_args = ("--workers", "2")

    async def open_on(self, pids: set[int], cookie: str, url: str) -> dict[int, wsclient.JSONClientProtocol]:
        """A browser WebSocket accepted by each of C{pids} (the kernel chooses: open until each has one)."""
        mine: dict[int, wsclient.JSONClientProtocol] = {}
        for _ in range(60):
            client = await wsclient.connect(url, headers={"Cookie": cookie})
            owner = established(self.ports.websocket).get(client.transport.getHost().port)  # type: ignore[union-attr]
            if owner in pids and owner not in mine:
                mine[owner] = client
                self.addCleanup(client.close)
            else:
                # Not needed: closed now, or a run of connections to one worker would reach the
                # account's cap (websocket.max_per_account, held per worker) and be refused.
                await client.close()
            if set(mine) == pids:
                return mine
        self.fail(f"60 WebSockets and not one accepted by each of {pids}: {set(mine)}")

    def http_on(self, pid: int) -> http.client.HTTPConnection:
        """An HTTP connection accepted by process C{pid}."""
        for _ in range(60):
            conn = http.client.HTTPConnection("127.0.0.1", self.ports.http, timeout=5)
            conn.connect()
            assert conn.sock is not None
            if established(self.ports.http).get(conn.sock.getsockname()[1]) == pid:
                self.addCleanup(conn.close)
                return conn
            conn.close()
        self.fail(f"60 HTTP connections and none accepted by {pid}")

    def get(self, conn: http.client.HTTPConnection, path: str, cookie: str) -> tuple[int, Any]:
        conn.request("GET", path, headers={"Cookie": cookie})
        response = conn.getresponse()
        return response.status, json.loads(response.read())

    async def test_two_workers_behave_as_one(self) -> None:
        await eventually(self.running, timeout=60, what="the demo to start")
        logins = self.logins()
        _, tester = self.call("/WebTesting/Account/login", {"username": "tester", "password": logins["tester"]})
        _, admin = self.call("/WebTesting/Account/login", {"username": "admin", "password": logins["admin"]})

        def listing() -> Any:
            return self.call("/WebTesting/Service/getServiceList", cookie=tester)[0]

        await eventually(lambda: [s["status"] for s in listing()["serviceLists"]] == [1], timeout=20,
                         what="the demo service healthy")
        sid, url = listing()["serviceLists"][0]["serviceId"], listing()["wsAddr"]
        web, agent = self.pids("webtesting-web")[-1], self.pids("webtesting-agent")[-1]
        await eventually(lambda: len(children(web)) == len(children(agent)) == 1, timeout=20,
                         what="a second worker of each")
        webs, agents = {web, *children(web)}, {agent, *children(agent)}

        # Each web worker links to the agent, and the agent's worker 0 gives each of its workers one link.
        await eventually(lambda: sorted(established(self.ports.agent).values()) == sorted(agents), timeout=20,
                         what=f"one agent link held by each of {agents}: {established(self.ports.agent)}")

        # Browsers reach both web workers; each chats through its own link to its own agent worker.
        testers = await self.open_on(webs, tester, url)
        for n, client in enumerate(testers.values()):
            name = ("Ann", "Bob")[n]
            client.send({"method": "loginReq", "serviceId": sid, "appid": APPID, "uname": name.lower()})
            self.assertEqual((await client.expect("loginResp"))["result"], 1)
            client.send({"method": "aichatReq", "serviceId": sid, "appid": APPID, "content": f"my name is {name}"})
            self.assertIn(name, (await client.expect("aichatResp"))["content"])

        # One login per bot user over both agent workers: admin takes over carol from tester, across them.
        testers = await self.open_on(webs, tester, url)  # one login a WebSocket: new ones
        admins = await self.open_on(webs, admin, url)
        first, second = sorted(webs)
        testers[first].send({"method": "loginReq", "serviceId": sid, "appid": APPID, "uname": "carol"})
        self.assertEqual((await testers[first].expect("loginResp"))["result"], 1)
        admins[second].send({"method": "loginReq", "serviceId": sid, "appid": APPID, "uname": "carol"})
        self.assertEqual((await admins[second].expect("loginResp"))["result"], 1)
        ended = await testers[first].expect("logoutResp")
        self.assertEqual((ended["code"], ended["msg"]), ("logged_in_elsewhere", "logged in elsewhere by admin"))
        for pid in webs:  # either web worker asks its agent worker, which asks the book
            status, answer = self.get(self.http_on(pid), "/WebTesting/Service/getLogins", admin)
            self.assertEqual(status, 200, answer)
            self.assertEqual(sorted((x["uname"], x["account"]) for x in answer["logins"]),
                             [("ann", "tester"), ("bob", "tester"), ("carol", "admin")])

        # The metrics of every worker, whichever is asked, and the agent's: each sample names its worker.
        for pid in webs:
            conn = self.http_on(pid)
            conn.request("GET", "/metrics")
            body = conn.getresponse().read().decode()
            self.assertEqual({s.labels.get("worker") for f in text_string_to_metric_families(body)
                              for s in f.samples}, {"0", "1"})
            self.assertEqual(body.count("# TYPE webtesting_web_browser_sessions "), 1)
            sessions = {s.labels["worker"]: s.value for f in text_string_to_metric_families(body)
                        for s in f.samples if s.name == "webtesting_web_browser_sessions"}
            self.assertEqual(set(sessions), {"0", "1"})
            self.assertTrue(all(n >= 2 for n in sessions.values()), sessions)  # a tester's and an admin's each
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports.agent_metrics}/metrics", timeout=5) as r:
            body = r.read().decode()
        links = {s.labels["worker"]: s.value for f in text_string_to_metric_families(body) for s in f.samples
                 if s.name == "webtesting_agent_web_links"}
        self.assertEqual(links, {"0": 1, "1": 1})

        # A run started from the Tests page lives in worker 0; asked through worker 1, it is passed there.
        with open(os.path.join(ROOT, "examples", "reference-bot", "remembers-a-name.yaml")) as f:
            saved, _ = self.call("/WebTesting/Cases/save", {"yaml": f.read(), "shared": False}, cookie=tester)
        other = next(pid for pid in webs if pid != web)
        conn = self.http_on(other)
        conn.request("POST", "/WebTesting/Cases/run", body=json.dumps({"caseIds": [saved["id"]], "serviceId": sid}),
                     headers={"Cookie": tester, "Content-Type": "application/json",
                              "Origin": f"http://127.0.0.1:{self.ports.http}"})
        response = conn.getresponse()
        started = json.loads(response.read())
        self.assertEqual(response.status, 200, started)
        run: dict[str, Any] = {}

        def done() -> bool:
            for pid in webs:
                status, answer = self.get(self.http_on(pid), f"/WebTesting/Cases/run/{started['runId']}", tester)
                self.assertEqual(status, 200, answer)
                run.update(answer["run"])
            return bool(run["done"])

        await eventually(done, timeout=30, what="the run to end")
        self.assertEqual((run["passed"], run["failed"], run["error"]), (1, 0, ""), run)

        # A worker that dies is started again; one SIGHUP to worker 0 reaches every worker.
        os.kill(other, signal.SIGKILL)
        log = os.path.join(self.folder, "var", "log", "webtesting-web.log")

        def linked() -> int:
            with open(log, errors="replace") as f:
                return sum("[worker-1 " in line and "agent link 1 up" in line for line in f)

        await eventually(lambda: linked() == 2, timeout=20, what="worker 1 restarted and linked")
        os.kill(web, signal.SIGHUP)

        def reloaded() -> int:
            with open(log, errors="replace") as f:
                return sum("reloaded" in line and "nothing changed" in line for line in f)

        await eventually(lambda: reloaded() == 2, timeout=20, what="both web workers reloaded")
        with open(log, errors="replace") as f:
            text = f.read()
        self.assertIn("worker-1 died (killed by SIGKILL)", text)
        self.assertRegex(text, r"\[worker-1 webtesting\.reload\.Reloader#info\] reloaded")

        # The agent's worker 0 killed outright: its worker sees the channel close and stops too.
        agent_worker = children(agent)[0]
        os.kill(agent, signal.SIGKILL)

        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split()[2] == "Z"

        await eventually(lambda: gone(agent_worker), timeout=15, what="the agent's worker 1 to stop")

        # Stopping the demo stops every worker.
        workers = children(web)
        self.demo.send_signal(signal.SIGTERM)
        await eventually(lambda: self.demo.poll() is not None, timeout=45, what="the demo to stop")
        self.assertEqual(self.demo.returncode, 0, self.output())
        for pid in workers:
            await eventually(lambda pid=pid: gone(pid), timeout=10, what=f"web worker {pid} to stop")


class HandoffTests(unittest.TestCase):
    async def test_one_bad_connection_does_not_stop_accepting(self) -> None:
        """A connection that cannot be taken (reset while queued: ENOTCONN; here, a protocol that fails) is
        logged and dropped; the next one is taken as usual."""
        from twisted.internet.protocol import Factory, Protocol

        from tests.support.wait import free_port
        from webtesting.agent.workers import Handoff

        built: list[Protocol] = []

        class Links(Factory):
            connections = 0

            def buildProtocol(self, addr: Any) -> Protocol:
                if not built:
                    built.append(Protocol())
                    raise RuntimeError("this one cannot be taken")
                built.append(Protocol())
                return built[-1]

        port = free_port()
        handoff = Handoff(reactor, f"tcp:{port}:interface=127.0.0.1", Links())
        handoff.startService()
        self.addCleanup(handoff.stopService)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        for client in clients:
            self.addCleanup(client.close)
        await eventually(lambda: len(built) == 2, what="the second connection taken")
        self.assertIsNotNone(built[1].transport)
        built[1].transport.loseConnection()  # type: ignore[union-attr]
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
