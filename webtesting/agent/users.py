"""
One browser user's session at the agent: its WxService connection, its
login, and what the browser was last sent of its state.

A L{UserSession} moves through L{UserState} in one place (L{UserSession._set})
and never talks to the web link directly: it calls its L{UserHost} (the
agent's link object), which frames and sends.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from webtesting.agent import wxservice
from webtesting.protocol import LOGGED_IN, LOGGED_OUT, ROUTE, Result


class UserState(enum.Enum):
    LOGGING_IN = "logging in"  # first connect + login under way
    ONLINE = "online"  # logged in; chat flows; state is polled
    RECONNECTING = "reconnecting"  # WxService lost; a timer logs in again
    CLOSED = "closed"


class UserHost(Protocol):
    """What a user session needs of the agent's link."""

    reactor: Any

    @property
    def wx_url(self) -> str:
        """Where the service's WxService is."""

    def frame(self, uuid: str, mark: bytes, message: dict[str, Any]) -> None:
        """Send a browser-ready message for session C{uuid}."""

    def user_online(self, user: "UserSession") -> None:
        """The user is logged in (again): watch its state and push it now."""

    def user_ended(self, user: "UserSession") -> None:
        """The user session is over; forget it."""

    def wxservice_health(self, ok: bool, why: str) -> None:
        """What the last attempt to reach WxService showed."""

    def scrub(self, text: str) -> str:
        """C{text} without the service's addresses and credentials."""


class UserSession:
    """
    @param policy: seconds to wait before reconnect attempt N (0-based).
    """

    _log = Logger()

    def __init__(
        self,
        host: UserHost,
        uuid: str,
        service_id: int,
        appid: str,
        uname: str,
        *,
        policy: Callable[[int], float],
        login_timeout: float = 5.0,
        connect: Callable[..., Deferred[Any]] = wxservice.connect,
    ) -> None:
        self.host = host
        self.uuid = uuid
        self.service_id = service_id
        self.appid = appid
        self.uname = uname
        self.uid: str | None = None
        self.push = True  # automatic state pushes (setStatusPushReq)
        self.state = UserState.LOGGING_IN
        self._policy = policy
        self._login_timeout = login_timeout
        self._connect = connect
        self._conn: wxservice.WxServiceConnection | None = None
        self._attempt: Deferred[Any] | None = None
        self._retry: Any = None
        self._failures = 0

    # -- helpers ------------------------------------------------------------

    def _fields(self) -> dict[str, Any]:
        return {"serviceId": self.service_id, "appid": self.appid}

    def answer(self, method: str, result: int, msg: str, mark: bytes = ROUTE, **fields: Any) -> None:
        self.host.frame(self.uuid, mark, {"method": method, **self._fields(), **fields,
                                          "result": int(result), "msg": msg})

    def _set(self, state: UserState) -> None:
        self._log.debug("user {uuid}: {old} -> {new}", uuid=self.uuid, old=self.state.value, new=state.value)
        self.state = state

    # -- logging in -----------------------------------------------------------

    def start(self) -> None:
        """Connect to WxService and log in; answers loginResp either way."""
        self._attempt = self._open_and_login()
        self._attempt.addCallbacks(self._logged_in, self._login_failed)

    def _open_and_login(self) -> Deferred[Any]:
        d = self._connect(self.host.reactor, self.host.wx_url, self)

        def opened(conn: wxservice.WxServiceConnection) -> Deferred[str]:
            self.host.wxservice_health(True, "ok")
            if self.state is UserState.CLOSED:
                conn.close()
                raise defer.CancelledError()
            self._conn = conn
            return conn.login(self.appid, self.uname, timeout=self._login_timeout)

        d.addCallback(opened)
        return d

    def _logged_in(self, uid: str) -> None:
        self._attempt = None
        self.uid = str(uid)
        first = self.state is UserState.LOGGING_IN
        self._set(UserState.ONLINE)
        self._failures = 0
        if first:
            self.answer("loginResp", Result.OK, "ok", LOGGED_IN, strUid=self.uid)
        else:
            self.answer("servStatus", 1, "ok", status=1)
        self.host.user_online(self)

    def _login_failed(self, failure: Failure) -> None:
        self._attempt = None
        if failure.check(defer.CancelledError) or self.state is UserState.CLOSED:
            return
        result, msg = _why(failure)
        if failure.check(wxservice.WxServiceUnavailable):
            self.host.wxservice_health(False, msg)
        self._log.info("user {uuid}: login failed: {msg}", uuid=self.uuid, msg=msg)
        self._end(close=True)
        self.answer("loginResp", result, self.host.scrub(msg), LOGGED_OUT)

    # -- while online -----------------------------------------------------------

    def chat(self, content: str) -> None:
        if self.state is not UserState.ONLINE or self._conn is None:
            self.answer("aichatResp", Result.UNAVAILABLE, "the bot is unreachable; reconnecting",
                        content="", action="")
            return
        try:
            self._conn.chat(content)
        except wxservice.NotOpen:
            self.answer("aichatResp", Result.UNAVAILABLE, "the bot is unreachable; reconnecting",
                        content="", action="")

    # WxServiceListener: the adapter calls these.

    def bot_message(self, content: str, action: str) -> None:
        self.answer("aichatResp", Result.OK, "ok", content=content, action=action)

    def bot_error(self, error: wxservice.WxServiceError) -> None:
        self.answer("aichatResp", error.result if error.result != 1 else Result.INTERNAL, error.msg,
                    content="", action="")

    def connection_lost(self, reason: str) -> None:
        self._conn = None
        if self.state is UserState.CLOSED:
            return
        self.host.wxservice_health(False, f"WxService connection lost: {reason}")
        if self.state is UserState.ONLINE:
            self.answer("servStatus", 0, self.host.scrub(f"the bot is unreachable ({reason}); reconnecting"),
                        status=0)
            self._set(UserState.RECONNECTING)
            self._schedule_reconnect()
        # While LOGGING_IN the pending login fails by itself and answers.

    # -- reconnecting -----------------------------------------------------------

    def _schedule_reconnect(self) -> None:
        delay = self._policy(self._failures)
        self._failures += 1
        self._retry = self.host.reactor.callLater(delay, self._reconnect)

    def _reconnect(self) -> None:
        self._retry = None
        if self.state is not UserState.RECONNECTING:
            return
        self._attempt = self._open_and_login()
        self._attempt.addCallbacks(self._logged_in, self._relogin_failed)

    def _relogin_failed(self, failure: Failure) -> None:
        self._attempt = None
        if failure.check(defer.CancelledError) or self.state is UserState.CLOSED:
            return
        result, msg = _why(failure)
        if failure.check(wxservice.WxServiceError):
            # The bot itself said no (the user or appid is refused now):
            # waiting will not help. The login is over.
            self._end(close=True)
            self.answer("loginResp", result, f"logging in again failed: {msg}", LOGGED_OUT)
            return
        if failure.check(wxservice.WxServiceUnavailable):
            self.host.wxservice_health(False, msg)
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()
        self._schedule_reconnect()

    def reconnect_now(self) -> None:
        """WxService moved (a new wxServiceAddr): log in again there at once."""
        if self.state is UserState.CLOSED:
            return
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._attempt is not None:
            attempt, self._attempt = self._attempt, None
            attempt.cancel()
        was_online = self.state is UserState.ONLINE
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()
        if self.state is UserState.LOGGING_IN:
            self.start()
            return
        if was_online:
            self.answer("servStatus", 0, "the bot moved; logging in again", status=0)
        self._set(UserState.RECONNECTING)
        self._failures = 0
        self._reconnect()

    # -- ending -----------------------------------------------------------------

    def logout(self) -> None:
        """The browser logs out: answer, close WxService, forget the user."""
        conn = self._conn
        self._end(close=False)
        self.answer("logoutResp", Result.OK, "ok", LOGGED_OUT)
        if conn is not None:
            d = conn.logout(timeout=2.0)
            d.addErrback(lambda _: None)  # closing anyway
            d.addBoth(lambda _: conn.close())

    def close(self) -> None:
        """The browser went away or the web link was lost: end without an answer."""
        self._end(close=True)

    def _end(self, *, close: bool) -> None:
        if self.state is UserState.CLOSED:
            return
        self._set(UserState.CLOSED)
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            attempt, self._attempt = self._attempt, None
            attempt.cancel()
        if close and self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()
        elif not close:
            self._conn = None
        self.host.user_ended(self)


def _why(failure: Failure) -> tuple[int, str]:
    """The result code and message for a failed connect or login."""
    e = failure.value
    if isinstance(e, wxservice.WxServiceError):
        return (e.result if e.result != 1 else int(Result.INTERNAL)), e.msg
    if isinstance(e, wxservice.WxServiceTimeout):
        return int(Result.UNAVAILABLE), "the bot did not answer the login in time"
    if isinstance(e, wxservice.WxServiceUnavailable):
        return int(Result.UNAVAILABLE), f"the bot is unreachable: {e}"
    if isinstance(e, ValueError):
        return int(Result.UNAVAILABLE), f"the WxService address is not usable: {e}"
    return int(Result.INTERNAL), f"login failed: {failure.getErrorMessage()}"
