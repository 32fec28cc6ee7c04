"""JSON-lines application logs: --log-format json (or twistd --logger webtesting.logs.json_lines), on a real
daemon."""

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
        log = os.path.join(folder, "agent.jsonl")
        await self.check_daemon(folder, log, ["--logger", "webtesting.logs.json_lines"], [],
                                {"WEBTESTING_LOG_FILE": log})

    async def test_log_format_json_to_the_logfile(self) -> None:
        """--log-format json writes the JSON lines to twistd's --logfile."""
        folder = os.path.abspath(self.mktemp())
        log = os.path.join(folder, "agent.log")
        await self.check_daemon(folder, log, ["--logfile", log], ["--log-format", "json"], {})

    def test_log_format_option(self) -> None:
        """Each daemon's --log-format json sets twistd's logger; another format is a usage error."""
        from twisted.python import usage
        from twisted.scripts.twistd import ServerOptions

        from webtesting.logs import json_lines

        old = os.environ.get("WEBTESTING_LOG_FILE")
        self.addCleanup(lambda: os.environ.pop("WEBTESTING_LOG_FILE", None) if old is None
                        else os.environ.__setitem__("WEBTESTING_LOG_FILE", old))
        secret = "log-format-test-secret-0123456789"
        configs = {"webtesting-web": {"http": {"sessions": {"secret": secret}}, "agents": {"auth": {"secret": secret}},
                                      "registry": {"sqlite_path": os.path.abspath(self.mktemp())}},
                   "webtesting-agent": {"auth": {"secret": secret}}, "webtesting-wxsim": {}}
        for daemon, settings in configs.items():
            path = self.mktemp() + ".yaml"
            with open(path, "w") as f:
                json.dump(settings, f)
            config = ServerOptions()
            config.parseOptions(["--logfile", "x.log", daemon, "--config", path, "--log-format", "json"])
            self.assertIs(config["logger"], json_lines, daemon)
            self.assertEqual(os.environ["WEBTESTING_LOG_FILE"], os.path.abspath("x.log"))
            config = ServerOptions()
            config.parseOptions([daemon, "--config", path])
            self.assertIsNone(config["logger"], daemon)
            self.assertRaises(usage.UsageError, ServerOptions().parseOptions,
                              [daemon, "--config", path, "--log-format", "xml"])

    async def check_daemon(self, folder: str, log: str, twistd_options: list[str], daemon_options: list[str],
                           env: dict[str, str]) -> None:
        os.makedirs(folder)
        config = os.path.join(folder, "agent.yaml")
        port = free_port()
        with open(config, "w") as f:
            json.dump({"websocket": {"listen": f"tcp:{port}:interface=127.0.0.1"},
                       "auth": {"secret": "json-lines-test-secret-0123456789"}}, f)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        clean = {k: v for k, v in os.environ.items() if k != "WEBTESTING_LOG_FILE"}
        proc = subprocess.Popen([twistd, *twistd_options, "--nodaemon", "--pidfile=",
                                 "webtesting-agent", "--config", config, *daemon_options],
                                cwd=folder, env={**clean, **env})
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
