"""
Several worker processes on one port: ``workers: N`` in web.yaml and agent.yaml.

The daemon that twistd starts is worker 0. It opens the listening sockets,
then starts workers 1..N-1 as ``twistd webtesting-<daemon> --worker K`` and
keeps them running (L{WorkerPool}, on L{webtesting.guardian.Guardian}: a
worker that dies is restarted after a growing delay; stopping worker 0 stops
them all, SIGHUP to worker 0 reaches them all). Each of them holds:

- fd 3: its end of a UNIX socket pair to worker 0: a L{Channel} (JSON
  lines, and file descriptors passed with them). When worker 0 dies, the
  worker sees the channel close and stops (L{attach_to_worker0}).
- fd 4 on: listening sockets it shares with worker 0 (the web server's HTTP
  and WebSocket ports, adopted with L{InheritedPort}): the kernel gives each
  new connection to whichever process accepts it first, so a busy process
  takes fewer.
- standard output: its log events as Twisted's JSON, which worker 0 writes
  into its own log with the worker's number in the event's system
  (L{log_to_worker0}; L{_Worker.outReceived}).
- standard error: worker 0's, for what a process prints before its logging
  starts.

Each worker runs in a session of its own, so a terminal's Ctrl-C reaches
worker 0 alone, which then stops the others in order; the systemd units say
C{KillMode=mixed} for the same reason.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IFileDescriptorReceiver, IStreamServerEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import FileLogObserver, Logger, eventFromJSON, globalLogPublisher, jsonFileLogObserver
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from webtesting.guardian import Guardian, describe

CHANNEL_FD = 3
MAX_LOG_LINE = 1024 * 1024  # bytes of one relayed log line at most
FIRST_LISTENING_FD = 4

# twistd in a session of its own (see the module's docstring); exec keeps the pid.
_TWISTD = ("import os, sys; os.setsid(); sys.argv[0] = 'twistd'; "
           "from twisted.scripts.twistd import run; run()")

_log = Logger()


def _same_reactor(reactor: Any) -> list[str]:
    """twistd's option that gives a worker the reactor worker 0 runs, if it is WebTesting's (webtesting.reactor)."""
    # Loaded only where it runs (it needs epoll): if it is not loaded, worker 0 does not run it.
    ours = sys.modules.get("webtesting.reactor")
    if ours is None or not isinstance(reactor, ours.ShortDispatchEPollReactor):
        return []
    return [f"--reactor={ours.NAME}"]

WORKER_OPTION = ["worker", None, "0", "which worker this process is (workers: N): set by worker 0 when it "
                 "starts the others"]


def worker_number(options: Any, workers: int) -> int:
    """A daemon's checked C{--worker} (L{WORKER_OPTION}); C{usage.UsageError} if it is not one of C{workers}."""
    from twisted.python import usage

    try:
        number = int(options["worker"])
    except ValueError:
        raise usage.UsageError("--worker takes a whole number") from None
    if not 0 <= number < workers:
        raise usage.UsageError(f"--worker {number}: not one of the {workers} workers the configuration has")
    return number


class ChannelClosed(Exception):
    """The other end of a L{Channel} went away before it answered."""


class RemoteError(Exception):
    """The other end of a L{Channel} failed to answer a call: its reason."""


@implementer(IFileDescriptorReceiver)
class Channel(LineReceiver):
    """
    Worker 0 and one other worker: one JSON object a line, either end may
    L{send} (no answer), L{call} (a Deferred of the answer) or L{send_fd} (a
    file descriptor with a message: it arrives before the message's line,
    and the handler takes it with L{take_fd}).

    A message is C{{"op": name, ...fields}}, answered C{{"re": id, "value": v}}
    or C{{"re": id, "error": why}} when it carried an C{id}. Handlers are
    C{handler(channel, **fields)}, returning a value or a Deferred of one.
    """

    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024 * 1024

    def __init__(self, handlers: dict[str, Callable[..., Any]], name: str) -> None:
        self.handlers = handlers
        self.name = name
        self._ids = itertools.count(1)
        self._calls: dict[int, Deferred[Any]] = {}
        self._fds: deque[int] = deque()
        self.closed: Deferred[None] = Deferred()
        self.connected = False

    def connectionMade(self) -> None:
        self.connected = True

    def send(self, op: str, **fields: Any) -> None:
        if self.connected:
            self.sendLine(json.dumps({"op": op, **fields}, separators=(",", ":")).encode())

    def call(self, op: str, **fields: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        if not self.connected:
            d.errback(ChannelClosed(f"{op}: the worker channel {self.name} is closed"))
            return d
        call_id = next(self._ids)
        self._calls[call_id] = d
        self.send(op, id=call_id, **fields)
        return d

    def send_fd(self, fd: int, op: str, **fields: Any) -> None:
        """Pass a copy of C{fd} with a message; the caller keeps (and closes) its own."""
        transport: Any = self.transport
        transport.sendFileDescriptor(fd)
        self.send(op, **fields)

    def fileDescriptorReceived(self, descriptor: int) -> None:
        self._fds.append(descriptor)

    def take_fd(self) -> int:
        return self._fds.popleft()

    def lineReceived(self, line: bytes) -> None:
        try:
            message = json.loads(line)
            assert isinstance(message, dict)
        except (ValueError, AssertionError):
            _log.error("worker channel {name}: not a JSON object: {line!r}", name=self.name, line=line[:200])
            return
        if "re" in message:
            d = self._calls.pop(message["re"], None)
            if d is not None:
                if "error" in message:
                    d.errback(RemoteError(message["error"]))
                else:
                    d.callback(message.get("value"))
            return
        op = message.pop("op", None)
        call_id = message.pop("id", None)
        handler = self.handlers.get(op) if isinstance(op, str) else None
        if handler is None:
            _log.error("worker channel {name}: no such operation {op!r}", name=self.name, op=op)
            if call_id is not None:
                self.sendLine(json.dumps({"re": call_id, "error": f"no such operation: {op!r}"}).encode())
            return
        d = maybeDeferred(handler, self, **message)
        if call_id is None:
            d.addErrback(lambda f: _log.failure("worker channel {name}: {op}", f, name=self.name, op=op))
            return

        def answer(value: Any) -> None:
            self.send_answer(call_id, value=value)

        def failed(f: Failure) -> None:
            _log.failure("worker channel {name}: {op}", f, name=self.name, op=op)
            self.send_answer(call_id, error=f.getErrorMessage())

        d.addCallbacks(answer, failed)

    def send_answer(self, call_id: int, **fields: Any) -> None:
        if self.connected:
            self.sendLine(json.dumps({"re": call_id, **fields}, separators=(",", ":")).encode())

    def lineLengthExceeded(self, line: bytes) -> None:
        _log.error("worker channel {name}: a line over {n} bytes; closing", name=self.name, n=self.MAX_LENGTH)
        transport: Any = self.transport
        transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.connected = False
        calls, self._calls = self._calls, {}
        for d in calls.values():
            d.errback(ChannelClosed(f"worker channel {self.name} closed"))
        while self._fds:
            os.close(self._fds.popleft())
        self.closed.callback(None)


def _adopt_channel(reactor: Any, fd: int, channel: Channel) -> None:
    reactor.adoptStreamConnection(fd, socket.AF_UNIX, Factory.forProtocol(lambda: channel))


# -- listening sockets -----------------------------------------------------------


@implementer(IStreamServerEndpoint)
class RecordedEndpoint:
    """An endpoint that keeps the port it listened on (worker 0 passes its socket on)."""

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint
        self.port: Any = None

    def listen(self, factory: Any) -> Deferred[Any]:
        def keep(port: Any) -> Any:
            self.port = port
            return port

        d: Deferred[Any] = self.endpoint.listen(factory)
        return d.addCallback(keep)


def socket_family(fd: int) -> int:
    probe = socket.socket(fileno=fd)
    try:
        return int(probe.family)
    finally:
        probe.detach()


@implementer(IStreamServerEndpoint)
class InheritedPort:
    """A listening socket inherited from worker 0 at C{fd}, adopted by the reactor."""

    def __init__(self, reactor: Any, fd: int) -> None:
        self.reactor = reactor
        self.fd = fd

    def listen(self, factory: Any) -> Deferred[Any]:
        port = self.reactor.adoptStreamPort(self.fd, socket_family(self.fd), factory)
        os.close(self.fd)  # the port holds its own copy
        return succeed(port)


# -- worker 0 --------------------------------------------------------------------


class _Worker(ProcessProtocol):
    """One worker process as worker 0 sees it: its log lines, and its end."""

    def __init__(self, number: int, ended: Callable[[str], None]) -> None:
        self.number = number
        self._ended = ended
        self._buffer = b""

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_LOG_LINE:  # no end in sight: what came so far, as it is
            lines.append(self._buffer)
            self._buffer = b""
        for line in lines:
            if line.strip():
                relay_log_line(self.number, line)

    def processEnded(self, reason: Failure) -> None:
        if self._buffer.strip():
            relay_log_line(self.number, self._buffer)
        self._buffer = b""
        try:
            self._ended(describe(reason))
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            _log.failure("handling the end of worker {n}", n=self.number)


def relay_log_line(number: int, line: bytes) -> None:
    """A worker's log event, into worker 0's log, its system naming the worker."""
    try:
        event = eventFromJSON(line.decode("utf-8", "replace"))
        assert isinstance(event, dict)
    except Exception:  # noqa: BLE001 - whatever a worker printed, worker 0 logs it as text and goes on
        _log.info("{line}", line=line.decode("utf-8", "replace")[:MAX_LOG_LINE], log_system=f"worker-{number}")
        return
    system = event.get("log_system")
    if system in (None, "-"):
        level = event.get("log_level")
        system = f"{event.get('log_namespace', '?')}#{getattr(level, 'name', level)}"
    event["log_system"] = f"worker-{number} {system}"
    event["worker"] = number
    globalLogPublisher(event)


class _Launcher:
    """Starts and signals the workers for the L{Guardian} (L{webtesting.guardian.Launcher})."""

    def __init__(self, pool: WorkerPool) -> None:
        self._pool = pool
        self._transports: dict[str, Any] = {}

    def start(self, name: str, ended: Callable[[str], None]) -> int:
        pool = self._pool
        number = int(name.rsplit("-", 1)[1])
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with open(os.devnull, "rb") as null:
                child_fds: dict[int, Any] = {0: null.fileno(), 1: "r", 2: 2, CHANNEL_FD: theirs.fileno()}
                for i, fd in enumerate(pool.listening()):
                    child_fds[FIRST_LISTENING_FD + i] = fd
                argv = [sys.executable, "-c", _TWISTD, *_same_reactor(pool.reactor), "--nodaemon", "--pidfile=",
                        "--logger", "webtesting.workers.log_to_worker0", pool.plugin, *pool.arguments(number)]
                transport = pool.reactor.spawnProcess(_Worker(number, ended), sys.executable, argv,
                                                      env=dict(os.environ), childFDs=child_fds)
            channel = Channel(pool.handlers, name)
            _adopt_channel(pool.reactor, ours.fileno(), channel)
        finally:
            ours.close()
            theirs.close()
        self._transports[name] = transport
        pool.channels[number] = channel
        channel.closed.addCallback(lambda _: pool.channel_closed(number, channel))
        return int(transport.pid)

    def signal(self, name: str, signal: str) -> None:
        transport = self._transports.get(name)
        if transport is not None and transport.pid is not None:
            transport.signalProcess(signal)


class WorkerPool(Service):
    """
    Worker 0's other workers (see the module's docstring): started when this
    service starts, after the listeners it passes on; stopped in turn when it
    stops, each given C{grace} seconds before SIGKILL.

    C{listening()} gives the listening sockets' descriptors, in the order the
    workers expect them from fd 4; C{arguments(k)} the daemon's options for
    worker C{k}; C{handlers} answer what the workers send on their channels.
    """

    def __init__(self, reactor: Any, plugin: str, count: int, listening: Callable[[], Sequence[int]],
                 arguments: Callable[[int], list[str]], handlers: dict[str, Callable[..., Any]] | None = None,
                 grace: float = 30.0) -> None:
        self.reactor = reactor
        self.plugin = plugin
        self.count = count
        self.listening = listening
        self.arguments = arguments
        self.handlers = handlers or {}
        self.channels: dict[int, Channel] = {}
        self.ready: set[int] = set()  # workers that said they run (L{Worker0Link} does at start)
        self.on_channel_closed: list[Callable[[int], None]] = []
        self._waiting_ready: list[Deferred[None]] = []
        self._hup_missed: set[int] = set()
        self.handlers.setdefault("ready", self._ready)
        self._launcher = _Launcher(self)
        self.guardian = Guardian(self._launcher, reactor, lambda line: _log.info("{line}", line=line),
                                 maximum=30.0, stable_after=60.0, grace=grace, logs="")

    def startService(self) -> None:
        super().startService()
        for number in range(1, self.count):
            self.guardian.add(f"worker-{number}")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.guardian.stop()

    def _ready(self, channel: Channel) -> None:
        number = int(channel.name.rsplit("-", 1)[1])
        if self.channels.get(number) is not channel:
            return
        self.ready.add(number)
        if number in self._hup_missed:  # a SIGHUP came while it started, after it had read the file
            self._hup_missed.discard(number)
            self._launcher.signal(channel.name, "HUP")
        if len(self.ready) >= self.count - 1:
            waiting, self._waiting_ready = self._waiting_ready, []
            for d in waiting:
                if not d.called:
                    d.callback(None)

    def all_ready(self, timeout: float) -> Deferred[None]:
        """Fires once every worker said it runs, or after C{timeout} seconds (one may not start at all)."""
        d: Deferred[None] = Deferred()
        if len(self.ready) >= self.count - 1:
            d.callback(None)
            return d
        self._waiting_ready.append(d)

        def late() -> None:
            if d in self._waiting_ready:
                self._waiting_ready.remove(d)
            d.callback(None)

        call = self.reactor.callLater(timeout, late)
        d.addBoth(lambda result: (call.cancel() if call.active() else None, result)[1])
        return d

    def signal_all(self, signal: str) -> None:
        """
        Send C{signal} (e.g. "HUP") to every worker that said it runs: one still
        starting has no handler yet (SIGHUP would end it) and reads the file anyway.
        """
        for name in self.guardian.running():
            number = int(name.rsplit("-", 1)[1])
            if number in self.ready:
                self._launcher.signal(name, signal)
            elif signal == "HUP":
                self._hup_missed.add(number)

    def channel_closed(self, number: int, channel: Channel) -> None:
        if self.channels.get(number) is not channel:
            return  # an older channel of a worker started again since: its state is the new one's
        del self.channels[number]
        self.ready.discard(number)
        for hook in self.on_channel_closed:
            hook(number)


# -- the other workers -------------------------------------------------------------


def log_to_worker0() -> FileLogObserver:
    """A worker's log observer (twistd --logger): Twisted's JSON events, one a line, for worker 0 to relay."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")


class Worker0Link(Service):
    """
    A worker's channel to worker 0 (fd 3). When it closes (worker 0 died, or
    is gone without stopping us), this worker stops.
    """

    def __init__(self, reactor: Any, number: int, handlers: dict[str, Callable[..., Any]] | None = None,
                 fd: int = CHANNEL_FD) -> None:
        self.reactor = reactor
        self.number = number
        self.channel = Channel(handlers or {}, "worker-0")
        self._fd = fd

    def startService(self) -> None:
        super().startService()
        _adopt_channel(self.reactor, self._fd, self.channel)
        os.close(self._fd)
        self.channel.closed.addCallback(self._gone)
        self.channel.send("ready")

    def _gone(self, _: Any) -> None:
        if self.running:
            _log.warn("worker {n}: worker 0 is gone; stopping", n=self.number)
            self.reactor.stop()


def gather_metrics(pool: WorkerPool, timeout: float = 2.0) -> Deferred[bytes]:
    """
    Every worker's metrics as one scrape, each sample labelled with its
    C{worker} (L{webtesting.metrics.merge_workers}); a worker that does not
    answer within C{timeout} seconds is left out, and the log says so.
    """
    from twisted.internet.defer import DeferredList

    from webtesting import metrics

    numbers = sorted(k for k in pool.channels if k in pool.ready)
    calls = [pool.channels[k].call("metrics").addTimeout(timeout, pool.reactor) for k in numbers]

    def merge(results: list[tuple[bool, Any]]) -> bytes:
        scrapes = {0: metrics.scrape()}
        for number, (ok, value) in zip(numbers, results, strict=True):
            if ok and isinstance(value, str):
                scrapes[number] = value.encode("utf-8")
            else:
                _log.warn("metrics: worker {n} did not answer: {why}", n=number,
                          why=value.getErrorMessage() if isinstance(value, Failure) else value)
        return metrics.merge_workers(scrapes)

    return DeferredList(calls, consumeErrors=True).addCallback(merge)


def metrics_handler(channel: Channel) -> str:
    """A worker's answer to worker 0's C{metrics} call: its own scrape."""
    from webtesting import metrics

    return metrics.scrape().decode("utf-8")

