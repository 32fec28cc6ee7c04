"""
Browser sessions and the routing between them and the agent links.

The L{Relay} is plain logic: it never touches a transport. A browser session
gives it a C{deliver(bytes)} callable; an agent link gives it a C{send(dict)}.
It parses and checks browser input once, here at the edge, and routes agent
frames back by their uuid prefix without decoding their JSON
(L{webtesting.protocol.routed_frame}).

A session may hold one login per service, so a page can talk to several bots
at once; every answer and push carries C{serviceId} and C{appid}. A session
with exactly one login may leave C{serviceId} out.
"""

from __future__ import annotations

import json
import uuid as uuidlib
from typing import Any, Callable, Protocol

from twisted.logger import Logger

from webtesting.protocol import (
    BROWSER_REQUESTS,
    LOGGED_IN,
    LOGGED_OUT,
    SESSION_CLOSED,
    UUID_LEN,
    InvalidInput,
    Result,
    check_browser_request,
    parse_json_object,
    request_echo,
)

Deliver = Callable[[bytes], None]


class LinkView(Protocol):
    """What the relay needs of an agent link."""

    service_id: int

    @property
    def up(self) -> bool:
        """Whether the link carries requests now."""

    @property
    def connected(self) -> bool:
        """Whether the agent is on the line (it may still refuse its settings)."""

    @property
    def reason(self) -> str:
        """Why not, when it does not."""

    def send(self, message: dict[str, Any]) -> None:
        """Send one JSON message to the agent."""


class Login:
    """One login of a browser session on one service."""

    __slots__ = ("appid", "uname", "active")

    def __init__(self, appid: str, uname: str) -> None:
        self.appid = appid
        self.uname = uname
        self.active = False  # True once the agent confirmed it


class BrowserSession:
    __slots__ = ("uuid", "deliver", "logins")

    def __init__(self, uuid: str, deliver: Deliver) -> None:
        self.uuid = uuid
        self.deliver = deliver
        self.logins: dict[int, Login] = {}


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()


def _answer(deliver: Deliver, method: str, result: Result, msg: str, **fields: Any) -> None:
    deliver(_encode({"method": method, **fields, "result": int(result), "msg": msg}))


class Relay:
    """Routes browser requests to agent links and agent frames back to browsers."""

    _log = Logger()

    def __init__(self, links: dict[int, Any], new_uuid: Callable[[], str] | None = None) -> None:
        self.links: dict[int, LinkView] = links
        self.sessions: dict[str, BrowserSession] = {}
        # serviceId -> uuids of the sessions with a login there
        self._on_service: dict[int, set[str]] = {}
        self._new_uuid = new_uuid or (lambda: uuidlib.uuid4().hex)

    # -- browser side -------------------------------------------------------

    def open_session(self, deliver: Deliver) -> BrowserSession:
        session = BrowserSession(self._new_uuid(), deliver)
        self.sessions[session.uuid] = session
        return session

    def close_session(self, session: BrowserSession) -> None:
        """The browser went away: tell each agent it was logged in at, and forget it."""
        self.sessions.pop(session.uuid, None)
        for service_id in list(session.logins):
            self._forget_login(session, service_id)
            link = self.links.get(service_id)
            if link is not None and link.connected:
                # Even a link that is not up may still hold the user at the agent.
                link.send({"method": SESSION_CLOSED, "uuid": session.uuid})

    def from_browser(self, session: BrowserSession, payload: bytes) -> None:
        """Check one browser frame and forward it, or answer why not."""
        try:
            message = parse_json_object(payload)
        except InvalidInput as e:
            # A known request is answered as itself, so that the page ties
            # the error to the request it sent.
            request = e.request or {}
            known = BROWSER_REQUESTS.get(request.get("method"))  # type: ignore[arg-type]
            if known is None:
                _answer(session.deliver, "error", Result.BAD_REQUEST, str(e))
            else:
                _answer(session.deliver, known, Result.BAD_REQUEST, str(e), **request_echo(request))
            return
        method = message["method"]
        answer = BROWSER_REQUESTS.get(method)
        if answer is None:
            _answer(session.deliver, "error", Result.NOT_FOUND, f"unknown method {method!r}")
            return
        echo = request_echo(message)
        try:
            check_browser_request(message)
        except InvalidInput as e:
            _answer(session.deliver, answer, Result.BAD_REQUEST, str(e), **echo)
            return
        service_id = message.get("serviceId")
        if service_id is None:
            if len(session.logins) != 1:
                why = "not logged in" if not session.logins else f"logged in to {len(session.logins)} services"
                _answer(session.deliver, answer, Result.BAD_REQUEST, f"serviceId: is required ({why})", **echo)
                return
            service_id = next(iter(session.logins))
            message["serviceId"] = echo["serviceId"] = service_id
        link = self.links.get(service_id)
        if link is None:
            _answer(session.deliver, answer, Result.NOT_FOUND, f"no such service: {service_id}", **echo)
            return
        login = session.logins.get(service_id)
        if method == "loginReq":
            if login is not None:
                _answer(
                    session.deliver, answer, Result.BAD_REQUEST,
                    f"already logged in to service {service_id} as appid {login.appid}; log out first", **echo,
                )
                return
        elif login is None:
            _answer(session.deliver, answer, Result.UNAUTHORIZED, f"not logged in to service {service_id}", **echo)
            return
        elif login.appid != message["appid"]:
            _answer(
                session.deliver, answer, Result.BAD_REQUEST,
                f"appid: this session is logged in to service {service_id} as appid {login.appid}", **echo,
            )
            return
        if not link.up:
            if method == "logoutReq":
                # An agent forgets its users when its link goes, so the login
                # is over already; don't bring it back when the link returns.
                # If the agent is still on the line, make sure it forgets too.
                self._forget_login(session, service_id)
                if link.connected:
                    link.send({"method": SESSION_CLOSED, "uuid": session.uuid})
                _answer(session.deliver, answer, Result.OK, "ok", **echo)
                return
            _answer(
                session.deliver, answer, Result.UNAVAILABLE,
                f"service {service_id} is unavailable: {link.reason}", **echo,
            )
            return
        if method == "loginReq":
            session.logins[service_id] = Login(message["appid"], message["uname"])
            self._on_service.setdefault(service_id, set()).add(session.uuid)
        message["uuid"] = session.uuid
        link.send(message)

    # -- agent side ---------------------------------------------------------

    def from_agent(self, service_id: int, frame: bytes) -> None:
        """Route one agent frame (uuid, mark, browser-ready JSON) to its session."""
        session = self.sessions.get(frame[:UUID_LEN].decode("ascii", "replace"))
        if session is None:
            return  # the browser has gone; the agent has been or will be told
        mark = frame[UUID_LEN:UUID_LEN + 1]
        if mark == LOGGED_IN:
            login = session.logins.get(service_id)
            if login is not None:
                login.active = True
        elif mark == LOGGED_OUT:
            self._forget_login(session, service_id)
        session.deliver(frame[UUID_LEN + 1:])

    def service_status(self, service_id: int, status: int, msg: str) -> None:
        """Push servStatus to every session logged in to this service."""
        for uuid in self._on_service.get(service_id, ()):
            session = self.sessions[uuid]
            login = session.logins[service_id]
            session.deliver(_encode({
                "method": "servStatus", "serviceId": service_id, "appid": login.appid,
                "status": status, "msg": msg,
            }))

    def logins_to_restore(self, service_id: int) -> list[dict[str, Any]]:
        """
        The loginReq to send again on a new link to this service: the agent
        forgot its users when the old link went, the browsers did not.
        """
        messages = []
        for uuid in self._on_service.get(service_id, ()):
            login = self.sessions[uuid].logins[service_id]
            login.active = False
            messages.append({
                "method": "loginReq", "serviceId": service_id, "appid": login.appid,
                "uname": login.uname, "uuid": uuid,
            })
        return messages

    def service_removed(self, service_id: int) -> None:
        """The service left the registry: its logins end."""
        self.service_status(service_id, 0, "the service was removed from the registry")
        for uuid in list(self._on_service.get(service_id, ())):
            self._forget_login(self.sessions[uuid], service_id)

    def _forget_login(self, session: BrowserSession, service_id: int) -> None:
        session.logins.pop(service_id, None)
        uuids = self._on_service.get(service_id)
        if uuids is not None:
            uuids.discard(session.uuid)
            if not uuids:
                del self._on_service[service_id]
