"""
Fuzzing the two doors a tester can knock on: the browser WebSocket and the
HTTP API, each a real server on a free loopback port, with over 10,000
frames and requests in all (lone surrogates, deep nesting, huge numbers,
wrong types for every field, unknown methods, non-object JSON, invalid
UTF-8, forms and multipart bodies).

Every frame must get its answer (or, for the cases docs/protocol.md lists,
its close code), no answer may be a 500, no log event may carry a failure or
be critical, and the server must still serve a valid request afterwards.

How Hypothesis meets trial here: Hypothesis drives synchronous functions,
while the servers need the running reactor. So the test data is made first
and sent afterwards: L{generate} runs a C{@given} function whose only job is
to collect the examples Hypothesis draws into a list (generation phase only:
no shrinking, no example database, derandomized, so CI sends the same frames
every run); the async test then sends that list over real sockets. Each
example is a batch of frames, so that a few hundred examples make thousands
of frames within seconds. A failure names the frame that caused it, which
stands in for shrinking.
"""

from __future__ import annotations

import json
import time
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import DeferredSemaphore, gatherResults
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.support import wsclient
from tests.support.http import JSONClient
from tests.support.registry import SERVICE, RunningRegistry, seed_service
from tests.support.sessions import session_cookie, sqlite_store
from tests.support.wait import autobahn_timers_settled, eventually
from webtesting.config import RegistryConfig
from webtesting.protocol import BROWSER_REQUESTS, LOGGED_IN, LOGGED_OUT, ROUTE, routed_frame
from webtesting.web.sessions import Relay
from webtesting.web.ws import BrowserFactory

T = TypeVar("T")

MAX_MESSAGE = 256 * 1024
WS_EXAMPLES = 600  # 1-3 requests x 7, and 0-3 other frames: about 8,000 frames
HTTP_EXAMPLES = 130  # 21 add/update requests, 0-3 others and a login: about 3,000 requests
INVALID_UTF8_EXAMPLES = 40  # each closes its connection (1007), so each gets one


def generate(strategy: st.SearchStrategy[T], examples: int) -> list[T]:
    """Up to C{examples} values of C{strategy}, the same on every run."""
    drawn: list[T] = []

    @settings(max_examples=examples, database=None, derandomize=True, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value: T) -> None:
        drawn.append(value)

    collect()
    return drawn


# -- JSON pieces ----------------------------------------------------------------


class Raw(str):
    """JSON text put into a message verbatim (numbers Python's json would not write)."""


def render(value: Any) -> str:
    """JSON text of C{value}; lone surrogates become \\udXXX escapes, L{Raw} goes in as it is."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(render(v) for v in value) + "]"
    return json.dumps(value)


lone_surrogate = st.integers(0xD800, 0xDFFF).map(chr)
surrogate_text = st.tuples(st.text(max_size=6), lone_surrogate, st.text(max_size=6)).map("".join)
huge_numbers = st.sampled_from([
    "1" * 5000, "-" + "9" * 4301, "1e400", "-1e400", "1e-400", "NaN", "Infinity", "-Infinity",
    str(2**64), str(-(2**63)), "0.0000000000000000000001", "-0", "1E+2", "12345678901234567890.5",
]).map(Raw)
scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=12) | surrogate_text | huge_numbers)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8) | surrogate_text, inner, max_size=4),
    max_leaves=8,
)


def good_or_bad(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's value: right, or of any wrong type or text."""
    return st.one_of(good, good, json_values, surrogate_text, huge_numbers)


def deep(depth: int, kind: int) -> bytes:
    if kind == 0:
        return b"[" * depth  # unterminated
    if kind == 1:
        return b"[" * depth + b"]" * depth
    return b'{"method":' * depth + b"1" + b"}" * depth


deep_nesting = st.builds(deep, st.sampled_from([2, 100, 990, 1000, 5000, 40_000, 100_000]), st.integers(0, 2))

# -- browser frames -------------------------------------------------------------------

# Wrong values of every kind, one per field of a request (see expand_ws).
bad_values = st.one_of(json_values, surrogate_text, huge_numbers)
FIELDS = ("method", "serviceId", "appid", "uname", "content", "enabled")

methods = st.one_of(
    st.sampled_from(list(BROWSER_REQUESTS)), st.sampled_from(list(BROWSER_REQUESTS)),
    st.sampled_from(["sessionClosed", "agentInfoReq", "loginResp", "", "LOGINREQ", "error"]),
    st.text(max_size=10), surrogate_text,
)
# Well-formed enough to reach every check, so that a wrong value put into any
# one field is what the server has to refuse.
requests = st.fixed_dictionaries(
    {"method": methods, "serviceId": st.sampled_from([1, 1, 2, 3]), "appid": st.sampled_from(["1.00002", "1.00003"])},
    optional={
        "uname": st.text(min_size=1, max_size=70),
        "content": st.text(max_size=80),
        "enabled": st.booleans(),
        "uuid": st.just("f" * 32),
    },
)
# (payload, binary?) pairs, each answered with exactly one message.
other_frames = st.one_of(
    json_values.map(lambda v: (render(v).encode(), False)),
    st.text(max_size=40).map(lambda t: (t.encode(), False)),
    deep_nesting.map(lambda b: (b, False)),
    st.binary(max_size=64).map(lambda b: (b, True)),
    st.sampled_from([b"x" * (MAX_MESSAGE + 1), b"[" * (MAX_MESSAGE + 10)]).map(lambda b: (b, False)),
)
ws_examples = st.tuples(
    st.lists(requests, min_size=1, max_size=3),
    st.lists(bad_values, min_size=len(FIELDS), max_size=len(FIELDS)),
    st.lists(other_frames, max_size=3),
)


def expand_ws(example: tuple[list[dict[str, Any]], list[Any], list[tuple[bytes, bool]]]) -> list[tuple[bytes, bool]]:
    """Each request as drawn, then once with each of its fields wrong; then the other frames."""
    drawn, bad, others = example
    frames = []
    for request in drawn:
        frames.append((render(request).encode(), False))
        for name, value in zip(FIELDS, bad, strict=False):
            frames.append((render({**request, name: value}).encode(), False))
    return frames + others


invalid_utf8 = st.one_of(
    st.sampled_from([b"\xed\xa0\x80", b"\xc0\xaf", b"\xff\xfe", b"\xf4\x90\x80\x80", b'{"uname":"\xe4\xb8"}',
                     '{"method":"loginReq","uname":"\ud800"}'.encode("utf-8", "surrogatepass")]),
    st.binary(max_size=40).map(lambda b: b + b"\xff"),
)

# -- HTTP requests --------------------------------------------------------------------

SERVICE_FIELDS = tuple(seed_service())
Request = tuple[str, str, "str | None", bytes, "str | None"]  # method, path, content type, body, role
endpoints = st.sampled_from([
    ("PUT", "Service/addServices"), ("POST", "Service/updateServices"), ("DELETE", "Service/delServices"),
    ("GET", "Service/getServices"), ("GET", "Service/getServiceList"), ("POST", "Service/addServices"),
    ("PATCH", "Service/updateServices"), ("PUT", "Service/nothingHere"), ("POST", "Account/logout"),
    ("GET", "Account/me"), ("DELETE", "Account/me"),
])
content_types = st.sampled_from([
    "application/json", "application/json", "application/json; charset=utf-8", "application/json; charset=latin-1",
    "text/plain", "multipart/form-data; boundary=XyZ", "multipart/form-data", "application/x-www-form-urlencoded",
    "application/json; charset", "APPLICATION/JSON;;", "*/*", None,
])
bodies = st.one_of(
    json_values.map(lambda v: render(v).encode()),
    st.fixed_dictionaries({"serviceIds": bad_values}).map(lambda b: render(b).encode()),
    deep_nesting,
    st.binary(max_size=60),
    st.text(max_size=40).map(str.encode),
    st.sampled_from([
        b"", b"\xed\xa0\x80", b'[{"description":"\xff"}]',
        b'--XyZ\r\nContent-Disposition: form-data; name="f"\r\n\r\n[]\r\n--XyZ--\r\n',
        b'--XyZ\r\nContent-Disposition: form-data; name="\xff\xfe"\r\n\r\nx\r\n--XyZ--\r\n',
        b"--XyZ\r\n\r\n--XyZ", b"a=1&b=%ff",
    ]),
)
# Login bodies whose username and password are never both plain text: a real
# check costs an scrypt and teaches the throttle to slow everything down.
login_bodies = st.tuples(bad_values, bad_values).map(
    lambda up: render({"username": up[0], "password": up[1] if not isinstance(up[1], str) or isinstance(up[1], Raw)
                       else 5}).encode())
http_examples = st.tuples(
    st.lists(bad_values, min_size=len(SERVICE_FIELDS), max_size=len(SERVICE_FIELDS)),
    st.lists(st.tuples(endpoints, content_types, bodies, st.sampled_from(["admin", "tester", None])), max_size=3),
    login_bodies,
)


def expand_http(example: tuple[list[Any], list[Any], bytes]) -> list[Request]:
    """
    The seed's service added and updated once with each field wrong (and the
    update once with a wrong serviceId); then the other requests and a login.
    """
    bad, others, login = example
    requests: list[Request] = []
    for name, value in zip(SERVICE_FIELDS, bad, strict=False):
        body = render([seed_service(**{name: value})]).encode()
        requests.append(("PUT", "Service/addServices", "application/json", body, "admin"))
        body = render([{"serviceId": 1, name: value}]).encode()
        requests.append(("POST", "Service/updateServices", "application/json", body, "admin"))
    requests.append(("POST", "Service/updateServices", "application/json",
                     render([seed_service(serviceId=bad[0])]).encode(), "admin"))
    for (method, path), content_type, body, role in others:
        requests.append((method, path, content_type, body, role))
    requests.append(("POST", "Account/login", "application/json", login, None))
    return requests


# -- fakes and watchers ---------------------------------------------------------------


class EchoLink:
    """
    Fake enough of an agent link for the fuzz: it encodes what it is sent as
    the real link does, and answers every request once, through the relay.
    """

    def __init__(self, service_id: int, relay: Relay, up: bool = True) -> None:
        self.service_id = service_id
        self.relay = relay
        self.up = up
        self.connected = up
        self.reason = "agent unreachable"
        self.code = "ok" if up else "agent_unreachable"

    def send(self, message: dict[str, Any]) -> None:
        json.dumps(message, ensure_ascii=False).encode()
        answer = BROWSER_REQUESTS.get(message["method"])
        if answer is None:
            return  # sessionClosed
        mark = {"loginResp": LOGGED_IN, "logoutResp": LOGGED_OUT}.get(answer, ROUTE)
        self.relay.from_agent(self.service_id, routed_frame(message["uuid"], mark, {
            "method": answer, "serviceId": self.service_id, "appid": message["appid"], "result": 1, "msg": "ok"}))


class LogWatch:
    """Every log event that carries a failure or is critical, while installed."""

    def __init__(self, case: unittest.TestCase) -> None:
        self.bad: list[str] = []
        globalLogPublisher.addObserver(self)
        case.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("log_level") == LogLevel.critical:
            self.bad.append(formatEvent(event) + "\n" + str(event.get("log_failure")))


def _shown(payload: bytes) -> str:
    return repr(payload[:200]) + (f"… ({len(payload)} bytes)" if len(payload) > 200 else "")


class BrowserWebSocketFuzz(unittest.TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.addCleanup(autobahn_timers_settled)
        self.watch = LogWatch(self)
        self.relay = Relay({})
        self.addCleanup(self.relay.stop)
        self.relay.links.update({1: EchoLink(1, self.relay), 2: EchoLink(2, self.relay, up=False)})
        self.sessions = await sqlite_store(self)
        self.cookie = await session_cookie(self.sessions, "t", "tester")
        factory = BrowserFactory(self.relay, self.sessions, path="/WebTesting", max_message=MAX_MESSAGE)
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = f"ws://127.0.0.1:{self.port.getHost().port}/WebTesting"

    async def connect(self) -> wsclient.JSONClientProtocol:
        client = await wsclient.connect(self.url, headers={"Cookie": self.cookie})
        self.addCleanup(client.close)
        return client

    async def test_storm(self) -> None:
        """Thousands of generated frames each get one answer, none a 500, nothing critical is logged, and the server
        serves on."""
        started = time.monotonic()
        frames = [frame for example in generate(ws_examples, WS_EXAMPLES) for frame in expand_ws(example)]
        broken = generate(invalid_utf8, INVALID_UTF8_EXAMPLES)
        self.assertGreaterEqual(len(frames) + len(broken), 7200)  # with the HTTP storm's: over 10,000
        client = await self.connect()
        for payload, binary in frames:
            client.sendMessage(payload, isBinary=binary)
        await eventually(lambda: len(client.raw) >= len(frames) or client.closed.called, 60,
                         "an answer to every frame")
        self.assertFalse(client.closed.called, "the storm connection was closed")
        self.assertEqual(len(client.raw), len(frames))
        for (payload, _binary), raw in zip(frames, client.raw, strict=False):
            answer = json.loads(raw)
            self.assertIsInstance(answer.get("method"), str, _shown(payload))
            self.assertNotEqual(answer.get("result"), 500, f"{_shown(payload)} -> {answer}")
        # Invalid UTF-8 in a text frame closes that connection with 1007 (docs/protocol.md §1).
        for payload in broken:
            victim = await self.connect()
            victim.sendMessage(payload, isBinary=False)
            _clean, code, _reason = await victim.closed
            self.assertEqual(code, 1007, _shown(payload))
        self.assertEqual(self.watch.bad, [])
        after = await self.connect()
        after.send({"method": "loginReq", "serviceId": 1, "appid": "1.00002", "uname": "after the storm"})
        self.assertEqual((await after.expect("loginResp"))["result"], 1)
        self.assertLess(time.monotonic() - started, 60)


class HTTPAPIFuzz(unittest.TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.watch = LogWatch(self)
        self.running = RunningRegistry(RegistryConfig(sqlite_path=self.mktemp() + ".sqlite3"))
        self.client = await self.running.start()
        self.addCleanup(self.running.stop)
        self.clients: dict[str | None, JSONClient] = {}
        for role in ("admin", "tester", None):
            self.clients[role] = client = JSONClient(self.client.base, persistent=True)
            self.addCleanup(client.close)
            if role is not None:
                client.cookie = await self.running.cookie(role, role)

    async def test_storm(self) -> None:
        """Thousands of generated requests each get a JSON answer that is not a 500, nothing critical is logged, and
        the API serves on."""
        started = time.monotonic()
        requests = [r for example in generate(http_examples, HTTP_EXAMPLES) for r in expand_http(example)]
        self.assertGreaterEqual(len(requests), 2900)
        limit = DeferredSemaphore(8)
        problems: list[str] = []

        async def one(request: Request) -> None:
            method, path, content_type, body, role = request
            client = self.clients[role]
            try:
                status, answer = await client.call(method, "/WebTesting/" + path, raw=body, content_type=content_type)
            except Exception as e:  # noqa: BLE001 - any failure here is the finding
                problems.append(f"{method} {path} {content_type} {_shown(body)}: {e!r}")
                return
            expected = 1 if status == 200 else status
            if status == 500 or not isinstance(answer, dict) or answer.get("result") != expected:
                problems.append(f"{method} {path} {content_type} {_shown(body)} -> {status} {answer}")

        def run(request: Request) -> Any:
            return limit.run(lambda: _deferred(one(request)))

        await gatherResults([run(r) for r in requests])
        self.assertEqual(problems[:5], [])
        self.assertEqual(self.watch.bad, [])
        status, answer = await self.client.call("PUT", f"{SERVICE}/addServices", [seed_service(description="after")])
        self.assertEqual((status, answer["result"]), (200, 1))
        status, answer = await self.client.call("GET", f"{SERVICE}/getServices")
        self.assertIn("after", [s["description"] for s in answer["servicdLists"]])
        self.assertLess(time.monotonic() - started, 60)


def _deferred(coroutine: Any) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coroutine)

