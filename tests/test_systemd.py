"""The systemd units in etc/systemd: systemd-analyze verify finds nothing, and each starts a daemon that exists."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from twisted.trial import unittest

ETC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "systemd")
UNITS = ("webtesting-web.service", "webtesting-agent.service", "webtesting-wxsim.service")
INSTALLED_TWISTD = "/opt/webtesting/venv/bin/twistd"


class UnitTests(unittest.TestCase):
    def units(self) -> dict[str, str]:
        found = sorted(name for name in os.listdir(ETC) if name.endswith(".service"))
        self.assertEqual(found, sorted(UNITS))
        texts = {}
        for name in UNITS:
            with open(os.path.join(ETC, name)) as f:
                texts[name] = f.read()
        return texts

    def test_systemd_analyze_verify(self) -> None:
        """systemd-analyze verify reports nothing for any unit (with twistd from this checkout's virtualenv)."""
        analyze = shutil.which("systemd-analyze")
        self.assertIsNotNone(analyze, "systemd-analyze is missing: ./wt test installs it (apt-get install systemd)")
        folder = self.mktemp()
        os.makedirs(folder)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        for name, text in self.units().items():
            # The units run the installed /opt/webtesting/venv; verify checks the command exists.
            self.assertIn(INSTALLED_TWISTD, text, name)
            with open(os.path.join(folder, name), "w") as f:
                f.write(text.replace(INSTALLED_TWISTD, twistd))
        result = subprocess.run([str(analyze), "verify", "--man=no", *(os.path.join(folder, n) for n in UNITS)],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))

    def test_each_unit_starts_a_known_daemon_with_file_limits(self) -> None:
        """
        Each ExecStart names WebTesting's reactor and a twistd plugin, which
        answer --help together, and each unit raises LimitNOFILE.
        """
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        for name, text in self.units().items():
            match = re.search(r"^ExecStart=\S+ --reactor=(\S+) --nodaemon --pidfile= --logfile=- (\S+) --config (\S+)$",
                              text, re.M)
            assert match is not None, name
            reactor, plugin, config = match.groups()
            self.assertEqual(reactor, "webtesting-epoll")
            self.assertEqual(plugin, name.removesuffix(".service"))
            self.assertTrue(os.path.exists(os.path.join(os.path.dirname(ETC), os.path.basename(config))), config)
            answer = subprocess.run([twistd, f"--reactor={reactor}", plugin, "--help"], capture_output=True, text=True,
                                    timeout=60)
            self.assertEqual(answer.returncode, 0, answer.stderr)
            self.assertIn("LimitNOFILE=65536", text, name)
