"""
The WebTesting client SDK: what a browser does, for programs (the test
runner, load tools, scripts).

    client = Client("http://127.0.0.1:2019")
    await client.login("tess", password)
    conn = await client.connect()                       # the chat WebSocket
    bot = await conn.login(service_id=1, appid="1.00002", uname="alice")
    reply = await bot.chat("my name is Alice")          # the bot's answer
    later = await bot.next_reply(timeout=3)             # an unprompted one
    state = await bot.state()                           # tags, topics, memory
    await bot.logout()
    await conn.close()
    await client.logout()

Everything is awaitable on Twisted's reactor (``async def`` with
``Deferred``s, as trial and ``twisted.internet.task.react`` run them). Every
wait has a timeout (L{WaitTimeout}); every answer that is not a success
raises L{ServerError} with the server's ``result``, ``code`` and ``msg``
(docs/protocol.md). Pushes are kept in order: C{bot.replies} (every
``aichatResp``, answers and unprompted ones alike) and C{bot.pushes} (each
state push), and C{bot.status} follows ``servStatus``.

Answers are matched as the web server matches them: per service, the next
message of the answer's method answers the oldest request waiting for it;
an ``aichatResp`` with no chat waiting is the bot speaking unprompted.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from webtesting.fastframes import FastFrames

DEFAULT_TIMEOUT = 10.0


class ClientError(Exception):
    """Something the client could not do (connection refused, closed, malformed answer)."""


class WaitTimeout(ClientError):
    """No answer within the timeout."""


class ServerError(ClientError):
    """The server answered, but not with success: its C{result}, C{code} and C{msg}."""

    def __init__(self, method: str, answer: dict[str, Any]) -> None:
        self.method = method
        self.answer = answer
        self.result = answer.get("result")
        self.code = answer.get("code") or ""
        self.msg = answer.get("msg") or ""
        super().__init__(f"{method}: {self.result} {self.code}: {self.msg}")


@implementer(IBodyProducer)
class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._data)
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d

    def pauseProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _timeout(d: Deferred[Any], seconds: float, reactor: Any, what: str) -> Deferred[Any]:
    def translate(failure: Any) -> Any:
        if failure.check(DeferredTimeout):
            raise WaitTimeout(f"no {what} within {seconds} s")
        return failure

    d.addTimeout(seconds, reactor)
    d.addErrback(translate)
    return d


class Client:
    """One account's HTTP session with a WebTesting web server."""

    def __init__(self, url: str, *, reactor: Any = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.url = url.rstrip("/")
        if not self.url.endswith("/WebTesting"):
            self.url += "/WebTesting"
        parts = urlsplit(self.url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.reactor = reactor
        self.timeout = timeout
        self._agent = Agent(reactor)
        self.cookies: dict[str, str] = {}
        self.username = ""
        self.role = ""
        self.ws_addr = ""

    async def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """One API call (C{path} under /WebTesting, e.g. "Service/getServiceList"); its answer, or L{ServerError}."""
        headers = Headers({b"Accept": [b"application/json"], b"Origin": [self.origin.encode()]})
        if self.cookies:
            headers.setRawHeaders(b"Cookie", ["; ".join(f"{k}={v}" for k, v in self.cookies.items()).encode()])
        producer = None
        if body is not None:
            headers.setRawHeaders(b"Content-Type", [b"application/json"])
            producer = _Body(json.dumps(body).encode())
        try:
            response = await _timeout(
                self._agent.request(method.encode(), f"{self.url}/{path}".encode(), headers,
                                    producer),  # type: ignore[arg-type]  # _Body provides IBodyProducer
                self.timeout, self.reactor, f"answer to {method} {path}")
            raw = await _timeout(readBody(response), self.timeout, self.reactor, f"body of {path}")
        except WaitTimeout:
            raise
        except Exception as e:  # noqa: BLE001 - connection refused, reset, DNS: one error type for callers
            raise ClientError(f"{method} {path}: {e}") from e
        for value in response.headers.getRawHeaders(b"set-cookie") or []:
            name, _, rest = value.decode("latin-1").partition("=")
            self.cookies[name.strip()] = rest.split(";", 1)[0]
        try:
            answer = json.loads(raw)
        except ValueError:
            raise ClientError(f"{method} {path}: HTTP {response.code}, not JSON") from None
        if not isinstance(answer, dict) or answer.get("result") != 1:
            error = ServerError(f"{method} {path}", answer if isinstance(answer, dict) else {"result": response.code})
            if response.code == 429:
                error.retry_after = int((response.headers.getRawHeaders(b"retry-after") or [b"1"])[0])  # type: ignore[attr-defined]
            raise error
        return answer

    async def login(self, username: str, password: str) -> dict[str, Any]:
        """Log in; fires with {username, role}."""
        answer = await self.call("POST", "Account/login", {"username": username, "password": password})
        self.username, self.role = answer["username"], answer["role"]
        return answer

    def use_token(self, token: str) -> None:
        """Act with an API token (``webtesting-account token NAME``) instead of logging in."""
        self.cookies["wt_session"] = token.strip()

    async def whoami(self) -> dict[str, Any]:
        answer = await self.call("GET", "Account/me")
        self.username, self.role = answer["username"], answer["role"]
        return answer

    async def logout(self) -> None:
        await self.call("POST", "Account/logout", {})
        self.cookies.pop("wt_session", None)

    async def services(self) -> list[dict[str, Any]]:
        """The services a tester may use (getServiceList); also learns the WebSocket's address."""
        answer = await self.call("GET", "Service/getServiceList")
        self.ws_addr = answer["wsAddr"]
        return list(answer["serviceLists"])

    async def history(self, service_id: int, appid: str, uname: str, *, turns: int | None = None,
                      account: str | None = None) -> list[dict[str, Any]]:
        """
        A bot user's last turns, oldest first (History/get): events with
        C{kind} say, reply, state, login or logout. Yours; an admin's are
        everyone's, or one C{account}'s.
        """
        body: dict[str, Any] = {"serviceId": service_id, "appid": appid, "uname": uname}
        if turns is not None:
            body["turns"] = turns
        if account is not None:
            body["account"] = account
        answer = await self.call("POST", "History/get", body)
        return list(answer["events"])

    async def connect(self) -> Connection:
        """Open the chat WebSocket with this account's session."""
        if not self.ws_addr:
            await self.services()
        factory = _Factory(self.ws_addr, reactor=self.reactor, headers={
            "Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items()), "Origin": self.origin})
        factory.setProtocolOptions(openHandshakeTimeout=self.timeout, closeHandshakeTimeout=2)
        factory.client = self
        secure = self.ws_addr.startswith("wss://")
        context = None
        if secure:
            from twisted.internet.ssl import optionsForClientTLS

            context = optionsForClientTLS(urlsplit(self.ws_addr).hostname or "")
        connectWS(factory, context, timeout=self.timeout)
        return await _timeout(factory.opened, self.timeout, self.reactor, "WebSocket handshake")


@dataclass
class _Waiting:
    method: str
    d: Deferred[dict[str, Any]]


@dataclass
class BotUser:
    """One login on one service, through one L{Connection}."""

    connection: Connection
    service_id: int
    appid: str
    uname: str
    uid: str = ""
    replies: list[dict[str, Any]] = field(default_factory=list)  # every aichatResp, in order
    pushes: list[dict[str, Any]] = field(default_factory=list)  # every state push (getUserStatusResp unasked)
    status: int = 1  # servStatus: 1 up, 0 down
    ended: dict[str, Any] | None = None  # the unprompted logoutResp that ended it, if any
    _unread: deque[dict[str, Any]] = field(default_factory=deque)  # unprompted replies not read yet
    _push_read: int = 0  # pushes before this index were looked at by next_push
    _reply_waiters: list[Deferred[dict[str, Any]]] = field(default_factory=list)
    _push_waiters: list[tuple[Callable[[dict[str, Any]], bool], Deferred[dict[str, Any]]]] = field(
        default_factory=list)

    def _request(self, method: str, fields: dict[str, Any], timeout: float | None) -> Deferred[dict[str, Any]]:
        return self.connection._request(self.service_id, method, {"appid": self.appid, **fields}, timeout)

    async def chat(self, content: str, timeout: float | None = None) -> dict[str, Any]:
        """Say C{content}; fires with the bot's answer (its aichatResp)."""
        return await self._request("aichatReq", {"content": content}, timeout)

    async def next_reply(self, timeout: float | None = None) -> dict[str, Any]:
        """The next reply the bot sent without being asked (oldest unread first)."""
        if self._unread:
            return self._unread.popleft()
        d: Deferred[dict[str, Any]] = Deferred()
        self._reply_waiters.append(d)
        seconds = timeout if timeout is not None else self.connection.client.timeout
        return await _timeout(d, seconds, self.connection.client.reactor,
                              f"reply from the bot on service {self.service_id}")

    async def state(self, timeout: float | None = None) -> dict[str, Any]:
        """The user's state now (getUserStatusReq): tag, curTopic, curTopicList, memory."""
        return await self._request("getUserStatusReq", {}, timeout)

    async def next_push(self, match: Callable[[dict[str, Any]], bool] = lambda m: True,
                        timeout: float | None = None) -> dict[str, Any]:
        """
        The next state push that C{match}es, oldest first among those no
        earlier call returned (a push may arrive before the call that waits
        for it), else the next to come.
        """
        for i in range(self._push_read, len(self.pushes)):
            if match(self.pushes[i]):
                self._push_read = i + 1
                return self.pushes[i]
        self._push_read = len(self.pushes)
        d: Deferred[dict[str, Any]] = Deferred()
        self._push_waiters.append((match, d))
        seconds = timeout if timeout is not None else self.connection.client.timeout
        return await _timeout(d, seconds, self.connection.client.reactor, "state push")

    async def set_state(self, given: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """
        Write this user's state into the bot's store (setUserStateReq; see
        L{webtesting.givenstate}): only on a service whose record allows it,
        else L{ServerError} with code C{state_writes_off}. A bot that reads its
        state at login sees it after logging in again.
        """
        return await self._request("setUserStateReq", {"given": given}, timeout)

    async def set_push(self, enabled: bool, timeout: float | None = None) -> dict[str, Any]:
        return await self._request("setStatusPushReq", {"enabled": enabled}, timeout)

    async def logout(self, timeout: float | None = None) -> None:
        await self._request("logoutReq", {}, timeout)
        self.connection.logins.pop(self.service_id, None)

    # -- what the connection hands over ------------------------------------------

    def _reply(self, message: dict[str, Any]) -> None:
        self.replies.append(message)
        if self._reply_waiters:
            self._reply_waiters.pop(0).callback(message)
        else:
            self._unread.append(message)

    def _push(self, message: dict[str, Any]) -> None:
        self.pushes.append(message)
        for waiter in list(self._push_waiters):
            match, d = waiter
            if not d.called and match(message):
                self._push_waiters.remove(waiter)
                self._push_read = len(self.pushes)
                d.callback(message)


class Connection:
    """One chat WebSocket: several bot logins at once, one per service."""

    def __init__(self, client: Client, protocol: _Protocol) -> None:
        self.client = client
        self._protocol = protocol
        self.logins: dict[int, BotUser] = {}
        self._waiting: dict[tuple[int, str], deque[_Waiting]] = {}
        self.closed: Deferred[tuple[int | None, str | None]] = Deferred()

    async def login(self, service_id: int, appid: str, uname: str, timeout: float | None = None) -> BotUser:
        """Log in to a bot as C{uname}; fires with the L{BotUser}, or L{ServerError} (e.g. 403 appid not allowed)."""
        user = BotUser(self, service_id, appid, uname)
        self.logins[service_id] = user
        try:
            answer = await self._request(service_id, "loginReq", {"appid": appid, "uname": uname}, timeout)
        except Exception:
            self.logins.pop(service_id, None)
            raise
        user.uid = str(answer.get("strUid", ""))
        return user

    def _request(self, service_id: int, method: str, fields: dict[str, Any],
                 timeout: float | None) -> Deferred[dict[str, Any]]:
        if self.closed.called:
            raise ClientError("the WebSocket is closed")
        answer = method.replace("Req", "Resp")
        d: Deferred[dict[str, Any]] = Deferred()
        queue = self._waiting.setdefault((service_id, answer), deque())
        waiting = _Waiting(answer, d)
        queue.append(waiting)
        self._protocol.sendMessage(json.dumps({"method": method, "serviceId": service_id, **fields}).encode())

        def forget(result: Any) -> Any:
            if waiting in queue:
                queue.remove(waiting)
            return result

        d.addBoth(forget)
        seconds = timeout if timeout is not None else self.client.timeout
        return _timeout(d, seconds, self.client.reactor, f"{answer} on service {service_id}")

    def _received(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        service_id = message.get("serviceId")
        user = self.logins.get(service_id) if isinstance(service_id, int) else None
        queue = self._waiting.get((service_id, method)) if isinstance(method, str) else None  # type: ignore[arg-type]
        if queue:
            # The answer to the oldest request of this method on this service.
            waiting = queue.popleft()
            if method == "aichatResp" and user is not None:
                user.replies.append(message)
            if message.get("result") == 1:
                waiting.d.callback(message)
            else:
                waiting.d.errback(ServerError(waiting.method, message))
            return
        if user is None:
            return
        if method == "aichatResp":
            user._reply(message)  # the bot speaking unprompted
        elif method == "getUserStatusResp":
            user._push(message)
        elif method == "servStatus":
            user.status = int(message.get("status", 0))
        elif method == "logoutResp":
            # Unprompted: the servers ended this login (logged in elsewhere, appid revoked, ...).
            user.ended = message
            self.logins.pop(user.service_id, None)

    def _closed(self, code: int | None, reason: str | None) -> None:
        for queue in self._waiting.values():
            while queue:
                waiting = queue.popleft()
                if not waiting.d.called:
                    waiting.d.errback(ClientError(f"the WebSocket closed ({code} {reason}) before {waiting.method}"))
        if not self.closed.called:
            self.closed.callback((code, reason))

    async def close(self) -> None:
        if self.closed.called:
            return
        self._protocol.sendClose(1000)
        try:
            await _timeout(self.closed, 5, self.client.reactor, "close")
        except WaitTimeout:
            self._protocol.dropConnection(abort=True)


class _Protocol(FastFrames, WebSocketClientProtocol):  # type: ignore[misc]
    factory: _Factory
    connection: Connection | None = None

    def onOpen(self) -> None:
        self.connection = Connection(self.factory.client, self)
        self.factory.opened.callback(self.connection)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.connection is None or isBinary:
            return
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if isinstance(message, dict):
            self.connection._received(message)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(ClientError(f"the WebSocket was refused: {code} {reason}"))
        if self.connection is not None:
            self.connection._closed(code, reason)


class _Factory(WebSocketClientFactory):
    protocol = _Protocol  # type: ignore[assignment]
    client: Client

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened: Deferred[Connection] = Deferred()

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        if not self.opened.called:
            self.opened.errback(ClientError(f"cannot reach the WebSocket: {reason.getErrorMessage()}"))
