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

Nothing is lost in silence: every request forwarded to an agent is
remembered (L{Pending}) until its answer comes back, and is answered with an
error (code C{timeout}) when none came within C{deadline} seconds, or at once
(code C{agent_unreachable}) when its link drops. The answer to a request is
the next frame of the answer's method for that session and service (the
WxService protocol does not number bot replies, so neither can we); the
method is read from the frame's first bytes, never by decoding it.
"""

from __future__ import annotations

import json
import uuid as uuidlib
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from twisted.logger import Logger

from webtesting.metrics import observe_hop
from webtesting.protocol import (
    BROWSER_REQUESTS,
    HOPS_KEY,
    LOGGED_IN,
    LOGGED_OUT,
    SESSION_CLOSED,
    UUID_LEN,
    InvalidInput,
    Result,
    answer_message,
    check_browser_request,
    frame_method,
    json_data,
    parse_json_object,
    request_echo,
    tester_reason,
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

    @property
    def code(self) -> str:
        """The stable code of that reason."""

    def send(self, message: dict[str, Any]) -> None:
        """Send one JSON message to the agent."""


class Pending:
    """A request forwarded to an agent and not answered yet."""

    __slots__ = ("deadline", "session", "service_id", "answer", "login", "done", "sent")

    def __init__(self, deadline: float, session: BrowserSession, service_id: int, answer: str,
                 login: Login, sent: float = 0.0) -> None:
        self.deadline = deadline
        self.sent = sent  # when it was sent on (the reply's hops: webIn)
        self.session = session
        self.service_id = service_id
        self.answer = answer
        self.login = login
        self.done = False

    @property
    def appid(self) -> str:
        return self.login.appid


class Login:
    """One login of a browser session on one service."""

    __slots__ = ("appid", "uname", "active", "restoring", "pending", "in_flight")

    def __init__(self, appid: str, uname: str) -> None:
        self.appid = appid
        self.uname = uname
        self.active = False  # True once the agent confirmed it
        self.restoring = False  # sent again on a new link; servStatus 1 follows its loginResp
        # answer method (bytes) -> the requests waiting for one, oldest first
        self.pending: dict[bytes, deque[Pending]] = {}
        self.in_flight = 0  # how many of them are not answered yet


class BrowserSession:
    __slots__ = ("uuid", "deliver", "logins", "closed", "account")

    def __init__(self, uuid: str, deliver: Deliver, account: str = "") -> None:
        self.uuid = uuid
        self.deliver = deliver
        self.logins: dict[int, Login] = {}
        self.closed = False
        self.account = account  # the tester's username (the agent names it to whoever it logs out)


# Requests one login may have waiting for answers at once.
MAX_IN_FLIGHT = 64


# The frames history keeps, by method, and the kind of event each is.
_RECORDED = {b"aichatResp": "reply", b"getUserStatusResp": "state"}

_SERVICE_KEY = b'"serviceId":'
_CODE_KEY = b'"code":'


def names_only(frame: bytes, service_id: int) -> bool:
    """
    Whether every C{serviceId} in a routed frame's compact JSON is
    C{service_id}. Read without decoding: in compact JSON the bytes
    C{"serviceId":} can only be a key (a quote inside a string is escaped).
    """
    at = frame.find(_SERVICE_KEY)
    if at < 0:
        return True
    want = str(service_id).encode()
    while at >= 0:
        start = at + len(_SERVICE_KEY)
        end = start + len(want)
        if frame[start:end] != want or frame[end:end + 1] not in (b",", b"}"):
            return False
        at = frame.find(_SERVICE_KEY, end)
    return True


# The reason code of each error result the relay answers by itself.
_CODES = {
    Result.BAD_REQUEST: "bad_request",
    Result.UNAUTHORIZED: "not_logged_in",
    Result.FORBIDDEN: "forbidden",
    Result.NOT_FOUND: "bad_request",
    Result.TOO_LARGE: "too_large",
    Result.INTERNAL: "internal",
    Result.UNAVAILABLE: "unavailable",
    Result.TIMEOUT: "timeout",
}


def _answer(deliver: Deliver, method: str, result: Result, msg: str, code: str = "", **fields: Any) -> None:
    message = answer_message(method, result, msg, **fields)
    if result != Result.OK:
        message["code"] = code or _CODES.get(result, "internal")
    deliver(json_data(message))


class Relay:
    """Routes browser requests to agent links and agent frames back to browsers."""

    _log = Logger()

    def __init__(
        self,
        links: dict[int, Any],
        new_uuid: Callable[[], str] | None = None,
        *,
        clock: Any = None,
        deadline: float = 10.0,
        login_deadline: float = 60.0,
        max_logins_per_account: int = 50,
    ) -> None:
        self.links: dict[int, LinkView] = links
        self.max_logins_per_account = max_logins_per_account
        self._account_logins: dict[str, int] = {}  # bot logins held per account on this web server
        self.sessions: dict[str, BrowserSession] = {}
        # serviceId -> uuids of the sessions with a login there
        self._on_service: dict[int, set[str]] = {}
        self._new_uuid = new_uuid or (lambda: uuidlib.uuid4().hex)
        if clock is None:
            from twisted.internet import reactor as clock
        self._clock = clock
        self.deadline = deadline
        # A login may wait its turn behind a storm of others at the agent
        # (users.connects_in_flight): it has a deadline of its own.
        self.login_deadline = login_deadline
        # Every pending request, oldest first: deadlines come in this order
        # within each queue (one for logins, one for the rest).
        self._pending: deque[Pending] = deque()
        self._pending_logins: deque[Pending] = deque()
        self._live = 0  # how many of them still wait
        self._sweep: Any = None
        # Where each turn is recorded (webtesting.web.history.History), if anywhere.
        self.history: Any = None

    def logins_by_service(self) -> dict[int, int]:
        """How many browser sessions hold a bot login on each service (for the metrics)."""
        return {sid: len(uuids) for sid, uuids in self._on_service.items() if uuids}

    # -- browser side -------------------------------------------------------

    def open_session(self, deliver: Deliver, account: str = "") -> BrowserSession:
        session = BrowserSession(self._new_uuid(), deliver, account)
        self.sessions[session.uuid] = session
        return session

    def close_session(self, session: BrowserSession) -> None:
        """The browser went away: tell each agent it was logged in at, and forget it."""
        self.sessions.pop(session.uuid, None)
        session.closed = True
        for login in session.logins.values():
            self._drop_pending(login)
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
            _answer(session.deliver, "error", Result.NOT_FOUND, f"unknown method {method!r}", "unknown_method")
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
        elif not login.active and method != "logoutReq":
            _answer(
                session.deliver, answer, Result.UNAVAILABLE,
                f"still logging in to service {service_id}; wait for its loginResp", **echo,
            )
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
                f"service {service_id} is unavailable: {link.reason}", link.code, **echo,
            )
            return
        if method == "loginReq":
            held = self._account_logins.get(session.account, 0)
            if held >= self.max_logins_per_account:
                _answer(session.deliver, answer, Result.TOO_MANY_REQUESTS,
                        f"this account holds {held} bot logins, the most allowed; log out of some first",
                        "too_many_logins", **echo)
                return
            login = session.logins[service_id] = Login(message["appid"], message["uname"])
            self._on_service.setdefault(service_id, set()).add(session.uuid)
            self._account_logins[session.account] = held + 1
            message["account"] = session.account
            message.pop("restore", None)  # only this server says a login is a restore
        assert login is not None
        if login.in_flight >= MAX_IN_FLIGHT:
            # One page cannot make the bot, the agent and this server queue without end.
            _answer(session.deliver, answer, Result.UNAVAILABLE,
                    f"{MAX_IN_FLIGHT} requests on service {service_id} are still waiting for answers; "
                    "wait for some", "unavailable", **echo)
            return
        message["uuid"] = session.uuid
        # Waiting before sending: an answer may come back within send().
        self._expect(session, login, service_id, answer)
        if method == "aichatReq" and self.history is not None:
            self.history.record(service_id, login.appid, login.uname, session.account, "say", message["content"])
        link.send(message)

    # -- deadlines ------------------------------------------------------------

    def _expect(self, session: BrowserSession, login: Login, service_id: int, answer: str) -> None:
        wait = self.login_deadline if answer == "loginResp" else self.deadline
        now = self._clock.seconds()
        pending = Pending(now + wait, session, service_id, answer, login, now)
        login.pending.setdefault(answer.encode(), deque()).append(pending)
        login.in_flight += 1
        (self._pending_logins if answer == "loginResp" else self._pending).append(pending)
        self._live += 1
        if self._sweep is None:
            self._sweep = self._clock.callLater(wait, self._expire)
        elif self._sweep.getTime() > pending.deadline:
            self._sweep.reset(wait)  # due before the login the sweep waits for

    def _done(self, pending: Pending) -> None:
        pending.done = True
        pending.login.in_flight -= 1
        self._live -= 1
        if self._live == 0:
            # Nothing waits. The sweep timer stays: it fires once, finds
            # nothing and is not set again (rather than a timer set and
            # cancelled for every request of a page chatting one at a time).
            self._pending.clear()
            self._pending_logins.clear()
        elif len(self._pending) + len(self._pending_logins) > max(1024, 4 * self._live):
            # Answered requests wait for their deadline to leave the queue:
            # under a fast stream of answers, drop them now (amortised O(1)).
            self._pending = deque(p for p in self._pending if not p.done)
            self._pending_logins = deque(p for p in self._pending_logins if not p.done)

    def _answered(self, login: Login, method: bytes) -> Pending | None:
        waiting = login.pending.get(method)
        while waiting:
            pending = waiting.popleft()
            if not pending.done:
                self._done(pending)
                return pending
        return None

    def _with_web_hops(self, service_id: int, pending: Pending, frame: bytes) -> tuple[bytes, bytes]:
        """
        A chat reply the agent timed (its last member is C{"hops"}, see
        L{hops_tail}) gets this server's times added to its hops, without
        decoding the frame, and its time here goes to the metrics. Returns
        the frame for the browser, and for the history (without the hops).
        """
        at = frame.rfind(HOPS_KEY)
        # The agent's hops are the last member, an object of numbers: a frame that is not so passes as it came.
        if at < 0 or not frame.endswith(b"}}") or frame[at + 9:at + 10] != b'"' or b"}" in frame[at:-2]:
            return frame, frame
        now = self._clock.seconds()
        observe_hop(service_id, "web", now - pending.sent)
        return b'%s,"webIn":%.3f,"webOut":%.3f}}' % (frame[:-2], pending.sent * 1000, now * 1000), frame[:at] + b"}"

    def _drop_pending(self, login: Login) -> None:
        for waiting in login.pending.values():
            while waiting:
                pending = waiting.popleft()
                if not pending.done:
                    self._done(pending)

    def _expire(self) -> None:
        self._sweep = None
        now = self._clock.seconds()
        for logins in (False, True):
            # The attribute each time, not a local name: answering may
            # compact the queues (_done).
            while True:
                queue = self._pending_logins if logins else self._pending
                if not queue or not (queue[0].done or queue[0].deadline <= now):
                    break
                pending = queue.popleft()
                if pending.done:
                    continue
                wait = self.login_deadline if logins else self.deadline
                self._fail(pending, Result.TIMEOUT, "timeout",
                           f"no answer from service {pending.service_id} within {wait:g} s")
        heads = [q[0].deadline for q in (self._pending, self._pending_logins) if q]
        if heads and self._sweep is None:
            self._sweep = self._clock.callLater(max(0.0, min(heads) - now), self._expire)

    def _fail(self, pending: Pending, result: Result, code: str, msg: str) -> None:
        self._done(pending)
        session = pending.session
        login = session.logins.get(pending.service_id)
        if login is not None:
            waiting = login.pending.get(pending.answer.encode())
            if waiting and waiting[0] is pending:
                waiting.popleft()
        _answer(session.deliver, pending.answer, result, msg, code,
                serviceId=pending.service_id, appid=pending.appid)
        self._record_error(session, pending.service_id, login, pending.answer, result, code, msg)
        if pending.answer == "loginResp" and login is not None and not login.active:
            # A login that was never confirmed is over: the browser may try again.
            self._forget_login(session, pending.service_id)
            link = self.links.get(pending.service_id)
            if link is not None and link.connected:
                link.send({"method": SESSION_CLOSED, "uuid": session.uuid})

    def _fail_login(self, session: BrowserSession, service_id: int, login: Login, code: str, msg: str) -> None:
        """Answer every request of this login still waiting, with C{msg}."""
        for waiting in list(login.pending.values()):
            while waiting:
                pending = waiting.popleft()
                if not pending.done:
                    self._done(pending)
                    _answer(session.deliver, pending.answer, Result.UNAVAILABLE, msg, code,
                            serviceId=service_id, appid=pending.appid)
                    self._record_error(session, service_id, login, pending.answer, Result.UNAVAILABLE, code, msg)

    def stop(self) -> None:
        """The server stops: no more deadline timers."""
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None

    # -- agent side ---------------------------------------------------------

    def from_agent(self, service_id: int, frame: bytes) -> None:
        """Route one agent frame (uuid, mark, browser-ready JSON) to its session."""
        session = self.sessions.get(frame[:UUID_LEN].decode("ascii", "replace"))
        if session is None:
            return  # the browser has gone; the agent has been or will be told
        if not names_only(frame, service_id):
            # Each link carries its own service: an agent may not speak for another.
            self._log.warn("dropped a frame from the agent of service {service_id} naming another service",
                           service_id=service_id)
            return
        if _CODE_KEY in frame:
            # An error answer or a servStatus: the tester sees the code's sentence, no addresses.
            frame = self._for_testers(service_id, frame)
        mark = frame[UUID_LEN:UUID_LEN + 1]
        login = session.logins.get(service_id)
        if login is not None and (login.pending or self.history is not None):
            method = frame_method(frame)
            recorded = frame
            if login.pending:
                pending = self._answered(login, method)
                if pending is not None and method == b"aichatResp":
                    frame, recorded = self._with_web_hops(service_id, pending, frame)
            if self.history is not None:
                self._record(session, service_id, login, mark, method, recorded)
        if login is not None and login.restoring and mark == LOGGED_OUT and frame_method(frame) == b"loginResp":
            # The page did not ask for this login again: tell it its login is over.
            self._restore_refused(session, service_id, login, frame)
            return
        session.deliver(frame[UUID_LEN + 1:])
        if login is None:
            return
        if mark == LOGGED_IN:
            login.active = True
            if login.restoring:
                # The page hears the service is back only once it can chat again.
                login.restoring = False
                link = self.links.get(service_id)
                if link is not None and link.up:
                    session.deliver(json_data({"method": "servStatus", "serviceId": service_id,
                                             "appid": login.appid, "status": 1, "msg": "ok", "code": "ok"}))
        elif mark == LOGGED_OUT:
            if login.restoring:
                # The page never asked for the restore: no answer is owed for it.
                for pending in login.pending.pop(b"loginResp", ()):
                    if not pending.done:
                        self._done(pending)
            self._fail_login(session, service_id, login, "login_ended",
                             f"the login to service {service_id} ended before the answer came")
            self._forget_login(session, service_id)

    def _record(self, session: BrowserSession, service_id: int, login: Login, mark: bytes, method: bytes,
                frame: bytes) -> None:
        """Hand a frame to history: replies and states as they came (decoded when written)."""
        kind = _RECORDED.get(method)
        if kind is not None:
            body: Any = frame[UUID_LEN + 1:]
        elif mark == LOGGED_IN and not login.restoring:
            kind, body = "login", {}
        elif mark == LOGGED_IN:
            kind, body = "login", {"restored": True}
        else:
            return  # a logout is recorded when the login is forgotten, however it ended
        self.history.record(service_id, login.appid, login.uname, session.account, kind, body)

    def _record_error(self, session: BrowserSession, service_id: int, login: Login | None, answer: str,
                      result: Result, code: str, msg: str) -> None:
        """A chat answered here with an error is part of the conversation too."""
        if answer == "aichatResp" and login is not None and self.history is not None:
            self.history.record(service_id, login.appid, login.uname, session.account, "reply",
                                {"result": int(result), "code": code, "msg": msg})

    def _for_testers(self, service_id: int, frame: bytes) -> bytes:
        try:
            message = json.loads(frame[UUID_LEN + 1:])
        except ValueError:
            return frame
        if not isinstance(message, dict) or not isinstance(message.get("msg"), str):
            return frame
        link = self.links.get(service_id)
        record = getattr(link, "record", None)
        shown = tester_reason(message.get("code"), message["msg"], record)
        if shown == message["msg"]:
            return frame
        message["msg"] = shown
        return frame[:UUID_LEN + 1] + json_data(message)

    def _restore_refused(self, session: BrowserSession, service_id: int, login: Login, frame: bytes) -> None:
        code = "relogin_refused"
        try:
            refused = json.loads(frame[UUID_LEN + 1:])
            why = str(refused.get("msg", "refused"))
            # The bot said no (relogin_refused), or could not be reached: say which.
            if isinstance(refused.get("code"), str) and refused["code"] not in ("bot_refused", ""):
                code = refused["code"]
        except (ValueError, AttributeError):
            why = "refused"
        self._fail_login(session, service_id, login, code, f"logging in again failed: {why}")
        _answer(session.deliver, "logoutResp", Result.UNAVAILABLE, f"logging in again failed: {why}",
                code, serviceId=service_id, appid=login.appid)
        self._forget_login(session, service_id)

    def service_status(self, service_id: int, status: int, msg: str, code: str = "") -> None:
        """Push servStatus to every session whose login on this service is confirmed."""
        code = code or ("ok" if status == 1 else "unavailable")
        for uuid in self._on_service.get(service_id, ()):
            session = self.sessions[uuid]
            login = session.logins[service_id]
            if not login.active:
                continue  # it hears of the service with its (restored) loginResp
            session.deliver(json_data({
                "method": "servStatus", "serviceId": service_id, "appid": login.appid,
                "status": status, "msg": msg, "code": code,
            }))

    def link_lost(self, service_id: int, code: str, msg: str) -> None:
        """
        The link to this service dropped: every request waiting for an answer
        there is answered now (it may or may not have reached the bot), and
        the page hears the service is down. A logout waiting there succeeds
        (the agent forgets its users with the link); a login never confirmed
        is over; a login being restored is tried again on the next link.
        """
        self.service_status(service_id, 0, msg, code)
        for uuid in list(self._on_service.get(service_id, ())):
            session = self.sessions[uuid]
            login = session.logins[service_id]
            if login.pending.get(b"logoutResp"):
                self._drop_pending(login)
                _answer(session.deliver, "logoutResp", Result.OK, "ok", serviceId=service_id, appid=login.appid)
                self._forget_login(session, service_id)
                continue
            if login.restoring:
                self._drop_pending(login)  # the page did not ask: it hears of it when it is restored
                continue
            self._fail_login(session, service_id, login, code,
                             f"service {service_id} went away before answering ({msg}); "
                             "the request may not have reached the bot")
            if not login.active:
                self._forget_login(session, service_id)

    def logins_to_restore(self, service_id: int) -> list[dict[str, Any]]:
        """
        The loginReq to send again on a new link to this service: the agent
        forgot its users when the old link went, the browsers did not. Each
        session hears servStatus 1 right after its restored loginResp.
        """
        messages = []
        for uuid in self._on_service.get(service_id, ()):
            session = self.sessions[uuid]
            login = session.logins[service_id]
            login.active = False
            login.restoring = True
            messages.append({
                "method": "loginReq", "serviceId": service_id, "appid": login.appid,
                "uname": login.uname, "uuid": uuid, "account": session.account,
                # Not taken from whoever logged in as this bot user meanwhile: refused then.
                "restore": True,
            })
            self._expect(session, login, service_id, "loginResp")
        return messages

    def service_removed(self, service_id: int) -> None:
        """The service left the registry: its logins end, and each page is told so."""
        for uuid in list(self._on_service.get(service_id, ())):
            session = self.sessions[uuid]
            login = session.logins[service_id]
            self._fail_login(session, service_id, login, "service_deleted",
                             f"service {service_id} was removed from the registry")
            _answer(session.deliver, "logoutResp", Result.NOT_FOUND,
                    f"service {service_id} was removed from the registry", "service_deleted",
                    serviceId=service_id, appid=login.appid)
            self._forget_login(session, service_id)

    def _forget_login(self, session: BrowserSession, service_id: int) -> None:
        login = session.logins.pop(service_id, None)
        if login is not None and self.history is not None and (login.active or login.restoring):
            self.history.record(service_id, login.appid, login.uname, session.account, "logout", {})
        if login is not None:
            held = self._account_logins.get(session.account, 0) - 1
            if held > 0:
                self._account_logins[session.account] = held
            else:
                self._account_logins.pop(session.account, None)
        uuids = self._on_service.get(service_id)
        if uuids is not None:
            uuids.discard(session.uuid)
            if not uuids:
                del self._on_service[service_id]
