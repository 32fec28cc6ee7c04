"""JSON-lines application logs: twistd --logger webtesting.logs.json_lines, on a real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from tests.support.wait import free_port


class JSONLinesTests(unittest.TestCase):
    async def test_twistd_writes_json_lines(self) -> None:
        """Every line the daemon logs is one JSON object with its format, level and namespace."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        config = os.path.join(folder, "agent.yaml")
        port = free_port()
        with open(config, "w") as f:
            json.dump({"websocket": {"listen": f"tcp:{port}:interface=127.0.0.1"},
                       "auth": {"secret": "json-lines-test-secret-0123456789"}}, f)
        log = os.path.join(folder, "agent.jsonl")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        proc = subprocess.Popen([twistd, "--logger", "webtesting.logs.json_lines", "--nodaemon", "--pidfile=",
                                 "webtesting-agent", "--config", config],
                                cwd=folder, env={**os.environ, "WEBTESTING_LOG_FILE": log})
        self.addCleanup(proc.wait, 10)
        self.addCleanup(lambda: proc.terminate() if proc.poll() is None else None)
        def started() -> bool:
            if not os.path.exists(log):
                return False
            with open(log) as f:
                return "Starting factory" in f.read()

        for _ in range(100):
            if started():
                break
            await deferLater(reactor, 0.1, lambda: None)
        proc.terminate()
        proc.wait(10)
        with open(log) as f:
            events = [json.loads(line) for line in f.read().splitlines()]
        self.assertGreater(len(events), 3)
        for event in events:
            self.assertIn("log_format", event)
            self.assertIn("log_namespace", event)
            self.assertIn(event["log_level"]["name"], ("debug", "info", "warn", "error", "critical"))
        self.assertTrue(any(event["log_format"].startswith("twistd {version}") for event in events))
