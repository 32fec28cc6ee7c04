"""The OpenAPI description of the HTTP API: valid, served, and true to the routes the server answers."""

from __future__ import annotations

import re

from openapi_spec_validator import validate
from twisted.trial import unittest

from tests.support.registry import RunningRegistry
from webtesting.config import RegistryConfig
from webtesting.web import openapi
from webtesting.web.http import RegistryAPI

# Routes that are not API operations: the pages, the redirect to them, and
# the fallbacks that answer a wrong method on an API path with a JSON 405.
NOT_API = re.compile(r"^/$|^/WebTesting/$|<path:")


def served_operations() -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route the server's Klein app answers."""
    found = set()
    for rule in RegistryAPI.app.url_map.iter_rules():
        if NOT_API.search(rule.rule):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                found.add((method.lower(), path))
    return found


def described_operations(document: dict[str, object]) -> set[tuple[str, str]]:
    paths = document["paths"]
    assert isinstance(paths, dict)
    return {(method, path) for path, item in paths.items() for method in item}


class OpenAPITests(unittest.TestCase):
    def test_valid(self) -> None:
        """The document is valid OpenAPI 3.1 (openapi-spec-validator)."""
        document = openapi.document()
        self.assertEqual(document["openapi"], "3.1.0")
        validate(document)  # raises on the first problem

    def test_every_route_is_described_and_the_reverse(self) -> None:
        """Each route the server answers is in the document, and nothing else is."""
        served = served_operations()
        self.assertIn(("put", "/WebTesting/Service/addServices"), served)  # the walk finds routes at all
        described = described_operations(openapi.document())
        self.assertEqual(sorted(served - described), [], "routes missing from the document")
        self.assertEqual(sorted(described - served), [], "described but not served")

    def test_admin_operations_say_so(self) -> None:
        """The registry's writes need a session and say they are for admins; logging in needs neither."""
        paths = openapi.document()["paths"]
        assert isinstance(paths, dict)
        for path, method in (("/WebTesting/Service/addServices", "put"),
                             ("/WebTesting/Service/delServices", "delete"),
                             ("/WebTesting/Service/updateServices", "post")):
            operation = paths[path][method]
            self.assertEqual(operation["security"], [{"session": []}], path)
            self.assertIn("Admins only", operation["description"], path)
        self.assertNotIn("security", paths["/WebTesting/Account/login"]["post"])


class ServedTests(unittest.TestCase):
    async def setUp(self) -> None:
        self.running = RunningRegistry(RegistryConfig(sqlite_path=self.mktemp() + ".sqlite3"))
        self.client = await self.running.start(role=None)  # nobody logged in
        self.addCleanup(self.running.stop)

    async def test_served_without_a_login(self) -> None:
        """GET /WebTesting/openapi.json answers the same document as JSON, with no session."""
        status, answer = await self.client.call("GET", "/WebTesting/openapi.json", content_type=None)
        self.assertEqual(status, 200)
        self.assertEqual(answer, openapi.document())
        self.assertEqual(self.client.last_headers.getRawHeaders(b"content-type"), [b"application/json"])
        status, _ = await self.client.call("GET", "/WebTesting/Service/getServiceList", content_type=None)
        self.assertEqual(status, 401)  # while the API itself still needs one
