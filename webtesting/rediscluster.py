"""
A Redis Cluster client for Twisted: a thin slot router over txredisapi.

txredisapi 1.6 speaks Redis but not Redis Cluster (a C{MOVED} reply comes back
as a plain error), so this module adds what a cluster client needs on top of
its protocol, and is the only module in WebTesting that imports txredisapi:
everything else talks to L{RedisCluster}, so the client can be swapped here.

How it works:

- Keys map to one of 16384 slots: CRC16 (XMODEM) of the key, or of its
  C{{...}} hash tag when it has a non-empty one, modulo 16384 (L{key_slot}).
- The slot map comes from C{CLUSTER SLOTS}, asked of any node that answers
  (the seeds first time, the known masters after that).
- One connection per master node, made on first use (txredisapi's
  C{RedisProtocol}, which parses replies with hiredis when it is installed).
  txredisapi's own factory is not used: it is a pool that reconnects on its
  own schedule, while here a node is reconnected on demand and a node that
  just failed is given up on for C{retry_interval} seconds so that callers
  fail fast instead of queueing behind a dead node.
- L{RedisCluster.pipeline} groups commands by node and writes each group as
  one pipeline (all nodes in parallel); replies come back in the caller's
  order, and a failed command is returned I{as an exception instance in its
  position}, so one bad node or command never fails the whole batch.
- C{MOVED}: the slot is pointed at the named node, the command is retried
  there, and the whole map is refreshed in the background. C{ASK}: C{ASKING}
  and the command are sent together to the named node (nothing can come in
  between: each group is written in one go on that node's one connection).
  Redirects are bounded (L{MAX_REDIRECTS}).
- A node that refuses, drops or stops answering: its commands get a
  L{NodeUnavailable} naming it; the map is refreshed from the other nodes and
  the commands are retried once if their slot now lives elsewhere (after a
  failover). Commands for the other nodes are not affected.
- Every batch sent to a node has a deadline (C{timeout}); when it passes, the
  connection is aborted (its replies could no longer be matched to
  requests) and the batch's commands fail with L{NodeTimeout}. Connecting has
  the same deadline. Nothing here blocks the reactor.

Replies are what Redis sends, with bulk strings decoded as UTF-8 (invalid
bytes replaced by U+FFFD: this client is for text, not binary values),
integers as C{int}, arrays as C{list} and nil as C{None}; there is no
per-command post-processing (C{HGETALL} gives a flat C{[field, value, ...]}
list). Error replies become L{RedisReplyError} (inside arrays too).
Arguments may be C{str}, C{bytes}, C{int} or C{float}. A command is routed by
its key, C{args[1]}; C{EVAL}/C{EVALSHA} by their first key, C{args[3]}. A
command sent often can be encoded and routed once as a L{Prepared}.
"""

from __future__ import annotations

import binascii
import random
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import txredisapi

try:
    import hiredis
except ImportError:  # txredisapi then parses replies in pure Python
    hiredis = None  # type: ignore[assignment]
from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = [
    "Address",
    "ClusterError",
    "MAX_REDIRECTS",
    "NodeTimeout",
    "NodeUnavailable",
    "Prepared",
    "RedisCluster",
    "RedisReplyError",
    "SLOTS",
    "SlotNotServed",
    "connect",
    "key_slot",
]

Address = tuple[str, int]

SLOTS = 16384
MAX_REDIRECTS = 5

_log = Logger()


# -- errors -----------------------------------------------------------------


class ClusterError(Exception):
    """Something went wrong talking to the Redis Cluster."""


class RedisReplyError(ClusterError):
    """Redis answered the command with an error reply (the message is Redis's)."""


class NodeUnavailable(ClusterError):
    """
    The node that serves a command's key cannot be reached.

    @ivar node: the node's (host, port).
    @ivar reason: why, in a few words.
    """

    def __init__(self, node: Address, reason: str) -> None:
        self.node = node
        self.reason = reason
        super().__init__(f"Redis node {node[0]}:{node[1]} unavailable: {reason}")


class NodeTimeout(NodeUnavailable):
    """The node did not answer in time (it may be frozen or overloaded)."""


class SlotNotServed(ClusterError):
    """No node is known to serve a slot (the cluster map has a hole)."""


# -- slots ------------------------------------------------------------------


def key_slot(key: str | bytes) -> int:
    """
    The cluster slot of C{key}, as the Redis Cluster specification defines it.

    Only the part between the first C{{} and the first C{}} after it is
    hashed, when that part is not empty.
    """
    data = key.encode("utf-8") if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    # crc_hqx is CRC-16/CCITT; with an initial value of 0 it is XMODEM.
    return binascii.crc_hqx(data, 0) & (SLOTS - 1)


_SCRIPT_COMMANDS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "eval", "evalsha"})


def _key_of(command: Sequence[Any]) -> str | bytes | None:
    if len(command) < 2:
        return None
    if command[0] in _SCRIPT_COMMANDS:
        # EVAL script numkeys key ...: routed by its first key (a script's
        # keys must share one slot in a cluster); none means any master.
        if len(command) < 4 or str(command[2]) == "0":
            return None
        key = command[3]
    else:
        key = command[1]
    if isinstance(key, (str, bytes)):
        return key
    return str(key)


# -- one node ---------------------------------------------------------------


def _encode(command: Sequence[Any]) -> bytes:
    """One command in RESP (raises L{ClusterError} for an argument it cannot send)."""
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        if isinstance(arg, str):
            data = arg.encode("utf-8")
        elif isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            data = repr(arg).encode("ascii")
        else:
            raise ClusterError(f"cannot send a {type(arg).__name__} to Redis: {arg!r}")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class Prepared:
    """
    A command encoded once, with its slot worked out once: for a caller that
    sends the same command again and again (the agent's state poll sends one
    per watched user every second). Pass it to L{RedisCluster.pipeline} in
    place of an argument sequence.
    """

    __slots__ = ("data", "key", "slot")

    def __init__(self, *args: Any) -> None:
        self.data = _encode(args)
        self.key = _key_of(args)
        self.slot = key_slot(self.key) if self.key is not None else None

    def __repr__(self) -> str:
        return f"Prepared({self.data[:60]!r})"


class _Batch:
    """The replies of one group of commands written to one connection."""

    __slots__ = ("node", "results", "slots", "position", "done", "timer", "finished")

    def __init__(self, node: _Node, results: list[Any], slots: list[int]) -> None:
        self.node = node
        self.results = results
        # where each expected reply goes (commands that could not be encoded
        # were not sent and already hold their error)
        self.slots = slots
        self.position = 0
        self.done: Deferred[list[Any]] = Deferred()
        self.timer: Any = None
        self.finished = False

    def take(self, reply: Any) -> bool:
        """Store the next reply; True when it was the last one."""
        if isinstance(reply, txredisapi.ResponseError):  # the pure-Python parser
            reply = RedisReplyError(str(reply))
        self.results[self.slots[self.position]] = reply
        self.position += 1
        if self.position == len(self.slots):
            self.finish()
            return True
        return False

    def fail(self, error: Exception) -> None:
        """Every reply still missing is C{error}."""
        if self.finished:
            return
        for slot in self.slots[self.position :]:
            self.results[slot] = error
        self.finish()

    def finish(self) -> None:
        self.finished = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.done.callback(self.results)

    def expire(self) -> None:
        self.timer = None
        self.node.timed_out(self)


class _Protocol(txredisapi.RedisProtocol):  # type: ignore[misc]
    """
    txredisapi's protocol (its hiredis flavour when hiredis is installed),
    with replies handed in order to the waiting L{_Batch}es rather than to a
    Deferred per command: that per-command machinery costs more CPU than
    parsing, and a poll of thousands of users sends tens of thousands of
    commands a second.
    """

    def __init__(self) -> None:
        super().__init__(charset="utf-8", convertNumbers=False, replyTimeout=None)
        self.batches: deque[_Batch] = deque()
        self._fast = hiredis is not None
        if self._fast:
            # Decode while parsing; errors come back as our own error type.
            self._reader = hiredis.Reader(
                protocolError=txredisapi.InvalidData,
                replyError=RedisReplyError,
                encoding="utf-8",
                errors="replace",
            )

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        if not self._fast:
            super().dataReceived(data, unpause)
            return
        reader = self._reader
        reader.feed(data)
        reply = reader.gets()
        while reply is not False:
            self.replyReceived(reply)
            reply = reader.gets()

    def replyReceived(self, reply: Any) -> None:
        batches = self.batches
        if not batches:
            _log.warn("unexpected reply from Redis: {reply!r}", reply=reply)
            return
        if batches[0].take(reply):
            batches.popleft()

    def connectionLost(self, why: Any = None) -> None:
        super().connectionLost(why)
        batches, self.batches = self.batches, deque()
        for batch in batches:
            batch.fail(NodeUnavailable(self.node_address, "connection lost"))

    node_address: Address = ("", 0)


class _Node:
    """One master node: its connection, made on demand, and its health."""

    def __init__(self, reactor: Any, address: Address, timeout: float, retry_interval: float) -> None:
        self.reactor = reactor
        self.address = address
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.proto: _Protocol | None = None
        self.connecting: Deferred[Any] | None = None
        self.waiters: list[Deferred[Any]] = []
        self.down_until = 0.0
        self.down_reason = ""
        self.closed = False

    def __repr__(self) -> str:
        return f"<redis node {self.address[0]}:{self.address[1]}>"

    # -- sending --

    def send(self, commands: Sequence[Sequence[Any]]) -> Deferred[list[Any]]:
        """
        Write C{commands} as one pipeline; fire with one reply or exception
        per command (this Deferred does not fail).
        """
        proto = self.proto
        if proto is not None and proto.connected:
            return self._write(proto, commands)
        if self.closed:
            return defer.succeed(self._all_failed(commands, "client disconnected"))
        if self.reactor.seconds() < self.down_until:
            return defer.succeed(self._all_failed(commands, self.down_reason))
        d = self._connection()

        def connected(result: Any) -> Any:
            if isinstance(result, NodeUnavailable):
                return [result] * len(commands)
            return self._write(result, commands)

        return d.addCallback(connected)

    def _all_failed(self, commands: Sequence[Any], reason: str) -> list[Any]:
        return [NodeUnavailable(self.address, reason)] * len(commands)

    def _write(self, proto: _Protocol, commands: Sequence[Sequence[Any]]) -> Deferred[list[Any]]:
        results: list[Any] = [None] * len(commands)
        slots: list[int] = []
        data: list[bytes] = []
        for i, command in enumerate(commands):
            if type(command) is Prepared:
                data.append(command.data)
                slots.append(i)
                continue
            try:
                data.append(_encode(command))
            except ClusterError as e:
                results[i] = e
                continue
            slots.append(i)
        batch = _Batch(self, results, slots)
        if not slots:
            batch.finish()
            return batch.done
        proto.batches.append(batch)
        proto.transport.write(b"".join(data))
        batch.timer = self.reactor.callLater(self.timeout, batch.expire)
        return batch.done

    def timed_out(self, batch: _Batch) -> None:
        """C{batch} got no complete answer in time: give up on the connection."""
        error = NodeTimeout(self.address, f"no answer within {self.timeout:g} s")
        proto = self.proto
        if proto is not None and batch in proto.batches:
            # Its replies can no longer be matched to requests: every batch
            # waiting on this connection fails now.
            batches, proto.batches = proto.batches, deque()
            for waiting in batches:
                waiting.fail(error)
            self.lost(proto, error.reason, abort=True)
        else:
            batch.fail(error)

    # -- connecting --

    def _connection(self) -> Deferred[Any]:
        """Fire with a ready protocol, or with a L{NodeUnavailable} (never fails)."""
        d: Deferred[Any] = Deferred()
        self.waiters.append(d)
        if self.connecting is None:
            self._connect()
        return d

    def _endpoint(self) -> Any:
        host, port = self.address
        if isIPAddress(host):
            return TCP4ClientEndpoint(self.reactor, host, port, timeout=self.timeout)
        if isIPv6Address(host):
            return TCP6ClientEndpoint(self.reactor, host, port, timeout=self.timeout)
        return HostnameEndpoint(self.reactor, host, port, timeout=self.timeout)

    def _connect(self) -> None:
        proto = _Protocol()
        proto.node_address = self.address
        d: Deferred[Any] = connectProtocol(self._endpoint(), proto)
        # HostnameEndpoint's timeout is per attempt; bound the whole thing.
        d.addTimeout(self.timeout, self.reactor)
        self.connecting = d

        def ready(p: Any) -> Any:
            return p.whenConnected()

        d.addCallback(ready)
        d.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, proto: Any) -> None:
        self.connecting = None
        if self.closed:
            proto.transport.loseConnection()
            self._wake(NodeUnavailable(self.address, "client disconnected"))
            return
        self.proto = proto
        self.down_until = 0.0
        proto.whenDisconnected().addCallback(lambda p: self.lost(p, "connection lost", abort=False))
        _log.debug("connected to Redis node {host}:{port}", host=self.address[0], port=self.address[1])
        self._wake(proto)

    def _connect_failed(self, failure: Failure) -> None:
        self.connecting = None
        if self.closed:
            self._wake(NodeUnavailable(self.address, "client disconnected"))
            return
        reason = _describe_failure(failure, self.timeout)
        self._mark_down(reason)
        self._wake(NodeUnavailable(self.address, reason))

    def _wake(self, result: Any) -> None:
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            w.callback(result)

    def _mark_down(self, reason: str) -> None:
        if not self.down_reason or self.reactor.seconds() >= self.down_until:
            _log.warn(
                "Redis node {host}:{port} unavailable: {reason}",
                host=self.address[0], port=self.address[1], reason=reason,
            )
        self.down_reason = reason
        self.down_until = self.reactor.seconds() + self.retry_interval

    def lost(self, proto: Any, reason: str, *, abort: bool) -> None:
        """
        The connection C{proto} (None: the current one) is gone, or must go
        (C{abort}: it stopped answering, so the node is given up on for
        C{retry_interval} seconds). A connection that merely closed is
        reopened on next use.
        """
        if proto is None:
            proto = self.proto
        if proto is not None and proto is self.proto:
            self.proto = None
            if abort and not self.closed:
                self._mark_down(reason)
        if abort and proto is not None and proto.transport is not None:
            proto.transport.abortConnection()

    def close(self) -> Deferred[None]:
        """Close the connection (or stop connecting); fire once it is gone."""
        self.closed = True
        if self.connecting is not None:
            self.connecting.cancel()
        proto, self.proto = self.proto, None
        if proto is None or not proto.connected:
            return defer.succeed(None)
        gone: Deferred[None] = proto.whenDisconnected().addCallback(lambda _: None)
        proto.transport.loseConnection()
        return gone


def _describe_failure(failure: Failure, timeout: float) -> str:
    from twisted.internet import error

    if failure.check(defer.TimeoutError, defer.CancelledError, error.TimeoutError):
        return f"no connection within {timeout:g} s"
    if failure.check(error.ConnectionRefusedError):
        return "connection refused"
    if failure.check(error.DNSLookupError):
        return "unknown host"
    value = failure.value
    return f"{type(value).__name__}: {value}" if value is not None else "unknown error"


# -- the cluster ------------------------------------------------------------


class RedisCluster:
    """
    A client for one Redis Cluster; make it with L{connect}.

    @ivar timeout: the deadline of every batch sent to a node, in seconds.
    """

    def __init__(
        self,
        reactor: Any,
        seeds: Sequence[Address],
        *,
        timeout: float = 2.0,
        retry_interval: float = 1.0,
    ) -> None:
        self._reactor = reactor
        self._seeds = [(str(h), int(p)) for h, p in seeds]
        self.timeout = timeout
        self._retry_interval = retry_interval
        self._nodes: dict[Address, _Node] = {}
        self._slots: list[Address | None] = [None] * SLOTS
        self._masters: list[Address] = []
        self._refreshing: Deferred[None] | None = None
        self._refreshed_at = float("-inf")
        self._refresh_error = "the cluster map was never read"
        self._closed = False

    def __repr__(self) -> str:
        return f"<RedisCluster masters={self._masters!r}>"

    # -- map --

    @property
    def masters(self) -> list[Address]:
        """The master nodes in the current slot map."""
        return list(self._masters)

    def node_for(self, key: str | bytes) -> Address | None:
        """The master that serves C{key} according to the current map."""
        return self._slots[key_slot(key)]

    def slot_ranges(self) -> dict[Address, list[tuple[int, int]]]:
        """Each master's slots in the current map, as inclusive (first, last) ranges."""
        ranges: dict[Address, list[tuple[int, int]]] = {}
        start = 0
        for slot in range(1, SLOTS + 1):
            if slot < SLOTS and self._slots[slot] == self._slots[start]:
                continue
            owner = self._slots[start]
            if owner is not None:
                ranges.setdefault(owner, []).append((start, slot - 1))
            start = slot
        return ranges

    def ping(self, address: Address) -> Deferred[Any]:
        """
        PING one node (health checks ask every master, not a key's owner).
        Fires with its reply, or with the L{ClusterError} that stopped it; does not fail.
        """
        if self._closed:
            return defer.succeed(ClusterError("client disconnected"))
        return self._node(address).send([("PING",)]).addCallback(lambda replies: replies[0])

    def _node(self, address: Address) -> _Node:
        node = self._nodes.get(address)
        if node is None:
            node = _Node(self._reactor, address, self.timeout, self._retry_interval)
            if self._closed:
                node.closed = True
            self._nodes[address] = node
        return node

    def refresh(self) -> Deferred[None]:
        """
        Read the slot map again from the first node that answers: known
        masters first, then the seeds. Fails with L{ClusterError} naming every
        node tried when none answers (the old map is kept).
        """
        if self._refreshing is not None:
            waiter: Deferred[None] = Deferred()
            self._refreshing.addBoth(_chain_copy, waiter)
            return waiter
        d = defer.ensureDeferred(self._refresh())
        self._refreshing = d

        def ended(result: Any) -> Any:
            self._refreshing = None
            return result

        d.addBoth(ended)
        waiter = Deferred()
        d.addBoth(_chain_copy, waiter)
        return waiter

    async def _refresh(self) -> None:
        candidates: list[Address] = []
        healthy = [a for a in self._masters if self._node(a).down_until <= self._reactor.seconds()]
        for address in healthy + self._masters + self._seeds:
            if address not in candidates:
                candidates.append(address)
        problems: list[str] = []
        for address in candidates:
            if self._closed:
                raise ClusterError("client disconnected")
            (reply,) = await self._node(address).send([("CLUSTER", "SLOTS")])
            if isinstance(reply, Exception):
                problems.append(f"{address[0]}:{address[1]}: {reply}")
                continue
            try:
                self._apply_slots(reply, address)
            except (TypeError, ValueError, IndexError) as e:
                problems.append(f"{address[0]}:{address[1]}: unexpected CLUSTER SLOTS reply ({e})")
                continue
            self._refreshed_at = self._reactor.seconds()
            return
        self._refresh_error = "; ".join(problems) or "no nodes to ask"
        raise ClusterError(f"cannot read the cluster map: {self._refresh_error}")

    def _apply_slots(self, reply: Any, source: Address) -> None:
        slots: list[Address | None] = [None] * SLOTS
        masters: list[Address] = []
        for entry in reply:
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            host = master[0]
            if isinstance(host, bytes):
                host = host.decode("ascii")
            if not host or host == "?":
                host = source[0]  # the node does not know its own address
            address = (str(host), int(master[1]))
            if address not in masters:
                masters.append(address)
            for slot in range(start, end + 1):
                slots[slot] = address
        if not masters:
            raise ValueError("no slots assigned")
        if masters != self._masters:
            _log.info("Redis Cluster map: masters {masters}", masters=_addresses(masters))
        self._slots = slots
        self._masters = masters

    def _refresh_in_background(self) -> None:
        d = self.refresh()
        d.addErrback(lambda f: _log.warn("{error}", error=str(f.value)))

    # -- commands --

    def execute(self, *args: Any) -> Deferred[Any]:
        """Run one command, routed by its key (C{args[1]}); fails with a L{ClusterError}."""
        d = self.pipeline([args])

        def unwrap(results: list[Any]) -> Any:
            value = results[0]
            if isinstance(value, Exception):
                raise value
            return value

        return d.addCallback(unwrap)

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> Deferred[list[Any]]:
        """
        Run C{commands}, one pipeline per node, all nodes in parallel.

        Fires with one entry per command, in order: its reply, or the
        exception (a L{ClusterError}) that stopped it. Does not fail.
        """
        return defer.ensureDeferred(self._pipeline([c if type(c) is Prepared else tuple(c) for c in commands]))

    async def _pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        results: list[Any] = [None] * len(commands)
        if self._closed:
            return [ClusterError("client disconnected")] * len(commands)
        # (index, node address or None for "by the map", send ASKING first)
        todo: list[tuple[int, Address | None, bool]] = [(i, None, False) for i in range(len(commands))]
        node_failures: set[int] = set()
        for attempt in range(MAX_REDIRECTS + 1):
            groups: dict[Address, list[tuple[int, bool]]] = {}
            for index, target, asking in todo:
                if target is None:
                    target = self._owner(commands[index])
                    if target is None:
                        results[index] = self._not_served(commands[index])
                        continue
                groups.setdefault(target, []).append((index, asking))
            if not groups:
                break
            sent = [self._send_group(address, entries, commands) for address, entries in groups.items()]
            replies = await defer.gatherResults(sent, consumeErrors=True)
            todo = []
            failed: list[tuple[int, Address]] = []
            moved = False
            last = attempt == MAX_REDIRECTS
            for (address, entries), group_replies in zip(groups.items(), replies, strict=False):
                for (index, _), reply in zip(entries, group_replies, strict=False):
                    results[index] = reply
                    if last or not isinstance(reply, ClusterError):
                        continue
                    if isinstance(reply, RedisReplyError):
                        redirect = _redirect(str(reply))
                        if redirect is not None:
                            kind, slot, to = redirect
                            if kind == "MOVED":
                                self._slots[slot] = to
                                moved = True
                            todo.append((index, to, kind == "ASK"))
                    elif isinstance(reply, NodeUnavailable) and index not in node_failures:
                        node_failures.add(index)
                        failed.append((index, address))
            if moved:
                self._refresh_in_background()
            if failed:
                # Retried once, and only when the map now names another node
                # (a failover); otherwise the node's error stands.
                if self._reactor.seconds() - self._refreshed_at >= self._retry_interval:
                    try:
                        await self.refresh()
                    except ClusterError as e:
                        _log.warn("{error}", error=str(e))
                for index, address in failed:
                    owner = self._owner(commands[index])
                    if owner is not None and owner != address:
                        todo.append((index, owner, False))
            if not todo:
                break
        for index, value in enumerate(results):
            if isinstance(value, RedisReplyError) and _redirect(str(value)) is not None:
                results[index] = ClusterError(f"too many redirections ({MAX_REDIRECTS}), last: {value}")
        return results

    def _owner(self, command: Sequence[Any] | Prepared) -> Address | None:
        if type(command) is Prepared:
            return self._slots[command.slot] if command.slot is not None else self._any_master()
        key = _key_of(command)  # type: ignore[arg-type]
        return self._slots[key_slot(key)] if key is not None else self._any_master()

    def _not_served(self, command: Sequence[Any] | Prepared) -> SlotNotServed:
        key = command.key if type(command) is Prepared else _key_of(command)  # type: ignore[union-attr,arg-type]
        if key is None:
            return SlotNotServed(f"no Redis node known ({self._refresh_error})")
        return SlotNotServed(f"no Redis node serves slot {key_slot(key)} (key {key!r})")

    def _any_master(self) -> Address | None:
        now = self._reactor.seconds()
        healthy = [a for a in self._masters if self._node(a).down_until <= now]
        if healthy:
            return random.choice(healthy)
        return self._masters[0] if self._masters else None

    def _send_group(
        self, address: Address, entries: list[tuple[int, bool]], commands: list[tuple[Any, ...]]
    ) -> Deferred[list[Any]]:
        if not any(asking for _, asking in entries):
            return self._node(address).send([commands[i] for i, _ in entries])
        # ASKING applies to the next command only: send the pair together,
        # then drop ASKING's own reply.
        flat: list[Sequence[Any]] = []
        positions: list[int] = []
        for index, asking in entries:
            if asking:
                flat.append(("ASKING",))
            positions.append(len(flat))
            flat.append(commands[index])

        def pick(replies: list[Any]) -> list[Any]:
            return [replies[p] for p in positions]

        return self._node(address).send(flat).addCallback(pick)

    # -- closing --

    def disconnect(self) -> Deferred[None]:
        """Close every connection; later calls fail with L{ClusterError}."""
        self._closed = True
        closing = [node.close() for node in self._nodes.values()]
        d = defer.gatherResults(closing, consumeErrors=True)
        return d.addCallback(lambda _: None)


def _redirect(message: str) -> tuple[str, int, Address] | None:
    """(kind, slot, node) of a C{MOVED} or C{ASK} error reply, else None."""
    if not (message.startswith("MOVED ") or message.startswith("ASK ")):
        return None
    parts = message.split()
    if len(parts) != 3:
        return None
    host, _, port = parts[2].rpartition(":")
    try:
        return parts[0], int(parts[1]), (host, int(port))
    except ValueError:
        return None


def _chain_copy(result: Any, waiter: Deferred[Any]) -> Any:
    # Hand the outcome to one more waiter without consuming it here.
    if isinstance(result, Failure):
        waiter.errback(result)
        return None
    waiter.callback(result)
    return result


def _addresses(addresses: Iterable[Address]) -> str:
    return ",".join(f"{h}:{p}" for h, p in addresses)


def connect(
    reactor: Any,
    nodes: Sequence[tuple[str, int]],
    *,
    timeout: float = 2.0,
    retry_interval: float = 1.0,
) -> Deferred[RedisCluster]:
    """
    Connect to the Redis Cluster that C{nodes} belong to (any of its nodes
    will do; more are tried when the first does not answer).

    Fires with a L{RedisCluster} once the slot map is read, or fails with a
    L{ClusterError} naming each node tried and why it failed.

    @param timeout: the deadline, in seconds, of connecting to a node and of
        every batch of commands sent to one.
    @param retry_interval: after a node fails, how long calls for its keys
        fail at once before it is tried again.
    """
    if not nodes:
        return defer.fail(ClusterError("no Redis Cluster nodes given"))
    cluster = RedisCluster(reactor, nodes, timeout=timeout, retry_interval=retry_interval)
    d = cluster.refresh()

    def failed(failure: Failure) -> Deferred[None]:
        # Leave nothing half open behind a failed connect.
        closing = cluster.disconnect()
        return closing.addCallback(lambda _: failure)  # type: ignore[return-value]

    d.addErrback(failed)
    return d.addCallback(lambda _: cluster)
