"""
The reference bot's WxService: one WebSocket per user (docs/wxservice-protocol.md).

The pieces, each in its own module:

- L{webtesting.wxsim.store}: the Redis Cluster the bot writes user state to,
  and one stable C{uid} per (appid, uname).
- L{webtesting.wxsim.dictionary}: the bot's MySQL, where it creates the
  tag/topic dictionary tables and writes the ids its rules use.
- L{webtesting.wxsim.session}: one user's conversation (requests in order,
  the bot's rules, state writes, answers), with no WebSocket in it.
- here, L{WxServiceServerProtocol} / L{WxServiceServerFactory}: parse and
  check frames and hand each request to the connection's session;
  L{ListenService}: listens, and closes every connection when stopped.

When Redis is down, login answers 503 (a uid cannot be allocated) while a
logged-in user's chat keeps working: the answers go out, the failed write is
logged, and the next successful write rewrites the user's keys whole. MySQL
being down only delays the dictionary: a timer retries until it is written.
"""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from webtesting.protocol import InvalidInput, NotJSON, Result, parse_json
from webtesting.wxsim.bot import BotSettings
from webtesting.wxsim.config import WxsimConfig
from webtesting.wxsim.dictionary import dictionary_database
from webtesting.wxsim.session import REQUESTS, BotSession, Refused
from webtesting.wxsim.store import ClusterStore, StateStore, UidAllocator

# A text message over max_message_bytes is answered 413; the WebSocket layer
# closes the connection (1009) only beyond this many times that size.
HARD_LIMIT_FACTOR = 16


class WxServiceServerProtocol(WebSocketServerProtocol):
    """One user's connection to the reference bot: frames in, checked, to its L{BotSession}."""

    _log = Logger()
    factory: WxServiceServerFactory
    session: BotSession

    # -- Autobahn callbacks, each wrapped: Autobahn swallows what they raise.

    def onConnect(self, request: ConnectionRequest) -> None:
        try:
            self.session.where = f"{request.peer} {request.path}"
            self._log.debug("wxservice connection from {where}", where=self.session.where)
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            self._log.failure("wxservice onConnect")
            raise ConnectionDeny(500, "internal error") from None

    def connectionMade(self) -> None:
        # Counted from the TCP connection on, so that stopping the bot also
        # ends a connection still in its opening handshake.
        self.session = BotSession(self.factory, self._send_json)
        super().connectionMade()
        self.factory.connections.add(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            checked = self._check(payload, isBinary)
            if isinstance(checked, Refused):
                self.session.refuse(checked)
            else:
                self.session.request(*checked)
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            self._log.failure("wxservice message from {where}", where=self.session.where)
            self.session.answer("error", Result.INTERNAL, "internal error")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        try:
            self.session.close()
            self.factory.connections.discard(self)
            self.factory.closed(self)
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            self._log.failure("wxservice onClose")

    # -- parsing ----------------------------------------------------------

    def _check(self, payload: bytes, is_binary: bool) -> Refused | tuple[str, str, dict[str, Any]]:
        """The request in a frame (method, answer method, message), or why it is refused."""
        limit = self.factory.config.websocket.max_message_bytes
        if is_binary:
            return Refused("error", Result.BAD_REQUEST, "binary frames are not accepted; send JSON text")
        if len(payload) > limit:
            return Refused("error", Result.TOO_LARGE, f"message of {len(payload)} bytes; at most {limit} accepted")
        try:
            message = parse_json(payload)
        except NotJSON as e:
            return Refused("error", Result.BAD_REQUEST, e.problem)
        except InvalidInput as e:
            # A string with no UTF-8 form (a lone surrogate): refused here,
            # naming the field, as the request's own answer when it has one.
            method = e.request.get("method") if e.request else None
            return Refused(REQUESTS.get(method, "error"), Result.BAD_REQUEST, str(e))  # type: ignore[arg-type]
        if not isinstance(message, dict):
            return Refused("error", Result.BAD_REQUEST, "a message must be a JSON object with a method")
        method = message.get("method")
        if not isinstance(method, str):
            return Refused("error", Result.BAD_REQUEST, "method: must be a string")
        answer = REQUESTS.get(method)
        if answer is None:
            return Refused(
                "error", Result.NOT_FOUND,
                f"unknown method {method[:40]!r} (known: {', '.join(sorted(REQUESTS))})",
            )
        return method, answer, message

    def _send_json(self, message: dict[str, Any]) -> None:
        if self.state != self.STATE_OPEN:
            return
        self.sendMessage(json.dumps(message, ensure_ascii=False).encode("utf-8"), isBinary=False)


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
