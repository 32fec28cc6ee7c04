"""The one parse step shared by every leg (L{webtesting.protocol.parse_json}), with no network."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from webtesting.protocol import InvalidInput, NotJSON, parse_json, parse_json_object, request_echo


class ParseJSONTests(SynchronousTestCase):
    def test_lone_surrogates_are_refused_naming_the_field(self) -> None:
        """A lone surrogate escape anywhere in the JSON is refused, naming the field the way a client wrote it."""
        cases = [
            (rb'{"method":"loginReq","uname":"\ud800"}', "uname"),
            (rb'{"method":"aichatReq","content":"hi \udc00"}', "content"),
            (rb'[{"description":"ok"},{"redisCluster":[{"host":"\uDBFF"}]}]', "[1].redisCluster[0].host"),
            (rb'{"a":{"b":["x","\ude00 tail"]}}', "a.b[1]"),
            (rb'"\ud800"', ""),
        ]
        for payload, where in cases:
            with self.assertRaises(InvalidInput) as caught:
                parse_json(payload)
            self.assertNotIsInstance(caught.exception, NotJSON)
            self.assertEqual(caught.exception.where, where, payload)
            self.assertIn("Unicode text", str(caught.exception))
            str(caught.exception).encode("utf-8")  # the reason itself can be sent

    def test_surrogate_in_a_field_name(self) -> None:
        """A field name with a lone surrogate is refused, naming the object that holds it."""
        with self.assertRaises(InvalidInput) as caught:
            parse_json(rb'{"method":"loginReq","x":{"\ud800":1}}')
        self.assertEqual(caught.exception.where, "x")
        self.assertIn("field name", caught.exception.problem)

    def test_text_that_only_looks_like_a_surrogate_passes(self) -> None:
        """A valid surrogate pair, an escaped backslash before u-d800 and plain text all pass unchanged."""
        self.assertEqual(parse_json(rb'{"c":"\ud83d\ude00"}'), {"c": "\U0001F600"})
        self.assertEqual(parse_json(rb'{"c":"\\ud800"}'), {"c": "\\ud800"})
        self.assertEqual(parse_json('{"c":"你好"}'.encode()), {"c": "你好"})

    def test_a_string_payload_with_a_raw_surrogate(self) -> None:
        """A str payload holding a raw lone surrogate (not an escape) is refused too."""
        with self.assertRaises(InvalidInput) as caught:
            parse_json('{"c":"\ud800"}')
        self.assertEqual(caught.exception.where, "c")

    def test_request_kept_for_the_answer(self) -> None:
        """An object with a readable method is kept on the error, so that the answer can be the request's own."""
        with self.assertRaises(InvalidInput) as caught:
            parse_json_object(rb'{"method":"loginReq","serviceId":1,"appid":"1.00002","uname":"\ud800"}')
        self.assertEqual(caught.exception.request and caught.exception.request["method"], "loginReq")
        with self.assertRaises(InvalidInput) as caught:
            parse_json_object(rb'{"method":"\ud800"}')
        self.assertIsNone(caught.exception.request)
        self.assertEqual(request_echo({"serviceId": 1, "appid": "\ud800"}), {"serviceId": 1})

    def test_not_json(self) -> None:
        """Invalid UTF-8, broken JSON, nesting deeper than the parser goes and over-long integers are NotJSON."""
        for payload, words in [
            (b"\xff\xfe", "not UTF-8"),
            (b"{nope", "not valid JSON"),
            (b"[" * 100_000, "nested too deeply"),
            (b"1" * 5000, "not valid JSON"),
        ]:
            with self.assertRaises(NotJSON) as caught:
                parse_json(payload)
            self.assertIn(words, str(caught.exception))
