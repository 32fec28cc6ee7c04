"""
Message shapes, validation and result codes shared by the web server and the agent.

Every answer on every leg carries ``result`` (1 = success) and ``msg``. Error
codes follow HTTP's so that a reader knows them at sight, and the HTTP API
answers with the same number as its status code.

Validation turns untrusted JSON into plain, checked values or raises
L{InvalidInput} naming the field the way a client wrote it
(``[1].redisCluster[0].port``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import unicodedata
from enum import IntEnum
from typing import Any
from urllib.parse import urlsplit

from autobahn.websocket.util import parse_url

from webtesting import jsoncodec


class Result(IntEnum):
    OK = 1
    BAD_REQUEST = 400
    UNAUTHORIZED = 401
    FORBIDDEN = 403
    NOT_FOUND = 404
    METHOD_NOT_ALLOWED = 405
    CONFLICT = 409
    TOO_LARGE = 413
    UNSUPPORTED_MEDIA_TYPE = 415
    TOO_MANY_REQUESTS = 429
    INTERNAL = 500
    UNAVAILABLE = 503
    TIMEOUT = 504


class InvalidInput(Exception):
    """
    Input that breaks the contract; C{str()} names the field and the problem.

    @ivar request: the message as far as it was read, when it was a JSON
        object with a readable C{method} (so that the answer can be the
        request's own, e.g. C{loginResp} 400 rather than C{error} 400).
    """

    def __init__(self, where: str, problem: str, request: dict[str, Any] | None = None) -> None:
        self.where = where
        self.problem = problem
        self.request = request
        super().__init__(f"{where}: {problem}" if where else problem)


# The seed's column sizes (tb_service_info), in characters.
SERVICE_FIELD_LIMITS = {
    "redisCluster": 1024,
    "mysqlAddr": 64,
    "mysqlUser": 64,
    "mysqlPwd": 64,
    "mysqlDbname": 64,
    "wxServiceAddr": 64,
    "agentAddr": 64,
    "allowedAppids": 1024,
    "description": 1024,
}
STATUS_MSG_LIMIT = 256

SERVICE_FIELDS = (
    "redisCluster",
    "mysqlAddr",
    "mysqlPort",
    "mysqlUser",
    "mysqlPwd",
    "mysqlDbname",
    "wxServiceAddr",
    "agentAddr",
    "allowedAppids",
    "description",
    "allowStateWrites",
)
# Fields a new service may leave out, and what they then are. allowStateWrites:
# whether testers may write a user's state into the bot's store (a test case's
# "given"); off unless an admin turns it on.
OPTIONAL_FIELDS = {"allowStateWrites": False}
# Written by the web server, shown by getServices; ignored when sent back.
READ_ONLY_FIELDS = ("status", "msg", "code")

# What getServices shows instead of a stored password; sent back unchanged in
# an update, it keeps the stored password.
PASSWORD_MASK = "********"

# Used with fullmatch: "$" alone would also match before a final newline.
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*\.?"
)
_APPID = re.compile(r"[A-Za-z0-9._-]{1,32}")
_DBNAME = re.compile(r"[A-Za-z0-9_$-]{1,64}")
MAX_REDIS_NODES = 64
MAX_APPIDS = 64


# The compact JSON of every message and frame this system sends, and of JSON
# columns: text as json.dumps(value, ensure_ascii=False, separators=(",", ":"))
# writes it, and the same as UTF-8 bytes (webtesting.jsoncodec).
json_text = jsoncodec.text
json_data = jsoncodec.data


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


def require_int(value: Any, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(where, f"must be an integer, got {_kind(value)}")
    if not low <= value <= high:
        raise InvalidInput(where, f"must be between {low} and {high}, got {value}")
    return value


def require_str(value: Any, where: str, max_len: int, min_len: int = 1) -> str:
    if not isinstance(value, str):
        raise InvalidInput(where, f"must be a string, got {_kind(value)}")
    if len(value) < min_len:
        raise InvalidInput(where, "must not be empty")
    if len(value) > max_len:
        raise InvalidInput(where, f"must be at most {max_len} characters, got {len(value)}")
    return value


def require_list(value: Any, where: str, max_items: int) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidInput(where, f"must be an array, got {_kind(value)}")
    if not value:
        raise InvalidInput(where, "must not be empty")
    if len(value) > max_items:
        raise InvalidInput(where, f"must have at most {max_items} items, got {len(value)}")
    return value


def require_object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(where, f"must be an object, got {_kind(value)}")
    return value


def require_printable(value: str, where: str) -> str:
    """
    Refuse whitespace and control characters (format, private-use and
    unassigned ones too) in an address: invisible in a form or a log, they
    make an address that looks right and never connects.
    """
    for i, c in enumerate(value):
        if c.isspace() or unicodedata.category(c)[0] == "C":
            raise InvalidInput(
                where, f"must not contain whitespace or control characters, found {c!r} at position {i}"
            )
    return value


def require_host(value: Any, where: str, max_len: int = 253) -> str:
    host = require_printable(require_str(value, where, max_len), where)
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(host):
        raise InvalidInput(where, f"must be a host name or IP address, got {host!r}")
    return host


def require_ws_url(value: Any, where: str, max_len: int) -> str:
    url = require_printable(require_str(value, where, max_len), where)
    if not url.startswith(("ws://", "wss://")):
        raise InvalidInput(where, f"must be a ws:// or wss:// address, got {url!r}")
    try:
        _secure, host, _port, _resource, _path, _params = parse_url(url)
    except Exception as e:  # noqa: BLE001 - autobahn raises plain Exception for bad URLs
        raise InvalidInput(where, f"is not a valid WebSocket address ({e})") from None
    if not host:
        raise InvalidInput(where, f"has no host: {url!r}")
    return url


def require_appid(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(where, f"must be a string, got {_kind(value)}")
    if not _APPID.fullmatch(value):
        raise InvalidInput(
            where, f"must be 1-32 letters, digits, '.', '_' or '-', got {value!r}"
        )
    return value


def _redis_cluster(value: Any, where: str) -> list[dict[str, Any]]:
    nodes = require_list(value, where, MAX_REDIS_NODES)
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    for i, raw in enumerate(nodes):
        at = f"{where}[{i}]"
        node = require_object(raw, at)
        for key in node:
            if key not in ("host", "port"):
                raise InvalidInput(_join(at, key), "unknown field (a node has host and port)")
        if "host" not in node:
            raise InvalidInput(_join(at, "host"), "is required")
        if "port" not in node:
            raise InvalidInput(_join(at, "port"), "is required")
        host = require_host(node["host"], _join(at, "host"))
        port = require_int(node["port"], _join(at, "port"), 1, 65535)
        if (host, port) in seen:
            raise InvalidInput(at, f"duplicate node {host}:{port}")
        seen.add((host, port))
        out.append({"host": host, "port": port})
    return out


def _appids(value: Any, where: str) -> list[str]:
    items = require_list(value, where, MAX_APPIDS)
    out: list[str] = []
    for i, raw in enumerate(items):
        appid = require_appid(raw, f"{where}[{i}]")
        if appid in out:
            raise InvalidInput(f"{where}[{i}]", f"duplicate appid {appid!r}")
        out.append(appid)
    return out


def _check_field(name: str, value: Any, where: str) -> Any:
    limit = SERVICE_FIELD_LIMITS.get(name, 0)
    if name == "redisCluster":
        checked: Any = _redis_cluster(value, where)
    elif name == "allowedAppids":
        checked = _appids(value, where)
    elif name == "mysqlPort":
        return require_int(value, where, 1, 65535)
    elif name == "mysqlAddr":
        return require_host(value, where, limit)
    elif name == "mysqlPwd":
        return require_str(value, where, limit, min_len=0)
    elif name == "mysqlDbname":
        name_ = require_str(value, where, limit)
        if not _DBNAME.fullmatch(name_):
            raise InvalidInput(where, f"must be letters, digits, '_', '$' or '-', got {name_!r}")
        return name_
    elif name in ("wxServiceAddr", "agentAddr"):
        return require_ws_url(value, where, limit)
    elif name == "allowStateWrites":
        if not isinstance(value, bool):
            raise InvalidInput(where, f"must be true or false, got {_kind(value)}")
        return value
    else:  # mysqlUser, description
        return require_str(value, where, limit)
    # Arrays are stored as JSON text in columns of a fixed size.
    size = len(json_text(checked))
    if size > limit:
        raise InvalidInput(where, f"is {size} characters as JSON; at most {limit} fit")
    return checked


def validate_service(raw: Any, where: str, *, with_id: bool) -> dict[str, Any]:
    """
    Check one service object of an add (C{with_id=False}: every field
    required, no C{serviceId}) or an update (C{with_id=True}: C{serviceId}
    required, any other fields optional, at least one).

    @return: the checked fields, C{serviceId} included for an update.
    """
    obj = require_object(raw, where)
    out: dict[str, Any] = {}
    for key in obj:
        if key == "serviceId":
            if not with_id:
                raise InvalidInput(_join(where, key), "is assigned by the server; leave it out when adding")
        elif key not in SERVICE_FIELDS and key not in READ_ONLY_FIELDS:
            raise InvalidInput(_join(where, key), "unknown field")
    if with_id:
        if "serviceId" not in obj:
            raise InvalidInput(_join(where, "serviceId"), "is required")
        out["serviceId"] = require_int(obj["serviceId"], _join(where, "serviceId"), 1, 2**31 - 1)
    for name in SERVICE_FIELDS:
        if name in obj:
            out[name] = _check_field(name, obj[name], _join(where, name))
        elif not with_id and name in OPTIONAL_FIELDS:
            out[name] = OPTIONAL_FIELDS[name]
        elif not with_id:
            raise InvalidInput(_join(where, name), "is required")
    if with_id and len(out) == 1:
        raise InvalidInput(where, "names no field to change")
    return out


def validate_service_list(raw: Any, *, with_id: bool, max_items: int = 1000) -> list[dict[str, Any]]:
    """Check the body of addServices/updateServices: a non-empty array of services."""
    if not isinstance(raw, list):
        raise InvalidInput("", f"the body must be a JSON array of services, got {_kind(raw)}")
    if not raw:
        raise InvalidInput("", "the body must list at least one service")
    if len(raw) > max_items:
        raise InvalidInput("", f"at most {max_items} services at once, got {len(raw)}")
    items = raw
    services = [validate_service(item, f"[{i}]", with_id=with_id) for i, item in enumerate(items)]
    if with_id:
        seen: dict[int, int] = {}
        for i, s in enumerate(services):
            if s["serviceId"] in seen:
                raise InvalidInput(
                    f"[{i}].serviceId", f"{s['serviceId']} is already updated by [{seen[s['serviceId']]}]"
                )
            seen[s["serviceId"]] = i
    return services


def validate_service_ids(raw: Any) -> list[int]:
    """Check the body of delServices: C{{"serviceIds": [1, 2]}}; duplicates are merged."""
    obj = require_object(raw, "")
    for key in obj:
        if key != "serviceIds":
            raise InvalidInput(key, "unknown field")
    if "serviceIds" not in obj:
        raise InvalidInput("serviceIds", "is required")
    ids = require_list(obj["serviceIds"], "serviceIds", 1000)
    out: list[int] = []
    for i, raw_id in enumerate(ids):
        sid = require_int(raw_id, f"serviceIds[{i}]", 1, 2**31 - 1)
        if sid not in out:
            out.append(sid)
    return out


# -- reasons shown to testers ---------------------------------------------------

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>()]+")
_IPV6 = re.compile(r"\[?(?<![\w:])(?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{0,4}(?![\w:])\]?(?::\d+)?")
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b")
_HOST_PORT = re.compile(r"\b[\w-]+(?:\.[\w-]+)*:\d{1,5}\b")
_DOTTED_HOST = re.compile(r"\b[\w-]+(?:\.[\w-]+)*\.(?:[a-zA-Z]{2,}|internal|local|lan)\b")
_PORT_AFTER = re.compile(r"…:\d+")

# What a tester is told for each health code (docs/protocol.md §4): that
# something is unreachable, and the code, never the details, which name
# hosts and ports and say which ports are open. Admins see the details
# (getServices, the admin page, the logs).
TESTER_SENTENCES = {
    "waiting_for_agent": "waiting for the service's agent",
    "agent_unreachable": "the service's agent is unreachable",
    "agent_unknown_host": "the service's agent is unreachable",
    "agent_address_invalid": "the service's agent is unreachable",
    "agent_refused": "the service's agent is unreachable",
    "agent_not_responding": "the service's agent is unreachable",
    "agent_auth_failed": "the service's agent is unreachable",
    "agent_tls_failed": "the service's agent is unreachable",
    "settings_refused": "the service's agent is unreachable",
    "bot_unreachable": "the bot is unreachable",
    "bot_address_invalid": "the bot is unreachable",
    "bot_not_responding": "the bot is unreachable",
    "redis_unreachable": "the bot's Redis is unreachable",
    "redis_partial": "part of the bot's Redis Cluster is unreachable",
    "mysql_unreachable": "the bot's MySQL is unreachable",
    "registry_unavailable": "the registry database is unreachable",
    "unavailable": "the service is unreachable",
}


def scrub_reason(text: str, service: dict[str, Any] | None = None) -> str:
    """
    C{text} without addresses: URLs, IP literals, host:port, dotted host
    names, and the service's own addresses, names and credentials.
    """
    if service:
        words = [service.get("mysqlAddr"), service.get("mysqlUser"), service.get("mysqlPwd"),
                 service.get("mysqlDbname"), service.get("wxServiceAddr"), service.get("agentAddr")]
        words += [node.get("host") for node in service.get("redisCluster") or [] if isinstance(node, dict)]
        for url in (service.get("wxServiceAddr"), service.get("agentAddr")):
            with contextlib.suppress(ValueError):
                words.append(urlsplit(url or "").hostname)
        for word in sorted({w for w in words if isinstance(w, str) and len(w) >= 2}, key=len, reverse=True):
            text = text.replace(word, "…")
    for pattern in (_URL, _IPV6, _IPV4, _HOST_PORT, _DOTTED_HOST, _PORT_AFTER):
        text = pattern.sub("…", text)
    return text


def tester_reason(code: str | None, detail: str, service: dict[str, Any] | None = None) -> str:
    """
    The one text a tester is shown for a reason (every reason a browser or
    getServiceList shows goes through here): a fixed sentence for a health
    code, else the detail without addresses.
    """
    if code in TESTER_SENTENCES:
        return TESTER_SENTENCES[code]  # type: ignore[index]
    return scrub_reason(detail, service)


# -- WebSocket legs (docs/protocol.md) ----------------------------------------

# Requests a browser may send, and the answer each gets.
BROWSER_REQUESTS = {
    "loginReq": "loginResp",
    "logoutReq": "logoutResp",
    "aichatReq": "aichatResp",
    "getUserStatusReq": "getUserStatusResp",
    "setStatusPushReq": "setStatusPushResp",
    "setUserStateReq": "setUserStateResp",
}
# Sent by the web server to an agent when a browser session goes away.
SESSION_CLOSED = "sessionClosed"

MAX_UNAME = 64
MAX_CONTENT = 4096

# Agent -> web frames that are for a browser start with the session's uuid
# (32 hex digits) and one routing mark, then the browser-ready JSON, so that
# the web server routes them without decoding JSON:
UUID_LEN = 32
ROUTE = b"="  # route only
LOGGED_IN = b"+"  # route; that session's login on this service is now active
LOGGED_OUT = b"-"  # route; that session's login on this service has ended


def routed_frame(uuid: str, mark: bytes, message: dict[str, Any], tail: bytes = b"") -> bytes:
    """
    An agent -> web frame carrying C{message} for browser session C{uuid}.

    C{message} must hold C{method} as its first key: the web server reads the
    method from the frame's first bytes (L{frame_method}) without decoding it.
    C{tail} (compact JSON members, each led by a comma) goes in as the last
    members: a chat reply's L{hops_tail}.
    """
    data = uuid.encode("ascii") + mark + json_data(message)
    return data[:-1] + tail + b"}" if tail else data


HOPS_KEY = b',"hops":{'


def hops_tail(agent_in: float, bot_reply: float, agent_out: float) -> bytes:
    """
    A chat reply's C{"hops"} member as the agent writes it (Unix ms; the web
    server adds C{webIn} and C{webOut} inside it without decoding the frame).
    """
    return b'%s"agentIn":%.3f,"botReply":%.3f,"agentOut":%.3f}' % (
        HOPS_KEY, agent_in * 1000, bot_reply * 1000, agent_out * 1000)


_METHOD_PREFIX = b'{"method":"'


def frame_method(frame: bytes) -> bytes:
    """The method of a routed frame (L{routed_frame}), read without decoding its JSON; b"" if not there."""
    start = UUID_LEN + 1 + len(_METHOD_PREFIX)
    if frame[UUID_LEN + 1:start] != _METHOD_PREFIX:
        return b""
    end = frame.find(b'"', start, start + 64)
    return frame[start:end] if end > 0 else b""


def answer_message(method: str, result: int, msg: str, **fields: Any) -> dict[str, Any]:
    """An answer as the browsers read it (SPEC §3): C{method}, its fields, then C{result} and C{msg}."""
    return {"method": method, **fields, "result": int(result), "msg": msg}


class NotJSON(InvalidInput):
    """A payload that is not one UTF-8 JSON text at all (no field to name)."""

    def __init__(self, problem: str) -> None:
        super().__init__("", problem)


# A JSON escape of a UTF-16 surrogate (U+D800..U+DFFF). json.loads turns a
# lone one into a str that has no UTF-8 form; left in, it fails far from the
# input (sending it on, writing it to a database) as a 500 with a traceback.
# Only a payload holding such an escape needs the walk (valid pairs match
# too, and pass it); UTF-8 input cannot hold a surrogate any other way.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_NAME_SHOWN = 64


def _loads(payload: bytes | str) -> tuple[Any, bool]:
    """The decoded JSON value, and whether it may hold a string with no UTF-8 form."""
    if isinstance(payload, bytes):
        flat = jsoncodec.loads_flat(payload)
        if flat is not None:
            return flat, False  # read by orjson, which refuses a lone surrogate
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise NotJSON("not UTF-8") from None
        suspicious = _SURROGATE_ESCAPE.search(text) is not None
    else:
        text = payload
        suspicious = _SURROGATE_ESCAPE.search(text) is not None or _SURROGATE.search(text) is not None
    try:
        value = json.loads(text)
    except RecursionError:
        raise NotJSON("not valid JSON (nested too deeply)") from None
    except ValueError as e:  # includes integers of more digits than Python converts
        raise NotJSON(f"not valid JSON ({e})") from None
    return value, suspicious


def _escaped(text: str) -> str:
    """The first surrogate in C{text}, written as its JSON escape."""
    found = _SURROGATE.search(text)
    return f"\\u{ord(found.group()):04x}" if found else "?"


def _shown_name(key: str) -> str:
    return key if len(key) <= _NAME_SHOWN else key[:_NAME_SHOWN] + "…"


def untext(value: Any) -> InvalidInput | None:
    """
    The first string (value or field name) in a decoded JSON value that is
    not Unicode text, i.e. has no UTF-8 form (a lone surrogate), as the
    L{InvalidInput} naming where it is; C{None} when every string is text.

    Iterative, so that the deepest value C{json.loads} accepts is walked
    without recursion.
    """
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return InvalidInput(
                    where, f"must be Unicode text: {_escaped(item)} is half a surrogate pair and has no UTF-8 form"
                )
        elif isinstance(item, dict):
            children: list[tuple[str, Any]] = []
            for key, sub in item.items():
                if _SURROGATE.search(key):
                    return InvalidInput(
                        where, f"has a field name that is not Unicode text ({_escaped(key)}: half a surrogate pair)"
                    )
                children.append((_join(where, _shown_name(key)), sub))
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", item[i]) for i in range(len(item) - 1, -1, -1))
    return None


def is_text(value: str) -> bool:
    """Whether C{value} has a UTF-8 form (holds no lone surrogate)."""
    return _SURROGATE.search(value) is None


def parse_json(payload: bytes | str) -> Any:
    """
    Decode one UTF-8 JSON text whose every string is Unicode text.

    This is the one parse step of every leg (browser, agent, WxService, the
    HTTP API), so that a string which cannot be sent on or stored is refused
    here, naming its field, rather than failing later.

    @raise NotJSON: not UTF-8, not JSON, or nested too deeply.
    @raise InvalidInput: a string holds a lone surrogate; names the field.
        When the value is an object with a readable C{method} and the field
        is another one, L{InvalidInput.request} holds the object, so that
        the answer can be the request's own.
    """
    value, suspicious = _loads(payload)
    if suspicious:
        bad = untext(value)
        if bad is not None:
            method = value.get("method") if isinstance(value, dict) else None
            if isinstance(method, str) and is_text(method):
                bad.request = value
            raise bad
    return value


def parse_json_object(payload: bytes | str) -> dict[str, Any]:
    """Decode one JSON text frame (L{parse_json}) that must hold an object with a string C{method}."""
    message = parse_json(payload)
    if not isinstance(message, dict):
        raise InvalidInput("", f"a message must be a JSON object, got {_kind(message)}")
    method = message.get("method")
    if not isinstance(method, str):
        raise InvalidInput("method", "is required (a string)")
    return message


def request_echo(message: dict[str, Any]) -> dict[str, Any]:
    """serviceId and appid of a request, for its answer, when they are well-formed enough to send back."""
    echo: dict[str, Any] = {}
    sid = message.get("serviceId")
    if isinstance(sid, int) and not isinstance(sid, bool):
        echo["serviceId"] = sid
    appid = message.get("appid")
    if isinstance(appid, str) and len(appid) <= 64 and is_text(appid):
        echo["appid"] = appid
    return echo


def check_browser_request(message: dict[str, Any]) -> None:
    """
    Check the fields of a browser request whose method is known (SPEC §3).

    C{serviceId} is required on loginReq and optional on the others (a
    session holding exactly one login may leave it out).
    """
    method = message["method"]
    if method == "loginReq" and "serviceId" not in message:
        raise InvalidInput("serviceId", "is required")
    if "serviceId" in message:
        require_int(message["serviceId"], "serviceId", 1, 2**31 - 1)
    if "appid" not in message:
        raise InvalidInput("appid", "is required")
    require_appid(message["appid"], "appid")
    if method == "loginReq":
        if "uname" not in message:
            raise InvalidInput("uname", "is required")
        require_str(message["uname"], "uname", MAX_UNAME)
    elif method == "aichatReq":
        if "content" not in message:
            raise InvalidInput("content", "is required")
        content = require_str(message["content"], "content", MAX_CONTENT)
        if not content.strip():
            raise InvalidInput("content", "must not be blank")
    elif method == "setStatusPushReq":
        if not isinstance(message.get("enabled"), bool):
            raise InvalidInput("enabled", "is required (true or false)")
    elif method == "setUserStateReq":
        from webtesting.givenstate import check_given

        if "given" not in message:
            raise InvalidInput("given", "is required")
        message["given"] = check_given(message["given"])


def validate_agent_info(message: dict[str, Any]) -> dict[str, Any]:
    """Check an agentInfoReq: serviceId and every service field but agentAddr."""
    out: dict[str, Any] = {}
    if "serviceId" not in message:
        raise InvalidInput("serviceId", "is required")
    out["serviceId"] = require_int(message["serviceId"], "serviceId", 1, 2**31 - 1)
    for name in SERVICE_FIELDS:
        if name == "agentAddr":
            continue
        if name not in message and name in OPTIONAL_FIELDS:
            out[name] = OPTIONAL_FIELDS[name]
            continue
        if name not in message:
            raise InvalidInput(name, "is required")
        out[name] = _check_field(name, message[name], name)
    return out
