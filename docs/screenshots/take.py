"""
Take the README's screenshots again: ``.venv/bin/python docs/screenshots/take.py``.

They are taken by the browser tests that show the pages best (the chat with a
live state panel, the admin list with a healthy and a failing service, a
panel whose appid was revoked while logged in), run
against the real system with ``WT_SCREENSHOTS`` pointing here. The tests need
what ``./wt test`` installs (Chromium, Redis, MariaDB).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TESTS = [
    "tests.test_pages.ChatPageTests.test_two_bots_side_by_side",
    "tests.test_pages.ChatPageTests.test_chat_with_live_state",
    "tests.test_pages.AdminPageTests.test_admin_adds_edits_deletes",
    "tests.test_pages.LoginEndsTests.test_appid_revoked",
]


def main() -> int:
    trial = os.path.join(os.path.dirname(sys.executable), "trial")
    with tempfile.TemporaryDirectory(prefix="wt-screenshots-") as temp:
        return subprocess.call(
            [trial, f"--temp-directory={os.path.join(temp, 'trial')}", *TESTS],
            cwd=ROOT, env={**os.environ, "WT_SCREENSHOTS": HERE},
        )


if __name__ == "__main__":
    sys.exit(main())
