"""
Keeping the demo's daemons running (``./wt run``).

WebTesting exists to watch bots that are restarted all day, so the demo must
not fall over when one of its daemons dies: it used to stop every process,
and open pages then showed "reconnecting" forever. L{Guardian} restarts the
daemon that died after a growing delay and leaves the others alone, so the
rest of the system can show how it recovers.

L{Guardian} holds every decision (when to restart, how long to wait, how to
stop) and takes time from an injected clock, so it is tested without a
single process; L{Processes} is the thin part that spawns and signals real
ones.
"""

from __future__ import annotations

import contextlib
import os
import signal as signals
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

_log = Logger()


class Launcher(Protocol):
    """Where L{Guardian} starts and signals its daemons."""

    def start(self, name: str, ended: Callable[[str], None]) -> int:
        """Start daemon C{name}; return its pid. C{ended(why)} is called once when it ends.

        @raise OSError: it could not be started at all.
        """

    def signal(self, name: str, signal: str) -> None:
        """Send C{signal} ("TERM", "KILL") to daemon C{name}, if it still runs."""


@dataclass
class _Daemon:
    name: str
    running: bool = False
    started_at: float = 0.0
    starts: int = 0
    # Deaths since the daemon last ran for C{stable_after} seconds: the backoff's exponent.
    failures: int = 0
    restart: Any = None  # the pending restart's IDelayedCall


class Guardian:
    """
    Restarts each daemon that dies, after C{initial}, C{initial*factor}, ...
    seconds, capped at C{maximum}; a daemon that ran for C{stable_after}
    seconds starts over at C{initial}. A daemon that keeps dying is retried
    at C{maximum} for as long as the guardian runs: a person may fix what it
    needs (a database, a port) while the demo runs.

    Every event is one line through C{say}: the demo's output is where a
    person looks.
    """

    def __init__(
        self,
        launcher: Launcher,
        clock: Any,
        say: Callable[[str], None],
        *,
        initial: float = 1.0,
        factor: float = 2.0,
        maximum: float = 30.0,
        stable_after: float = 60.0,
        grace: float = 10.0,
        logs: str = "var/log",
    ) -> None:
        self._launcher = launcher
        self._clock = clock
        self._say = say
        self.initial = initial
        self.factor = factor
        self.maximum = maximum
        self.stable_after = stable_after
        self.grace = grace
        self._logs = logs
        self._daemons: list[_Daemon] = []
        self._stopping = False
        self._kill_call: Any = None  # IDelayedCall
        self._waiters: list[Deferred[None]] = []

    def backoff(self, failures: int) -> float:
        """The delay before restarting a daemon that died C{failures} times before (0: the first death)."""
        # The exponent is bounded so that a daemon dying for days cannot overflow the float.
        return float(min(self.initial * self.factor ** min(failures, 64), self.maximum))

    def add(self, name: str) -> None:
        """Start daemon C{name} now and keep it running until L{stop}."""
        if self._stopping:
            return
        daemon = _Daemon(name)
        self._daemons.append(daemon)
        self._start(daemon)

    def running(self) -> list[str]:
        """The daemons that run now, in the order they were added."""
        return [d.name for d in self._daemons if d.running]

    def _start(self, daemon: _Daemon) -> None:
        daemon.restart = None
        daemon.started_at = self._clock.seconds()
        daemon.running = True
        daemon.starts += 1
        try:
            pid = self._launcher.start(daemon.name, lambda why: self._ended(daemon, why))
        except OSError as e:
            self._ended(daemon, f"could not start: {e}")
            return
        self._say(f"{'restarted' if daemon.starts > 1 else 'started'} {daemon.name} (pid {pid})")

    def _ended(self, daemon: _Daemon, why: str) -> None:
        if not daemon.running:
            return
        daemon.running = False
        if self._stopping:
            self._say(f"{daemon.name} stopped ({why})")
            self._check_stopped()
            return
        ran = self._clock.seconds() - daemon.started_at
        if ran >= self.stable_after:
            daemon.failures = 0
        delay = self.backoff(daemon.failures)
        daemon.failures += 1
        line = f"{daemon.name} died ({why}) after {ran:.1f} s; restarting it in {delay:g} s"
        if delay >= self.maximum:
            line += f" (it keeps dying: retried every {self.maximum:g} s until it stays up)"
        self._say(f"{line}; see {self._logs}/{daemon.name}.log" if self._logs else line)
        daemon.restart = self._clock.callLater(delay, self._start, daemon)

    def stop(self) -> Deferred[None]:
        """
        Cancel pending restarts, ask every running daemon to stop (SIGTERM),
        kill those still running after C{grace} seconds (SIGKILL).

        @return: fires when every daemon has ended (or, should one survive
            SIGKILL, C{grace} seconds after it was sent).
        """
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        if self._stopping:
            self._check_stopped()
            return waiter
        self._stopping = True
        for daemon in self._daemons:
            if daemon.restart is not None:
                daemon.restart.cancel()
                daemon.restart = None
        live = [d for d in reversed(self._daemons) if d.running]
        if live:
            self._kill_call = self._clock.callLater(self.grace, self._kill)
        for daemon in live:
            self._launcher.signal(daemon.name, "TERM")
        self._check_stopped()
        return waiter

    def _kill(self) -> None:
        live = [d.name for d in self._daemons if d.running]
        self._say(f"{', '.join(live)} did not stop within {self.grace:g} s: killing")
        for name in live:
            self._launcher.signal(name, "KILL")
        self._kill_call = self._clock.callLater(self.grace, self._give_up)

    def _give_up(self) -> None:
        self._kill_call = None
        self._say(f"{', '.join(self.running())} still running after SIGKILL; leaving")
        self._release()

    def _check_stopped(self) -> None:
        if not self._stopping or any(d.running for d in self._daemons):
            return
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_call = None
        self._release()

    def _release(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)


# -- processes ------------------------------------------------------------------

# Run in front of each daemon: a session of its own keeps a terminal's Ctrl-C
# (sent to the whole foreground process group) away from the daemons, so the
# guardian alone decides how they stop. exec keeps the pid.
_NEW_SESSION = "import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"


def describe(reason: Failure) -> str:
    """How a process ended, in words: "exit code 1", "killed by SIGKILL"."""
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exit code 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            try:
                return f"killed by {signals.Signals(value.signal).name}"
            except ValueError:
                return f"killed by signal {value.signal}"
        return f"exit code {value.exitCode}"
    return str(value)


class _Watch(ProcessProtocol):
    def __init__(self, ended: Callable[[str], None]) -> None:
        self._ended = ended

    def processEnded(self, reason: Failure) -> None:
        try:
            self._ended(describe(reason))
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            _log.failure("handling the end of a daemon")


class Processes:
    """
    Real processes for L{Guardian}: C{commands} maps a daemon's name to its
    argv (the program as an absolute path); its output is appended to
    C{logs}/<name>.log.
    """

    def __init__(self, reactor: Any, commands: Mapping[str, Sequence[str]], cwd: str, logs: str) -> None:
        self._reactor = reactor
        self._commands = commands
        self._cwd = cwd
        self._logs = logs
        self._transports: dict[str, Any] = {}  # IProcessTransport

    def start(self, name: str, ended: Callable[[str], None]) -> int:
        argv = [sys.executable, "-c", _NEW_SESSION, *self._commands[name]]
        # The child gets its own copies of these descriptors; ours close on leaving.
        with open(os.path.join(self._logs, f"{name}.log"), "ab") as log, open(os.devnull, "rb") as null:
            transport = self._reactor.spawnProcess(
                _Watch(ended), sys.executable, argv, env=dict(os.environ), path=self._cwd,
                childFDs={0: null.fileno(), 1: log.fileno(), 2: log.fileno()},
            )
        self._transports[name] = transport
        return int(transport.pid)

    def signal(self, name: str, signal: str) -> None:
        transport = self._transports.get(name)
        if transport is None:
            return
        with contextlib.suppress(ProcessExitedAlready):
            transport.signalProcess(signal)
