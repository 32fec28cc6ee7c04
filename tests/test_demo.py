"""The README's run command: the whole system on one machine, chatting with the reference bot."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from webtesting.demo import HTTP, answers
from tests.support import wsclient
from tests.support.wait import eventually

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORTS = (1443, 2019, 2020, 2021, 7000, 7001, 7002)


class DemoTests(unittest.TestCase):
    timeout = 120

    async def test_demo_chats_with_the_reference_bot(self) -> None:
        """`python -m webtesting.demo` starts Redis, bot, agent and web; a WebSocket client chats; Ctrl-C stops all."""
        busy = [p for p in PORTS if answers(p)]
        self.assertEqual(busy, [], f"the demo needs these ports free (is ./wt run going?): {busy}")
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        shutil.copytree(os.path.join(ROOT, "etc"), os.path.join(folder, "etc"))
        shutil.copytree(os.path.join(ROOT, "webroot"), os.path.join(folder, "webroot"))
        out = open(os.path.join(folder, "demo.out"), "wb")
        demo = subprocess.Popen([sys.executable, "-m", "webtesting.demo"], cwd=folder, stdout=out,
                                stderr=subprocess.STDOUT)

        def stop() -> None:
            if demo.poll() is None:
                demo.send_signal(signal.SIGINT)
                demo.wait(30)
            out.close()

        self.addCleanup(stop)

        def running() -> bool:
            self.assertIsNone(demo.poll(), open(os.path.join(folder, "demo.out")).read())
            return b"WebTesting is running" in open(os.path.join(folder, "demo.out"), "rb").read()

        await eventually(running, timeout=60, what="the demo to start")

        with open(os.path.join(folder, "var", "demo-logins.txt")) as f:
            logins = dict(line.split() for line in f)
        login = urllib.request.Request(
            f"{HTTP}/WebTesting/Account/login", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"username": "tester", "password": logins["tester"]}).encode(),
        )
        with urllib.request.urlopen(login, timeout=5) as r:
            cookie = r.headers["Set-Cookie"].split(";", 1)[0]

        def service_up() -> bool:
            listing_request = urllib.request.Request(f"{HTTP}/WebTesting/Service/getServiceList",
                                                     headers={"Cookie": cookie})
            with urllib.request.urlopen(listing_request, timeout=2) as r:
                listing = json.load(r)
            self.listing = listing
            return bool(listing["serviceLists"] and listing["serviceLists"][0]["status"] == 1)

        await eventually(service_up, timeout=20, what="the demo service healthy")
        sid = self.listing["serviceLists"][0]["serviceId"]
        client = await wsclient.connect(self.listing["wsAddr"], headers={"Cookie": cookie})
        client.send({"method": "loginReq", "serviceId": sid, "appid": "1.00002", "uname": "readme"})
        self.assertEqual((await client.expect("loginResp"))["result"], 1)
        client.send({"method": "aichatReq", "serviceId": sid, "appid": "1.00002", "content": "my name is Ann"})
        self.assertIn("Ann", (await client.expect("aichatResp"))["content"])
        await client.close()

        demo.send_signal(signal.SIGINT)
        await eventually(lambda: demo.poll() is not None, timeout=30, what="the demo to stop")
        await deferLater(reactor, 0.5, lambda: None)
        self.assertEqual([p for p in PORTS if answers(p)], [], "everything the demo started is stopped")
