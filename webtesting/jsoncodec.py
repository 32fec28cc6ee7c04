"""
JSON on the relay's hot path: orjson where it gives exactly what the json
module gives, the json module everywhere else.

Every chat crosses three parses and four encodings of small, flat objects
(a method, a few strings and ints). The json module takes about 2 µs to read
one and, even with its C encoder kept (L{text}), about 1 µs to write one;
orjson about 0.4 and 0.15. The two disagree at the edges, so orjson is used
only where they cannot:

- L{loads_flat} takes orjson's value only for an object whose values are all
  strings, ints, booleans or null. orjson reads an integer beyond 64 bits as
  a float (a float here sends it to the json module); it refuses what json
  reads but this system refuses anyway (a lone surrogate escape, NaN,
  Infinity) and what json refuses too. Anything else, and every error, is
  left to the json module, so error texts stay its own.
- L{data} writes with orjson under the same condition (there its output is
  the json module's byte for byte), and with the json module otherwise.

Without orjson installed (a platform with no wheel) everything goes through
the json module, a little slower.
"""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency; this keeps a platform without a wheel working
    _orjson = None  # type: ignore[assignment]

# The value types of an object both libraries read and write alike.
_FLAT = frozenset({str, int, bool, type(None)})


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# json.dumps makes a new encoder for every call, about 2 µs per message: the
# C encoder is made once. No circular-reference check (markers None): what is
# written here is a tree built from parsed JSON and literals.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_compact = (_c_make_encoder(None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, True)
            if _c_make_encoder is not None else None)


def text(value: Any) -> str:
    """C{value} as C{json.dumps(value, ensure_ascii=False, separators=(",", ":"))} writes it."""
    if _compact is None:  # pragma: no cover - CPython has the C encoder
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return "".join(_compact(value, 0))


def _flat(value: Any) -> bool:
    return type(value) is dict and _FLAT.issuperset(map(type, value.values()))


def data(value: Any) -> bytes:
    """L{text} of C{value}, UTF-8 encoded."""
    if _orjson is not None and _flat(value):
        try:
            return _orjson.dumps(value)
        except TypeError:  # an int beyond 64 bits, a str subclass: the json module writes those
            pass
    return text(value).encode()


def loads_flat(payload: bytes) -> dict[str, Any] | None:
    """
    The object C{payload} holds, as C{json.loads} reads it, when it is a flat
    object (see the module); C{None} when the json module must decide
    (anything else, including every error).
    """
    if _orjson is None:
        return None
    try:
        value = _orjson.loads(payload)
    except _orjson.JSONDecodeError:
        return None
    return value if _flat(value) else None
