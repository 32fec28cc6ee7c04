"""Live reload: SIGHUP reads the YAML again; what can change changes, the rest is named, bad YAML changes nothing."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests import test_daemons
from tests.support import wsclient
from tests.support.agent import SECRET
from tests.support.wait import free_port
from webtesting import config
from webtesting.agent import tap as agent_tap
from webtesting.reload import Reloader, changed_keys


class ChangedKeysTests(unittest.TestCase):
    def test_dotted_keys(self) -> None:
        """Nested sections are compared field by field and named by their dotted key."""
        old = config.from_mapping(config.WebConfig, {})
        new = config.from_mapping(config.WebConfig, {"websocket": {"max_per_account": 3},
                                                     "http": {"login_throttle": {"per_address_hour": 5}}})
        self.assertEqual(changed_keys(old, new),
                         {"websocket.max_per_account", "http.login_throttle.per_address_hour"})
        self.assertEqual(changed_keys(old, old), set())


class ReloaderTests(unittest.TestCase):
    def setUp(self) -> None:
        self.path = self.mktemp() + ".yaml"
        self.write({"websocket": {"max_per_account": 2}})
        self.applied: list[set[str]] = []
        self.logged: list[str] = []
        observer = lambda event: self.logged.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

        def apply(old: Any, new: Any, changed: set[str]) -> set[str]:
            self.applied.append(changed)
            return changed & {"websocket.max_per_account"}

        self.reloader = Reloader("web server", self.path, config.load(config.WebConfig, self.path),
                                 lambda path: config.load(config.WebConfig, path), apply, reactor)

    def write(self, data: Any) -> None:
        with open(self.path, "w") as f:
            f.write(data if isinstance(data, str) else json.dumps(data))

    def test_applied_and_named(self) -> None:
        """What apply takes is in effect; every other change is named as needing a restart."""
        self.write({"websocket": {"max_per_account": 5, "listen": "tcp:2999"}})
        self.assertEqual(self.reloader.reload(), {"websocket.max_per_account"})
        self.assertEqual(self.applied, [{"websocket.max_per_account", "websocket.listen"}])
        self.assertEqual(self.reloader.config.websocket.max_per_account, 5)
        self.assertTrue(any("websocket.listen changed, which takes effect after a restart" in line
                            for line in self.logged), self.logged)
        self.assertTrue(any("now in effect: websocket.max_per_account" in line for line in self.logged))
        self.assertEqual(self.reloader.reload(), set())  # nothing changed since
        self.assertEqual(len(self.applied), 1)

    def test_bad_file_changes_nothing(self) -> None:
        """A file that does not load keeps the running configuration, and every problem is logged."""
        running = self.reloader.config
        self.write("websocket:\n  max_per_account: lots\n  colour: blue\n")
        self.assertEqual(self.reloader.reload(), set())
        self.assertIs(self.reloader.config, running)
        self.assertEqual(self.applied, [])
        text = "\n".join(self.logged)
        self.assertIn("websocket.max_per_account: expected an integer", text)
        self.assertIn("websocket.colour: unknown key", text)
        self.assertIn("reload of", text)
        self.assertIn("refused (2 problems)", text)
        self.write("websocket: [unclosed\n")
        self.assertEqual(self.reloader.reload(), set())
        self.assertIs(self.reloader.config, running)


class AgentReloadTests(unittest.TestCase):
    def test_poll_interval_and_secret(self) -> None:
        """The agent applies a new poll interval, login settings and secret; a new listen address waits."""
        path = self.mktemp() + ".yaml"
        port = free_port()
        base = {"websocket": {"listen": f"tcp:{port}:interface=127.0.0.1"}, "auth": {"secret": SECRET}}
        with open(path, "w") as f:
            json.dump(base, f)
        options = agent_tap.Options()
        options.parseOptions(["--config", path])
        top = agent_tap.makeService(options, reactor)
        reloader = top.getServiceNamed("reload")
        factory = top.getServiceNamed("websocket").factory
        changed = {**base, "auth": {"secret": SECRET + "-new"},
                   "users": {"poll_interval": 0.5, "login_timeout": 9, "connects_in_flight": 8},
                   "websocket": {"listen": f"tcp:{free_port()}:interface=127.0.0.1"}}
        with open(path, "w") as f:
            json.dump(changed, f)
        applied = reloader.reload()
        self.assertEqual(applied, {"auth.secret", "users.poll_interval", "users.login_timeout",
                                   "users.connects_in_flight"})
        self.assertEqual(factory.secret, SECRET + "-new")
        self.assertEqual((factory.settings.poll_interval, factory.settings.login_timeout,
                          factory.settings.connects_in_flight), (0.5, 9, 8))


class WebReloadTests(unittest.TestCase):
    start_web = test_daemons.TwistdWebTests.start_web

    async def test_sighup_changes_a_limit(self) -> None:
        """twistd webtesting-web re-reads its YAML on SIGHUP: a lower WebSocket limit holds at once; bad YAML
        changes nothing."""
        proc, client, ws_port, folder = await self.start_web()
        path = os.path.join(folder, "web.yaml")
        log_path = os.path.join(folder, "web.log")
        url = f"ws://127.0.0.1:{ws_port}/WebTesting"
        with open(path) as f:
            original = f.read()
        # websocket: is already a section of the file: set the key inside it.
        with open(path, "w") as f:
            f.write(original.replace("websocket:\n", "websocket:\n  max_per_account: 1\n"))
        proc.send_signal(signal.SIGHUP)
        await self.wait_for_log(log_path, "now in effect: websocket.max_per_account")
        first = await wsclient.connect(url, headers={"Cookie": client.cookie})
        self.addCleanup(first.close)
        with self.assertRaises(ConnectionError) as refused:
            await wsclient.connect(url, headers={"Cookie": client.cookie})
        self.assertIn("429", str(refused.exception))

        with open(path, "w") as f:
            f.write(original.replace("websocket:\n", "websocket:\n  max_per_account: many\n"))
        proc.send_signal(signal.SIGHUP)
        await self.wait_for_log(log_path, "refused (1 problems)")
        self.assertIsNone(proc.poll())
        with open(log_path) as f:
            self.assertIn("websocket.max_per_account: expected an integer", f.read())
        status, _ = await client.call("GET", "/WebTesting/Account/me", content_type=None)
        self.assertEqual(status, 200)  # still serving, with the limit it had
        with self.assertRaises(ConnectionError) as again:
            await wsclient.connect(url, headers={"Cookie": client.cookie})
        self.assertIn("429", str(again.exception))

    async def wait_for_log(self, path: str, text: str) -> None:
        for _ in range(100):
            with open(path, encoding="utf-8") as f:
                if text in f.read():
                    return
            await deferLater(reactor, 0.1, lambda: None)
        with open(path, encoding="utf-8") as f:
            self.fail(f"{text!r} not in the log:\n{f.read()[-3000:]}")
