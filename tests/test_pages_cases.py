"""
Test cases in the pages, in a real headless Chromium against the real
product: a chat saved as a test case (loosened before saving), run from the
Tests page and from the command line, and compared on two services side by
side with the differences marked.
"""

from __future__ import annotations

import os
import sys

import treq
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from tests.support.browser import PASSWORD
from tests.support.system import another_bot
from tests.test_pages import ADMIN, TESTER, PageTestCase, bot_says, expect, log_in_panel, say, screenshot
from webtesting.client import Client, ServerError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TestCasePageTests(PageTestCase):
    async def test_save_run_and_compare(self) -> None:
        sid = await self.system.add_service(description="today's bot")
        _, on_slow = await another_bot(self, self.system.database, followup_delay=10)
        slower = await self.system.add_service(description="the bot with a slower follow-up", **on_slow)
        await self.system.wait_status(slower, 1)
        page = await self.page_as(TESTER, "chat.html")

        def chat_and_save() -> None:
            p = log_in_panel(page, 1, sid, "1.00002", "saved-chat")
            say(p, "my name is Alice")
            bot_says(p, "Nice to meet you, Alice!")
            expect(p.locator(".state-memory li.is-new")).to_contain_text("Alice")
            say(p, "what's the weather like?")
            expect(p.locator(".msg-bot .msg-action").filter(has_text="followUp")).to_have_count(1)
            page.wait_for_timeout(1500)  # the state push after the follow-up
            p.locator("button.save-case").click()
            dialog = p.locator(".save-panel")
            expect(dialog.locator(".save-step")).to_have_count(2)
            first = dialog.locator(".save-step").nth(0)
            expect(first.locator(".save-reply-text")).to_have_text(["Nice to meet you, Alice!"])
            expect(first.locator(".save-state")).to_contain_text(["memory name = Alice"])
            # Loosen: the greeting need only contain the name; the tag check is dropped.
            first.locator("select.save-reply-mode").select_option("contains")
            first.locator(".save-state").filter(has_text="told their name").locator("input").uncheck()
            second = dialog.locator(".save-step").nth(1)
            expect(second.locator(".save-reply")).to_have_count(2)  # the answer and the follow-up
            dialog.locator("input.save-name").fill("weather chat")
            dialog.locator("input.save-shared").check()
            dialog.locator("button.save-confirm").click()
            expect(dialog.locator(".save-status")).to_contain_text("Saved “weather chat”")
            screenshot(page, self, "save-case.png")

        await self.step(chat_and_save)
        [listed] = (await self.system.api("GET", "Cases/list"))["cases"]  # shared: the admin sees it too
        self.assertEqual((listed["name"], listed["owner"], listed["shared"]), ("weather chat", TESTER, True))
        saved = (await self.system.api("POST", "Cases/get", {"id": listed["id"]}))["case"]["yaml"]
        self.assertIn('"contains": "Nice to meet you, Alice!"', saved)
        self.assertIn('"name": "Alice"', saved)
        self.assertNotIn("told their name", saved)

        def run_on_the_tests_page() -> None:
            page.goto(f"{self.system.base}/tests.html")
            case = page.locator(".case").filter(has_text="weather chat")
            expect(case).to_have_count(1)
            case.locator("input.case-pick").check()
            page.select_option("#run-service", str(sid))
            page.click("#run")
            result = page.locator(".result").filter(has_text="weather chat")
            expect(result).to_have_attribute("data-status", "passed", timeout=30_000)
            expect(result.locator(".step.is-passed")).to_have_count(2)
            expect(page.locator("#run-summary")).to_have_text("1 passed, 0 failed")
            screenshot(page, self, "tests.png")

            # The same case on both bots at once, side by side.
            page.select_option("#run-against", str(slower))
            page.click("#run")
            expect(result).to_have_attribute("data-status", "differs", timeout=40_000)
            differing = result.locator("tr.differs")
            expect(differing.first).to_contain_text("≠ replies")
            expect(result.locator(".step.is-different")).to_have_count(1)
            expect(result.locator(".step.is-same")).to_have_count(1)
            expect(result.locator(".problem")).to_contain_text([f"#{slower}: reply 2: expected"])
            expect(result.locator(".problem")).to_contain_text(["but only 1 replies came"])
            screenshot(page, self, "compare.png")

        await self.step(run_on_the_tests_page)
        await self.assert_no_page_errors(page)

        # The same case from the command line, as downloaded from the page.
        response = await treq.get(f"{self.system.base}/Cases/download/{listed['id']}",
                                  headers={"Cookie": self.system._admin_cookie}, persistent=False)
        self.assertEqual(response.code, 200)
        self.assertIn(b'attachment; filename="weather-chat.yaml"',
                      response.headers.getRawHeaders(b"content-disposition")[0])
        path = os.path.abspath(self.mktemp() + ".yaml")
        with open(path, "wb") as f:
            f.write(await response.content())
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "webtesting.testcli", "run", "--url", f"http://127.0.0.1:{self.system.http_port}",
                             "--user", ADMIN, "--service", str(sid), path],
            env={**os.environ, "WEBTESTING_PASSWORD": PASSWORD}, path=ROOT, reactor=reactor)
        self.assertEqual(code, 0, (out + err).decode())
        self.assertIn("PASS  weather chat", out.decode())

    async def test_cases_are_per_account_unless_shared(self) -> None:
        """A tester sees their own cases and shared ones; another's private case is 404 to them; bad YAML is 400."""
        self.system.add_user("tom", "tester")
        url = f"http://127.0.0.1:{self.system.http_port}"
        tess, tom = Client(url), Client(url)
        await tess.login(TESTER, PASSWORD)
        await tom.login("tom", PASSWORD)
        text = "name: {name}\nappid: '1.00002'\nsteps: [{{say: hello}}]\n"
        mine = (await tess.call("POST", "Cases/save", {"yaml": text.format(name="private"), "shared": False}))["id"]
        shared = (await tess.call("POST", "Cases/save", {"yaml": text.format(name="team"), "shared": True}))["id"]
        self.assertEqual([c["name"] for c in (await tom.call("GET", "Cases/list"))["cases"]], ["team"])
        for method, path, body in (("POST", "Cases/get", {"id": mine}), ("POST", "Cases/delete", {"id": shared}),
                                   ("POST", "Cases/save", {"id": shared, "yaml": text.format(name="mine now")})):
            with self.assertRaises(ServerError) as refused:
                await tom.call(method, path, body)
            self.assertEqual(refused.exception.result, 404, path)
        with self.assertRaises(ServerError) as bad:
            await tess.call("POST", "Cases/save", {"yaml": "name: x\nsteps: []\n"})
        self.assertEqual(bad.exception.result, 400)
        self.assertIn("yaml", bad.exception.msg)
        with self.assertRaises(ServerError) as unknown:
            await tess.call("POST", "Cases/run", {"caseIds": [mine], "serviceId": 999})
        self.assertEqual((unknown.exception.result, unknown.exception.msg), (400, "serviceId: no such service: 999"))
        await tess.call("POST", "Cases/delete", {"id": mine})
        self.assertEqual([c["name"] for c in (await tess.call("GET", "Cases/list"))["cases"]], ["team"])


class LoadTabTests(PageTestCase):
    async def test_load_from_the_tests_page(self) -> None:
        """The Load tab: simulated testers on a saved case, live figures and chart, a verdict, a report; Stop ends a
        run."""
        sid = await self.system.add_service()
        url = f"http://127.0.0.1:{self.system.http_port}"
        tess = Client(url)
        await tess.login(TESTER, PASSWORD)
        with open(os.path.join(ROOT, "examples", "reference-bot", "remembers-a-name.yaml"), encoding="utf-8") as f:
            case_id = (await tess.call("POST", "Cases/save", {"yaml": f.read(), "shared": False}))["id"]
        for body, problem in (({"users": 500}, "users: "), ({"serviceId": 999}, "serviceId: no such service")):
            with self.assertRaises(ServerError) as refused:
                await tess.call("POST", "Cases/load", {"caseId": case_id, "serviceId": sid, "users": 2,
                                                       "duration": 2, **body})
            self.assertEqual(refused.exception.result, 400)
            self.assertIn(problem, refused.exception.msg)
        page = await self.page_as(TESTER, "tests.html")

        def load_and_stop() -> None:
            page.click("#tab-load")
            expect(page.locator("#load-panel")).to_be_visible()
            expect(page.locator("#run-panel")).to_be_hidden()
            page.select_option("#load-case", str(case_id))
            page.select_option("#load-service", str(sid))
            page.fill("#load-users", "3")
            page.fill("#load-ramp", "1")
            page.fill("#load-duration", "4")
            page.fill("#load-max-p99", "5000")
            page.fill("#load-max-errors", "0")
            page.click("#load-start")
            expect(page.locator("#load-live")).to_have_attribute("data-done", "false")
            expect(page.locator("#load-chart")).to_be_visible(timeout=10_000)
            expect(page.locator("#load-chart polyline.p99")).to_have_count(1)
            verdict = page.locator(".verdict")
            expect(verdict).to_have_attribute("data-passed", "true", timeout=30_000)
            expect(page.locator("#load-now-users")).to_have_text("3")
            expect(page.locator(".thresholds li.pass")).to_have_count(2)
            expect(page.locator("#load-result")).to_contain_text("0 errors and 0 failed checks")
            expect(page.locator("#load-result")).not_to_contain_text("null")
            screenshot(page, self, "load.png")
            report = page.locator("a.load-report").get_attribute("href")
            answer = page.request.get(f"{self.system.base.rsplit('/WebTesting', 1)[0]}{report}")
            assert answer.status == 200, answer.status
            assert "<svg" in answer.text() and "p99 &lt;= 5000 ms" in answer.text(), answer.text()[:300]

            # A long run stops when asked.
            page.fill("#load-duration", "300")
            page.click("#load-start")
            expect(page.locator("#load-stop")).to_be_enabled()
            page.wait_for_timeout(2000)
            page.click("#load-stop")
            expect(page.locator("#load-start")).to_be_enabled(timeout=20_000)
            expect(page.locator(".verdict")).to_be_visible()

        await self.step(load_and_stop)
        await self.assert_no_page_errors(page)
