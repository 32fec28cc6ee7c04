"""
The HTTP API's routes in memory, with no socket (treq.testing.StubTreq): the answers that need no
database. The real-server tests (test_registry_api and others) keep covering the rest end to end.
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.trial import unittest

from webtesting.config import RegistryConfig
from webtesting.web import openapi
from webtesting.web.accounts import SessionStore
from webtesting.web.http import RegistryAPI
from webtesting.web.registry import open_registry


class StubbedRoutesTests(unittest.TestCase):
    def setUp(self) -> None:
        # The registry's database is never started: none of these requests may touch it.
        registry = open_registry(RegistryConfig(sqlite_path=self.mktemp() + ".sqlite3"), reactor)
        sessions = SessionStore(registry.db, registry.dialect_name, 3600)
        api = RegistryAPI(registry, "webroot", lambda request: "ws://127.0.0.1:2020/WebTesting", sessions)
        self.treq = StubTreq(api.app.resource())

    def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, list[bytes]], bytes]:
        d = self.treq.request(method, f"http://127.0.0.1{path}", **kwargs)
        self.treq.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        return response.code, dict(response.headers.getAllRawHeaders()), body

    def test_openapi_document(self) -> None:
        """The OpenAPI document is served as JSON, the same as the module builds."""
        code, headers, body = self.request("GET", "/WebTesting/openapi.json")
        self.assertEqual(code, 200)
        self.assertEqual(headers[b"Content-Type"], [b"application/json"])
        self.assertEqual(json.loads(body), openapi.document())

    def test_metrics(self) -> None:
        """/metrics answers the text exposition format."""
        code, headers, body = self.request("GET", "/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(headers[b"Content-Type"][0].startswith(b"text/plain"))
        self.assertIn(b"# TYPE webtesting_frames_total counter", body)

    def test_no_session_is_401(self) -> None:
        """Without a session cookie every API read is 401, as JSON, before any database work."""
        for path in ("/WebTesting/Service/getServices", "/WebTesting/Service/getServiceList",
                     "/WebTesting/Account/me", "/WebTesting/Cases/list", "/WebTesting/History/list"):
            code, _headers, body = self.request("GET", path)
            expected = {"result": 401, "msg": "log in first", "code": "not_logged_in"}
            self.assertEqual((code, json.loads(body)), (401, expected), path)

    def test_wrong_method_and_unknown_path(self) -> None:
        """A known API path with the wrong method is a JSON 405; an unknown one a JSON 404."""
        code, headers, body = self.request("GET", "/WebTesting/Service/addServices")
        self.assertEqual((code, json.loads(body)["result"]), (405, 405))
        self.assertEqual(headers[b"Allow"], [b"PUT"])
        code, _headers, body = self.request("GET", "/WebTesting/Service/nothingHere")
        self.assertEqual((code, json.loads(body)["result"]), (404, 404))
