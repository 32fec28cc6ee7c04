"""
The web server's HTTP side: the registry API (SPEC §2) and the pages.

Every answer of the API is JSON with ``result`` and ``msg``; a failed request
answers with the same code as its HTTP status (see L{Result}) and a ``msg``
naming what was wrong. Bodies are size-limited while they arrive
(L{LimitedRequest}), so an oversized upload is never held in memory.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable
from functools import partial, wraps
from typing import Any

from klein import Klein
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from twisted.web.proxy import ProxyClient, ProxyClientFactory
from twisted.web.resource import NoResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.static import File
from werkzeug.exceptions import MethodNotAllowed, NotFound

from webtesting import loadtest
from webtesting.cases import Case, CaseError
from webtesting.dbpool import DatabaseUnavailable
from webtesting.metrics import CONTENT_TYPE_LATEST, HTTP_SECONDS, scrape
from webtesting.protocol import (
    MAX_UNAME,
    PASSWORD_MASK,
    InvalidInput,
    NotJSON,
    Result,
    parse_json,
    require_appid,
    require_int,
    require_list,
    require_object,
    require_str,
    tester_reason,
    validate_service_ids,
    validate_service_list,
)
from webtesting.web import openapi
from webtesting.web.accounts import (
    Accounts,
    DeviceSigner,
    Session,
    SessionStore,
    check_username,
    cookie_value,
    set_cookie_header,
)
from webtesting.web.audit import KINDS as AUDIT_KINDS
from webtesting.web.audit import Actor, AuditLog
from webtesting.web.healthhistory import HealthHistory
from webtesting.web.history import History
from webtesting.web.origins import Origins, origin_of
from webtesting.web.registry import Registry, UnknownServices
from webtesting.web.testruns import (
    MAX_YAML,
    CaseStore,
    NoSuchCase,
    TestRuns,
    TooManyRuns,
    check_case_text,
    describe_load,
    describe_run,
)
from webtesting.web.throttle import LoginThrottle, Throttled

PREFIX = "/WebTesting"
SERVICE = f"{PREFIX}/Service"
ACCOUNT = f"{PREFIX}/Account"
HISTORY = f"{PREFIX}/History"
CASES = f"{PREFIX}/Cases"
AUDIT = f"{PREFIX}/Audit"
HEALTH = f"{PREFIX}/Health"
# The timeline of every service is worked out at most this often (seconds); the admin pages share it.
TIMELINE_CACHE_SECONDS = 10.0
# The login throttle's device cookie (webtesting.web.throttle): a year.
DEVICE_COOKIE = "wt_device"
DEVICE_LIFETIME = 365 * 86400


class LimitedRequest(Request):
    """
    A request that stops keeping its body once it passes C{max_body} bytes.

    The handler then answers 413 (L{RegistryAPI._json_body}); the bytes that
    still arrive are read and dropped so that the answer can be sent.
    """

    def __init__(self, *args: Any, max_body: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._arrived = time.monotonic()
        # Twisted would parse a POSTed form (multipart or urlencoded) into
        # request.args before any route runs, and answer a malformed one
        # with a bare text 400 and a dropped connection. The API reads JSON
        # only, and answers every other body with its own JSON 415.
        self._parsePOSTFormSubmission = False
        self.max_body = max_body
        self.body_too_large = False
        self._body_seen = 0

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        if length is not None and length > self.max_body:
            self.body_too_large = True

    def finish(self) -> None:
        HTTP_SECONDS.labels(_route_label(self.path)).observe(time.monotonic() - self._arrived)
        super().finish()

    def handleContentChunk(self, data: bytes) -> None:
        self._body_seen += len(data)
        if self._body_seen > self.max_body:
            self.body_too_large = True
        if not self.body_too_large:
            super().handleContentChunk(data)


class HTTPListener(StreamServerEndpointService):
    """
    The HTTP port. Stopping it also closes the connections it accepted: a
    closed listening port leaves a browser's keep-alive connection talking
    to a server that has stopped.
    """

    # StreamServerEndpointService's documented switch: a port that cannot be had stops the daemon at
    # start (it used to log the error and run on without it; with workers, worker 0 then failed later).
    _raiseSynchronously = True

    def __init__(self, endpoint: Any, site: Site) -> None:
        self.connections = WrappingFactory(site)
        super().__init__(endpoint, self.connections)

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[None] = super().stopService()  # type: ignore[assignment]
        for connection in list(self.connections.protocols):
            connection.transport.loseConnection()
        return stopped


class WebSite(Site):
    """
    The HTTP site: its access log (combined format) goes to a file of its
    own, rotated by size, or nowhere; never into the application's log.
    """

    def __init__(self, resource: Resource, *, access_log: str = "", max_bytes: int = 10 * 1024 * 1024,
                 keep: int = 5, **kwargs: Any) -> None:
        super().__init__(resource, logPath=access_log or None, **kwargs)
        self.rotate_bytes = max_bytes
        self.keep = keep

    def _openLogFile(self, path: str | bytes) -> Any:
        full = os.fsdecode(path)
        os.makedirs(os.path.dirname(full) or ".", exist_ok=True)
        return LogFile.fromFullPath(full, rotateLength=self.rotate_bytes, maxRotatedFiles=self.keep)

    def log(self, request: Any) -> None:
        if self.logPath:  # else Twisted would write the line into the application's log
            super().log(request)


# Not passed on: they describe the hop, not the request (the body goes on whole, with its own length).
_HOP_HEADERS = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                          b"transfer-encoding", b"upgrade", b"content-length", b"expect"})
PROXY_TIMEOUT = 60.0


class _Worker0Client(ProxyClient):
    """Worker 0's answer, back to the client; no answer at all is the API's own 503."""

    _answered = False

    def handleStatus(self, version: bytes, code: bytes, message: bytes) -> None:
        self._answered = True
        super().handleStatus(version, code, message)

    def handleResponseEnd(self) -> None:
        if self._finished:
            return
        if _gone(self.father):
            self._finished = True
            return
        if not self._answered:
            self._finished = True
            _worker0_unavailable(self.father)
            return
        super().handleResponseEnd()


def _gone(request: Any) -> bool:
    return bool(request.finished or getattr(request, "_disconnected", False))


def _worker0_unavailable(request: Any) -> None:
    if _gone(request):
        return
    request.responseHeaders.removeHeader(b"content-type")
    body = _answer(request, 503, {"result": int(Result.UNAVAILABLE), "code": "worker_unavailable",
                                  "msg": "the server's first process is not answering; try again shortly"})
    request.write(body)
    request.finish()


class _Worker0ClientFactory(ProxyClientFactory):
    protocol = _Worker0Client

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        _worker0_unavailable(self.father)


class Worker0Proxy(Resource):
    """
    A request passed on to worker 0 (workers: N) through its door, a UNIX
    socket in a folder only this user can enter: about the Tests page's
    runs, which live there, or for the metrics, which it gathers. Worker 0
    checks the session and the origin itself, as for any request.
    """

    isLeaf = True

    def __init__(self, door: str, reactor: Any) -> None:
        super().__init__()
        self.door = door
        self.reactor = reactor

    def render(self, request: Any) -> Any:
        if getattr(request, "body_too_large", False):
            return _answer(request, 413, {"result": int(Result.TOO_LARGE),
                                          "msg": "the request body is too large"})
        request.content.seek(0, 0)
        body = request.content.read()
        headers = {name: value for name, value in request.getAllHeaders().items()
                   if name.lower() not in _HOP_HEADERS}
        if body or request.method in (b"POST", b"PUT", b"PATCH"):
            headers[b"content-length"] = str(len(body)).encode()
        factory = _Worker0ClientFactory(request.method, request.uri, b"HTTP/1.0", headers, body, request)
        connector = self.reactor.connectUNIX(self.door, factory, timeout=10)
        timer = self.reactor.callLater(PROXY_TIMEOUT, connector.disconnect)
        request.notifyFinish().addBoth(lambda _: timer.cancel() if timer.active() else None)
        return NOT_DONE_YET


def _in_worker0(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A route about the Tests page's runs: in another worker (workers: N) passed on to worker 0, which runs them."""

    @wraps(handler)
    async def route(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if self.worker0_door is not None:
            return Worker0Proxy(self.worker0_door, self._reactor)
        return await handler(self, request, *args, **kwargs)

    return route


def make_site(resource: Resource, max_body: int, **access_log: Any) -> Site:
    """The site; C{access_log}: WebSite's C{access_log} (a path), C{max_bytes} and C{keep}."""
    site = WebSite(resource, requestFactory=partial(LimitedRequest, max_body=max_body), **access_log)
    site.displayTracebacks = False
    return site


class Pages(File):
    """
    The static pages: no directory listings, no path through a symlink that
    leaves the webroot, and every odd name (NUL, slashes, dots) is 404.
    """

    def __init__(self, path: str, root: str | None = None, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.root = os.path.realpath(root or path)

    def createSimilarFile(self, path: str) -> Pages:
        similar = Pages(path, self.root, defaultType=self.defaultType, ignoredExts=self.ignoredExts,
                        registry=self.registry)
        similar.processors = self.processors
        similar.indexNames = self.indexNames[:]
        return similar

    def getChild(self, path: bytes, request: Any) -> Resource:
        if path in (b".", b"..") or any(c in path for c in (b"\0", b"/", b"\\")):
            return NoResource()
        try:
            child = super().getChild(path, request)
        except Exception:  # noqa: BLE001 - a name the file system or Twisted cannot take: not found
            return NoResource()
        if isinstance(child, File):
            real = os.path.realpath(child.path)
            if real != self.root and not real.startswith(self.root + os.sep):
                return NoResource()
        return child

    def directoryListing(self) -> Resource:
        return NoResource()

    def render(self, request: Any) -> Any:
        if self.isdir() and os.path.realpath(self.path) != self.root:
            return NoResource().render(request)
        return super().render(request)


class HTTPError(Exception):
    """An answer other than success: an HTTP status, a L{Result} and a reason."""

    def __init__(self, result: Result, msg: str) -> None:
        self.result = result
        self.msg = msg
        super().__init__(msg)


# Pages run no inline script and no script from elsewhere; the browser
# WebSocket is on its own port, hence ws:/wss: in connect-src.
PAGE_HEADERS = (
    (b"Content-Security-Policy",
     b"default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"X-Frame-Options", b"DENY"),
    (b"Referrer-Policy", b"same-origin"),
)


# The reason code of each error result (docs/protocol.md §4), for pages.
_CODES = {
    Result.BAD_REQUEST: "bad_request",
    Result.UNAUTHORIZED: "not_logged_in",
    Result.FORBIDDEN: "forbidden",
    Result.NOT_FOUND: "bad_request",
    Result.METHOD_NOT_ALLOWED: "bad_request",
    Result.TOO_LARGE: "too_large",
    Result.UNSUPPORTED_MEDIA_TYPE: "bad_request",
    Result.TOO_MANY_REQUESTS: "too_many_attempts",
    Result.INTERNAL: "internal",
    Result.UNAVAILABLE: "unavailable",
    Result.TIMEOUT: "timeout",
}


def _answer(request: Any, status: int, body: dict[str, Any]) -> bytes:
    if body.get("result", 1) != 1 and "code" not in body:
        body["code"] = _CODES.get(body["result"], "internal")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def ok(request: Any, **fields: Any) -> bytes:
    return _answer(request, 200, {**fields, "result": int(Result.OK), "msg": "ok"})


def public_service(service: dict[str, Any]) -> dict[str, Any]:
    """A service as getServices shows it: the stored password masked."""
    shown = dict(service)
    if shown.get("mysqlPwd"):
        shown["mysqlPwd"] = PASSWORD_MASK
    return shown


def tester_service(service: dict[str, Any], code: str) -> dict[str, Any]:
    """
    A service as getServiceList shows it: no addresses, no credentials —
    not even inside the reason it is down, which is only its code's sentence
    (admins see the details in getServices).
    """
    shown = {k: service[k] for k in ("serviceId", "allowedAppids", "description", "allowStateWrites", "status", "msg")}
    shown["msg"] = "ok" if service["status"] == 1 else tester_reason(code, str(shown["msg"]), service)
    shown["code"] = code
    return shown


def _check_json_media_type(header: bytes | None) -> None:
    """
    Refuse (415) a body not sent as C{application/json} in UTF-8: forms,
    multipart uploads, text, no type at all, or another charset.
    """
    media, *params = (header or b"").decode("latin-1").split(";")
    media = media.strip().lower()
    if media != "application/json":
        shown = media[:60] or "nothing"
        raise HTTPError(Result.UNSUPPORTED_MEDIA_TYPE,
                        f"the body must be sent as application/json, not {shown}")
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise HTTPError(Result.UNSUPPORTED_MEDIA_TYPE, "the body must be UTF-8")


_OPENAPI_DOCUMENT = openapi.document()
_OPENAPI = json.dumps(_OPENAPI_DOCUMENT, indent=1).encode("utf-8")
# The API's own paths label the request-time histogram; anything else is
# "pages" or "other", so that odd paths cannot grow the metric without end.
_API_ROUTES = {path.split("/{")[0] for path in _OPENAPI_DOCUMENT["paths"]}


def _str_arg(request: Any, name: str, limit: int = 64) -> str | None:
    """One query-string argument, or None when absent (InvalidInput when repeated or too long)."""
    values = (request.args or {}).get(name.encode(), [])
    if not values:
        return None
    if len(values) > 1:
        raise InvalidInput(name, "give it once")
    try:
        text = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(name, "must be UTF-8") from None
    if len(text) > limit:
        raise InvalidInput(name, f"must be at most {limit} characters")
    return text


def _int_arg(request: Any, name: str, maximum: int = 2**53) -> int | None:
    """A whole-number query-string argument from 1 to C{maximum}, or None when absent."""
    text = _str_arg(request, name, 16)
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= maximum:
        raise InvalidInput(name, f"must be a whole number from 1 to {maximum}")
    return int(text)


def _route_label(path: bytes) -> str:
    text = path.decode("latin-1")
    for route in (text, text.rsplit("/", 1)[0], text.rsplit("/", 2)[0]):
        if route in _API_ROUTES:
            return route.removeprefix(f"{PREFIX}/")
    if text == "/metrics":
        return "metrics"
    return "pages" if text.startswith(f"{PREFIX}/") or text == "/" else "other"

# path -> its methods, from the OpenAPI document (which a test keeps true to the routes).
_API_METHODS = {path: sorted(m.upper() for m in ops) for path, ops in _OPENAPI_DOCUMENT["paths"].items()
                if "{" not in path}


def _refuse(prefix: str, rest: str) -> bytes:
    """
    A request that reached no route under C{prefix}: a JSON 405 naming the
    methods of a known path, else a JSON 404. (Without these, the pages route
    would answer with an HTML 404.)
    """
    methods = _API_METHODS.get(f"{prefix}/{rest}")
    if methods is None:
        raise NotFound()
    raise MethodNotAllowed(valid_methods=methods)


class RegistryAPI:
    """
    The HTTP routes of SPEC §2 and the static pages under C{/WebTesting/}.

    @param ws_addr: gives the browser WebSocket address for a request
        (``wsAddr`` in getServiceList).
    """

    app = Klein()
    # werkzeug answers "//" and a missing trailing slash with a redirect it raises
    # from routing, before any handler, which Klein turns into a 500: match as sent.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    _log = Logger()

    def __init__(
        self,
        registry: Registry,
        webroot: str,
        ws_addr: Callable[[Any], str],
        sessions: SessionStore,
        on_change: Callable[[], object] = lambda: None,
        *,
        sessions_ended: Callable[[], object] = lambda: None,
        codes: Callable[[dict[str, Any]], str] = lambda service: "ok" if service["status"] == 1 else "unavailable",
        logins: Callable[[], Awaitable[tuple[list[dict[str, Any]], list[int]]]] | None = None,
        reactor: Any = None,
        throttle: LoginThrottle | None = None,
        device: DeviceSigner | None = None,
        origins: Origins | None = None,
        public_url: str | None = None,
        history: History | None = None,
        runs: TestRuns | None = None,
        worker0_door: str | None = None,
        serve_metrics: bool = True,
        health: HealthHistory | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.registry = registry
        self.accounts = Accounts(registry.db, registry.dialect_name)
        self.sessions = sessions
        # Called after sessions were ended here, so that this process closes
        # their WebSockets at once (others notice on their own timer).
        self.sessions_ended = sessions_ended
        self.throttle = throttle or LoginThrottle()
        # Pages from these origins only may change things (scheme, host and port, exactly).
        self.origins = origins or Origins("http://127.0.0.1")
        # Where people open the pages: a page asked for by another host name is sent there.
        self.public_url = public_url.rstrip("/") if public_url else None
        # Signs the throttle's device cookies (the configured session secret; a random one in tests).
        self.device = device or DeviceSigner(os.urandom(32).hex())
        # scrypt at n=2**17 takes 128 MiB and a core for half a second: two at a time.
        self._checking = DeferredSemaphore(2)
        self._reactor = reactor
        self.webroot = webroot
        self.ws_addr = ws_addr
        # Called after every successful change, so that this process's agent
        # links follow at once rather than at the next registry sync.
        self.on_change = on_change
        # The stable reason code of a service's status (its live link's).
        self.codes = codes
        # Who holds which bot user, asked of every agent (AgentLinks.list_logins).
        self.logins = logins
        # The conversations (webtesting.web.history); None: not kept.
        self.history = history
        # Saved test cases, and runs of them started from the Tests page.
        self.cases = CaseStore(registry.db, registry.dialect_name)
        self.audit = AuditLog(registry.db, registry.dialect_name)
        # Each service's health over time (webtesting.web.healthhistory).
        self.health = health or HealthHistory(registry.db, registry.dialect_name)
        self._timeline_cache: tuple[float, tuple[Any, ...], dict[str, Any]] | None = None
        self.runs = runs
        # Worker 0's door (a UNIX socket) when this is another worker (workers: N): requests about
        # the runs, which live there, and for the metrics, which it gathers, go there.
        self.worker0_door = worker0_door
        # Worker 0's scrape of every worker (webtesting.workers.gather_metrics); None: this process's.
        self.gather_metrics: Callable[[], Deferred[bytes]] | None = None
        self.serve_metrics = serve_metrics

    # -- who is asking ----------------------------------------------------------

    async def _session(self, request: Any, role: str | None = None) -> Session:
        """The caller's live login session; 401 without one, 403 without C{role}."""
        session = await self.sessions.check(cookie_value(request.getHeader(b"cookie")))
        if session is None:
            raise HTTPError(Result.UNAUTHORIZED, "log in first")
        if role == "admin" and not session.is_admin:
            raise HTTPError(Result.FORBIDDEN, "only an admin may do this")
        return session

    @staticmethod
    def _actor(request: Any, session: Session) -> Actor:
        """Who the audit trail names for this request's change."""
        return Actor(session.username, request.getClientAddress().host)

    def _same_origin(self, request: Any) -> None:
        """Refuse a state-changing request sent by a page of another origin (browsers send Origin on
        POST/PUT/DELETE)."""
        if not self.origins.permit(request.getHeader(b"origin")):
            self._log.warn("refused a {method} from origin {origin}", method=request.method,
                           origin=request.getHeader(b"origin"))
            raise HTTPError(Result.FORBIDDEN, "cross-origin request refused")

    # -- request bodies -----------------------------------------------------

    def _json_body(self, request: Any) -> Any:
        self._same_origin(request)
        if getattr(request, "body_too_large", False):
            limit = getattr(request, "max_body", 0)
            raise HTTPError(Result.TOO_LARGE, f"the body is larger than {limit} bytes")
        _check_json_media_type(request.getHeader(b"content-type"))
        raw = request.content.read() if request.content is not None else b""
        try:
            return parse_json(raw)
        except NotJSON as e:
            raise HTTPError(Result.BAD_REQUEST, f"the body is {e.problem}") from None

    # -- the registry API ---------------------------------------------------

    @app.route(f"{SERVICE}/addServices", methods=["PUT"])
    async def add_services(self, request: Any) -> bytes:
        admin = await self._session(request, "admin")
        services = validate_service_list(self._json_body(request), with_id=False)
        count = await self.registry.add_services(services, self._actor(request, admin))
        self._log.info("added {count} services", count=count)
        self.on_change()
        return ok(request, affectedRows=count)

    @app.route(f"{SERVICE}/delServices", methods=["DELETE"])
    async def del_services(self, request: Any) -> bytes:
        admin = await self._session(request, "admin")
        ids = validate_service_ids(self._json_body(request))
        count = await self.registry.delete_services(ids, self._actor(request, admin))
        self._log.info("deleted services {ids}", ids=ids)
        self.on_change()
        return ok(request, affectedRows=count)

    @app.route(f"{SERVICE}/updateServices", methods=["POST"])
    async def update_services(self, request: Any) -> bytes:
        admin = await self._session(request, "admin")
        services = validate_service_list(self._json_body(request), with_id=True)
        count = await self.registry.update_services(services, self._actor(request, admin))
        self._log.info("updated services {ids}", ids=[s["serviceId"] for s in services])
        self.on_change()
        return ok(request, affectedRows=count)

    @app.route(f"{SERVICE}/getServices", methods=["GET"])
    async def get_services(self, request: Any) -> bytes:
        await self._session(request, "admin")
        services = [{**public_service(s), "code": self.codes(s)} for s in await self.registry.list_services()]
        return ok(request, servicdLists=services)

    @app.route(f"{SERVICE}/getServiceList", methods=["GET"])
    async def get_service_list(self, request: Any) -> bytes:
        await self._session(request)
        services = [tester_service(s, self.codes(s)) for s in await self.registry.list_services()]
        return ok(request, wsAddr=self.ws_addr(request), serviceLists=services)

    @app.route(f"{SERVICE}/getLogins", methods=["GET"])
    async def get_logins(self, request: Any) -> bytes:
        """Who is logged in as which bot user, on every service, as its agent says."""
        await self._session(request, "admin")
        logins, unknown = await self.logins() if self.logins is not None else ([], [])
        return ok(request, logins=logins, unknown=unknown)

    # -- accounts -------------------------------------------------------------

    @app.route(f"{ACCOUNT}/login", methods=["POST"])
    async def login(self, request: Any) -> bytes:
        body = require_object(self._json_body(request), "")
        username = check_username(body.get("username"))
        password = require_str(body.get("password"), "password", 1024)
        address = request.getClientAddress().host
        device = self._device(request, username)
        try:
            # Counted before the password is checked, one check at a time per username and address.
            attempt = self.throttle.begin(username, address, device)
        except Throttled as e:
            request.setHeader(b"Retry-After", str(e.retry_after).encode())
            self._log.info("login for {username} from {address} throttled", username=username, address=address)
            raise HTTPError(Result.TOO_MANY_REQUESTS, str(e)) from None
        role = None
        try:
            async with self._checking:  # scrypt is costly: a few checks at a time
                role = await self.accounts.authenticate(username, password)
        finally:
            attempt.done(role is not None)
        if role is None:
            self._log.info("failed login for {username} from {address}", username=username, address=address)
            raise HTTPError(Result.UNAUTHORIZED, "wrong username or password")
        if device is None:
            signed = self.device.sign(f"{username.lower()}\n{os.urandom(8).hex()}")
            request.responseHeaders.addRawHeader(b"Set-Cookie", (
                f"{DEVICE_COOKIE}={signed}; Path={ACCOUNT}; Max-Age={DEVICE_LIFETIME}; HttpOnly; SameSite=Strict"
                + ("; Secure" if request.isSecure() else "")).encode())
        user_agent = (request.getHeader(b"user-agent") or b"").decode("utf-8", "replace")
        token = await self.sessions.create(username, request.getClientAddress().host, user_agent)
        request.responseHeaders.addRawHeader(b"Set-Cookie", set_cookie_header(
            token, int(self.sessions.lifetime), bool(request.isSecure())).encode())
        self._log.info("{username} logged in ({role})", username=username, role=role)
        return ok(request, username=username, role=role)

    def _device(self, request: Any, username: str) -> str | None:
        """The id of this browser's device cookie for C{username}, if it shows a valid one."""
        value = self.device.check(cookie_value(request.getHeader(b"cookie"), DEVICE_COOKIE))
        if value is None:
            return None
        owner, _, device_id = value.partition("\n")
        return device_id if owner == username.lower() and device_id else None

    @app.route(f"{ACCOUNT}/logout", methods=["POST"])
    async def logout(self, request: Any) -> bytes:
        self._same_origin(request)
        request.setHeader(b"Set-Cookie", set_cookie_header("", 0, bool(request.isSecure())).encode())
        if await self.sessions.end(cookie_value(request.getHeader(b"cookie")), request.getClientAddress().host):
            self.sessions_ended()
        return ok(request)

    @app.route(f"{ACCOUNT}/logoutAll", methods=["POST"])
    async def logout_all(self, request: Any) -> bytes:
        """Log out everywhere: every session of the caller, in every browser, ends now."""
        self._same_origin(request)
        session = await self._session(request)
        ended = await self.sessions.end_user(session.username, self._actor(request, session), "logoutAll")
        request.setHeader(b"Set-Cookie", set_cookie_header("", 0, bool(request.isSecure())).encode())
        self._log.info("{username} logged out everywhere ({ended} sessions)", username=session.username, ended=ended)
        self.sessions_ended()
        return ok(request, ended=ended)

    @app.route(f"{ACCOUNT}/sessions", methods=["GET"])
    async def list_sessions(self, request: Any) -> bytes:
        await self._session(request, "admin")
        return ok(request, sessions=await self.sessions.list())

    @app.route(f"{ACCOUNT}/endSessions", methods=["POST"])
    async def end_sessions(self, request: Any) -> bytes:
        """An admin ends one session (``id`` from the list) or all of one account (``username``)."""
        admin = await self._session(request, "admin")
        body = require_object(self._json_body(request), "")
        if ("id" in body) == ("username" in body):
            raise InvalidInput("", "give either id (one session) or username (all of that account's)")
        if "id" in body:
            public_id = require_str(body["id"], "id", 64)
            ended = await self.sessions.end_public(public_id, self._actor(request, admin))
            what = f"session {public_id}"
        else:
            username = check_username(body["username"])
            ended = await self.sessions.end_user(username, self._actor(request, admin))
            what = f"every session of {username}"
        self._log.info("{admin} ended {what} ({ended})", admin=admin.username, what=what, ended=ended)
        self.sessions_ended()
        return ok(request, ended=ended)

    @app.route(f"{ACCOUNT}/me", methods=["GET"])
    async def me(self, request: Any) -> bytes:
        session = await self._session(request)
        return ok(request, username=session.username, role=session.role)

    # -- the audit trail (read only) --------------------------------------------

    @app.route(f"{AUDIT}/list", methods=["GET"])
    async def list_audit(self, request: Any) -> bytes:
        """The registry's changes, newest first: all, one service's (serviceId) or one kind's; paged by before."""
        await self._session(request, "admin")
        service_id = _int_arg(request, "serviceId")
        before = _int_arg(request, "before")
        limit = _int_arg(request, "limit", 1000) or 100
        kind = _str_arg(request, "kind")
        if kind is not None and kind not in AUDIT_KINDS:
            raise InvalidInput("kind", f"must be one of {', '.join(AUDIT_KINDS)}")
        entries = await self.audit.list(service_id=service_id, kind=kind, before_id=before, limit=limit)
        return ok(request, entries=entries)

    # -- health history (read only) ---------------------------------------------

    @app.route(f"{HEALTH}/timeline", methods=["GET"])
    async def health_timeline(self, request: Any) -> bytes:
        """Every service's last hours (24) in buckets (48): up, down, partial or none, reasons, p50 latency."""
        await self._session(request, "admin")
        hours = _int_arg(request, "hours", 24 * 31) or 24
        count = _int_arg(request, "buckets", 500) or 48
        ids = tuple(s["serviceId"] for s in await self.registry.list_services())
        key = (hours, count, ids)
        now = self._reactor.seconds()
        cached = self._timeline_cache
        if cached is not None and cached[1] == key and now - cached[0] < TIMELINE_CACHE_SECONDS:
            timeline = cached[2]
        else:
            timeline = await self.health.timeline(ids, hours, count)
            self._timeline_cache = (now, key, timeline)
        return ok(request, **timeline)

    @app.route(f"{HEALTH}/history", methods=["GET"])
    async def health_history(self, request: Any) -> bytes:
        """One service's outages (start, end, duration, reason), newest first, over the days kept."""
        await self._session(request, "admin")
        service_id = _int_arg(request, "serviceId")
        if service_id is None:
            raise InvalidInput("serviceId", "is required")
        days = _int_arg(request, "days", 3650)
        await self._require_services(("serviceId", service_id))
        return ok(request, **await self.health.history(service_id, days))

    # -- history ----------------------------------------------------------------

    def _history(self) -> History:
        if self.history is None:
            raise HTTPError(Result.NOT_FOUND, "this server keeps no history")
        return self.history

    @app.route(f"{HISTORY}/get", methods=["POST"])
    async def get_history(self, request: Any) -> bytes:
        """
        One bot user's last turns, oldest first: a tester's own, or (an admin)
        everyone's or one ``account``'s.
        """
        session = await self._session(request)
        history = self._history()
        body = require_object(self._json_body(request), "")
        service_id = require_int(body.get("serviceId"), "serviceId", 1, 2**31 - 1)
        appid = require_appid(body.get("appid"), "appid")
        uname = require_str(body.get("uname"), "uname", MAX_UNAME)
        turns = require_int(body["turns"], "turns", 1, history.turns) if "turns" in body else None
        before = require_int(body["before"], "before", 1, 2**63 - 1) if "before" in body else None
        if "account" in body:
            account: str | None = check_username(body["account"], "account")
            if account != session.username and not session.is_admin:
                raise HTTPError(Result.FORBIDDEN, "only an admin may read another account's history")
        else:
            account = None if session.is_admin else session.username
        events = await history.read(service_id, appid, uname, account=account, turns=turns, before=before)
        return ok(request, serviceId=service_id, appid=appid, uname=uname, events=events)

    @app.route(f"{HISTORY}/list", methods=["GET"])
    async def list_history(self, request: Any) -> bytes:
        """The bot users the caller has history with (an admin: everyone's), the latest first."""
        session = await self._session(request)
        users = await self._history().bot_users(None if session.is_admin else session.username)
        return ok(request, botUsers=users)

    # -- saved test cases and runs -------------------------------------------------

    def _case_id(self, body: dict[str, Any], name: str = "id") -> int:
        return require_int(body.get(name), name, 1, 2**31 - 1)

    @app.route(f"{CASES}/list", methods=["GET"])
    async def list_cases(self, request: Any) -> bytes:
        """The caller's cases and those shared with the team."""
        session = await self._session(request)
        return ok(request, cases=await self.cases.list(session.username))

    @app.route(f"{CASES}/get", methods=["POST"])
    async def get_case(self, request: Any) -> bytes:
        session = await self._session(request)
        body = require_object(self._json_body(request), "")
        case = await self.cases.get(self._case_id(body), session.username, session.is_admin)
        return ok(request, case=case)

    @app.route(f"{CASES}/save", methods=["POST"])
    async def save_case(self, request: Any) -> bytes:
        """Save a case (YAML, checked as webtesting-test reads it): a new one, or one of the caller's by id."""
        session = await self._session(request)
        body = require_object(self._json_body(request), "")
        text = require_str(body.get("yaml"), "yaml", MAX_YAML)
        try:
            case = check_case_text(text)
        except CaseError as e:
            raise InvalidInput("yaml", str(e)) from None
        shared = body.get("shared", False)
        if not isinstance(shared, bool):
            raise InvalidInput("shared", "must be true or false")
        case_id = self._case_id(body) if "id" in body else None
        try:
            saved = await self.cases.save(session.username, case.name[:256], text, shared, case_id, session.is_admin)
        except ValueError as e:
            raise HTTPError(Result.TOO_MANY_REQUESTS, str(e)) from None
        self._log.info("{account} saved test case {case_id} ({name})", account=session.username, case_id=saved,
                       name=case.name)
        return ok(request, id=saved, name=case.name)

    @app.route(f"{CASES}/delete", methods=["POST"])
    async def delete_case(self, request: Any) -> bytes:
        session = await self._session(request)
        body = require_object(self._json_body(request), "")
        await self.cases.delete(self._case_id(body), session.username, session.is_admin)
        return ok(request)

    @app.route(f"{CASES}/download/<int:case_id>", methods=["GET"])
    async def download_case(self, request: Any, case_id: int) -> bytes:
        """A case as a YAML file, for webtesting-test."""
        session = await self._session(request)
        case = await self.cases.get(case_id, session.username, session.is_admin)
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in case["name"]).strip("-")[:64] or "case"
        request.setHeader(b"Content-Type", b"application/yaml; charset=utf-8")
        request.setHeader(b"Content-Disposition", f'attachment; filename="{safe}.yaml"'.encode())
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        return str(case["yaml"]).encode("utf-8")

    async def _require_services(self, *named: tuple[str, int | None]) -> None:
        """400 naming the field whose service id (if given) is not registered."""
        known = {s["serviceId"] for s in await self.registry.list_services()}
        for name, sid in named:
            if sid is not None and sid not in known:
                raise InvalidInput(name, f"no such service: {sid}")

    async def _saved_case(self, session: Any, case_id: int, field: str) -> Case:
        """A saved case this session may see, checked (400 naming C{field} if it no longer loads)."""
        saved = await self.cases.get(case_id, session.username, session.is_admin)
        try:
            return check_case_text(saved["yaml"])
        except CaseError as e:
            raise InvalidInput(f"{field}: case {case_id}", str(e)) from None

    @app.route(f"{CASES}/run", methods=["POST"])
    @_in_worker0
    async def run_cases(self, request: Any) -> Any:
        """Run saved cases on a service (and, with C{against}, on a second one at once, to compare)."""
        session = await self._session(request)
        if self.runs is None:
            raise HTTPError(Result.NOT_FOUND, "this server does not run cases")
        body = require_object(self._json_body(request), "")
        ids = [require_int(i, f"caseIds[{n}]", 1, 2**31 - 1)
               for n, i in enumerate(require_list(body.get("caseIds"), "caseIds", self.runs.MAX_CASES))]
        service_id = require_int(body.get("serviceId"), "serviceId", 1, 2**31 - 1)
        against = require_int(body["against"], "against", 1, 2**31 - 1) if body.get("against") is not None else None
        if against == service_id:
            raise InvalidInput("against", "must be another service than serviceId")
        await self._require_services(("serviceId", service_id), ("against", against))
        cases = [(case_id, await self._saved_case(session, case_id, "caseIds")) for case_id in ids]
        token = cookie_value(request.getHeader(b"cookie")) or ""
        try:
            run = self.runs.start(session.username, token, cases, service_id, against)
        except TooManyRuns as e:
            raise HTTPError(Result.TOO_MANY_REQUESTS, str(e)) from None
        self._log.info("{account} runs cases {ids} on service {service_id}{against}", account=session.username,
                       ids=ids, service_id=service_id, against=f" against {against}" if against else "")
        return ok(request, runId=run.id)

    @app.route(f"{CASES}/run/<run_id>", methods=["GET"])
    @_in_worker0
    async def run_status(self, request: Any, run_id: str) -> Any:
        session = await self._session(request)
        run = self.runs.runs.get(run_id) if self.runs is not None else None
        if run is None or not (run.account == session.username or session.is_admin):
            raise HTTPError(Result.NOT_FOUND, f"no such run: {run_id[:40]}")
        return ok(request, run=describe_run(run))

    @app.route(f"{CASES}/load", methods=["POST"])
    @_in_worker0
    async def start_load(self, request: Any) -> Any:
        """Simulated testers following one saved case on a registered service (the Tests page's Load tab)."""
        session = await self._session(request)
        if self.runs is None:
            raise HTTPError(Result.NOT_FOUND, "this server does not run cases")
        body = require_object(self._json_body(request), "")
        case_id = require_int(body.get("caseId"), "caseId", 1, 2**31 - 1)
        service_id = require_int(body.get("serviceId"), "serviceId", 1, 2**31 - 1)
        users = require_int(body.get("users"), "users", 1, self.runs.MAX_LOAD_USERS)
        ramp = require_int(body.get("ramp", 0), "ramp", 0, int(self.runs.MAX_LOAD_SECONDS))
        duration = require_int(body.get("duration"), "duration", 1, int(self.runs.MAX_LOAD_SECONDS))
        max_p99 = body.get("maxP99Ms")
        max_errors = body.get("maxErrorsPercent")
        settings = loadtest.LoadSettings(
            service=service_id, users=users, ramp=ramp, duration=duration,
            max_p99=require_int(max_p99, "maxP99Ms", 1, 3_600_000) / 1000 if max_p99 is not None else None,
            max_errors=require_int(max_errors, "maxErrorsPercent", 0, 100) / 100 if max_errors is not None else None)
        await self._require_services(("serviceId", service_id))
        case = await self._saved_case(session, case_id, "caseId")
        token = cookie_value(request.getHeader(b"cookie")) or ""
        try:
            entry = self.runs.start_load(session.username, token, case_id, case, settings)
        except loadtest.LoadError as e:
            raise HTTPError(Result.BAD_REQUEST, str(e)) from None
        except TooManyRuns as e:
            raise HTTPError(Result.TOO_MANY_REQUESTS, str(e)) from None
        self._log.info("{account} loads service {service_id} with case {case_id}: {users} users, {duration} s",
                       account=session.username, service_id=service_id, case_id=case_id, users=users,
                       duration=duration)
        return ok(request, loadId=entry.id)

    def _load_entry(self, session: Any, load_id: str) -> Any:
        entry = self.runs.loads.get(load_id) if self.runs is not None else None
        if entry is None or not (entry.account == session.username or session.is_admin):
            raise HTTPError(Result.NOT_FOUND, f"no such load run: {load_id[:40]}")
        return entry

    @app.route(f"{CASES}/load/<load_id>", methods=["GET"])
    @_in_worker0
    async def load_status(self, request: Any, load_id: str) -> Any:
        session = await self._session(request)
        return ok(request, load=describe_load(self._load_entry(session, load_id)))

    @app.route(f"{CASES}/loadStop", methods=["POST"])
    @_in_worker0
    async def stop_load(self, request: Any) -> Any:
        session = await self._session(request)
        body = require_object(self._json_body(request), "")
        load_id = require_str(body.get("loadId"), "loadId", 64)
        self._load_entry(session, load_id).run.stop()
        return ok(request)

    @app.route(f"{CASES}/load/<load_id>/report.html", methods=["GET"])
    @_in_worker0
    async def load_report(self, request: Any, load_id: str) -> Any:
        """The load's report as webtesting-test load writes it (a summary and a latency-over-time plot)."""
        session = await self._session(request)
        entry = self._load_entry(session, load_id)
        summary = describe_load(entry)["summary"]
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        # A report runs nothing: its own style only.
        request.setHeader(b"Content-Security-Policy", b"default-src 'none'; style-src 'unsafe-inline'")
        return loadtest.report_html(summary, f"Load: {entry.case_name} on service {entry.run.settings.service}"
                                    ).encode("utf-8")

    @app.route(f"{CASES}/<path:rest>")
    def cases_fallback(self, request: Any, rest: str) -> bytes:
        return _refuse(CASES, rest)

    @app.route(f"{HEALTH}/<path:rest>")
    def health_fallback(self, request: Any, rest: str) -> bytes:
        return _refuse(HEALTH, rest)

    @app.route(f"{AUDIT}/<path:rest>")
    def audit_fallback(self, request: Any, rest: str) -> bytes:
        return _refuse(AUDIT, rest)  # the trail is read only: GET Audit/list and nothing else

    @app.route(f"{HISTORY}/<path:rest>")
    def history_fallback(self, request: Any, rest: str) -> bytes:
        return _refuse(HISTORY, rest)

    @app.route(f"{SERVICE}/<path:rest>")
    def service_fallback(self, request: Any, rest: str) -> bytes:
        return _refuse(SERVICE, rest)

    # -- operations ---------------------------------------------------------------

    @app.route("/metrics", methods=["GET"])
    async def metrics(self, request: Any) -> Any:
        """
        Prometheus metrics of this process (webtesting.metrics); off with http.metrics: false.
        With several workers, worker 0 answers for all of them, each sample labelled with its worker.
        """
        if not self.serve_metrics:
            raise NotFound()
        if self.worker0_door is not None:
            return Worker0Proxy(self.worker0_door, self._reactor)
        body = await self.gather_metrics() if self.gather_metrics is not None else scrape()
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return body

    # -- the API's own description ---------------------------------------------

    @app.route(f"{PREFIX}/openapi.json", methods=["GET"])
    def openapi_json(self, request: Any) -> bytes:
        """The HTTP API as OpenAPI 3.1 (webtesting.web.openapi); public: it holds no data."""
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Access-Control-Allow-Origin", b"*")  # for API tools on other origins; no cookies
        return _OPENAPI

    # -- pages ----------------------------------------------------------------

    @app.route("/", methods=["GET", "HEAD"])
    def root(self, request: Any) -> bytes:
        request.redirect(f"{PREFIX}/index.html".encode())
        return b""

    @app.route(f"{PREFIX}/", branch=True, methods=["GET", "HEAD"])  # type: ignore[type-var]
    def pages(self, request: Any) -> Resource | bytes:
        if self.public_url is not None and not self._canonical(request):
            # Opened by another name (http://localhost:2019 for 127.0.0.1): the session cookie and the
            # origin checks belong to the configured address, so the page is sent there.
            request.redirect((self.public_url + request.uri.decode("latin-1")).encode("latin-1"))
            return b""
        for name, value in PAGE_HEADERS:
            request.setHeader(name, value)
        return Pages(self.webroot)

    def _canonical(self, request: Any) -> bool:
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        scheme = "https" if request.isSecure() else "http"
        return origin_of(f"{scheme}://{host}") == origin_of(self.public_url or "")

    # -- errors: every failure is a JSON answer -----------------------------

    @app.handle_errors(HTTPError)
    def _http_error(self, request: Any, failure: Failure) -> bytes:
        e = failure.value
        assert isinstance(e, HTTPError)
        return _answer(request, int(e.result), {"result": int(e.result), "msg": e.msg})

    @app.handle_errors(InvalidInput)
    def _invalid(self, request: Any, failure: Failure) -> bytes:
        return _answer(request, 400, {"result": int(Result.BAD_REQUEST), "msg": str(failure.value)})

    @app.handle_errors(NoSuchCase)
    def _no_case(self, request: Any, failure: Failure) -> bytes:
        return _answer(request, 404, {"result": int(Result.NOT_FOUND),
                                      "msg": f"no such case that you may see or change: {failure.value}"})

    @app.handle_errors(UnknownServices)
    def _unknown(self, request: Any, failure: Failure) -> bytes:
        return _answer(
            request, 404,
            {"affectedRows": 0, "result": int(Result.NOT_FOUND),
             "msg": f"{failure.value}; nothing was changed"},
        )

    @app.handle_errors(DatabaseUnavailable)
    def _unavailable(self, request: Any, failure: Failure) -> bytes:
        # The reason (which may name hosts or users) goes to the log, not to
        # the client.
        return _answer(
            request, 503,
            {"result": int(Result.UNAVAILABLE), "msg": "the registry database is unavailable; try again shortly",
             "code": "registry_unavailable"},
        )

    @app.handle_errors(NotFound)
    def _not_found(self, request: Any, failure: Failure) -> bytes:
        return _answer(
            request, 404,
            {"result": int(Result.NOT_FOUND), "msg": f"no such path: {request.path.decode('latin-1')}"},
        )

    @app.handle_errors(MethodNotAllowed)
    def _wrong_method(self, request: Any, failure: Failure) -> bytes:
        e = failure.value
        assert isinstance(e, MethodNotAllowed)
        allowed = ", ".join(e.valid_methods or [])
        request.setHeader(b"Allow", allowed.encode())
        return _answer(
            request, 405,
            {"result": int(Result.METHOD_NOT_ALLOWED),
             "msg": f"{request.method.decode('latin-1')} is not allowed here; use {allowed}"},
        )

    @app.handle_errors(Exception)
    def _internal(self, request: Any, failure: Failure) -> bytes:
        self._log.failure("unexpected error answering {path}", failure, path=request.path)
        return _answer(request, 500, {"result": int(Result.INTERNAL), "msg": "internal error"})
