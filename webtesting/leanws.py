"""
Smaller Autobahn connections: what every browser session (web server) and
every bot user (agent) pays for its WebSocket.

Autobahn copies some 40 options from its factory into each new protocol
(C{_connectionMade}: "only if not already set on protocol instance", and
C{hasattr} finds class attributes), and gives each its own C{TrafficStats}
of 12 counters that nobody here reads. Measured with
bench/bench_session_memory.py, that is about 2.3 KB of a connection's
Python heap. So:

- L{LeanFactory} keeps, after each C{setProtocolOptions}, a subclass of its
  protocol whose class attributes are the factory's options: new
  connections find them there and copy nothing. (Options set later apply to
  later connections, as with Autobahn's copy.)
- L{LeanProtocol} points every connection at one shared C{TrafficStats}.

The agent's reconnecting link factories (one per bot user, L{webtesting.wslink})
also take Autobahn's defaults from their class (L{class_defaults}), share
their protocol subclass with every factory of the same options
(L{lean_class}), and share one batched timer (L{shared_batched_timer}).
"""

from __future__ import annotations

import types
from collections import OrderedDict
from typing import Any

import txaio
from autobahn.websocket.protocol import TrafficStats
from autobahn.websocket.utf8validator import Utf8Validator

# One for every connection of this process: counted into, never read.
SHARED_TRAFFIC = TrafficStats()


# Autobahn's per-connection state that, for most of an open connection's life, holds the value
# given here: declared on the class, so that an open connection keeps no copy of its own (Autobahn
# sets one again when the value changes, and reads fall back to these).
STATE_DEFAULTS: dict[str, Any] = {
    **dict.fromkeys((
        "_perMessageCompress", "trackedTimings", "wasNotCleanReason", "localCloseCode", "localCloseReason",
        "remoteCloseCode", "remoteCloseReason", "serverConnectionDropTimeoutCall", "openHandshakeTimeoutCall",
        "closeHandshakeTimeoutCall", "autoPingTimeoutCall", "autoPingPending", "autoPingPendingCall",
        "autoPingPendingSent", "websocket_protocol_in_use", "current_frame"), None),
    **dict.fromkeys((
        "triggered", "wasMaxFramePayloadSizeExceeded", "wasMaxMessagePayloadSizeExceeded", "closedByMe",
        "failedByMe", "droppedByMe", "wasClean", "wasServerConnectionDropTimeout", "wasOpenHandshakeTimeout",
        "wasCloseHandshakeTimeout", "wasServingFlashSocketPolicyFile", "inside_message"), False),
    "send_state": 0,
    "autoPingPendingSeq": 0,
}

# What only the opening handshake reads (the request or response, its headers, the key):
# dropped once the connection is open.
HANDSHAKE_ONLY = frozenset((
    "http_request_data", "http_response_data", "http_status_line", "http_headers", "http_request_uri",
    "http_request_path", "http_request_params", "http_request_host", "websocket_protocols", "websocket_origin",
    "websocket_extensions", "_wskey", "websocket_key",
))


# Also dropped on opening (no message is under way yet): the UTF-8 validator, made again when used.
_DROPPED_ON_OPEN = HANDSHAKE_ONLY | {"utf8validator"}


class _SendQueue(list):  # type: ignore[type-arg]
    """Autobahn's send queue (used only by chopped or synchronous sends): 56 bytes, where a deque takes 760."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class _OnFirstUse:
    """A class attribute that makes C{factory()} for an instance the first time it is read there."""

    def __init__(self, name: str, factory: Any) -> None:
        self.name, self.factory = name, factory

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.factory()
        return value


class LeanProtocol:
    """Mixed in before Autobahn's protocol class."""

    trafficStats = SHARED_TRAFFIC
    # Autobahn's incremental UTF-8 validator (about 330 bytes with its C state) is used only by its own
    # frame parser, which webtesting.fastframes leaves the short way's frames out of.
    utf8validator = _OnFirstUse("utf8validator", Utf8Validator)
    # The events Autobahn's observers may ask for: the same list for every connection.
    _valid_events = ["message"]  # noqa: RUF012 - read-only, as Autobahn's own per-connection copy
    _transport_details = None
    # Made when first read (Autobahn makes them with the connection; LeanProtocol.__init__ drops them
    # before anyone can hold them): the Deferred that fires on close (Autobahn reads it to fire it), and
    # the results of the observers' last events (written by Autobahn's "message" event, which
    # fastframes' short way does not fire).
    # (txaio's framework is chosen when autobahn.twisted is imported: looked up when called.)
    is_closed = _OnFirstUse("is_closed", lambda: txaio.create_future())  # type: ignore[attr-defined]
    _results = _OnFirstUse("_results", lambda: {"message": None})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Made up front by Autobahn, held by nobody yet: made again when first read.
        state = self.__dict__
        state.pop("is_closed", None)
        if state.get("_results") == {"message": None}:
            del state["_results"]
        if state.get("_valid_events") == LeanProtocol._valid_events:
            del state["_valid_events"]

    def _connectionMade(self) -> None:
        super()._connectionMade()  # type: ignore[misc]
        del self.trafficStats  # Autobahn's own for this connection: the class's shared one is read instead
        self.send_queue = _SendQueue()

    def _onOpen(self) -> None:
        self._shrink()
        super()._onOpen()  # type: ignore[misc]
        # Read only on opening (TLS channel binding), just done.
        self.__dict__.pop("_transport_details", None)

    def _shrink(self) -> None:
        """Drop what an open connection no longer needs: the handshake's leftovers, copies of the class's defaults."""
        compact(self, _DROPPED_ON_OPEN)


_MISSING = object()


def compact(obj: Any, drop: frozenset[str] = frozenset()) -> None:
    """
    Rebuild C{obj}'s instance dict without the names in C{drop} and without
    the attributes that hold what its class holds (the same object, or an
    equal None, bool, int or float), so that reads find the same values.
    Python never shrinks a dict: Autobahn's ~90 attributes per connection
    take 3.3 KB of dict alone, 832 bytes at up to 42 entries, 464 at up to 21.
    """
    cls = type(obj)
    kept = {}
    for name, value in vars(obj).items():
        if name in drop:
            continue
        default = getattr(cls, name, _MISSING)
        if value is default or (type(value) is type(default) and type(value) in _SCALARS and value == default):
            continue
        kept[name] = value
    obj.__dict__ = kept


_SCALARS = (type(None), bool, int, float)


for _name, _value in STATE_DEFAULTS.items():
    setattr(LeanProtocol, _name, _value)


# The classes made, the most recently used last, at most _MAX_CLASSES (a class evicted lives on in
# the factories that use it).
_CLASSES: OrderedDict[tuple[Any, ...], type] = OrderedDict()
_MAX_CLASSES = 256


def _frozen(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return repr(value)
    if isinstance(value, types.FunctionType) and value.__closure__ is None:
        # Autobahn gives each factory a lambda of its own (perMessageCompressionAccept): the same code.
        return ("function", value.__code__)
    return value


def lean_class(base: type, factory: Any) -> type:
    """
    A subclass of protocol class C{base} whose class attributes are
    C{factory}'s options, one per distinct set of options (many factories
    with the same options share it).
    """
    options = {name: getattr(factory, name) for name in base.CONFIG_ATTRS  # type: ignore[attr-defined]
               if hasattr(factory, name)}
    key = (base, *sorted((name, _frozen(value)) for name, value in options.items()))
    cls = _CLASSES.get(key)
    if cls is not None:
        _CLASSES.move_to_end(key)
        return cls
    attributes = {name: _as_class_attribute(value) for name, value in options.items()}
    cls = _CLASSES[key] = type(base.__name__, (base,), {**attributes, "__module__": base.__module__})
    while len(_CLASSES) > _MAX_CLASSES:
        _CLASSES.popitem(last=False)
    return cls


def _as_class_attribute(value: Any) -> Any:
    """A function (e.g. perMessageCompressionAccept) stays a plain function when read off an instance."""
    return staticmethod(value) if callable(value) and not isinstance(value, type) else value


class LeanFactory:
    """Mixed in before Autobahn's factory class; its C{protocol} should mix in L{LeanProtocol}."""

    _lean_base: Any = None

    def setProtocolOptions(self, *args: Any, **options: Any) -> None:
        super().setProtocolOptions(*args, **options)  # type: ignore[misc]
        self._lean()

    def _lean(self) -> None:
        base = self._lean_base
        if base is None:
            base = self._lean_base = getattr(self, "protocol")  # noqa: B009 - Autobahn's, untyped
        self.protocol = lean_class(base, self)


def class_defaults(factory_class: type, template: Any) -> None:
    """
    Give C{factory_class} Autobahn's default options (read off C{template},
    a factory as Autobahn makes it) as class attributes, so that its
    instances hold only the options set on them; the class must not call
    Autobahn's C{resetProtocolOptions} (which sets them all on the instance).
    """
    for name in template.protocol.CONFIG_ATTRS:
        setattr(factory_class, name, _as_class_attribute(getattr(template, name)))


# One batched timer for every factory that asks (Autobahn makes one per factory; a reconnecting
# factory per bot user made one per user). txaio's timers run on txaio's own loop, whatever the
# factory's reactor: one per process.
_TIMER: list[Any] = []


def shared_batched_timer(timer: Any) -> Any:
    """The first batched timer given (C{timer}: this factory's own, dropped if one is kept)."""
    if not _TIMER:
        _TIMER.append(timer)
    return _TIMER[0]
