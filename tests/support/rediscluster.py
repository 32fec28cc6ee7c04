"""
A real 3-master Redis Cluster for one test (or one benchmark run).

    cluster = start_cluster(testcase)      # stopped and deleted in cleanup
    cluster.nodes                          # [("127.0.0.1", port), ...] the masters
    cluster.command(node, "SET", "k", "v") # one command straight to one node
    cluster.owner(key_slot("k"))           # which master serves a slot
    cluster.kill(node)                     # SIGKILL a master
    cluster.restart(node)                  # start a killed master again (same port, same slots)
    cluster.freeze(node)                   # SIGSTOP it (SIGCONT in cleanup or thaw())
    cluster.move_slot(slot, to)            # a whole migration: MOVED from then on
    cluster.begin_migration(slot, to)      # IMPORTING/MIGRATING: ASK for moved keys
    cluster.migrate_keys(slot, to, keys)   # MIGRATE some (or all) keys of the slot
    cluster.finish_migration(slot, to)     # SETSLOT NODE on every master

Each node is C{redis-server --cluster-enabled yes} on a free loopback port,
run as a child process with its files in a temporary folder; C{redis-cli
--cluster create} joins them. C{cluster-require-full-coverage} is off so the
masters that are alive keep serving their slots when one is killed (as the
tests of a failed node want); pass C{full_coverage=True} for Redis's default.

When redis-server or redis-cli is missing, L{start_cluster} fails the test
with L{RedisMissing}, saying what to install: it never skips.

Everything here is synchronous (blocking sockets and subprocesses): it is
test set-up, run before the code under test starts using the reactor.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import Any

import hiredis

Address = tuple[str, int]
HOST = "127.0.0.1"


class RedisMissing(AssertionError):
    """redis-server or redis-cli is not installed: these tests cannot run."""


class RedisClusterError(AssertionError):
    """The test cluster did not come up or a fixture step failed."""


def free_ports(count: int, host: str = HOST) -> list[int]:
    """
    C{count} distinct TCP ports that nothing holds now, below the kernel's
    ephemeral range (tests.support.wait.free_port), each with its port +
    10000 free too (a cluster node also listens there) and not another of
    the ports chosen (43437 and 53437 once were).
    """
    from tests.support.wait import PORT_RANGE, free_port, port_is_free

    low, high = PORT_RANGE
    ports: list[int] = []
    for _ in range(10000):
        if len(ports) == count:
            return ports
        port = free_port() if high - 10000 < low else random.randint(low, high - 10000)
        if port in ports or port + 10000 in ports or any(port == p + 10000 for p in ports):
            continue
        if port + 10000 <= 65535 and port_is_free(port) and port_is_free(port + 10000):
            ports.append(port)
    raise RedisClusterError(f"no {count} free ports with their + 10000 free")


def command(node: Address, *args: Any, timeout: float = 5.0) -> Any:
    """Send one command to one node and return its reply (error replies raise)."""
    with socket.create_connection(node, timeout=timeout) as s:
        reader = hiredis.Reader(encoding="utf-8", replyError=RedisClusterError)
        s.sendall(_encode(args))
        while True:
            reply = reader.gets()
            if reply is not False:
                if isinstance(reply, RedisClusterError):
                    raise RedisClusterError(f"{node[0]}:{node[1]} {args[0]}: {reply}")
                return reply
            data = s.recv(65536)
            if not data:
                raise RedisClusterError(f"{node[0]}:{node[1]} closed the connection")
            reader.feed(data)


def _encode(args: Sequence[Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class RedisCluster:
    """
    A running test cluster: its master C{nodes}, and helpers to break it.

    @ivar nodes: the masters, as (host, port), in start order.
    @ivar directory: the temporary folder holding the nodes' files and logs.
    """

    def __init__(self, nodes: list[Address], processes: dict[Address, subprocess.Popen[bytes]],
                 directory: str) -> None:
        self.nodes = nodes
        self.processes = processes
        self.directory = directory
        self.argv: dict[Address, list[str]] = {}
        self._frozen: set[Address] = set()

    # -- talking to nodes --

    def command(self, node: Address, *args: Any) -> Any:
        """One command straight to C{node}."""
        return command(node, *args)

    def node_id(self, node: Address) -> str:
        return str(command(node, "CLUSTER", "MYID"))

    def alive(self) -> list[Address]:
        return [n for n in self.nodes if self.processes[n].poll() is None and n not in self._frozen]

    def owner(self, slot: int) -> Address:
        """The master that serves C{slot}, as the first live node sees it."""
        for start, end, master, *_ in command(self.alive()[0], "CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return (HOST, int(master[1]))
        raise RedisClusterError(f"no node serves slot {slot}")

    def other(self, node: Address) -> Address:
        """A master other than C{node}."""
        return next(n for n in self.nodes if n != node)

    # -- faults --

    def kill(self, node: Address) -> None:
        """Stop a master for good (SIGKILL), as when its host dies."""
        process = self.processes[node]
        process.kill()
        process.wait(10)

    def restart(self, node: Address, timeout: float = 15.0) -> None:
        """Start a killed master again on its port: it keeps its id and slots (its nodes.conf)."""
        if self.processes[node].poll() is None:
            raise RedisClusterError(f"node {node[1]} is still running")
        log = open(os.path.join(self.directory, f"redis-{node[1]}.log"), "ab")  # noqa: SIM115 - the child's stdout
        self.processes[node] = subprocess.Popen(self.argv[node], stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL)
        log.close()
        _wait(lambda: _answers(node), time.monotonic() + timeout, f"node {node[1]} to start again",
              self.directory)

    def freeze(self, node: Address) -> None:
        """Freeze a master (SIGSTOP): it accepts connections but never answers."""
        self.processes[node].send_signal(signal.SIGSTOP)
        self._frozen.add(node)

    def thaw(self, node: Address) -> None:
        """Let a frozen master run again."""
        if node in self._frozen and self.processes[node].poll() is None:
            self.processes[node].send_signal(signal.SIGCONT)
        self._frozen.discard(node)

    # -- moving slots (the steps of a resharding) --

    def begin_migration(self, slot: int, target: Address) -> Address:
        """
        Mark C{slot} IMPORTING on C{target} and MIGRATING on its owner; return
        the owner. From now on the owner answers ASK for keys it no longer has.
        """
        source = self.owner(slot)
        if source == target:
            raise RedisClusterError(f"slot {slot} is already on {target}")
        command(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))
        return source

    def migrate_keys(self, slot: int, source: Address, target: Address,
                     keys: Iterable[str] | None = None) -> list[str]:
        """MIGRATE C{keys} (default: every key of C{slot} on C{source}) to C{target}."""
        if keys is None:
            keys = command(source, "CLUSTER", "GETKEYSINSLOT", slot, 100000)
        keys = list(keys)
        if keys:
            command(source, "MIGRATE", target[0], target[1], "", 0, 5000, "KEYS", *keys)
        return keys

    def finish_migration(self, slot: int, target: Address) -> None:
        """Give C{slot} to C{target} on every live master (SETSLOT NODE)."""
        target_id = self.node_id(target)
        command(target, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for node in self.alive():
            if node != target:
                command(node, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self._wait_agree(slot, target)

    def move_slot(self, slot: int, target: Address) -> Address:
        """Move C{slot} and its keys to C{target}, all steps; return where it was."""
        source = self.begin_migration(slot, target)
        self.migrate_keys(slot, source, target)
        self.finish_migration(slot, target)
        return source

    def _wait_agree(self, slot: int, target: Address, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            views = set()
            for node in self.alive():
                for start, end, master, *_ in command(node, "CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        views.add(int(master[1]))
            if views == {target[1]}:
                return
            if time.monotonic() > deadline:
                raise RedisClusterError(f"nodes disagree about slot {slot}: ports {views}")
            time.sleep(0.02)

    # -- lifetime --

    def stop(self) -> None:
        """Stop every node and delete the folder."""
        for node, process in self.processes.items():
            if node in self._frozen and process.poll() is None:
                process.send_signal(signal.SIGCONT)
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        self._frozen.clear()
        shutil.rmtree(self.directory, ignore_errors=True)


def _require(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise RedisMissing(
            f"these tests need {program} (Redis >= 7 with cluster support) on PATH; "
            f"install it, e.g. `apt-get install redis-server redis-tools`"
        )
    return path


def start_cluster(testcase: Any | None = None, masters: int = 3, *,
                  full_coverage: bool = False, timeout: float = 30.0) -> RedisCluster:
    """
    Start a Redis Cluster of C{masters} masters on free loopback ports and
    wait until every node says C{cluster_state:ok}.

    With a C{testcase}, the cluster is stopped and its folder deleted in the
    test's cleanup; without one (a benchmark), call L{RedisCluster.stop}.
    """
    server = _require("redis-server")
    cli = _require("redis-cli")
    directory = tempfile.mkdtemp(prefix="wt-redis-cluster-")
    processes: dict[Address, subprocess.Popen[bytes]] = {}
    cluster = RedisCluster([], processes, directory)
    if testcase is not None:
        testcase.addCleanup(cluster.stop)
    try:
        for port in free_ports(masters):
            node = (HOST, port)
            log = open(os.path.join(directory, f"redis-{port}.log"), "wb")  # noqa: SIM115 - the child's stdout
            argv = [server, "--port", str(port), "--bind", HOST,
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", os.path.join(directory, f"nodes-{port}.conf"),
                    "--cluster-node-timeout", "5000",
                    "--cluster-require-full-coverage", "yes" if full_coverage else "no",
                    "--save", "", "--appendonly", "no", "--daemonize", "no",
                    "--dir", directory]
            cluster.argv[node] = argv
            processes[node] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
            log.close()
            cluster.nodes.append(node)
        deadline = time.monotonic() + timeout
        for node in cluster.nodes:
            _wait(lambda node=node: _answers(node), deadline, f"redis-server on port {node[1]} to start",
                  directory)
        created = subprocess.run(
            [cli, "--cluster", "create", *[f"{h}:{p}" for h, p in cluster.nodes],
             "--cluster-replicas", "0", "--cluster-yes"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            timeout=timeout,
        )
        if created.returncode != 0:
            raise RedisClusterError(
                f"redis-cli --cluster create failed: {created.stdout.decode(errors='replace')}"
            )
        for node in cluster.nodes:
            _wait(lambda node=node: "cluster_state:ok" in str(command(node, "CLUSTER", "INFO")), deadline,
                  f"node {node[1]} to report cluster_state:ok", directory)
            # Every node must also know every master's slots.
            _wait(lambda node=node: _covered(node), deadline, f"node {node[1]} to know all slots", directory)
    except BaseException:
        if testcase is None:
            cluster.stop()
        raise
    return cluster


def _answers(node: Address) -> bool:
    try:
        return command(node, "PING", timeout=1.0) == "PONG"
    except (OSError, RedisClusterError):
        return False


def _covered(node: Address) -> bool:
    slots = command(node, "CLUSTER", "SLOTS")
    return sum(int(end) - int(start) + 1 for start, end, *_ in slots) == 16384


def _wait(check: Any, deadline: float, what: str, directory: str) -> None:
    while True:
        try:
            if check():
                return
        except (OSError, RedisClusterError):
            pass
        if time.monotonic() > deadline:
            logs = []
            for name in sorted(os.listdir(directory)):
                if name.endswith(".log"):
                    with open(os.path.join(directory, name), errors="replace") as f:
                        logs.append(f"--- {name}\n{f.read()[-2000:]}")
            raise RedisClusterError(f"timed out waiting for {what}\n" + "\n".join(logs))
        time.sleep(0.05)
