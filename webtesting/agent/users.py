"""
One browser user's session at the agent: its login at the bot, and what the
browser is told about it.

The WebSocket to WxService, its retries and its frames are the
L{webtesting.agent.wxservice.WxServiceLink}'s (a reconnecting link kept up by
the shared L{webtesting.lifecycle.Lifecycle}); this session only turns what
the link reports into answers for the browser. It moves through L{UserState}
in one place (L{UserSession._set}) and never talks to the web link directly:
it calls its L{UserHost} (the agent's link object), which frames and sends.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Protocol

from twisted.logger import Logger

from webtesting.agent import wxservice
from webtesting.lifecycle import Health
from webtesting.metrics import observe_hop
from webtesting.protocol import LOGGED_IN, LOGGED_OUT, ROUTE, Result, answer_message, hops_tail


class UserState(enum.Enum):
    LOGGING_IN = "logging in"  # first connect + login under way
    ONLINE = "online"  # logged in; chat flows; state is polled
    RECONNECTING = "reconnecting"  # WxService lost; the link logs in again
    CLOSED = "closed"


class UserHost(Protocol):
    """What a user session needs of the agent's link."""

    reactor: Any

    @property
    def wx_url(self) -> str:
        """Where the service's WxService is."""

    def frame(self, uuid: str, mark: bytes, message: dict[str, Any], tail: bytes = b"") -> None:
        """Send a browser-ready message for session C{uuid} (C{tail}: last members, see routed_frame)."""

    def user_online(self, user: UserSession) -> None:
        """The user is logged in (again): watch its state and push it now."""

    def user_ended(self, user: UserSession) -> None:
        """The user session is over; forget it."""

    def wxservice_trouble(self) -> None:
        """A user's WxService link went down: a sign to check the service now."""

    def scrub(self, text: str) -> str:
        """C{text} without the service's addresses and credentials."""


LinkFactory = Callable[["UserSession"], wxservice.WxServiceLink]
DEFAULT_LINK_SETTINGS = wxservice.LinkSettings()


# Chats whose arrival time a session keeps for their reply's hops (the web server lets 64 wait).
_MAX_TIMED = 256


class UserSession:
    """
    @param link_settings: how the WxService link dials, pings and backs off.
    @param make_link: makes the session's WxService link (tests give a fake).
    """

    _log = Logger()
    # When each chat still waiting for its reply came (seconds), oldest first:
    # its reply carries "hops" with the time. None until the first chat (a
    # session that never chats pays nothing for it).
    _chat_times: list[float] | None = None

    def __init__(
        self,
        host: UserHost,
        uuid: str,
        service_id: int,
        appid: str,
        uname: str,
        *,
        link_settings: wxservice.LinkSettings = DEFAULT_LINK_SETTINGS,
        make_link: LinkFactory | None = None,
    ) -> None:
        self.host = host
        self.uuid = uuid
        self.service_id = service_id
        self.appid = appid
        self.uname = uname
        self.uid: str | None = None
        self.push = True  # automatic state pushes (setStatusPushReq)
        self.state = UserState.LOGGING_IN
        # Chats sent to the bot with no reply yet. The WxService protocol does
        # not number replies: the next reply answers the oldest chat. When the
        # link drops, each one still waiting is answered with the reason, so
        # that nothing sent into a dying link goes unanswered.
        self._awaiting = 0
        if make_link is None:
            self.link = wxservice.WxServiceLink(
                host.reactor, lambda: host.wx_url, self, appid, uname, link_settings
            )
        else:
            self.link = make_link(self)

    # -- helpers ------------------------------------------------------------

    def _fields(self) -> dict[str, Any]:
        return {"serviceId": self.service_id, "appid": self.appid}

    def answer(self, method: str, result: int, msg: str, mark: bytes = ROUTE, **fields: Any) -> None:
        """Send C{method} to the browser; an answer that is not a success carries C{code}."""
        if int(result) != int(Result.OK) and "code" not in fields:
            fields["code"] = "internal"
        self.host.frame(self.uuid, mark, answer_message(method, result, msg, **self._fields(), **fields))

    def _set(self, state: UserState) -> None:
        self._log.debug("user {uuid}: {old} -> {new}", uuid=self.uuid, old=self.state.value, new=state.value)
        self.state = state

    # -- logging in -----------------------------------------------------------

    def start(self) -> None:
        """Connect to WxService and log in; answers loginResp either way."""
        self.link.start()

    # wxservice.LinkListener: the link calls these.

    def logged_in(self, uid: str) -> None:
        if self.state is UserState.CLOSED:
            return
        self.uid = str(uid)
        first = self.state is UserState.LOGGING_IN
        self._set(UserState.ONLINE)
        if first:
            self.answer("loginResp", Result.OK, "ok", LOGGED_IN, strUid=self.uid)
        else:
            self.answer("servStatus", 1, "ok", status=1, code="ok")
        self.host.user_online(self)

    def link_down(self, health: Health) -> None:
        if self.state is UserState.CLOSED:
            return
        self.host.wxservice_trouble()
        if self.state is UserState.LOGGING_IN:
            # The first attempt failed: the browser hears why, and may try again.
            self._log.info("user {uuid}: login failed: {msg}", uuid=self.uuid, msg=health.msg)
            self._end()
            self.answer("loginResp", Result.UNAVAILABLE, self.host.scrub(health.msg), LOGGED_OUT,
                        code=health.code)
        elif self.state is UserState.ONLINE:
            self._set(UserState.RECONNECTING)
            self.answer("servStatus", 0, self.host.scrub(f"{health.msg}; reconnecting"), status=0,
                        code=health.code)
            self._answer_awaiting(health.code)
        # RECONNECTING: the browser was told once already.

    def _answer_awaiting(self, code: str) -> None:
        """Each chat the bot had not answered gets an error: its link is gone."""
        awaiting, self._awaiting = self._awaiting, 0
        self._chat_times = None
        for _ in range(awaiting):
            self.answer("aichatResp", Result.UNAVAILABLE,
                        "the bot went away before answering; the message may not have reached it",
                        content="", action="", code=code)

    def login_refused(self, error: wxservice.WxServiceError) -> None:
        if self.state is UserState.CLOSED:
            return
        result = error.result if error.result != 1 else int(Result.INTERNAL)
        first = self.state is UserState.LOGGING_IN
        self._log.info("user {uuid}: the bot refused the login: {msg}", uuid=self.uuid, msg=error.msg)
        self._end()
        if first:
            self.answer("loginResp", result, error.msg, LOGGED_OUT, code="bot_refused")
        else:
            # Waiting will not help: the login is over, unprompted.
            self.answer("logoutResp", result, f"logging in again failed: {error.msg}", LOGGED_OUT,
                        code="relogin_refused")

    # -- while online -----------------------------------------------------------

    def chat(self, content: str) -> None:
        arrived = self.host.reactor.seconds()
        if self.state is not UserState.ONLINE:
            self.answer("aichatResp", Result.UNAVAILABLE, "the bot is unreachable; reconnecting",
                        content="", action="", code="bot_unreachable")
            return
        try:
            self.link.chat(content)
        except wxservice.NotOpen:
            self.answer("aichatResp", Result.UNAVAILABLE, "the bot is unreachable; reconnecting",
                        content="", action="", code="bot_unreachable")
            return
        self._awaiting += 1
        times = self._chat_times
        if times is None:
            times = self._chat_times = []
        elif len(times) >= _MAX_TIMED:
            del times[0]
        times.append(arrived)

    def bot_message(self, content: str, action: str) -> None:
        if self.state is UserState.CLOSED:
            return  # after a logout the page is no longer listening for this login
        self._awaiting = max(0, self._awaiting - 1)
        times = self._chat_times
        if not times:
            # A message the bot sent on its own, or a second one for a chat: no request to time.
            self.answer("aichatResp", Result.OK, "ok", content=content, action=action)
            return
        arrived = times.pop(0)
        clock = self.host.reactor
        replied = clock.seconds()
        message = answer_message("aichatResp", Result.OK, "ok", serviceId=self.service_id, appid=self.appid,
                                 content=content, action=action)
        sent = clock.seconds()
        self.host.frame(self.uuid, ROUTE, message, hops_tail(arrived, replied, sent))
        observe_hop(self.service_id, "bot", replied - arrived)
        observe_hop(self.service_id, "agent", sent - arrived)

    def bot_error(self, error: wxservice.WxServiceError) -> None:
        if self.state is UserState.CLOSED:
            return
        self._awaiting = max(0, self._awaiting - 1)
        if self._chat_times:
            del self._chat_times[0]
        self.answer("aichatResp", error.result if error.result != 1 else Result.INTERNAL, error.msg,
                    content="", action="", code="bot_refused")

    def bot_may_be_frozen(self) -> None:
        """The service's own connection to the bot missed a pong: is this user's connection still answered?"""
        if self.state is UserState.ONLINE:
            self.link.check_alive()

    def bot_is_back(self) -> None:
        """The service's health checks find the bot answering: log in again now."""
        if self.state is UserState.RECONNECTING:
            self.link.retry_now()

    def reconnect_now(self) -> None:
        """WxService moved (a new wxServiceAddr): log in again there at once."""
        if self.state is UserState.CLOSED:
            return
        if self.state is UserState.ONLINE:
            self._set(UserState.RECONNECTING)
            self.answer("servStatus", 0, "the bot moved; logging in again", status=0, code="bot_unreachable")
            self._answer_awaiting("bot_unreachable")
        self.link.moved()

    # -- ending -----------------------------------------------------------------

    def logout(self) -> None:
        """The browser logs out: answer, log out at the bot, close, forget the user."""
        self._end(logout=True)
        self.answer("logoutResp", Result.OK, "ok", LOGGED_OUT)

    def close(self) -> None:
        """The browser went away or the web link was lost: end without an answer."""
        self._end()

    def _end(self, *, logout: bool = False) -> None:
        if self.state is UserState.CLOSED:
            return
        self._set(UserState.CLOSED)
        try:
            if logout:
                self.link.logout()
            else:
                self.link.stop()
        finally:
            self.host.user_ended(self)  # forgotten whatever the link did
