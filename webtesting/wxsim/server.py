"""
The reference bot's WxService: one WebSocket per user (docs/wxservice-protocol.md).

The pieces:

- L{StateStore}: the small interface the bot writes user state through (a
  Redis Cluster client: C{execute} and C{pipeline}); L{ClusterStore} is the
  real one, kept connected to the configured cluster by a L{Lifecycle}.
- L{UidAllocator}: one stable C{uid} per (appid, uname).
- L{dictionary_database}: the bot's MySQL, where it creates the tag/topic
  dictionary tables and writes the ids its rules use.
- L{WxServiceServerProtocol} / L{WxServiceServerFactory}: parse and check
  frames, run each user's requests in order, ask L{webtesting.wxsim.bot.Bot}
  what to do, write the state with one pipeline per user action, answer.
- L{ListenService}: listens, and closes every connection when stopped.

When Redis is down, login answers 503 (a uid cannot be allocated) while a
logged-in user's chat keeps working: the answers go out, the failed write is
logged, and the next successful write rewrites the user's keys whole. MySQL
being down only delays the dictionary: a timer retries until it is written.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from webtesting.dbpool import Database, mysql_connector, mysql_is_fault
from webtesting.lifecycle import Backoff, DeferredDialer, Health, Lifecycle, Reason
from webtesting.protocol import InvalidInput, NotJSON, Result, parse_json, require_appid, require_str
from webtesting.statelayout import StateLayout
from webtesting.wxsim.bot import (
    TAG_DICT,
    TOPIC_DICT,
    Bot,
    BotSettings,
    Command,
    Later,
    Message,
    Snapshot,
    login_commands,
    memory_from_reply,
    state_commands,
)
from webtesting.wxsim.config import BotMySQLConfig, RedisConfig, WxsimConfig

MAX_UNAME_CHARS = 64
# Requests of one connection waiting for the ones before them; more are
# refused (503) so that a flooding client cannot grow the queue for ever.
MAX_QUEUED = 64
# A text message over max_message_bytes is answered 413; the WebSocket layer
# closes the connection (1009) only beyond this many times that size.
HARD_LIMIT_FACTOR = 16


class StoreUnavailable(Exception):
    """The bot's Redis Cluster cannot be reached now."""


class StateStore(Protocol):
    """Where the bot writes user state: enough of a Redis Cluster client."""

    def execute(self, *args: Any) -> Deferred[Any]:
        """Run one command, routed by its key (C{args[1]})."""

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> Deferred[list[Any]]:
        """Run commands of one hash slot together; failures come back in place."""


# -- Redis ------------------------------------------------------------------


class ClusterStore(service.Service):
    """
    The bot's Redis Cluster, via L{webtesting.rediscluster}, kept connected
    by a L{Lifecycle}: an attempt is one C{rediscluster.connect}, retried
    every C{retry_interval} seconds (spread by 10%) until it works. Until
    then every call fails at once with L{StoreUnavailable}. Once connected,
    the cluster client itself reconnects single nodes and follows failovers.

    The client gives every batch a deadline of C{timeout} seconds; a call
    that still has no answer after twice that (a redirect, a retry after a
    failover) fails here with a timeout, as a backstop.
    """

    _log = Logger()

    def __init__(
        self,
        config: RedisConfig,
        reactor: Any,
        connect: Callable[..., Deferred[Any]] | None = None,
    ) -> None:
        self._nodes = [(n.host, n.port) for n in config.nodes]
        self._timeout = config.timeout
        self._reactor = reactor
        self._connect = connect or _cluster_connect
        self._client: Any = None
        # Attempts and disconnects still under way: stopping waits for them,
        # so that nothing is left open behind a stopped bot.
        self._pending: set[Deferred[Any]] = set()
        self.lifecycle = Lifecycle(
            f"Redis Cluster {_nodes_text(self._nodes)}", self._health,
            initial=Health(False, "redis_unreachable", "not connected yet"),
        )
        self._dialer: DeferredDialer[Any] = DeferredDialer(
            self.lifecycle, self._attempt, self._classify, clock=reactor,
            backoff=Backoff(initial=config.retry_interval, maximum=config.retry_interval, factor=1.0, jitter=0.1),
            on_open=self._opened, close=self._close,
        )

    @property
    def available(self) -> bool:
        return self.lifecycle.is_up

    @property
    def reason(self) -> str:
        return self.lifecycle.health.msg

    @property
    def failures(self) -> int:
        """Failed attempts since the cluster was last connected."""
        return self.lifecycle.failures

    def startService(self) -> None:
        super().startService()
        self.lifecycle.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.lifecycle.stop()  # cancels the attempt or timer, closes the client
        self._client = None
        pending = list(self._pending)
        return defer.DeferredList(pending).addCallback(lambda _: None)

    def _health(self, health: Health) -> None:
        # The lifecycle logs the change (quietly while down).
        if not health.up:
            self._client = None

    def _attempt(self) -> Deferred[Any]:
        """One connection attempt; cancelling it closes whatever it still opens."""
        # maybeDeferred: whatever goes wrong is one failed attempt, retried.
        inner: Deferred[Any] = defer.maybeDeferred(self._connect, self._reactor, self._nodes, timeout=self._timeout)
        self._pending.add(inner)
        outer: Deferred[Any] = Deferred(lambda _: None)

        def settled(result: Any) -> Any:
            if outer.called:  # cancelled: an attempt given up on that still connected
                if not isinstance(result, Failure):
                    return self._close(result)
                return None
            if isinstance(result, Failure):
                outer.errback(result)
            else:
                outer.callback(result)
            return None

        inner.addBoth(settled)
        inner.addErrback(lambda f: self._log.failure("connecting to Redis", f))
        inner.addBoth(lambda _: self._pending.discard(inner))
        return outer

    def _classify(self, failure: Failure) -> Reason:
        return Reason("redis_unreachable", _reason(failure.value))

    def _opened(self, client: Any) -> None:
        self._client = client

    def _close(self, client: Any) -> Deferred[None]:
        if client is self._client:
            self._client = None
        d: Deferred[Any] = defer.maybeDeferred(client.disconnect)
        d.addErrback(lambda f: self._log.failure("disconnecting from Redis", f))
        self._pending.add(d)
        d.addBoth(lambda _: self._pending.discard(d))
        return d.addCallback(lambda _: None)

    def execute(self, *args: Any) -> Deferred[Any]:
        if self._client is None:
            return defer.fail(StoreUnavailable(f"Redis Cluster unavailable: {self.reason}"))
        d: Deferred[Any] = self._client.execute(*args)
        return d.addTimeout(self._timeout * 2 + 0.5, self._reactor)

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> Deferred[list[Any]]:
        if self._client is None:
            return defer.fail(StoreUnavailable(f"Redis Cluster unavailable: {self.reason}"))
        d: Deferred[list[Any]] = self._client.pipeline(commands)
        return d.addTimeout(self._timeout * 2 + 0.5, self._reactor)


def _cluster_connect(reactor: Any, nodes: Sequence[tuple[str, int]], *, timeout: float) -> Deferred[Any]:
    from webtesting import rediscluster  # type: ignore[attr-defined,unused-ignore]

    d: Deferred[Any] = rediscluster.connect(reactor, nodes, timeout=timeout)
    return d


def _nodes_text(nodes: Sequence[tuple[str, int]]) -> str:
    return ",".join(f"{h}:{p}" for h, p in nodes)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class UidAllocator:
    """
    One uid per (appid, uname), the same at every login: a hash per appid
    (C{uid_map_key}) maps uname -> uid; new unames take the next value of a
    counter (C{uid_counter_key}). C{HSETNX} makes two simultaneous first
    logins of one uname agree.
    """

    def __init__(self, store: StateStore, config: RedisConfig) -> None:
        self._store = store
        self._counter_key = config.uid_counter_key
        self._map_key = config.uid_map_key

    async def uid_for(self, appid: str, uname: str) -> str:
        key = self._map_key.format(appid=appid)
        existing = await self._store.execute("HGET", key, uname)
        if existing is not None:
            return _text(existing)
        number = await self._store.execute("INCR", self._counter_key)
        await self._store.execute("HSETNX", key, uname, _text(number))
        final = await self._store.execute("HGET", key, uname)
        if final is None:
            raise StoreUnavailable(f"uid of {uname!r} vanished from {key}")
        return _text(final)


# -- MySQL --------------------------------------------------------------------


def dictionary_rows() -> dict[str, list[tuple[int, str]]]:
    """The tag and topic ids the bot's rules use, with their text."""
    return {
        "tags": sorted(TAG_DICT.items()),
        "topics": sorted(TOPIC_DICT.items()),
    }


def dictionary_database(config: BotMySQLConfig, layout: StateLayout, reactor: Any) -> Database:
    """
    The bot's MySQL as a service: once reachable (retried every
    C{retry_interval} seconds until then), the database is created if
    missing, the dictionary tables too, and the rules' ids are upserted.
    """
    base = mysql_connector(
        config.host, config.port, config.user, config.password, None,
        config.connect_timeout, config.read_timeout, config.write_timeout,
    )
    database = config.database  # checked by the config: letters, digits, '_'

    def connect() -> Any:
        conn = base()
        try:
            with conn.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4")
            conn.select_db(database)
        except BaseException:
            conn.close()
            raise
        return conn

    rows = dictionary_rows()

    def prepare(cursor: Any) -> None:
        for table, items in ((layout.tag_table, rows["tags"]), (layout.topic_table, rows["topics"])):
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS `{table}` ("
                " id INT PRIMARY KEY, content VARCHAR(255) NOT NULL"
                ") DEFAULT CHARSET=utf8mb4"
            )
            cursor.executemany(
                f"INSERT INTO `{table}` (id, content) VALUES (%s, %s)"
                " ON DUPLICATE KEY UPDATE content = VALUES(content)",
                items,
            )

    return Database(
        "wxsim-dictionary", connect, reactor,
        is_fault=mysql_is_fault, threads=1, code="mysql_unreachable",
        request_timeout=config.read_timeout, retry_interval=config.retry_interval,
        prepare=prepare,
    )


# -- WebSocket ----------------------------------------------------------------


class _State(enum.Enum):
    IDLE = "idle"
    LOGGING_IN = "logging in"
    LOGGED_IN = "logged in"
    CLOSED = "closed"


class _Refused(Exception):
    """A request answered with an error: C{method}, C{result}, C{msg}."""

    def __init__(self, method: str, result: int, msg: str) -> None:
        super().__init__(msg)
        self.method = method
        self.result = result
        self.msg = msg


_REQUESTS = {"loginReq": "loginResp", "chatReq": "chatResp", "logoutReq": "logoutResp"}


class WxServiceServerProtocol(WebSocketServerProtocol):
    """One user's connection to the reference bot."""

    _log = Logger()
    factory: WxServiceServerFactory

    def __init__(self) -> None:
        super().__init__()
        self._state = _State.IDLE
        self._appid = ""
        self._uname = ""
        self._uid = ""
        self._session = 0  # bumped at each login/logout: stale follow-ups see it
        self._bot: Bot | None = None
        self._confirmed: Snapshot | None = None
        self._tail: Deferred[None] = defer.succeed(None)
        self._queued = 0
        self._timers: set[Any] = set()  # IDelayedCall
        self._where = ""

    # -- Autobahn callbacks, each wrapped: Autobahn swallows what they raise.

    def onConnect(self, request: ConnectionRequest) -> None:
        try:
            self._where = f"{request.peer} {request.path}"
            self._log.debug("wxservice connection from {where}", where=self._where)
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            self._log.failure("wxservice onConnect")
            raise ConnectionDeny(500, "internal error") from None

    def connectionMade(self) -> None:
        # Counted from the TCP connection on, so that stopping the bot also
        # ends a connection still in its opening handshake.
        super().connectionMade()
        self.factory.connections.add(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            self._received(payload, isBinary)
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            self._log.failure("wxservice message from {where}", where=self._where)
            self._answer("error", Result.INTERNAL, "internal error")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        try:
            self._state = _State.CLOSED
            self._session += 1
            self._cancel_timers()
            self.factory.connections.discard(self)
            self.factory.closed(self)
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            self._log.failure("wxservice onClose")

    # -- parsing ----------------------------------------------------------

    def _received(self, payload: bytes, is_binary: bool) -> None:
        refused = self._check(payload, is_binary)
        if isinstance(refused, _Refused):
            # Queued like every answer, so that answers keep the requests' order.
            error = refused
            self._tail.addCallback(lambda _: self._answer(error.method, error.result, error.msg))
            return
        method, answer, message = refused
        if self._queued >= MAX_QUEUED:
            self._answer(answer, Result.UNAVAILABLE, "too many requests waiting; slow down")
            return
        self._queued += 1

        def run(_: object) -> Deferred[None] | None:
            self._queued -= 1
            try:
                return self._handle(method, answer, message)
            except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
                # The queue must keep going whatever one request did.
                self._log.failure("wxservice {method} from {where}", method=method, where=self._where)
                self._answer(answer, Result.INTERNAL, "internal error")
                return None

        self._tail.addCallback(run)

    def _check(self, payload: bytes, is_binary: bool) -> _Refused | tuple[str, str, dict[str, Any]]:
        """The request in a frame (method, answer method, message), or why it is refused."""
        limit = self.factory.config.websocket.max_message_bytes
        if is_binary:
            return _Refused("error", Result.BAD_REQUEST, "binary frames are not accepted; send JSON text")
        if len(payload) > limit:
            return _Refused("error", Result.TOO_LARGE, f"message of {len(payload)} bytes; at most {limit} accepted")
        try:
            message = parse_json(payload)
        except NotJSON as e:
            return _Refused("error", Result.BAD_REQUEST, e.problem)
        except InvalidInput as e:
            # A string with no UTF-8 form (a lone surrogate): refused here,
            # naming the field, as the request's own answer when it has one.
            method = e.request.get("method") if e.request else None
            return _Refused(_REQUESTS.get(method, "error"), Result.BAD_REQUEST, str(e))  # type: ignore[arg-type]
        if not isinstance(message, dict):
            return _Refused("error", Result.BAD_REQUEST, "a message must be a JSON object with a method")
        method = message.get("method")
        if not isinstance(method, str):
            return _Refused("error", Result.BAD_REQUEST, "method: must be a string")
        answer = _REQUESTS.get(method)
        if answer is None:
            return _Refused(
                "error", Result.NOT_FOUND,
                f"unknown method {method[:40]!r} (known: {', '.join(sorted(_REQUESTS))})",
            )
        return method, answer, message

    def _handle(self, method: str, answer: str, message: dict[str, Any]) -> Deferred[None] | None:
        if self._state is _State.CLOSED:
            return None
        try:
            if method == "loginReq":
                d: Deferred[None] | None = Deferred.fromCoroutine(self._login(message))
            elif method == "chatReq":
                d = self._chat(message)
            else:
                d = self._logout(message)
        except _Refused as e:
            self._answer(e.method, e.result, e.msg)
            return None
        except InvalidInput as e:
            self._answer(answer, Result.BAD_REQUEST, str(e))
            return None
        if d is None:
            return None

        def failed(failure: Failure) -> None:
            e = failure.value
            if isinstance(e, _Refused):
                self._answer(e.method, e.result, e.msg)
                return
            if isinstance(e, InvalidInput):
                self._answer(answer, Result.BAD_REQUEST, str(e))
                return
            self._log.failure("wxservice {method} from {where}", failure, method=method, where=self._where)
            self._answer(answer, Result.INTERNAL, "internal error")

        d.addErrback(failed)
        d.addErrback(lambda f: self._log.failure("wxservice answering {method}", f, method=method))
        return d

    # -- requests ---------------------------------------------------------

    async def _login(self, message: dict[str, Any]) -> None:
        _only(message, ("method", "appid", "uname"))
        appid = require_appid(message.get("appid"), "appid")
        uname = require_str(message.get("uname"), "uname", MAX_UNAME_CHARS)
        if self._state is _State.LOGGED_IN:
            raise _Refused("loginResp", Result.BAD_REQUEST,
                           f"already logged in as {self._uname!r}; send logoutReq first")
        factory = self.factory
        self._state = _State.LOGGING_IN
        try:
            uid = await factory.uids.uid_for(appid, uname)
            replies = await factory.store.pipeline(login_commands(factory.layout, appid, uid))
        except Exception as e:  # noqa: BLE001 - every failure of the login is answered (StoreUnavailable with its reason)
            self._state = _State.IDLE if self._state is _State.LOGGING_IN else self._state
            if not isinstance(e, StoreUnavailable):
                self._log.failure("wxservice login of {appid}/{uname}", appid=appid, uname=uname)
            raise _Refused("loginResp", Result.UNAVAILABLE,
                           f"the bot's state store is unavailable: {_reason(e)}") from None
        failures = [r for r in replies if isinstance(r, Exception)]
        if failures:
            self._state = _State.IDLE if self._state is _State.LOGGING_IN else self._state
            raise _Refused("loginResp", Result.UNAVAILABLE,
                           f"the bot's state store failed: {_reason(failures[0])}")
        if self._state is not _State.LOGGING_IN:  # closed meanwhile
            return
        memory = memory_from_reply(replies[-1])
        self._appid, self._uname, self._uid = appid, uname, uid
        self._bot = Bot(factory.settings, memory)
        self._confirmed = Snapshot(memory=memory)
        self._session += 1
        self._state = _State.LOGGED_IN
        self._log.info("wxservice {appid}/{uname} logged in as uid {uid}", appid=appid, uname=uname, uid=uid)
        self._send_json({"method": "loginResp", "uid": uid, "result": int(Result.OK), "msg": "ok"})

    def _chat(self, message: dict[str, Any]) -> Deferred[None] | None:
        if self._state is not _State.LOGGED_IN or self._bot is None:
            raise _Refused("chatResp", Result.UNAUTHORIZED, "not logged in: send loginReq first")
        _only(message, ("method", "content"))
        content = require_str(message.get("content"), "content", self.factory.config.websocket.max_content_chars)
        factory = self.factory
        before = self._confirmed
        turn = self._bot.chat(content, int(factory.clock.seconds() * 1000))
        commands = state_commands(factory.layout, self._appid, self._uid, before, turn.state)
        session = self._session

        def written(ok: bool) -> None:
            if session != self._session:
                return
            self._confirmed = turn.state if ok else None
            for reply in turn.replies:
                self._send_bot_message(reply)
            for later in turn.later:
                self._schedule(later, session)

        return self._write(commands).addCallback(written)

    def _logout(self, message: dict[str, Any]) -> Deferred[None] | None:
        if self._state is not _State.LOGGED_IN:
            raise _Refused("logoutResp", Result.UNAUTHORIZED, "not logged in")
        _only(message, ("method",))
        self._log.info("wxservice {appid}/{uname} logged out", appid=self._appid, uname=self._uname)
        self._cancel_timers()
        self._session += 1
        self._state = _State.IDLE
        self._bot = None
        self._confirmed = None
        self._send_json({"method": "logoutResp", "result": int(Result.OK), "msg": "ok"})
        return None

    # -- writing and sending -----------------------------------------------

    def _write(self, commands: list[Command]) -> Deferred[bool]:
        """Write one user action's commands in one pipeline; fires with success."""
        if not commands:
            return defer.succeed(True)
        d = self.factory.store.pipeline(commands)

        def done(replies: list[Any]) -> bool:
            failures = [r for r in replies if isinstance(r, Exception)]
            if failures:
                self._log.warn(
                    "wxservice state write of {appid}/{uid} partly failed: {reason}",
                    appid=self._appid, uid=self._uid, reason=_reason(failures[0]),
                )
                return False
            return True

        def failed(failure: Failure) -> bool:
            self._log.warn(
                "wxservice state write of {appid}/{uid} failed: {reason}",
                appid=self._appid, uid=self._uid, reason=_reason(failure.value),
            )
            return False

        return d.addCallbacks(done, failed)

    def _schedule(self, later: Later, session: int) -> None:
        call: Any  # IDelayedCall

        def fire() -> None:
            self._timers.discard(call)
            try:
                if session == self._session and self._state is _State.LOGGED_IN:
                    self._send_bot_message(later.message)
            except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
                self._log.failure("wxservice unprompted message")

        call = self.factory.clock.callLater(later.delay, fire)
        self._timers.add(call)

    def _cancel_timers(self) -> None:
        timers, self._timers = self._timers, set()
        for call in timers:
            if call.active():
                call.cancel()

    def _send_bot_message(self, message: Message) -> None:
        self._send_json({"method": "chatResp", "content": message.content, "action": message.action,
                    "result": int(Result.OK), "msg": "ok"})

    def _answer(self, method: str, result: int, msg: str) -> None:
        self._send_json({"method": method, "result": int(result), "msg": msg})

    def _send_json(self, message: dict[str, Any]) -> None:
        if self._state is _State.CLOSED or self.state != self.STATE_OPEN:
            return
        self.sendMessage(json.dumps(message, ensure_ascii=False).encode("utf-8"), isBinary=False)


def _only(message: dict[str, Any], allowed: Sequence[str]) -> None:
    for key in message:
        if key not in allowed:
            others = ", ".join(allowed[1:]) or "no other fields"
            raise InvalidInput(str(key)[:40], f"unknown field (a {message['method']} has {others})")


def _reason(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    if isinstance(error, defer.TimeoutError):
        return "no answer in time"
    return str(error) or type(error).__name__


class WxServiceServerFactory(WebSocketServerFactory):
    """Shared by every connection: configuration, state store, clock."""

    _log = Logger()

    protocol = WxServiceServerProtocol  # type: ignore[assignment]

    def __init__(self, config: WxsimConfig, store: StateStore, reactor: Any) -> None:
        super().__init__(reactor=reactor)
        self.config = config
        self.store = store
        self.clock = reactor
        self.layout = config.state
        self.settings: BotSettings = config.bot.settings()
        self.uids = UidAllocator(store, config.redis)
        self.connections: set[WxServiceServerProtocol] = set()
        self._waiting_for_close: list[Deferred[None]] = []
        limit = config.websocket.max_message_bytes * HARD_LIMIT_FACTOR
        self.setProtocolOptions(
            maxMessagePayloadSize=limit,
            maxFramePayloadSize=limit,
            openHandshakeTimeout=config.websocket.open_handshake_timeout,
            closeHandshakeTimeout=config.websocket.close_handshake_timeout,
            autoPingInterval=None,
            # Send a close frame saying why (1009 too big, 1002 protocol
            # error ...) rather than just dropping the connection.
            failByDrop=False,
        )

    def closed(self, protocol: WxServiceServerProtocol) -> None:
        if not self.connections:
            waiting, self._waiting_for_close = self._waiting_for_close, []
            for d in waiting:
                d.callback(None)

    def close_all(self) -> Deferred[None]:
        """Close every open connection; fires when all are gone."""
        if not self.connections:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting_for_close.append(d)
        for protocol in list(self.connections):
            if protocol.state != WebSocketServerProtocol.STATE_OPEN:
                protocol.dropConnection(abort=True)  # still shaking hands
                continue
            try:
                # Autobahn lets an application send only 1000 or 3000-4999.
                protocol.sendClose(code=1000, reason="the bot is stopping")
            except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
                self._log.failure("closing a wxservice connection")
                protocol.dropConnection(abort=True)
        return d


class ListenService(StreamServerEndpointService):
    """
    Twisted's endpoint listener; stopping it also closes the bot's open
    connections. A port that cannot be had stops twistd at start (rather than
    run a bot nobody can reach).
    """

    # StreamServerEndpointService's documented switch: raise a failed listen()
    # from startService instead of logging it.
    _raiseSynchronously = True

    factory: WxServiceServerFactory

    def __init__(self, endpoint: IStreamServerEndpoint, factory: WxServiceServerFactory) -> None:
        super().__init__(endpoint, factory)

    def listening(self) -> Deferred[IListeningPort]:
        """Fires with the listening port once listening (fails if that failed)."""
        if self._waitingForPort is None:
            return defer.fail(RuntimeError("not started"))
        d: Deferred[IListeningPort] = Deferred()

        def relay(result: Any) -> Any:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
            return result

        self._waitingForPort.addBoth(relay)
        return d

    def stopService(self) -> Deferred[None]:
        d: Deferred[Any] = super().stopService()
        return d.addCallback(lambda _: self.factory.close_all())


def make_bot_service(
    config: WxsimConfig,
    reactor: Any,
    endpoint: IStreamServerEndpoint,
    store: StateStore | None = None,
) -> service.MultiService:
    """
    The whole bot: Redis store, MySQL dictionary, listener. C{store} replaces
    the Redis Cluster client (for tests of the protocol alone).
    """
    top = service.MultiService()
    # The factory reads the store only when a user logs in, so it can be
    # built first; the listener starts first so that a port in use stops the
    # daemon before any thread or timer exists.
    if store is None:
        store = cluster = ClusterStore(config.redis, reactor)
    else:
        cluster = None
    factory = WxServiceServerFactory(config, store, reactor)
    listener = ListenService(endpoint, factory)
    listener.setName("websocket")
    listener.setServiceParent(top)
    if cluster is not None:
        cluster.setName("redis")
        cluster.setServiceParent(top)
    dictionary = dictionary_database(config.mysql, config.state, reactor)
    dictionary.setName("mysql")
    dictionary.setServiceParent(top)
    return top
