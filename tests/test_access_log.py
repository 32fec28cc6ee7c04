"""The web server's HTTP access log: combined format, a file of its own, rotated by size, never in the app log."""

from __future__ import annotations

import io
import os
import re

import treq
from twisted.internet import reactor
from twisted.python import log as legacy_log
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.static import Data

from webtesting import config
from webtesting.web.http import make_site

# 127.0.0.1 - - [07/Dec/2026:05:12:01 +0000] "GET /hello HTTP/1.1" 200 5 "-" "agent"
COMBINED = re.compile(r'^"?127\.0\.0\.1"? - - \[[^]]+\] "GET /hello\?n=\d+ HTTP/1\.1" 200 5 "-" "access-test"$')


class AccessLogTests(unittest.TestCase):
    async def serve(self, **access_log: object) -> str:
        root = Resource()
        root.putChild(b"hello", Data(b"hello", "text/plain"))
        site = make_site(root, 1024, **access_log)  # type: ignore[arg-type]
        port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    async def get(self, base: str, n: int) -> None:
        response = await treq.get(f"{base}/hello?n={n}", headers={"User-Agent": "access-test"}, persistent=False)
        self.assertEqual(await response.content(), b"hello")

    async def test_combined_lines_in_their_own_rotated_file(self) -> None:
        """Each request is one combined-format line in the access log; past max_bytes it rotates, keeping `keep`."""
        path = os.path.join(os.path.abspath(self.mktemp()), "logs", "access.log")  # its folder is made
        base = await self.serve(access_log=path, max_bytes=1024, keep=2)
        for n in range(40):
            await self.get(base, n)
        with open(path) as f:
            lines = f.read().splitlines()
        self.assertTrue(lines)
        for line in lines:
            self.assertRegex(line, COMBINED)
        folder = os.path.dirname(path)
        self.assertEqual(sorted(os.listdir(folder)), ["access.log", "access.log.1", "access.log.2"])
        self.assertLessEqual(os.path.getsize(path), 1024 + 200)

    async def test_no_path_no_access_log(self) -> None:
        """Without a path no access line is written anywhere, the application's log included."""
        captured = io.StringIO()
        self.patch(legacy_log, "logfile", captured)
        base = await self.serve()
        await self.get(base, 1)
        self.assertEqual(captured.getvalue(), "")

    def test_shipped_config(self) -> None:
        """etc/web.yaml keeps the access log under var/log/, rotated at 10 MiB, five kept."""
        etc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc")
        loaded = config.load(config.WebConfig, os.path.join(etc, "web.yaml")).http.access_log
        self.assertEqual(loaded.path, os.path.normpath(os.path.join(etc, "..", "var", "log",
                                                                   "webtesting-web-access.log")))
        self.assertEqual((loaded.max_bytes, loaded.keep), (10 * 1024 * 1024, 5))
        self.assertEqual(config.load(config.WebConfig, None).http.access_log.path, "")
