"""
The agent's WebSocket server (SPEC §4): web server links, each carrying one
service.

A link is authenticated in its first frames, before anything else is read
(L{webtesting.linkauth}: a challenge–response, so the shared secret never
crosses the wire), and is then bound to the one service the web server
proved it for. Each authenticated link gets a L{WebLink}: the service's
settings (from ``agentInfoReq``), its user-state source (Redis Cluster +
MySQL), its users, one state poll for all of them, and the service's health:
checked on the agent's own timer (L{webtesting.agent.health.HealthMonitor})
and reported with ``agentStatusReq`` once per change.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from webtesting import framebatch, linkauth
from webtesting.agent.health import Finding, HealthMonitor
from webtesting.agent.loginbook import BookClient
from webtesting.agent.users import UserSession, UserState
from webtesting.agent.wxservice import LinkSettings
from webtesting.fastframes import FastFrames
from webtesting.givenstate import commands as given_commands
from webtesting.givenstate import describe as given_describe
from webtesting.handshake import BoundedHandshake
from webtesting.lifecycle import Health
from webtesting.metrics import FRAMES, HEALTH_CHANGES
from webtesting.protocol import (
    BROWSER_REQUESTS,
    ROUTE,
    SESSION_CLOSED,
    InvalidInput,
    Result,
    answer_message,
    check_browser_request,
    json_data,
    parse_json_object,
    request_echo,
    require_int,
    routed_frame,
    scrub_reason,
    validate_agent_info,
)
from webtesting.statelayout import StateLayout
from webtesting.wslink import DialGate

_WEB_IN, _WEB_OUT = ("agent", "web", "in"), ("agent", "web", "out")


class StateSource(Protocol):
    """
    The users' state of one service (its Redis Cluster and MySQL), polled and
    diffed per browser session (L{webtesting.agent.status.StatusPoller}).

    C{push} and C{current} give a L{webtesting.agent.status.StatusUpdate}:
    the browser fields (``tag``, ``curTopic``, ``curTopicList``, ``memory``)
    with the differences from what that session was sent last, or why the
    state cannot be read.
    """

    def watch(self, key: str, appid: str, uid: str, push: Callable[[Any], None], *, auto: bool = True) -> None: ...

    def unwatch(self, key: str) -> None: ...

    def set_auto(self, key: str, auto: bool) -> None: ...

    def current(self, key: str) -> Deferred[Any]: ...

    def pipeline(self, commands: Any) -> Deferred[list[Any]]:
        """Run Redis commands on the service's cluster: one entry per command, its reply or its error."""

    def check(self, wx_url: str) -> Deferred[Sequence[Finding]]:
        """One round of health checks: the WxService at C{wx_url}, every Redis master, MySQL."""

    def close(self) -> Deferred[None]: ...


# Makes the state source for a service's settings; it polls every
# poll_interval seconds and tells on_health(component, ok, why) of what it
# notices on its own (a read error, MySQL going or coming back): a sign to
# check the service now, not a verdict.
StateSourceFactory = Callable[
    [dict[str, Any], Any, StateLayout, Callable[[str, bool, str], None], float], StateSource
]


# The web server refuses agent frames over 1 MiB (and drops the link).
MAX_FRAME = 1024 * 1024 - 1024


@dataclass(frozen=True)
class AgentSettings:
    """What an agent's links need from the agent's configuration."""

    layout: StateLayout = field(default_factory=StateLayout)
    poll_interval: float = 1.0
    # users' WxService links: backoff between attempts, login deadline, ping/pong
    retry_initial: float = 0.5
    retry_max: float = 4.0
    login_timeout: float = 5.0
    ping_interval: float = 2.0  # the service's connection to the bot
    ping_timeout: float = 2.0
    link_ping_interval: float = 30.0  # each user's connection
    connects_in_flight: int = 64  # users' connections being opened at once, per service
    # the service's health checks (HealthMonitor)
    health_interval: float = 5.0
    health_interval_down: float = 1.0
    health_confirm: int = 2

    def link_settings(self) -> LinkSettings:
        from webtesting.lifecycle import Backoff

        return LinkSettings(
            backoff=Backoff(initial=self.retry_initial, maximum=self.retry_max),
            login_timeout=self.login_timeout,
            ping_interval=self.link_ping_interval,
            ping_timeout=self.ping_timeout,
        )


# Seconds a worker waits for worker 0's login book (workers: N).
BOOK_TIMEOUT = 10.0


@dataclass(frozen=True)
class Holder:
    """Who is logged in as one bot user at this agent."""

    link: WebLink
    uuid: str
    account: str
    since: int  # Unix seconds


Holders = dict[tuple[int, str, str], Holder]


class WebLink:
    """Everything one web server link carries: one service at this agent."""

    _log = Logger()

    def __init__(
        self,
        send: Callable[[bytes], None],
        reactor: Any,
        settings: AgentSettings,
        state_factory: StateSourceFactory,
        *,
        service_id: int | None = None,
        holders: Holders | None = None,
        book: BookClient | None = None,
    ) -> None:
        self._send = send
        # The one service the web server proved this link for (None: not bound, in unit tests).
        self.bound_id = service_id
        # Who holds each (service, appid, uname) at this agent, over all its links (every web node).
        self.holders: Holders = holders if holders is not None else {}
        # The same over every worker of this agent (workers: N), or None (one worker: the holders say it all).
        self.book = book
        # Restored logins waiting for the book's word: uuid -> given up meanwhile (session closed, logout).
        self._claiming: dict[str, bool] = {}
        self._ended = False
        self.reactor = reactor
        self._settings = settings
        self._state_factory = state_factory
        self.service: dict[str, Any] | None = None
        self.source: StateSource | None = None
        self.users: dict[str, UserSession] = {}
        # One gate per service (a link serves one): a bot that is slow to
        # accept holds back its own users' logins only.
        self._link_settings = dataclasses.replace(
            settings.link_settings(), gate=DialGate(settings.connects_in_flight))
        self.monitor: HealthMonitor | None = None

    @property
    def wx_url(self) -> str:
        assert self.service is not None
        return str(self.service["wxServiceAddr"])

    # -- sending ------------------------------------------------------------

    def _json(self, message: dict[str, Any]) -> None:
        self._send(json_data(message))

    def frame(self, uuid: str, mark: bytes, message: dict[str, Any], tail: bytes = b"") -> None:
        data = routed_frame(uuid, mark, message, tail)
        if len(data) > MAX_FRAME:
            # Larger frames would make the web server drop the whole link.
            self._log.warn("a {method} for {uuid} of {size} bytes was replaced by an error",
                           method=message.get("method"), uuid=uuid, size=len(data))
            data = routed_frame(uuid, mark, answer_message(
                message.get("method", "error"), Result.TOO_LARGE,
                f"the answer was larger than {MAX_FRAME} bytes and was dropped",
                serviceId=message.get("serviceId"), appid=message.get("appid"), code="too_large"))
        self._send(data)

    def scrub(self, text: str) -> str:
        """C{text} without this service's addresses and credentials (for browsers)."""
        return scrub_reason(text, self.service)

    # -- dispatch -------------------------------------------------------------

    def handle(self, payload: bytes) -> None:
        try:
            message = parse_json_object(payload)
        except InvalidInput as e:
            self._log.warn("unreadable frame from the web server: {why}", why=str(e))
            # A browser request that names its session still gets its answer.
            request = e.request or {}
            answer, uuid = BROWSER_REQUESTS.get(request.get("method")), request.get("uuid")  # type: ignore[arg-type]
            if answer is not None and _is_uuid(uuid):
                self.frame(uuid, ROUTE, answer_message(answer, Result.BAD_REQUEST, str(e), **request_echo(request),
                                                       code="bad_request"))
            return
        method = message["method"]
        if method == "agentInfoReq":
            self.configure(message)
            return
        if method == "listLoginsReq":
            self._list_logins(message)
            return
        uuid = message.get("uuid")
        if not _is_uuid(uuid):
            self._log.warn("{method} without a valid uuid; dropped", method=method)
            return
        if method == SESSION_CLOSED:
            user = self.users.get(uuid)
            if user is not None:
                user.close()
            elif uuid in self._claiming:
                self._claiming[uuid] = True  # its restore, still waiting for the book, is not started
            return
        if method == "logoutReq" and uuid in self._claiming:
            self._claiming[uuid] = True
        answer = BROWSER_REQUESTS.get(method)
        if answer is None:
            self.frame(uuid, ROUTE, answer_message("error", Result.NOT_FOUND, f"unknown method {method!r}",
                                                   code="unknown_method"))
            return
        # The web server checked these already; an agent trusts no one.
        try:
            check_browser_request(message)
            require_int(message.get("serviceId"), "serviceId", 1, 2**31 - 1)
        except InvalidInput as e:
            self.frame(uuid, ROUTE, answer_message(answer, Result.BAD_REQUEST, str(e), code="bad_request"))
            return
        if self.service is None or message["serviceId"] != self.service["serviceId"]:
            self.frame(uuid, ROUTE, answer_message(
                answer, Result.UNAVAILABLE, "this agent has not been given that service's settings",
                serviceId=message["serviceId"], appid=message["appid"], code="unavailable"))
            return
        getattr(self, "_" + method)(uuid, message)

    # -- agentInfoReq -----------------------------------------------------------

    def configure(self, message: dict[str, Any]) -> None:
        try:
            service = validate_agent_info(message)
        except InvalidInput as e:
            self._json(answer_message("agentInfoResp", Result.BAD_REQUEST, str(e),
                                      serviceId=message.get("serviceId"), code="bad_request"))
            return
        if self.bound_id is not None and service["serviceId"] != self.bound_id:
            self._log.warn("settings for service {other} on the link of service {service_id}; refused",
                           other=service["serviceId"], service_id=self.bound_id)
            self._json(answer_message("agentInfoResp", Result.FORBIDDEN,
                                      f"this link was authenticated for service {self.bound_id}",
                                      serviceId=service["serviceId"], code="forbidden"))
            return
        old, self.service = self.service, service
        self._log.info("service {service_id}: settings received", service_id=service["serviceId"])
        state_keys = ("redisCluster", "mysqlAddr", "mysqlPort", "mysqlUser", "mysqlPwd", "mysqlDbname")
        backends_changed = old is None or any(old[k] != service[k] for k in state_keys)
        if backends_changed:
            if self.source is not None:
                self.source.close()
            self.source = self._state_factory(
                service, self.reactor, self._settings.layout, self._sign, self._settings.poll_interval
            )
            for user in self.users.values():
                if user.state is UserState.ONLINE:
                    self.user_online(user)  # new backends: a new first state
        self._json(answer_message("agentInfoResp", Result.OK, "ok", serviceId=service["serviceId"]))
        if old is not None:
            allowed = set(service["allowedAppids"])
            for user in list(self.users.values()):
                if user.appid not in allowed:
                    user.close()
                    user.answer("logoutResp", Result.FORBIDDEN,
                                f"appid {user.appid} is no longer allowed on this service", b"-",
                                code="appid_revoked")
                elif old["wxServiceAddr"] != service["wxServiceAddr"]:
                    user.reconnect_now()
        self._watch_health(old is None or backends_changed or old["wxServiceAddr"] != service["wxServiceAddr"])

    # -- user requests ----------------------------------------------------------

    def _loginReq(self, uuid: str, message: dict[str, Any]) -> None:
        assert self.service is not None
        fields = {"serviceId": message["serviceId"], "appid": message["appid"]}
        if message["appid"] not in self.service["allowedAppids"]:
            self.frame(uuid, b"-", answer_message("loginResp", Result.FORBIDDEN,
                                                  f"appid {message['appid']} is not allowed on this service",
                                                  **fields, code="forbidden"))
            return
        if uuid in self.users or uuid in self._claiming:
            self.frame(uuid, ROUTE, answer_message("loginResp", Result.BAD_REQUEST, "already logged in; log out first",
                                                   **fields, code="bad_request"))
            return
        account = message["account"] if isinstance(message.get("account"), str) else ""
        key = (message["serviceId"], message["appid"], message["uname"])
        restore = message.get("restore") is True
        if restore and self._refuse_restore(uuid, key, fields):
            return
        if restore and self.book is not None:
            self._restore(uuid, key, message, account, fields)
            return
        holder = self.holders.get(key)
        if holder is not None:
            holder.link.taken_over(holder.uuid, account)
        self._start_login(uuid, key, message, account, int(time.time()), claim=self.book is not None)

    def _restore(self, uuid: str, key: tuple[int, str, str], message: dict[str, Any], account: str,
                 fields: dict[str, Any]) -> None:
        """A restored login with several workers: held on another? The book says, before anything starts."""
        assert self.book is not None
        book = self.book
        self._claiming[uuid] = False
        since = int(time.time())

        def decided(other: str | None) -> None:
            given_up = self._claiming.pop(uuid, True) or self._ended
            if other is not None:
                if not given_up:
                    self._elsewhere(uuid, other, fields)
                return
            # The book names this login now.
            if given_up:
                book.release(key, uuid)
            elif self._refuse_restore(uuid, key, fields):
                # A newer login here meanwhile: the book names it again, not the refused one.
                holder = self.holders[key]
                book.claim(key, holder.uuid, holder.account, holder.since, False)
            else:
                self._start_login(uuid, key, message, account, since, claim=False)

        def failed(failure: Any) -> None:
            self._log.warn("service {service_id}: worker 0 did not answer a restored login's claim: {why}",
                           service_id=key[0], why=failure.getErrorMessage())
            book.release(key, uuid)  # in case the claim got there after all
            if not (self._claiming.pop(uuid, True) or self._ended):
                self.frame(uuid, b"-", answer_message("loginResp", Result.UNAVAILABLE,
                                                      "the agent could not check who else is logged in; try again",
                                                      **fields, code="agent_unavailable"))

        book.claim(key, uuid, account, since, True).addTimeout(BOOK_TIMEOUT, self.reactor).addCallbacks(
            decided, failed)

    def _refuse_restore(self, uuid: str, key: tuple[int, str, str], fields: dict[str, Any]) -> bool:
        """A login coming back after its link dropped does not take over a newer one (here)."""
        holder = self.holders.get(key)
        if holder is None:
            return False
        self._elsewhere(uuid, holder.account, fields)
        return True

    def _elsewhere(self, uuid: str, account: str, fields: dict[str, Any]) -> None:
        self.frame(uuid, b"-", answer_message("loginResp", Result.CONFLICT,
                                              f"logged in elsewhere by {account or 'someone'}",
                                              **fields, code="logged_in_elsewhere"))

    def _start_login(self, uuid: str, key: tuple[int, str, str], message: dict[str, Any], account: str,
                     since: int, *, claim: bool) -> None:
        user = UserSession(
            self, uuid, message["serviceId"], message["appid"], message["uname"],
            link_settings=self._link_settings,
        )
        self.users[uuid] = user
        self.holders[key] = Holder(self, uuid, account, since)
        if claim and self.book is not None:
            # Told before the login starts (one that fails at once releases right after); it ends a
            # login of the same bot user on another worker.
            self.book.claim(key, uuid, account, since, False).addErrback(
                lambda f: self._log.failure("telling worker 0 of a login", f))
        user.start()

    def reconfigure(self, settings: AgentSettings) -> None:
        """A live reload: the poll interval now; the users' link settings for every login from now on."""
        self._settings = settings
        gate = self._link_settings.gate
        self._link_settings = dataclasses.replace(settings.link_settings(), gate=gate)
        if gate is not None:
            gate.set_limit(settings.connects_in_flight)
        poller = getattr(self.source, "poller", None)
        if poller is not None:
            poller.set_interval(settings.poll_interval)

    def taken_over(self, uuid: str, account: str) -> None:
        """Another login of the same bot user, anywhere: this one ends, and its page hears why."""
        user = self.users.get(uuid)
        if user is None:
            return
        self._log.info("service {service_id}: {uname} logged in elsewhere by {account}; ending the older login",
                       service_id=user.service_id, uname=user.uname, account=account or "someone")
        user.close()
        user.answer("logoutResp", Result.CONFLICT, f"logged in elsewhere by {account or 'someone'}", b"-",
                    code="logged_in_elsewhere")

    def _list_logins(self, message: dict[str, Any]) -> None:
        """Who holds which bot user of this link's service (admins see it: getLogins)."""
        req_id = message.get("reqId")
        service_id = self.service["serviceId"] if self.service is not None else self.bound_id

        def answer(logins: list[dict[str, Any]]) -> None:
            self._json({"method": "listLoginsResp", "reqId": req_id, "serviceId": service_id, "logins": logins})

        here = [
            {"serviceId": sid, "appid": appid, "uname": uname, "account": holder.account, "since": holder.since}
            for (sid, appid, uname), holder in sorted(self.holders.items())
            if sid == service_id
        ]
        if self.book is not None and isinstance(service_id, int):
            def only_here(failure: Any) -> None:
                self._log.warn("asking worker 0 who is logged in: {why}; answering for this worker only",
                               why=failure.getErrorMessage())
                answer(here)

            self.book.logins(service_id).addTimeout(BOOK_TIMEOUT, self.reactor).addCallbacks(answer, only_here)
            return
        answer(here)

    def _user(self, uuid: str, message: dict[str, Any], answer: str) -> UserSession | None:
        user = self.users.get(uuid)
        if user is None or user.appid != message["appid"]:
            self.frame(uuid, ROUTE, answer_message(answer, Result.UNAUTHORIZED, "not logged in",
                                                   serviceId=message["serviceId"], appid=message["appid"],
                                                   code="not_logged_in"))
            return None
        assert self.service is not None
        if user.appid not in self.service["allowedAppids"]:
            user.answer(answer, Result.FORBIDDEN, f"appid {user.appid} is not allowed on this service",
                        code="forbidden")
            return None
        return user

    def _logoutReq(self, uuid: str, message: dict[str, Any]) -> None:
        user = self._user(uuid, message, "logoutResp")
        if user is not None:
            user.logout()

    def _aichatReq(self, uuid: str, message: dict[str, Any]) -> None:
        user = self._user(uuid, message, "aichatResp")
        if user is not None:
            user.chat(message["content"])

    def _setStatusPushReq(self, uuid: str, message: dict[str, Any]) -> None:
        user = self._user(uuid, message, "setStatusPushResp")
        if user is not None:
            user.push = message["enabled"]
            if self.source is not None:
                self.source.set_auto(uuid, user.push)
            user.answer("setStatusPushResp", Result.OK, "ok", enabled=user.push)

    def _getUserStatusReq(self, uuid: str, message: dict[str, Any]) -> None:
        user = self._user(uuid, message, "getUserStatusResp")
        if user is None:
            return
        if user.state is not UserState.ONLINE or self.source is None:
            user.answer("getUserStatusResp", Result.UNAVAILABLE, "not logged in to the bot right now", uuid=uuid,
                        code="bot_unreachable")
            return
        self._send_current(user)

    def _setUserStateReq(self, uuid: str, message: dict[str, Any]) -> None:
        """
        Write a user's state into the bot's Redis (a test case's given), if
        the service's record allows it; every write is logged with its account.
        """
        user = self._user(uuid, message, "setUserStateResp")
        if user is None:
            return
        assert self.service is not None
        if not self.service.get("allowStateWrites"):
            user.answer("setUserStateResp", Result.FORBIDDEN,
                        "this service does not allow writing a user's state; an admin can turn on "
                        "allowStateWrites in its registry record", code="state_writes_off")
            return
        if user.uid is None or self.source is None:
            user.answer("setUserStateResp", Result.UNAVAILABLE, "not logged in to the bot right now",
                        code="bot_unreachable")
            return
        holder = self.holders.get((user.service_id, user.appid, user.uname))
        account = holder.account if holder is not None else ""
        given = message["given"]
        commands = given_commands(self._settings.layout, user.appid, user.uid, given, int(time.time() * 1000))
        d = self.source.pipeline(commands)

        def written(results: list[Any]) -> None:
            failed = [r for r in results if isinstance(r, Exception)]
            if failed:
                self._log.warn("service {service_id}: writing the state of {appid}/{uname} for {account} "
                               "failed: {why}", service_id=user.service_id, appid=user.appid, uname=user.uname,
                               account=account or "someone", why=str(failed[0]))
                user.answer("setUserStateResp", Result.UNAVAILABLE,
                            f"the bot's Redis did not take the state: {self.scrub(str(failed[0]))}",
                            code="redis_unreachable")
                return
            self._log.info("service {service_id}: {account} wrote the state of {appid}/{uname} (uid {uid}): "
                           "{what}", service_id=user.service_id, account=account or "someone", appid=user.appid,
                           uname=user.uname, uid=user.uid, what=given_describe(given))
            user.answer("setUserStateResp", Result.OK, "ok")

        def failed(failure: Any) -> None:
            user.answer("setUserStateResp", Result.UNAVAILABLE,
                        f"the bot's Redis is unreachable: {self.scrub(failure.getErrorMessage())}",
                        code="redis_unreachable")

        d.addCallbacks(written, failed)

    # -- UserHost -----------------------------------------------------------------

    def user_online(self, user: UserSession) -> None:
        """Logged in (again): watch the user's state and send its first state now."""
        if self.source is None or user.uid is None:
            return
        self.source.watch(user.uuid, user.appid, user.uid, lambda update: self._push(user, update),
                          auto=user.push)
        self._send_current(user)

    def user_ended(self, user: UserSession) -> None:
        key = (user.service_id, user.appid, user.uname)
        holder = self.holders.get(key)
        if holder is not None and holder.link is self and holder.uuid == user.uuid:
            del self.holders[key]
            if self.book is not None:
                self.book.release(key, user.uuid)
        if self.users.get(user.uuid) is user:
            del self.users[user.uuid]
            if self.source is not None:
                self.source.unwatch(user.uuid)

    def wxservice_trouble(self) -> None:
        if self.monitor is not None:
            self.monitor.suspect()

    # -- state ---------------------------------------------------------------------

    def _send_current(self, user: UserSession) -> None:
        assert self.source is not None
        d = self.source.current(user.uuid)
        d.addCallback(lambda update: self._push(user, update))
        d.addErrback(lambda f: self._log.failure("reading the state of user {uuid}", f, uuid=user.uuid))

    def _push(self, user: UserSession, update: Any) -> None:
        if user.state is UserState.CLOSED:
            return
        if update.fields is None:
            user.answer("getUserStatusResp", Result.UNAVAILABLE,
                        self.scrub(f"cannot read the user's state: {update.error}"), uuid=user.uuid,
                        code="unavailable")
        else:
            user.answer("getUserStatusResp", Result.OK, "ok", uuid=user.uuid, **update.fields)

    # -- health ----------------------------------------------------------------------

    def _watch_health(self, changed: bool) -> None:
        """Start checking the service; after a change of what is checked, judge afresh."""
        if self.monitor is None:
            s = self._settings
            self.monitor = HealthMonitor(
                f"service {self.service['serviceId'] if self.service else '?'}", self._check, self._report,
                self.reactor, interval=s.health_interval, interval_down=s.health_interval_down,
                confirm=s.health_confirm,
            )
            self.monitor.start()
        elif changed:
            self.monitor.reset()
        elif self.monitor.reported is not None:
            # The same settings again: the web server may have lost our word.
            self._report(self.monitor.reported)

    def _check(self) -> Deferred[Sequence[Finding]]:
        assert self.source is not None
        return self.source.check(self.wx_url)

    def _sign(self, name: str, ok: bool, why: str) -> None:
        """The state source noticed something on its own: check now."""
        if self.monitor is not None:
            self.monitor.suspect()
        if name == "wxservice" and not ok:
            # Users' connections are pinged seldom (users.link_ping_interval):
            # the service's connection pings often and speaks for them all.
            for user in list(self.users.values()):
                user.bot_may_be_frozen()

    def _report(self, health: Health) -> None:
        if self.service is None:
            return
        self._json({"method": "agentStatusReq", "serviceId": self.service["serviceId"],
                    "status": 1 if health.up else 0, "code": health.code, "msg": health.msg})
        HEALTH_CHANGES.labels("agent", str(self.service["serviceId"]), "1" if health.up else "0").inc()
        if health.up:
            # Users waiting out their backoff need not: the bot answers again.
            for user in list(self.users.values()):
                user.bot_is_back()

    # -- end -----------------------------------------------------------------------------

    def shutdown(self) -> Deferred[None]:
        """The web link is gone: back to the state right after start; fires once the backends are closed."""
        self._ended = True
        if self.monitor is not None:
            self.monitor.stop()
        for user in list(self.users.values()):
            user.close()
        self.users.clear()
        if self.source is not None:
            source, self.source = self.source, None
            return source.close()
        return succeed(None)


def _is_uuid(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and len(value) == 32 and value.isascii() and value.isalnum()


# Ignored (misc): Autobahn's own two bases of WebSocketServerProtocol
# disagree on the types of peer and _transport_details.
class AgentProtocol(FastFrames, BoundedHandshake, WebSocketServerProtocol):  # type: ignore[misc]
    """One web server link; the decisions are the L{WebLink}'s."""

    _log = Logger()
    factory: AgentFactory
    link: WebLink | None = None

    _auth: linkauth.AgentSide | None = None
    _auth_timer: Any = None
    _batched = False  # the web server sends and takes several messages per frame
    _batch: framebatch.Batcher | None = None

    def onConnect(self, request: ConnectionRequest) -> str | None:
        if request.path != self.factory.path:
            raise ConnectionDeny(404, "not found")
        if self.factory.batch_frames and framebatch.SUBPROTOCOL in request.protocols:
            self._batched = True
            return framebatch.SUBPROTOCOL
        return None

    def onOpen(self) -> None:
        # Nothing but authReq is read until the web server has proved it knows the secret.
        try:
            self.factory.open_links.add(self)
            self._auth = linkauth.AgentSide(self.factory.secret)
            self._auth_timer = self.factory.reactor.callLater(
                self.factory.auth_deadline, self._refuse, "no authReq in time")
            self._deliver(json.dumps(self._auth.challenge()).encode())
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            self._log.failure("opening a web server link")
            self.dropConnection(abort=True)

    # Connections are counted from TCP on (a link in its handshake counts): worker 0 hands
    # each new one to the worker holding the fewest (webtesting.agent.workers).

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.factory.links_changed(self.factory.connections)
        super().connectionMade()

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.connections -= 1
        self.factory.links_changed(self.factory.connections)
        super().connectionLost(reason)

    def _authenticate(self, payload: bytes) -> None:
        assert self._auth is not None
        try:
            try:
                message = json.loads(payload)
            except ValueError:
                raise linkauth.AuthFailed("the first frame was not JSON") from None
            service_id, answer = self._auth.answer(message)
        except linkauth.AuthFailed as e:
            self._refuse(str(e))
            return
        self._auth = None
        self._cancel_auth_timer()
        self._log.info("web server link from {peer} for service {service_id}", peer=self.peer, service_id=service_id)
        self._deliver(json.dumps(answer).encode())
        if self._batched:
            self._batch = framebatch.Batcher(self.factory.reactor, self._send_now)
        self.link = self.factory.new_link(self._deliver, service_id)

    def _refuse(self, why: str) -> None:
        """Close the link unauthenticated; the peer hears only that it failed."""
        self._cancel_auth_timer()
        self._auth = None
        self._log.warn("refused a link from {peer}: {why}", peer=self.peer, why=why)
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendClose(code=linkauth.CLOSE_CODE, reason=linkauth.CLOSE_REASON)
        else:
            self.dropConnection(abort=True)

    def _cancel_auth_timer(self) -> None:
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None

    def _deliver(self, data: bytes) -> None:
        FRAMES[_WEB_OUT] += 1
        if self._batch is not None:
            self._batch.add(data)
        elif self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(data, isBinary=False)

    def _send_now(self, data: bytes) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendMessage(data, isBinary=False)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        for message in framebatch.split(payload) if self._batched else (payload,):
            FRAMES[_WEB_IN] += 1
            if self._auth is not None:
                self._authenticate(message)
                continue
            if self.link is None:
                return
            try:
                self.link.handle(message)
            except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
                self._log.failure("handling a frame from the web server")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._cancel_auth_timer()
        self._auth = None
        if self._batch is not None:
            self._batch.drop()
            self._batch = None
        self.factory.open_links.discard(self)
        if self.link is None:
            return
        link, self.link = self.link, None
        self._log.info("web server link closed ({code})", code=code)
        try:
            link.shutdown()
        except Exception:  # noqa: BLE001 - logged with its traceback; the callers go on
            self._log.failure("clearing a closed web server link")


class AgentFactory(WebSocketServerFactory):
    protocol = AgentProtocol  # type: ignore[assignment]

    def __init__(
        self,
        *,
        secret: str,
        reactor: Any,
        state_factory: StateSourceFactory,
        settings: AgentSettings = AgentSettings(),
        path: str = "/WebTesting/Agent",
        max_message: int = 1024 * 1024,
    ) -> None:
        super().__init__(reactor=reactor)
        self.secret = secret
        self.auth_deadline = linkauth.DEADLINE
        self._reactor = reactor
        self._state_factory = state_factory
        self.settings = settings
        self.path = path
        self.open_links: set[AgentProtocol] = set()
        self.connections = 0  # TCP connections, open links and those in their handshake
        # Take the web server's offer of several messages per frame (webtesting.framebatch);
        # off, the agent speaks as agents before it did.
        self.batch_frames = True
        # One login per (service, appid, uname) over every link, as seed 001 does for devices;
        # with several workers, over all of them too (webtesting.agent.loginbook).
        self.holders: Holders = {}
        self.book: BookClient | None = None
        # Called when a link opens or closes (worker 0 hands new links to the worker holding the fewest).
        self.links_changed: Callable[[int], None] = lambda count: None
        self.setProtocolOptions(
            maxMessagePayloadSize=max_message,
            maxFramePayloadSize=max_message,
            # A frozen web server is found within 4 s.
            autoPingInterval=2,
            autoPingTimeout=2,
            openHandshakeTimeout=10,
        )

    def new_link(self, send: Callable[[bytes], None], service_id: int) -> WebLink:
        return WebLink(send, self._reactor, self.settings, self._state_factory, service_id=service_id,
                       holders=self.holders, book=self.book)

    def evict(self, key: tuple[int, str, str], uuid: str, account: str) -> None:
        """A newer login of this bot user on another worker: login C{uuid} here ends (worker 0's word)."""
        holder = self.holders.get(key)
        if holder is not None and holder.uuid == uuid:
            holder.link.taken_over(holder.uuid, account)
