"""
One user's conversation with the reference bot, apart from the WebSocket that
carries it: its requests run one at a time in the order they came, ask
L{webtesting.wxsim.bot.Bot} what to do, write the state with one pipeline per
user action, and answer through a C{send} callable. The protocol
(L{webtesting.wxsim.server}) only parses frames and sends what this says.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from webtesting.protocol import InvalidInput, Result, require_appid, require_str
from webtesting.statelayout import StateLayout
from webtesting.wxsim.bot import (
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
from webtesting.wxsim.config import WxsimConfig
from webtesting.wxsim.store import StateStore, StoreUnavailable, UidAllocator, reason_text

MAX_UNAME_CHARS = 64
# Requests of one connection waiting for the ones before them; more are
# refused (503) so that a flooding client cannot grow the queue for ever.
MAX_QUEUED = 64

# Each request's answer method.
REQUESTS = {"loginReq": "loginResp", "chatReq": "chatResp", "logoutReq": "logoutResp"}


class State(enum.Enum):
    IDLE = "idle"
    LOGGING_IN = "logging in"
    LOGGED_IN = "logged in"
    CLOSED = "closed"


class Refused(Exception):
    """A request answered with an error: C{method}, C{result}, C{msg}."""

    def __init__(self, method: str, result: int, msg: str) -> None:
        super().__init__(msg)
        self.method = method
        self.result = result
        self.msg = msg


class BotContext(Protocol):
    """What every session shares (the server's factory): configuration, store, uids, clock."""

    config: WxsimConfig
    store: StateStore
    uids: UidAllocator
    layout: StateLayout
    settings: BotSettings
    clock: Any


def only(message: dict[str, Any], allowed: Sequence[str]) -> None:
    for key in message:
        if key not in allowed:
            others = ", ".join(allowed[1:]) or "no other fields"
            raise InvalidInput(str(key)[:40], f"unknown field (a {message['method']} has {others})")


class BotSession:
    """
    One user's session: requests in order, state written, answers sent.

    @param send: sends one message to the user (dropped once the session is closed).
    @param where: names the connection in the log.
    """

    _log = Logger()

    def __init__(self, context: BotContext, send: Callable[[dict[str, Any]], None], where: str = "") -> None:
        self.context = context
        self._send = send
        self.where = where
        self.state = State.IDLE
        self._appid = ""
        self._uname = ""
        self._uid = ""
        self._session = 0  # bumped at each login/logout: stale follow-ups see it
        self._bot: Bot | None = None
        self._confirmed: Snapshot | None = None
        self._tail: Deferred[None] = defer.succeed(None)
        self._queued = 0
        self._timers: set[Any] = set()  # IDelayedCall

    # -- what the connection tells it ------------------------------------------

    def refuse(self, error: Refused) -> None:
        """Answer a frame that is not a request, in turn: answers keep the requests' order."""
        self._tail.addCallback(lambda _: self.answer(error.method, error.result, error.msg))

    def request(self, method: str, answer: str, message: dict[str, Any]) -> None:
        """Run one checked request (C{method}, answered by C{answer}) after those before it."""
        if self._queued >= MAX_QUEUED:
            self.answer(answer, Result.UNAVAILABLE, "too many requests waiting; slow down")
            return
        self._queued += 1

        def run(_: object) -> Deferred[None] | None:
            self._queued -= 1
            try:
                return self._handle(method, answer, message)
            except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
                # The queue must keep going whatever one request did.
                self._log.failure("wxservice {method} from {where}", method=method, where=self.where)
                self.answer(answer, Result.INTERNAL, "internal error")
                return None

        self._tail.addCallback(run)

    def close(self) -> None:
        """The connection is gone: nothing more is sent, and no follow-up fires."""
        self.state = State.CLOSED
        self._session += 1
        self._cancel_timers()

    # -- requests ---------------------------------------------------------

    def _handle(self, method: str, answer: str, message: dict[str, Any]) -> Deferred[None] | None:
        if self.state is State.CLOSED:
            return None
        try:
            if method == "loginReq":
                d: Deferred[None] | None = Deferred.fromCoroutine(self._login(message))
            elif method == "chatReq":
                d = self._chat(message)
            else:
                d = self._logout(message)
        except Refused as e:
            self.answer(e.method, e.result, e.msg)
            return None
        except InvalidInput as e:
            self.answer(answer, Result.BAD_REQUEST, str(e))
            return None
        if d is None:
            return None

        def failed(failure: Failure) -> None:
            e = failure.value
            if isinstance(e, Refused):
                self.answer(e.method, e.result, e.msg)
                return
            if isinstance(e, InvalidInput):
                self.answer(answer, Result.BAD_REQUEST, str(e))
                return
            self._log.failure("wxservice {method} from {where}", failure, method=method, where=self.where)
            self.answer(answer, Result.INTERNAL, "internal error")

        d.addErrback(failed)
        d.addErrback(lambda f: self._log.failure("wxservice answering {method}", f, method=method))
        return d

    async def _login(self, message: dict[str, Any]) -> None:
        only(message, ("method", "appid", "uname"))
        appid = require_appid(message.get("appid"), "appid")
        uname = require_str(message.get("uname"), "uname", MAX_UNAME_CHARS)
        if self.state is State.LOGGED_IN:
            raise Refused("loginResp", Result.BAD_REQUEST,
                          f"already logged in as {self._uname!r}; send logoutReq first")
        context = self.context
        self.state = State.LOGGING_IN
        try:
            uid = await context.uids.uid_for(appid, uname)
            replies = await context.store.pipeline(login_commands(context.layout, appid, uid))
        except Exception as e:  # noqa: BLE001 - every failure of the login is answered (StoreUnavailable with its reason)
            self.state = State.IDLE if self.state is State.LOGGING_IN else self.state
            if not isinstance(e, StoreUnavailable):
                self._log.failure("wxservice login of {appid}/{uname}", appid=appid, uname=uname)
            raise Refused("loginResp", Result.UNAVAILABLE,
                          f"the bot's state store is unavailable: {reason_text(e)}") from None
        failures = [r for r in replies if isinstance(r, Exception)]
        if failures:
            self.state = State.IDLE if self.state is State.LOGGING_IN else self.state
            raise Refused("loginResp", Result.UNAVAILABLE,
                          f"the bot's state store failed: {reason_text(failures[0])}")
        if self.state is not State.LOGGING_IN:  # closed meanwhile
            return
        memory = memory_from_reply(replies[-1])
        self._appid, self._uname, self._uid = appid, uname, uid
        self._bot = Bot(context.settings, memory)
        self._confirmed = Snapshot(memory=memory)
        self._session += 1
        self.state = State.LOGGED_IN
        self._log.info("wxservice {appid}/{uname} logged in as uid {uid}", appid=appid, uname=uname, uid=uid)
        self.send({"method": "loginResp", "uid": uid, "result": int(Result.OK), "msg": "ok"})

    def _chat(self, message: dict[str, Any]) -> Deferred[None] | None:
        if self.state is not State.LOGGED_IN or self._bot is None:
            raise Refused("chatResp", Result.UNAUTHORIZED, "not logged in: send loginReq first")
        only(message, ("method", "content"))
        context = self.context
        content = require_str(message.get("content"), "content", context.config.websocket.max_content_chars)
        before = self._confirmed
        turn = self._bot.chat(content, int(context.clock.seconds() * 1000))
        commands = state_commands(context.layout, self._appid, self._uid, before, turn.state)
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
        if self.state is not State.LOGGED_IN:
            raise Refused("logoutResp", Result.UNAUTHORIZED, "not logged in")
        only(message, ("method",))
        self._log.info("wxservice {appid}/{uname} logged out", appid=self._appid, uname=self._uname)
        self._cancel_timers()
        self._session += 1
        self.state = State.IDLE
        self._bot = None
        self._confirmed = None
        self.send({"method": "logoutResp", "result": int(Result.OK), "msg": "ok"})
        return None

    # -- writing and sending -----------------------------------------------

    def _write(self, commands: list[Command]) -> Deferred[bool]:
        """Write one user action's commands in one pipeline; fires with success."""
        if not commands:
            return defer.succeed(True)
        d = self.context.store.pipeline(commands)

        def done(replies: list[Any]) -> bool:
            failures = [r for r in replies if isinstance(r, Exception)]
            if failures:
                self._log.warn(
                    "wxservice state write of {appid}/{uid} partly failed: {reason}",
                    appid=self._appid, uid=self._uid, reason=reason_text(failures[0]),
                )
                return False
            return True

        def failed(failure: Failure) -> bool:
            self._log.warn(
                "wxservice state write of {appid}/{uid} failed: {reason}",
                appid=self._appid, uid=self._uid, reason=reason_text(failure.value),
            )
            return False

        return d.addCallbacks(done, failed)

    def _schedule(self, later: Later, session: int) -> None:
        call: Any  # IDelayedCall

        def fire() -> None:
            self._timers.discard(call)
            try:
                if session == self._session and self.state is State.LOGGED_IN:
                    self._send_bot_message(later.message)
            except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
                self._log.failure("wxservice unprompted message")

        call = self.context.clock.callLater(later.delay, fire)
        self._timers.add(call)

    def _cancel_timers(self) -> None:
        timers, self._timers = self._timers, set()
        for call in timers:
            if call.active():
                call.cancel()

    def _send_bot_message(self, message: Message) -> None:
        self.send({"method": "chatResp", "content": message.content, "action": message.action,
                   "result": int(Result.OK), "msg": "ok"})

    def answer(self, method: str, result: int, msg: str) -> None:
        self.send({"method": method, "result": int(result), "msg": msg})

    def send(self, message: dict[str, Any]) -> None:
        if self.state is not State.CLOSED:
            self._send(message)
