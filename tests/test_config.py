"""Configuration loading: every problem named by file and key, before anything listens."""

from __future__ import annotations

import dataclasses
import os

from twisted.internet.protocol import Factory, Protocol
from twisted.python import usage
from twisted.trial import unittest

from webtesting import config
from webtesting.agent import tap as agent_tap
from webtesting.web import tap as web_tap

HERE = os.path.dirname(os.path.abspath(__file__))
ETC = os.path.join(os.path.dirname(HERE), "etc")


class LoadTests(unittest.TestCase):
    def write(self, text: str) -> str:
        path = self.mktemp() + ".yaml"
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_shipped_files_load(self) -> None:
        """etc/web.yaml and etc/agent.yaml load cleanly and keep the SPEC's ports."""
        web = config.load(config.WebConfig, os.path.join(ETC, "web.yaml"))
        self.assertEqual(web.http.listen, "tcp:2019")
        self.assertEqual(web.websocket.listen, "tcp:2020")
        self.assertEqual(web.http.max_body_bytes, 1024 * 1024)
        self.assertEqual(web.registry.sqlite_path, os.path.normpath(os.path.join(ETC, "..", "var", "registry.sqlite3")))
        agent = config.load(config.AgentConfig, os.path.join(ETC, "agent.yaml"))
        self.assertEqual(agent.websocket.listen, "tcp:2021")
        self.assertEqual(agent.websocket.path, "/WebTesting/Agent")
        self.assertEqual(agent.metrics.listen, "tcp:2022:interface=127.0.0.1")
        self.assertTrue(web.http.metrics)
        self.assertEqual(config.load(config.AgentConfig, None).metrics.listen, "")  # no listener unless asked

    def test_defaults(self) -> None:
        """Without a file the SPEC's default ports and the SQLite registry are used."""
        web = config.load(config.WebConfig, None)
        self.assertEqual((web.http.listen, web.websocket.listen), ("tcp:2019", "tcp:2020"))
        self.assertIsNone(web.registry.mysql)
        self.assertEqual(config.load(config.AgentConfig, None).websocket.listen, "tcp:2021")

    def test_metrics_listener_is_checked(self) -> None:
        """A metrics address that does not parse is refused by key; an empty one means no listener."""
        path = self.write("metrics:\n  listen: 'tcp:notaport'\n")
        e = self.assertRaises(config.ConfigError, config.load, config.AgentConfig, path)
        self.assertIn(f"{path}: metrics.listen: not a valid endpoint string", str(e))

    def test_every_problem_at_once(self) -> None:
        """Unknown keys, wrong types, bad ranges and bad endpoints are all reported together, by key."""
        path = self.write(
            "http:\n"
            "  listen: 'tcp:notaport'\n"
            "  colour: blue\n"
            "  max_body_bytes: lots\n"
            "registry:\n"
            "  mysql:\n"
            "    port: 70000\n"
            "    password: 12345\n"
            "  retry_interval: -1\n"
            "extra: 1\n"
        )
        e = self.assertRaises(config.ConfigError, config.load, config.WebConfig, path)
        text = str(e)
        for expected in [
            f"{path}: extra: unknown key",
            f"{path}: http.colour: unknown key",
            f"{path}: http.listen: 'tcp:notaport' is not a valid endpoint string",
            f"{path}: http.max_body_bytes: expected an integer, got str 'lots'",
            f"{path}: registry.mysql.port: must be between 1 and 65535, got 70000",
            f"{path}: registry.mysql.password: expected a string, got int 12345",
            f"{path}: registry.retry_interval: must be",
        ]:
            self.assertIn(expected, text)
        self.assertEqual(len(e.problems), 7)

    def test_section_of_wrong_shape(self) -> None:
        """A section that is not a mapping is named."""
        e = self.assertRaises(config.ConfigError, config.load, config.WebConfig, self.write("http: [1, 2]\n"))
        self.assertIn("http: expected a mapping, got list", str(e))

    def test_top_level_not_a_mapping(self) -> None:
        """A file whose top level is a list is refused."""
        e = self.assertRaises(config.ConfigError, config.load, config.WebConfig, self.write("- 1\n"))
        self.assertIn("expected a mapping", str(e))

    def test_not_yaml(self) -> None:
        """A file that is not YAML is refused, naming the file."""
        path = self.write("http: [unclosed\n")
        e = self.assertRaises(config.ConfigError, config.load, config.WebConfig, path)
        self.assertIn(f"{path}: not valid YAML", str(e))

    def test_missing_file(self) -> None:
        """A file that cannot be read is refused, naming it."""
        e = self.assertRaises(config.ConfigError, config.load, config.WebConfig, "/no/such/web.yaml")
        self.assertIn("/no/such/web.yaml: cannot read", str(e))

    def test_empty_file(self) -> None:
        """An empty file means all defaults."""
        self.assertEqual(config.load(config.WebConfig, self.write("")), config.WebConfig())

    def test_mysql_password_not_in_repr(self) -> None:
        """The MySQL password never appears in the configuration's repr (and so in logs)."""
        loaded = config.load(config.WebConfig, self.write("registry:\n  mysql:\n    password: hunter2\n"))
        assert loaded.registry.mysql is not None
        self.assertEqual(loaded.registry.mysql.password, "hunter2")
        self.assertNotIn("hunter2", repr(loaded))

    def test_frozen(self) -> None:
        """Loaded configuration cannot be changed."""
        loaded = config.load(config.WebConfig, None)
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, loaded.http, "listen", "tcp:1")

    def test_endpoint_port(self) -> None:
        """The port of a listening endpoint string is found in its usual spellings."""
        self.assertEqual(config.endpoint_port("tcp:2020"), 2020)
        self.assertEqual(config.endpoint_port("tcp:port=2021:interface=127.0.0.1"), 2021)
        self.assertEqual(config.endpoint_port("tcp:2020:interface=\\:\\:1"), 2020)
        self.assertIsNone(config.endpoint_port("unix:/run/wt.sock"))


class PluginOptionsTests(unittest.TestCase):
    def test_bad_config_is_a_usage_error(self) -> None:
        """twistd's option parsing fails (before anything listens) with every problem listed."""
        path = self.mktemp() + ".yaml"
        with open(path, "w") as f:
            f.write("http:\n  listen: 'nope:1'\n  x: 1\n")
        for tap in (web_tap, agent_tap):
            options = tap.Options()
            e = self.assertRaises(usage.UsageError, options.parseOptions, ["--config", path])
            self.assertIn(path, str(e))
        e = self.assertRaises(usage.UsageError, web_tap.Options().parseOptions, ["--config", path])
        self.assertIn("http.listen", str(e))
        self.assertIn("http.x: unknown key", str(e))

    def test_good_config(self) -> None:
        """--config with a good file yields the loaded configuration and the secret."""
        path = self.mktemp() + ".yaml"
        with open(path, "w") as f:
            f.write("agents:\n  auth:\n    secret: 0123456789abcdef0123\n"
                    "http:\n  sessions:\n    secret: session-secret-0123456\n")
        options = web_tap.Options()
        options.parseOptions(["--config", path])
        self.assertEqual(options.config.http.listen, "tcp:2019")
        self.assertEqual(options.secret, "0123456789abcdef0123")

    def test_secret_required(self) -> None:
        """Without a shared secret neither daemon starts, and the message says which key to set."""
        e = self.assertRaises(usage.UsageError, web_tap.Options().parseOptions, [])
        self.assertIn("agents.auth: secret or secret_file: one is required", str(e))
        e = self.assertRaises(usage.UsageError, agent_tap.Options().parseOptions, [])
        self.assertIn("auth: secret or secret_file", str(e))

    def test_short_inline_secret(self) -> None:
        """An inline secret shorter than 16 characters is refused like a short secret file."""
        path = self.mktemp() + ".yaml"
        with open(path, "w") as f:
            f.write("auth:\n  secret: short\n")
        e = self.assertRaises(usage.UsageError, agent_tap.Options().parseOptions, ["--config", path])
        self.assertIn("at least 16 characters", str(e))

    def test_secret_file(self) -> None:
        """The secret may come from a file next to the configuration; a missing or short file is refused."""
        folder = self.mktemp()
        os.makedirs(folder)
        path = os.path.join(folder, "agent.yaml")
        with open(path, "w") as f:
            f.write("auth:\n  secret_file: agent.secret\n")
        e = self.assertRaises(usage.UsageError, agent_tap.Options().parseOptions, ["--config", path])
        self.assertIn("cannot read", str(e))
        with open(os.path.join(folder, "agent.secret"), "w") as f:
            f.write("short\n")
        e = self.assertRaises(usage.UsageError, agent_tap.Options().parseOptions, ["--config", path])
        self.assertIn("at least 16 characters", str(e))
        with open(os.path.join(folder, "agent.secret"), "w") as f:
            f.write("a-long-enough-secret\n")
        options = agent_tap.Options()
        options.parseOptions(["--config", path])
        self.assertEqual(options.secret, "a-long-enough-secret")
        self.assertNotIn("a-long-enough-secret", repr(options.config))


class HistoryRecordTests(unittest.TestCase):
    def test_record_off_records_nothing(self) -> None:
        """history.record false: the relay records nothing, and what was kept stays readable."""
        for record in (True, False):
            path = self.mktemp() + ".yaml"
            with open(path, "w") as f:
                f.write("agents:\n  auth:\n    secret: 0123456789abcdef0123\n"
                        "http:\n  sessions:\n    secret: session-secret-0123456\n"
                        f"registry:\n  sqlite_path: {self.mktemp()}.sqlite3\n"
                        f"history:\n  record: {'true' if record else 'false'}\n")
            options = web_tap.Options()
            options.parseOptions(["--config", path])
            top = web_tap.makeService(options)
            history = top.getServiceNamed("store").getServiceNamed("history")
            relay = top.getServiceNamed("websocket").factory.relay
            self.assertIs(relay.history, history if record else None)


def somaxconn() -> int:
    """The kernel's cap on a listen backlog."""
    with open("/proc/sys/net/core/somaxconn") as f:
        return int(f.read())


class ListenBacklogTests(unittest.TestCase):
    """Server sockets listen with a backlog fit for a login storm (Twisted's default is 50)."""

    def backlog(self, description: str) -> int:
        import subprocess

        from twisted.internet import reactor

        from webtesting.config import listening_endpoint

        port = self.successResultOf(listening_endpoint(reactor, description).listen(Factory.forProtocol(Protocol)))
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        # For a listening socket, ss shows the backlog as Send-Q.
        out = subprocess.run(["ss", "-Hltn", f"sport = :{number}"], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[2])

    def test_default_and_explicit(self) -> None:
        self.assertEqual(self.backlog("tcp:0:interface=127.0.0.1"), min(4096, somaxconn()))
        self.assertEqual(self.backlog("tcp:0:interface=127.0.0.1:backlog=77"), 77)
