"""
YAML configuration for the daemons, loaded into frozen objects.

Every daemon's configuration is a tree of frozen dataclasses. ``load`` reads a
YAML file with ``yaml.safe_load`` and checks it against that tree: unknown
keys, wrong types, values out of range and endpoint strings that do not parse
are all collected, then reported together in one ``ConfigError`` naming the
file and the dotted key of each problem. Nothing listens before this passes.

Relative paths in a file are taken relative to that file's folder, so
``twistd -n webtesting-web --config etc/web.yaml`` works from anywhere.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml
from twisted.internet import endpoints
from twisted.internet.interfaces import IReactorCore

from webtesting.statelayout import StateLayout

T = TypeVar("T")


class ConfigError(Exception):
    """One or more problems in a configuration file, one per line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(
            "\n".join(f"{source}: {problem}" for problem in problems)
        )


# Field kinds: a field's metadata says how its value is checked beyond its type.
SERVER_ENDPOINT = "server-endpoint"
PATH = "path"


def endpoint_field(default: str, **meta: Any) -> Any:
    """A listening address: a Twisted server endpoint string."""
    return field(default=default, metadata={"kind": SERVER_ENDPOINT, **meta})


def path_field(default: str) -> Any:
    """A filesystem path; a relative one is relative to the config file."""
    return field(default=default, metadata={"kind": PATH})


def number_field(default: float | int, minimum: float, maximum: float | None = None) -> Any:
    return field(default=default, metadata={"min": minimum, "max": maximum})


def check_server_endpoint(description: str) -> str | None:
    """
    Return why C{description} is not a usable server endpoint string, or None.

    Parsing needs a reactor but does not listen; the global reactor is only
    consulted for its interfaces here.
    """
    from twisted.internet import reactor

    try:
        endpoints.serverFromString(typing.cast(IReactorCore, reactor), description)
    except (ValueError, TypeError, KeyError) as e:
        return f"not a valid endpoint string ({e})"
    return None


#: The listen backlog of every server socket whose endpoint string names
#: none. Twisted's default is 50: a storm of logins overflows it, the kernel
#: drops the SYNs (or, with SYN cookies, the connections: the clients see
#: resets), and clients wait out a retransmission (1 s, then 3 s...). With
#: 1,024, a storm of 10,000 logins at 2,500 a second on one core still lost
#: 185-222 browsers' connections that way. Linux caps it at
#: net.core.somaxconn (4096 by default).
LISTEN_BACKLOG = 4096


def listening_endpoint(reactor: Any, description: str, backlog: int = LISTEN_BACKLOG) -> Any:
    """C{serverFromString}, with a listen backlog of C{backlog} on TCP and TLS unless C{description} sets one."""
    kind = description.split(":", 1)[0].strip().lower()
    if kind in ("tcp", "tcp6", "ssl") and "backlog=" not in description:
        description = f"{description}:backlog={backlog}"
    return endpoints.serverFromString(reactor, description)


def _type_name(tp: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    if tp in names:
        return names[tp]
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if typing.get_origin(tp) is list:
        return "a list"
    return str(tp)


class _Builder:
    def __init__(self, base_dir: str) -> None:
        self.base_dir = base_dir
        self.problems: list[str] = []

    def fail(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}" if key else message)

    def build(self, cls: type[T], data: Any, key: str) -> T | None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.fail(key, f"expected a mapping, got {_describe(data)}")
            return None
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for name in data:
            if name not in known:
                self.fail(_join(key, str(name)), f"unknown key (known: {', '.join(sorted(known))})")
        values: dict[str, Any] = {}
        for name, f in known.items():
            if name not in data:
                continue
            value = self.value(hints[name], f, data[name], _join(key, name))
            if value is not _INVALID:
                values[name] = value
        try:
            return cls(**values)
        except TypeError as e:  # a required field is missing
            self.fail(key, str(e))
            return None

    def value(self, tp: Any, f: dataclasses.Field[Any], raw: Any, key: str) -> Any:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(tp) if a is not type(None)]
            if raw is None:
                return None
            tp = options[0]
            origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            built = self.build(typing.cast(type, tp), raw, key)
            return _INVALID if built is None else built
        if origin is list:
            (item_type,) = typing.get_args(tp)
            if not isinstance(raw, list):
                self.fail(key, f"expected a list, got {_describe(raw)}")
                return _INVALID
            items = [self.value(item_type, f, item, f"{key}[{i}]") for i, item in enumerate(raw)]
            return _INVALID if _INVALID in items else tuple(items)
        if not _is_instance(raw, tp):
            self.fail(key, f"expected {_type_name(tp)}, got {_describe(raw)}")
            return _INVALID
        if tp is float:
            raw = float(raw)
        meta = f.metadata
        low, high = meta.get("min"), meta.get("max")
        if low is not None and raw < low or high is not None and raw > high:
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            self.fail(key, f"must be {bounds}, got {raw!r}")
            return _INVALID
        kind = meta.get("kind")
        if kind == SERVER_ENDPOINT:
            why = check_server_endpoint(raw)
            if why is not None:
                self.fail(key, f"{raw!r} is {why}")
                return _INVALID
        elif kind == PATH and raw:
            raw = os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(raw)))
        check: Callable[[Any], str | None] | None = meta.get("check")
        if check is not None:
            why = check(raw)
            if why is not None:
                self.fail(key, why)
                return _INVALID
        return raw


_INVALID = object()


def _is_instance(raw: Any, tp: Any) -> bool:
    if tp is float:
        return isinstance(raw, (int, float)) and not isinstance(raw, bool)
    if tp is int:
        return isinstance(raw, int) and not isinstance(raw, bool)
    return isinstance(raw, tp)


def _describe(raw: Any) -> str:
    if raw is None:
        return "nothing"
    return f"{type(raw).__name__} {raw!r}"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def from_mapping(cls: type[T], data: Any, source: str = "<config>", base_dir: str = ".") -> T:
    """Check C{data} against C{cls}; raise L{ConfigError} listing every problem."""
    builder = _Builder(base_dir)
    result = builder.build(cls, data, "")
    if builder.problems or result is None:
        raise ConfigError(source, builder.problems or ["invalid configuration"])
    return result


def load(cls: type[T], path: str | None) -> T:
    """
    Load C{cls} from the YAML file at C{path}, or its defaults when C{path} is None.

    Defaults go through the same checks so that a bad default cannot slip by.
    """
    if path is None:
        return from_mapping(cls, {}, "<defaults>", os.getcwd())
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(path, [f"cannot read: {e.strerror}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError(path, [f"not valid YAML: {e}"]) from None
    return from_mapping(cls, data, path, os.path.dirname(os.path.abspath(path)))


@dataclass(frozen=True)
class MySQLConfig:
    """How to reach a MySQL/MariaDB server."""

    host: str = "127.0.0.1"
    port: int = number_field(3306, 1, 65535)
    user: str = "root"
    password: str = ""
    database: str = "webtesting"
    connect_timeout: float = number_field(2.0, 0.1, 60)
    read_timeout: float = number_field(5.0, 0.1, 600)
    write_timeout: float = number_field(5.0, 0.1, 600)

    def __repr__(self) -> str:
        # Keep the password out of logs and tracebacks.
        return (
            f"MySQLConfig(host={self.host!r}, port={self.port}, user={self.user!r}, "
            f"password=<hidden>, database={self.database!r})"
        )


def _check_ws_path(value: str) -> str | None:
    if not value.startswith("/"):
        return f"must start with '/', got {value!r}"
    return None


def _check_ws_url(value: str) -> str | None:
    if value and not value.startswith(("ws://", "wss://")):
        return f"must be empty or a ws:// or wss:// address, got {value!r}"
    return None


@dataclass(frozen=True)
class SecretConfig:
    """The secret shared by the web server and its agents: inline, or in a file."""

    secret: str = ""
    secret_file: str = path_field("")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(secret=<hidden>, secret_file={self.secret_file!r})"

    def read(self, source: str = "configuration") -> str:
        """The secret; L{ConfigError} when there is none or its file is unreadable."""
        if self.secret:
            if len(self.secret) < 16:
                raise ConfigError(source, ["secret: must be at least 16 characters"])
            return self.secret
        if not self.secret_file:
            raise ConfigError(source, ["secret or secret_file: one is required (the agent link's shared secret)"])
        try:
            with open(self.secret_file, encoding="utf-8") as f:
                secret = f.read().strip()
        except OSError as e:
            raise ConfigError(source, [f"secret_file: cannot read {self.secret_file}: {e.strerror}"]) from None
        if len(secret) < 16:
            raise ConfigError(source, [f"secret_file: {self.secret_file} must hold at least 16 characters"])
        return secret


@dataclass(frozen=True, repr=False)
class SessionConfig(SecretConfig):
    """Login sessions: the secret that signs their cookies (shared by every
    web server process) and how long one lasts, in seconds."""

    lifetime: float = number_field(12 * 3600.0, 60, 30 * 86400)


@dataclass(frozen=True)
class LoginThrottleConfig:
    """Password guesses allowed per hour (webtesting/web/throttle.py), after a small burst."""

    per_username_hour: float = number_field(100.0, 1, 1_000_000)
    per_address_hour: float = number_field(1000.0, 1, 1_000_000)


def _check_page_url(value: str) -> str | None:
    if value and not value.startswith(("http://", "https://")):
        return f"must be empty or an http:// or https:// address, got {value!r}"
    return None


@dataclass(frozen=True)
class AccessLogConfig:
    """The HTTP access log (combined format), apart from the application's log."""

    # Empty: no access log. A relative path is relative to the config file.
    path: str = path_field("")
    # Rotated when it passes max_bytes; keep rotated files (path.1 ... path.N).
    max_bytes: int = number_field(10 * 1024 * 1024, 1024, 2**40)
    keep: int = number_field(5, 1, 1000)


@dataclass(frozen=True)
class HTTPConfig:
    listen: str = endpoint_field("tcp:2019")
    # Where people open the pages (scheme://host[:port]); the only origin
    # whose pages may use the API and the WebSocket, besides
    # websocket.allowed_origins. Empty: built from `listen`.
    public_url: str = field(default="", metadata={"check": _check_page_url})
    webroot: str = path_field("")
    max_body_bytes: int = number_field(1024 * 1024, 1024, 64 * 1024 * 1024)
    # Prometheus metrics at /metrics on this port (webtesting/metrics.py).
    metrics: bool = True
    access_log: AccessLogConfig = AccessLogConfig()
    sessions: SessionConfig = SessionConfig()
    login_throttle: LoginThrottleConfig = LoginThrottleConfig()


@dataclass(frozen=True)
class BrowserWebSocketConfig:
    listen: str = endpoint_field("tcp:2020")
    path: str = field(default="/WebTesting", metadata={"check": _check_ws_path})
    public_url: str = field(default="", metadata={"check": _check_ws_url})
    max_message_bytes: int = number_field(64 * 1024, 256, 16 * 1024 * 1024)
    request_deadline: float = number_field(10.0, 0.1, 600)
    # A login may wait its turn at the agent behind a storm of others.
    login_deadline: float = number_field(60.0, 0.1, 3600)
    # Origins (scheme://host[:port]) allowed besides pages from the same host.
    allowed_origins: list[str] = field(default_factory=list)
    # Open browser WebSockets one account may hold on this web server.
    max_per_account: int = number_field(20, 1, 100_000)
    # Bot logins one account may hold at once on this web server.
    max_logins_per_account: int = number_field(50, 1, 1_000_000)


@dataclass(frozen=True)
class AgentLinksConfig:
    auth: SecretConfig = SecretConfig()
    sync_interval: float = number_field(30.0, 0.05, 3600)
    retry_initial: float = number_field(0.5, 0.01, 600)
    retry_max: float = number_field(4.0, 0.01, 3600)
    # Once an agent has been unreachable this many seconds (0: never) it is
    # retried every retry_slow_max s (±10 %) instead: still noticed when it
    # comes back, while many dead agents cost little.
    retry_slow_after: float = number_field(60.0, 0, 1_000_000)
    retry_slow_max: float = number_field(30.0, 0.01, 3600)
    connect_timeout: float = number_field(5.0, 0.1, 120)
    ping_interval: float = number_field(2.0, 0.1, 600)
    ping_timeout: float = number_field(2.0, 0.1, 600)
    # PEM certificate(s) a wss:// agent must present (its own self-signed
    # certificate pins it); empty: the system's trusted authorities.
    ca_file: str = path_field("")


@dataclass(frozen=True)
class RegistryConfig:
    sqlite_path: str = path_field("webtesting-registry.sqlite3")
    mysql: MySQLConfig | None = None
    request_timeout: float = number_field(1.0, 0.05, 60)
    retry_interval: float = number_field(2.0, 0.05, 3600)
    queue_timeout: float = number_field(10.0, 0.05, 600)
    threads: int = number_field(4, 1, 64)


@dataclass(frozen=True)
class HistoryConfig:
    """The conversation history (webtesting/web/history.py)."""

    # Record new turns (false: nothing is recorded; what was kept stays readable).
    record: bool = True
    # Turns kept per bot user (service, appid, uname); a turn starts with a chat.
    turns: int = number_field(200, 1, 100_000)
    # Recorded events are written this often (seconds), or as soon as `batch` wait.
    flush_interval: float = number_field(1.0, 0.01, 60)
    batch: int = number_field(10000, 1, 1_000_000)
    # Events kept in memory while the database is away; the oldest go beyond.
    max_buffer: int = number_field(50000, 100, 10_000_000)


@dataclass(frozen=True)
class HealthHistoryConfig:
    """Each service's health changes and latency samples (webtesting/web/healthhistory.py)."""

    keep_days: float = number_field(7.0, 0.01, 3650)
    # One latency sample per service this often (seconds): the median agent-link ping round trip.
    sample_interval: float = number_field(60.0, 1, 86400)
    # Rows kept at most in each of the two tables; the oldest go first.
    max_rows: int = number_field(2_000_000, 1000, 1_000_000_000)


@dataclass(frozen=True)
class WebConfig:
    """Everything ``twistd webtesting-web`` reads; see etc/web.yaml."""

    # Processes serving the same ports (webtesting.workers); a change takes a restart.
    workers: int = number_field(1, 1, 64)
    http: HTTPConfig = HTTPConfig()
    websocket: BrowserWebSocketConfig = BrowserWebSocketConfig()
    registry: RegistryConfig = RegistryConfig()
    agents: AgentLinksConfig = AgentLinksConfig()
    history: HistoryConfig = HistoryConfig()
    health_history: HealthHistoryConfig = HealthHistoryConfig()


@dataclass(frozen=True)
class AgentListenConfig:
    listen: str = endpoint_field("tcp:2021")
    path: str = field(default="/WebTesting/Agent", metadata={"check": _check_ws_path})


@dataclass(frozen=True)
class AgentUsersConfig:
    poll_interval: float = number_field(1.0, 0.05, 60)
    login_timeout: float = number_field(5.0, 0.1, 120)
    # A lost WxService link is retried after retry_initial s, doubling up to retry_max.
    retry_initial: float = number_field(0.5, 0.01, 600)
    retry_max: float = number_field(4.0, 0.01, 3600)
    # WebSocket ping/pong on the connection each service's health check keeps
    # open to the bot: a frozen bot is found within ping_interval +
    # ping_timeout seconds, and then every user's connection must answer a
    # ping within ping_timeout. Each user's connection is also pinged on its
    # own every link_ping_interval seconds (a connection lost without a word).
    ping_interval: float = number_field(2.0, 0.1, 600)
    ping_timeout: float = number_field(2.0, 0.1, 600)
    link_ping_interval: float = number_field(30.0, 0.1, 3600)
    # Users' WxService connections opening (TCP and WebSocket handshake) at
    # once, per service; the others wait their turn. A storm of logins then
    # reaches the bot at the pace it accepts them.
    connects_in_flight: int = number_field(64, 1, 100000)


@dataclass(frozen=True)
class AgentBackendConfig:
    timeout: float = number_field(2.0, 0.05, 60)
    # Redis Cluster (and MySQL) retried after retry_initial s, doubling up to retry_max.
    retry_initial: float = number_field(0.5, 0.01, 600)
    retry_max: float = number_field(4.0, 0.01, 3600)


@dataclass(frozen=True)
class AgentHealthConfig:
    """How the agent checks each service (WxService, every Redis master, MySQL) on its own."""

    interval: float = number_field(5.0, 0.05, 3600)  # seconds between checks while up
    interval_down: float = number_field(1.0, 0.05, 3600)  # ... while down or a change is unconfirmed
    confirm: int = number_field(2, 1, 100)  # agreeing checks in a row before a change is reported


def _check_optional_endpoint(value: str) -> str | None:
    return check_server_endpoint(value) if value else None


@dataclass(frozen=True)
class AgentMetricsConfig:
    # Where Prometheus scrapes /metrics (a Twisted endpoint string); empty: nowhere.
    listen: str = field(default="", metadata={"check": _check_optional_endpoint})


@dataclass(frozen=True)
class AgentConfig:
    """Everything ``twistd webtesting-agent`` reads; see etc/agent.yaml."""

    # Processes serving the same port (webtesting.workers); a change takes a restart.
    workers: int = number_field(1, 1, 64)
    websocket: AgentListenConfig = AgentListenConfig()
    auth: SecretConfig = SecretConfig()
    users: AgentUsersConfig = AgentUsersConfig()
    backends: AgentBackendConfig = AgentBackendConfig()
    health: AgentHealthConfig = AgentHealthConfig()
    metrics: AgentMetricsConfig = AgentMetricsConfig()
    state: StateLayout = StateLayout()


def default_webroot() -> str:
    """The checkout's webroot/, used when the configuration names none."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "webroot")


def listen_address(description: str) -> tuple[bool, str, int] | None:
    """
    Where a server endpoint string would listen: (TLS or not, interface,
    port), or None for one that is not TCP (a UNIX socket, say).

    Asked of Twisted itself, through public API only: the endpoint listens
    on a L{MemoryReactor}, which records the arguments without opening any
    socket. Raises like C{serverFromString} for a string that does not parse.
    """
    from twisted.internet.protocol import Factory
    from twisted.internet.testing import MemoryReactor

    reactor = MemoryReactor()
    endpoints.serverFromString(reactor, description).listen(Factory())
    if reactor.tcpServers:
        port, _factory, _backlog, interface = reactor.tcpServers[0]
        return False, interface, port
    if reactor.sslServers:
        port, _factory, _context, _backlog, interface = reactor.sslServers[0]
        return True, interface, port
    return None


def endpoint_port(description: str) -> int | None:
    """The port of a tcp/tcp6/ssl endpoint string, or None (e.g. a UNIX socket)."""
    address = listen_address(description)
    return address[2] if address is not None else None
