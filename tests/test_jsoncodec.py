"""
webtesting.jsoncodec: orjson only where it gives exactly what the json
module gives. Differential: every value and every byte string Hypothesis
draws is read and written both ways, and must come out the same (values,
their types, bytes) or be left to the json module.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from webtesting import jsoncodec
from webtesting.protocol import InvalidInput, parse_json_object

# Unicode text without lone surrogates (UTF-8 cannot hold them; both libraries refuse them).
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
# Ints across 64 bits and beyond, where orjson stops reading them as ints.
INTS = st.one_of(st.integers(), st.integers(-2**64 - 5, 2**64 + 5),
                 st.sampled_from([2**63 - 1, -2**63, 2**63, -2**63 - 1, 2**64 - 1, 2**64, 10**30]))
SCALARS = st.one_of(TEXT, INTS, st.booleans(), st.none(), st.floats(allow_nan=True, allow_infinity=True))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(TEXT, inner, max_size=5)), max_leaves=12)
FLAT = st.dictionaries(TEXT, st.one_of(TEXT, INTS, st.booleans(), st.none()), max_size=8)


def _same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (1 is not 1.0 nor True); NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def _json_loads(payload: bytes) -> Any:
    return json.loads(payload.decode("utf-8"))


class ReadingTests(SynchronousTestCase):
    def check(self, payload: bytes) -> None:
        fast = jsoncodec.loads_flat(payload)
        if fast is None:
            return  # the json module decides
        self.assertTrue(_same(fast, _json_loads(payload)), payload)

    @settings(max_examples=600, deadline=None)
    @given(VALUES, st.sampled_from([{}, {"separators": (",", ":")}, {"ensure_ascii": False}, {"indent": 1}]))
    def test_what_json_writes_is_read_alike(self, value: Any, style: dict[str, Any]) -> None:
        self.check(json.dumps(value, **style).encode())

    @settings(max_examples=300, deadline=None)
    @given(FLAT)
    def test_flat_objects_are_read_by_orjson(self, value: dict[str, Any]) -> None:
        payload = json.dumps(value, ensure_ascii=False).encode()
        fast = jsoncodec.loads_flat(payload)
        if all(-2**63 <= v <= 2**64 - 1 for v in value.values() if type(v) is int):
            self.assertIsNotNone(fast, payload)  # the fast way is taken where it can be
        self.check(payload)

    @settings(max_examples=600, deadline=None)
    @given(st.one_of(st.binary(max_size=40),
                     st.builds(lambda v, cut, junk: json.dumps(v).encode()[:cut] + junk,
                               FLAT, st.integers(0, 60), st.binary(max_size=4))))
    def test_any_bytes_are_read_alike_or_left_to_json(self, payload: bytes) -> None:
        try:
            _json_loads(payload)
        except (UnicodeDecodeError, ValueError, RecursionError):
            self.assertIsNone(jsoncodec.loads_flat(payload), payload)  # an error is json's to word
            return
        self.check(payload)

    def test_the_edges_are_left_to_json(self) -> None:
        for payload in (b'{"a":-9223372036854775809}', b'{"a":18446744073709551616}', b'{"a":1.5}',
                        b'{"a":"\\ud800"}', b'{"a":"\\udc00x"}', b'{"a":NaN}', b'{"a":Infinity}', b'{"a":1e400}',
                        b'{"a":[1]}', b'{"a":{}}', b'[1]', b'"x"', b'\xef\xbb\xbf{}', b'{"a":1}x', b'',
                        b'{"a":"\xff"}'):
            self.assertIsNone(jsoncodec.loads_flat(payload), payload)
        # And the json module keeps its answers: an exact int, a refused surrogate.
        self.assertEqual(parse_json_object(b'{"method":"x","a":-9223372036854775809}')["a"], -9223372036854775809)
        with self.assertRaisesRegex(InvalidInput, "half a surrogate pair"):
            parse_json_object(b'{"method":"x","a":"\\ud800"}')

    def test_flat_objects_are_read_by_orjson_with_the_last_duplicate(self) -> None:
        self.assertEqual(jsoncodec.loads_flat(b'{"a":1,"b":"x","a":2}'), {"a": 2, "b": "x"})


class WritingTests(SynchronousTestCase):
    @settings(max_examples=600, deadline=None)
    @given(st.one_of(VALUES, FLAT))
    def test_written_as_json_writes_it(self, value: Any) -> None:
        expected = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        self.assertEqual(jsoncodec.text(value), expected)
        self.assertEqual(jsoncodec.data(value), expected.encode())

    def test_what_neither_can_write(self) -> None:
        for value in ({"a": object()}, {"a": {1, 2}}, [b"x"]):
            self.assertRaises(TypeError, jsoncodec.data, value)
            self.assertRaises(TypeError, jsoncodec.text, value)

    def test_keys_and_subclasses_orjson_refuses(self) -> None:
        class Name(str):
            pass

        for value in ({1: "x"}, {"a": Name("y")}, {"a": 2**64}, {None: 1}):
            self.assertEqual(jsoncodec.data(value),
                             json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


class WithoutOrjsonTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(jsoncodec, "_orjson", None)

    def test_the_json_module_does_it_all(self) -> None:
        self.assertIsNone(jsoncodec.loads_flat(b'{"method":"x"}'))
        self.assertEqual(jsoncodec.data({"a": "é", "b": 1}), '{"a":"é","b":1}'.encode())
        self.assertEqual(parse_json_object(b'{"method":"x","n":2}'), {"method": "x", "n": 2})
