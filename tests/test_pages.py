"""
The pages in a real browser (headless Chromium through Playwright) against
the real system: web server, agent, reference bot, Redis Cluster, MariaDB.

Browser steps are plain functions run on the browser's thread
(L{tests.support.browser}); the system runs on the reactor meanwhile, so a test
can kill the agent while the page watches.

Set C{WT_SCREENSHOTS} to a folder to keep the chat and admin screenshots
(docs/screenshots/take.py does, for the README).
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

from twisted.trial import unittest

from tests.support import mariadb
from tests.support.browser import PASSWORD, Browser, PagesSystem
from tests.support.wait import eventually, free_port
from webtesting.web.registry import connect_sync

try:
    from playwright.sync_api import expect
except ImportError:  # Browser() fails the test saying how to install it
    expect = None  # type: ignore[assignment]

TESTER, ADMIN = "tess", "ada"
# The reason codes of the wire contract (docs/protocol.md, "Reason codes").
CODES = [
    "ok", "waiting_for_agent", "agent_unreachable", "agent_unknown_host", "agent_address_invalid",
    "agent_refused", "agent_not_responding", "settings_refused", "bot_unreachable", "bot_address_invalid",
    "bot_not_responding", "redis_unreachable", "redis_partial", "mysql_unreachable", "registry_unavailable",
    "appid_revoked", "service_deleted", "login_ended", "relogin_refused",
    "bad_request", "unknown_method", "too_large", "not_logged_in", "forbidden", "unavailable", "timeout",
    "internal", "bot_refused", "state_writes_off",
]
REVOKED = "This appid is no longer allowed on the service."
DELETED = "The service was removed from the registry."
BOT_UNREACHABLE = "The bot cannot be reached."
AGENT_UNREACHABLE = "The agent on the bot's host cannot be reached."
REDIS_PARTIAL = "Part of the bot's Redis Cluster is down."
REDIS_PARTIAL_ZH = "机器人的 Redis Cluster 部分节点不可用。"
MYSQL_UNREACHABLE = "The bot's MySQL cannot be reached."
GENERIC = "The service is unavailable, or something went wrong."
MARKUP_DESCRIPTION = "<img src=x onerror=\"window.__pwned='description'\"> bot"
MARKUP_CHAT = "<script>window.__pwned='chat'</script><b>bold</b>"


# -- browser steps (run on the browser's thread) ------------------------------------


def log_in(page: Any, base: str, username: str, start: str = "index.html", password: str = PASSWORD) -> None:
    """Open C{start}; being sent to the login page, log in and land back on C{start}."""
    page.goto(f"{base}/{start}")
    page.wait_for_url("**/login.html?next=*")
    page.fill("#username", username)
    page.fill("#password", password)
    page.press("#password", "Enter")
    page.wait_for_url(f"**/{start}")


def panel(page: Any, number: int) -> Any:
    return page.locator(f'section.panel[data-panel="{number}"]')


def log_in_panel(page: Any, number: int, service_id: int, appid: str, uname: str) -> Any:
    p = panel(page, number)
    p.locator("select.service").select_option(str(service_id))
    p.locator("select.appid").select_option(appid)
    p.locator("input.uname").fill(uname)
    p.locator("input.uname").press("Enter")
    expect(p.locator(".session")).to_be_visible()
    expect(p.locator(".session-text")).to_contain_text(uname)
    expect(p.locator("select.service")).to_be_disabled()
    expect(p.locator("input.content")).to_be_enabled()
    return p


def say(p: Any, text: str) -> None:
    p.locator("input.content").fill(text)
    p.locator("input.content").press("Enter")


def bot_says(p: Any, text: str) -> None:
    expect(p.locator(".msg-bot .msg-text").filter(has_text=text)).to_have_count(1)


def shown_once(p: Any, text: str) -> None:
    """C{text} is on the panel exactly once, and stays so for a moment (no late repeat)."""
    expect(p).to_contain_text(text)
    p.page.wait_for_timeout(800)
    count = p.inner_text().count(text)
    assert count == 1, f"{text!r} shown {count} times"


def screenshot(page: Any, testcase: Any, name: str) -> None:
    path = os.path.abspath(testcase.mktemp() + f"-{name}")
    page.screenshot(path=path, full_page=True)
    folder = os.environ.get("WT_SCREENSHOTS")
    if folder:
        os.makedirs(folder, exist_ok=True)
        shutil.copyfile(path, os.path.join(folder, name))


class PageTestCase(unittest.TestCase):
    timeout = 180

    async def setUp(self) -> None:  # type: ignore[override]
        self.system = PagesSystem(self)
        await self.system.start()
        self.system.add_user(TESTER, "tester")
        self.system.add_user(ADMIN, "admin")
        self.browser = Browser(self)

    async def page_as(self, username: str, start: str = "index.html") -> Any:
        page = await self.browser.page()
        await self.browser.run(log_in, page, self.system.base, username, start)
        return page

    def step(self, fn: Any, *args: Any) -> Any:
        return self.browser.run(fn, *args)

    async def assert_no_page_errors(self, page: Any) -> None:
        self.assertEqual(page.wt_errors, [])


class ChatPageTests(PageTestCase):
    async def test_chat_with_live_state(self) -> None:
        """A tester logs in, chats with the reference bot and sees tags, topics and memory change live."""
        sid = await self.system.add_service(description="reference bot")
        page = await self.page_as(TESTER, "chat.html")

        def chat() -> None:
            expect(page.locator("#connection")).to_have_attribute("data-state", "open")
            p = log_in_panel(page, 1, sid, "1.00002", "alice")
            expect(p.locator(".state-updated")).not_to_be_empty()
            # Empty content is refused with a hint, and nothing is sent.
            p.locator("button.send").click()
            expect(p.locator(".send-hint")).to_have_text("Type a message first.")
            expect(p.locator(".msg-me")).to_have_count(0)

            say(p, "my name is Alice")
            expect(p.locator(".msg-me .msg-text")).to_have_text("my name is Alice")
            bot_says(p, "Nice to meet you, Alice!")
            memory = p.locator(".state-memory li.is-new")
            expect(memory).to_contain_text("name")
            expect(memory).to_contain_text("Alice")
            expect(memory.locator(".badge.new")).to_have_text("new")
            expect(p.locator(".state-tags li.is-new")).to_contain_text("told their name")
            expect(p.locator(".state-topic")).to_contain_text("about you")

            say(p, "what's the weather like?")
            expect(p.locator(".state-topic")).to_contain_text("weather")
            expect(p.locator(".state-prev-topic")).to_contain_text("about you")
            expect(p.locator(".state-topics li.is-new").filter(has_text="weather")).to_have_count(1)
            expect(p.locator(".state-tags li")).to_contain_text(["asked a question"])
            # The bot's unprompted follow-up, its action shown discreetly.
            expect(p.locator(".msg-bot .msg-action").filter(has_text="followUp")).to_have_count(1)

            # Each reply to a chat shows where its time went, hop by hop; the follow-up (unprompted) does not.
            timed = p.locator(".msg-bot .hops")
            expect(timed).to_have_count(2)
            expect(p.locator(".msg-bot").filter(has_text="followUp").locator(".hops")).to_have_count(0)
            hops = timed.first.locator(".hop")
            expect(hops).to_have_count(4)
            assert [hops.nth(i).get_attribute("data-hop") for i in range(4)] == [
                "browserWeb", "webAgent", "bot", "agent"]
            assert all(float(hops.nth(i).get_attribute("data-ms") or "-1") >= 0 for i in range(4))
            title = timed.first.get_attribute("title") or ""
            assert "agent → bot → agent" in title and "round trip" in title, title
            latency = p.locator(".latency")
            expect(latency).to_contain_text("(last 2 replies")
            p50, p99 = float(latency.get_attribute("data-p50") or 0), float(latency.get_attribute("data-p99") or 0)
            assert 0 < p50 <= p99 < 10_000, (p50, p99)

            # Pushes off: a change shows only when asked for.
            p.locator("input.auto").uncheck()
            expect(p.locator("input.auto")).not_to_be_checked()
            say(p, "call me Alicia")
            bot_says(p, "Alicia")
            page.wait_for_timeout(1500)
            expect(p.locator(".state-memory")).not_to_contain_text("Alicia")
            p.locator("button.refresh").click()
            expect(p.locator(".state-memory li.is-new")).to_contain_text("Alicia")
            deleted = p.locator(".state-memory li.is-deleted")
            expect(deleted).to_contain_text("Alice")
            expect(deleted.locator("del")).to_have_count(1)
            p.locator("input.auto").check()
            screenshot(page, self, "chat.png")

            # The page speaks Chinese too, and remembers the choice.
            page.select_option("#lang", "zh")
            expect(p.locator("button.send")).to_have_text("发送")
            page.reload()
            expect(page.locator("#add-panel")).to_have_text("添加面板")
            log_in_panel(page, 1, sid, "1.00002", "alice")
            say(p, "我叫小明，今天天气怎么样？")
            bot_says(p, "小明")
            expect(p.locator(".state-memory")).to_contain_text("小明")
            screenshot(page, self, "chat-zh.png")
            page.select_option("#lang", "en")

        await self.step(chat)
        await self.assert_no_page_errors(page)

    async def test_history_after_reload_and_restart(self) -> None:
        """A reload, and a web server restart, lose no turn: logging in again shows the earlier ones."""
        sid = await self.system.add_service(description="reference bot")
        page = await self.page_as(TESTER, "chat.html")

        def chat() -> None:
            p = log_in_panel(page, 1, sid, "1.00002", "hana")
            say(p, "my name is Hana")
            bot_says(p, "Nice to meet you, Hana!")
            page.reload()
            p = log_in_panel(page, 1, sid, "1.00002", "hana")
            earlier = p.locator(".msg-earlier")
            expect(earlier.locator(".msg-text")).to_have_text(["my name is Hana", "Nice to meet you, Hana!"])
            expect(p.locator(".history-end")).to_have_count(1)
            say(p, "call me Hanako")
            bot_says(p, "Hanako")

        await self.step(chat)
        await self.system.restart_web()

        def after_restart() -> None:
            page.reload()
            expect(page).to_have_url(re.compile(r".*/chat\.html$"))  # the login session is in the database too
            p = log_in_panel(page, 1, sid, "1.00002", "hana")
            expect(p.locator(".msg-earlier .msg-text")).to_have_text(
                ["my name is Hana", "Nice to meet you, Hana!", "call me Hanako", re.compile("Hanako")])

        await self.step(after_restart)
        other = await self.page_as(ADMIN, "chat.html")

        def admin_sees_all() -> None:
            p = log_in_panel(other, 1, sid, "1.00002", "hana")
            expect(p.locator(".msg-earlier.msg-me .msg-text")).to_have_count(2)

        await self.step(admin_sees_all)
        await self.assert_no_page_errors(page)

    async def test_two_bots_side_by_side(self) -> None:
        """Two panels hold two logins on two services over one WebSocket; each sees only its own bot."""
        first = await self.system.add_service(description="first bot")
        second = await self.system.add_service(description="second bot", allowedAppids=["1.00003"])
        await self.system.api("PUT", "Service/addServices", [self.system.service(
            description="broken bot", mysqlUser="wt_nobody", mysqlPwd="wrong")])
        broken = max(s["serviceId"] for s in await self.system.services())

        async def reason() -> bool:
            record = next(s for s in await self.system.services() if s["serviceId"] == broken)
            return record["status"] == 0 and "MySQL" in record["msg"]

        await eventually(reason, timeout=20, what="the broken service reported down")
        page = await self.page_as(TESTER, "chat.html")

        def chat() -> None:
            # A service that is down cannot be picked, and says why.
            option = panel(page, 1).locator(f'select.service option[value="{broken}"]')
            expect(option).to_be_disabled()
            expect(option).to_contain_text("unavailable: ")
            expect(option).to_have_attribute("title", re.compile("MySQL"))
            one = log_in_panel(page, 1, first, "1.00002", "alice")
            page.click("#add-panel")
            two = panel(page, 2)
            # A service held by one panel cannot be picked in another.
            expect(two.locator(f'select.service option[value="{first}"]')).to_be_disabled()
            log_in_panel(page, 2, second, "1.00003", "bob")
            say(two, "my name is Bob")
            say(one, "my name is Alice")
            bot_says(two, "Nice to meet you, Bob!")
            bot_says(one, "Nice to meet you, Alice!")
            expect(two.locator(".state-memory")).to_contain_text("Bob")
            expect(one.locator(".state-memory")).to_contain_text("Alice")
            expect(one.locator(".messages")).not_to_contain_text("Bob")
            expect(two.locator(".messages")).not_to_contain_text("Alice")
            screenshot(page, self, "chat-two-bots.png")
            # Logging one panel out leaves the other chatting.
            two.locator("button.logout").click()
            expect(two.locator("select.service")).to_be_enabled()
            expect(two.locator("input.content")).to_be_disabled()
            say(one, "hello")
            bot_says(one, "Hello, Alice!")

        await self.step(chat)
        await self.assert_no_page_errors(page)

    async def test_agent_down_blocks_sending(self) -> None:
        """When the agent dies the panel shows the service down and blocks sending; when it is back, sending works."""
        sid = await self.system.add_service()
        page = await self.page_as(TESTER, "chat.html")
        p = panel(page, 1)
        await self.step(log_in_panel, page, 1, sid, "1.00002", "carol")

        await self.system.agent.kill()

        def down() -> None:
            expect(p.locator(".service-banner")).to_be_visible()
            expect(p.locator(".service-banner")).to_contain_text("Service down")
            expect(p.locator("input.content")).to_be_disabled()
            expect(p.locator("button.send")).to_be_disabled()
            # The service list (re-read every 5 s) says it is down too; the panel says so once.
            page.wait_for_timeout(6000)
            expect(p.locator(".service-reason")).to_have_count(0)
            shown_once(p, "Service down:")

        await self.step(down)
        self.system.agent.start()

        def back() -> None:
            expect(p.locator(".service-banner")).to_be_hidden()
            expect(p.locator("input.content")).to_be_enabled()
            say(p, "my name is Carol")
            bot_says(p, "Nice to meet you, Carol!")

        await self.step(back)
        await self.assert_no_page_errors(page)

    async def test_websocket_reconnects(self) -> None:
        """When the WebSocket drops, the page says so, reconnects with backoff and logs its panels in again."""
        sid = await self.system.add_service()
        page = await self.page_as(TESTER, "chat.html")
        p = panel(page, 1)

        def chat() -> None:
            log_in_panel(page, 1, sid, "1.00002", "dave")
            say(p, "my name is Dave")
            bot_says(p, "Nice to meet you, Dave!")

        await self.step(chat)
        await self.system.drop_browser_websocket()

        def lost() -> None:
            expect(page.locator("#connection")).to_have_attribute("data-state", "lost")
            expect(page.locator("#connection")).to_contain_text("reconnecting in")
            expect(p.locator(".service-banner")).to_have_text("Not connected to the server.")
            expect(p.locator("input.content")).to_be_disabled()
            page.wait_for_timeout(1500)  # let a reconnection fail, so the delay grows

        await self.step(lost)
        self.system.restore_browser_websocket()

        def back() -> None:
            expect(page.locator("#connection")).to_have_attribute("data-state", "open", timeout=10_000)
            expect(p.locator(".msg-system").filter(has_text="Reconnected; logging in again.")).to_have_count(1)
            expect(p.locator("input.content")).to_be_enabled()
            say(p, "what's my name?")
            bot_says(p, "Your name is Dave.")

        await self.step(back)
        await self.assert_no_page_errors(page)

    async def test_markup_is_shown_as_text(self) -> None:
        """A description and chat content holding HTML are shown as literal text and never run."""
        sid = await self.system.add_service(description=MARKUP_DESCRIPTION)
        page = await self.page_as(TESTER, "chat.html")

        def chat() -> None:
            p = panel(page, 1)
            p.locator("select.service").select_option(str(sid))
            expect(p.locator(".service-desc")).to_have_text(MARKUP_DESCRIPTION)
            log_in_panel(page, 1, sid, "1.00002", "mallory")
            say(p, MARKUP_CHAT)
            expect(p.locator(".msg-me .msg-text")).to_have_text(MARKUP_CHAT)
            bot_says(p, f"I hear you: {MARKUP_CHAT}")
            page.wait_for_timeout(300)
            assert page.evaluate("window.__pwned") is None
            assert page.locator("main img, main script, main b").count() == 0

        await self.step(chat)
        admin = await self.page_as(ADMIN, "admin.html")

        def listed() -> None:
            expect(admin.locator("#services td.description")).to_have_text([MARKUP_DESCRIPTION])
            assert admin.locator("#services img").count() == 0
            assert admin.evaluate("window.__pwned") is None

        await self.step(listed)
        await self.assert_no_page_errors(page)
        await self.assert_no_page_errors(admin)


class LoginEndsTests(PageTestCase):
    """The panel follows the truth: a login the servers ended is shown as ended, with the reason once."""

    async def test_appid_revoked(self) -> None:
        """When an admin revokes the panel's appid, the panel is back to not logged in, says why once with the raw text
        behind "details", and can log in with another appid."""
        sid = await self.system.add_service()
        page = await self.page_as(TESTER, "chat.html")
        p = panel(page, 1)
        await self.step(log_in_panel, page, 1, sid, "1.00002", "erin")
        await self.system.update_service(sid, allowedAppids=["1.00003"])

        def ended() -> None:
            # The web server re-reads the registry every 5 s, then tells the agent.
            expect(p).to_have_attribute("data-status", "idle", timeout=20_000)
            expect(p.locator("select.service")).to_be_enabled()
            expect(p.locator(".session")).to_be_hidden()
            expect(p.locator("input.content")).to_be_disabled()
            banner = p.locator(".service-banner")
            expect(banner).to_contain_text(f"Not logged in: {REVOKED}")
            shown_once(p, REVOKED)
            # The raw text is there, but only behind the toggle.
            expect(banner.locator(".reason-msg")).to_be_hidden()
            banner.locator(".reason-details summary").click()
            expect(banner.locator(".reason-msg")).to_be_visible()
            expect(banner.locator(".reason-msg")).to_contain_text("1.00002")
            screenshot(page, self, "chat-login-ended.png")

            log_in_panel(page, 1, sid, "1.00003", "erin")
            expect(banner).to_be_hidden()
            say(p, "my name is Erin")
            bot_says(p, "Nice to meet you, Erin!")

        await self.step(ended)
        await self.assert_no_page_errors(page)

    async def test_service_deleted(self) -> None:
        """When the service is deleted while a panel is logged in there, the panel is back to not logged in and says
        why once."""
        sid = await self.system.add_service(description="doomed bot")
        await self.system.add_service(description="other bot")
        page = await self.page_as(TESTER, "chat.html")
        p = panel(page, 1)
        await self.step(log_in_panel, page, 1, sid, "1.00002", "frank")
        answer = await self.system.api("DELETE", "Service/delServices", {"serviceIds": [sid]})
        self.assertEqual(answer["result"], 1, answer)

        def ended() -> None:
            expect(p).to_have_attribute("data-status", "idle", timeout=20_000)
            expect(p.locator(".session")).to_be_hidden()
            expect(p.locator("input.content")).to_be_disabled()
            expect(p.locator(".service-banner")).to_contain_text(f"Not logged in: {DELETED}", timeout=10_000)
            shown_once(p, DELETED)
            expect(p.locator(f'select.service option[value="{sid}"]')).to_have_count(0)

        await self.step(ended)
        await self.assert_no_page_errors(page)

    async def test_unprompted_logout_with_code(self) -> None:
        """An unprompted logoutResp with a code ends the login with that code's sentence; the answer to the panel's own
        logout never ends a new login."""
        first = await self.system.add_service(description="first bot")
        second = await self.system.add_service(description="second bot")
        page = await self.page_as(TESTER, "chat.html")
        p = panel(page, 1)
        await self.step(log_in_panel, page, 1, first, "1.00002", "ivan")
        self.system.push({"method": "logoutResp", "serviceId": first, "appid": "1.00002", "result": 410,
                          "code": "service_deleted", "msg": "service 1 was deleted"})

        def ended() -> None:
            expect(p).to_have_attribute("data-status", "idle")
            expect(p.locator(".service-banner")).to_contain_text(f"Not logged in: {DELETED}")
            shown_once(p, DELETED)

        await self.step(ended)

        def logout_and_back() -> None:
            log_in_panel(page, 1, second, "1.00002", "ivan")
            expect(p.locator(".service-banner")).to_be_hidden()
            # Log out and in again in one go: the logoutResp comes after the
            # new loginReq went out. It answers the page, and ends nothing.
            p.evaluate("""(el) => {
                el.querySelector("button.logout").click();
                el.querySelector("form.panel-login button.login").click();
            }""")
            expect(p).to_have_attribute("data-status", "active")
            page.wait_for_timeout(1000)
            expect(p).to_have_attribute("data-status", "active")
            expect(p.locator(".service-banner")).to_be_hidden()
            say(p, "my name is Ivan")
            bot_says(p, "Nice to meet you, Ivan!")

        await self.step(logout_and_back)
        await self.assert_no_page_errors(page)


class ReasonTests(PageTestCase):
    """Reasons read as plain sentences in both languages, once, with the raw text behind "details"."""

    async def test_codes_read_as_sentences(self) -> None:
        """Every reason code has its own sentence in English and in Chinese; an unknown or missing code reads as a
        generic sentence."""
        page = await self.page_as(TESTER, "chat.html")

        def sentences() -> Any:
            expect(page.locator("#connection")).to_have_attribute("data-state", "open")
            # The modules the page loaded (same URLs: the same instances).
            return page.evaluate("""async (codes) => {
                const i18n = await import(new URL("js/i18n.js", location.href).href);
                const reasons = await import(new URL("js/reasons.js", location.href).href);
                const out = {};
                for (const lang of ["en", "zh"]) {
                    i18n.setLang(lang);
                    out[lang] = Object.fromEntries(
                        [...codes, "no_such_code", ""].map((code) => [code, reasons.sentence(code)]));
                    out[lang]["(missing)"] = reasons.sentence(reasons.reasonOf({result: 0, msg: "x"}).code);
                }
                i18n.setLang("en");
                return out;
            }""", CODES)

        said = await self.step(sentences)
        en, zh = said["en"], said["zh"]
        for code in CODES:
            self.assertNotIn("reason.", en[code], code)
            self.assertNotEqual(en[code], GENERIC, code)
            self.assertNotEqual(zh[code], en[code], f"{code} has no Chinese sentence")
            self.assertRegex(zh[code], "[\u4e00-\u9fff]", code)
        self.assertEqual(len({en[c] for c in CODES}), len(CODES), "two codes read the same in English")
        self.assertEqual(len({zh[c] for c in CODES}), len(CODES), "two codes read the same in Chinese")
        self.assertEqual((en["redis_partial"], zh["redis_partial"]), (REDIS_PARTIAL, REDIS_PARTIAL_ZH))
        self.assertEqual(en["appid_revoked"], REVOKED)
        for generic in ("no_such_code", "", "(missing)"):
            self.assertEqual(en[generic], GENERIC)
            self.assertEqual(zh[generic], zh["no_such_code"])
        await self.assert_no_page_errors(page)

    async def test_pushed_reason_and_details(self) -> None:
        """A pushed servStatus reads as its code's sentence, in the chosen language; its raw msg shows only when
        "details" is opened."""
        sid = await self.system.add_service()
        page = await self.page_as(TESTER, "chat.html")
        p = panel(page, 1)
        await self.step(log_in_panel, page, 1, sid, "1.00002", "gina")
        raw = "Redis Cluster partly down: 127.0.0.1:7001 unreachable (slots 5461-10922)"
        self.system.push({"method": "servStatus", "serviceId": sid, "appid": "1.00002", "status": 0,
                          "code": "redis_partial", "msg": raw})
        banner = p.locator(".service-banner")

        def down() -> None:
            expect(banner).to_contain_text(f"Service down: {REDIS_PARTIAL}")
            expect(p.locator("input.content")).to_be_disabled()
            expect(banner.locator(".reason-msg")).to_have_text(raw)
            expect(banner.locator(".reason-msg")).to_be_hidden()
            assert raw not in p.inner_text()
            banner.locator(".reason-details summary").click()
            expect(banner.locator(".reason-msg")).to_be_visible()
            page.select_option("#lang", "zh")
            expect(banner).to_contain_text(f"服务不可用：{REDIS_PARTIAL_ZH}")
            expect(banner.locator(".reason-details summary")).to_have_text("详情")
            expect(banner.locator(".reason-msg")).to_be_visible()  # still open
            page.select_option("#lang", "en")
            expect(banner).to_contain_text(REDIS_PARTIAL)

        await self.step(down)
        self.system.push({"method": "servStatus", "serviceId": sid, "appid": "1.00002", "status": 0,
                          "code": "martian_weather", "msg": "it rains frogs"})

        def unknown() -> None:
            expect(banner).to_contain_text(f"Service down: {GENERIC}")
            expect(banner.locator(".reason-msg")).to_have_text("it rains frogs")

        await self.step(unknown)
        self.system.push({"method": "servStatus", "serviceId": sid, "appid": "1.00002", "status": 1,
                          "code": "ok", "msg": "ok"})

        def up() -> None:
            expect(banner).to_be_hidden()
            expect(p.locator(".msg-system").filter(has_text="Service back up.")).to_have_count(1)
            expect(p.locator("input.content")).to_be_enabled()

        await self.step(up)
        await self.assert_no_page_errors(page)

    async def test_same_reason_once(self) -> None:
        """The same servStatus twice, and errors with the same code, show the reason once; a changed reason replaces
        it."""
        sid = await self.system.add_service()
        page = await self.page_as(TESTER, "chat.html")
        p = panel(page, 1)
        await self.step(log_in_panel, page, 1, sid, "1.00002", "hank")
        down = {"method": "servStatus", "serviceId": sid, "appid": "1.00002", "status": 0,
                "code": "bot_unreachable", "msg": "the bot is unreachable (connection refused); reconnecting"}
        self.system.push(down)
        self.system.push(down)
        self.system.push({"method": "aichatResp", "serviceId": sid, "appid": "1.00002", "content": "",
                          "action": "", "result": 503, "code": "bot_unreachable", "msg": "the bot is unreachable"})
        await self.step(shown_once, p, BOT_UNREACHABLE)

        def once() -> None:
            expect(p.locator(".msg-error")).to_have_count(1)  # "The service went down." once, no reason in the log
            expect(p.locator(".messages")).not_to_contain_text(BOT_UNREACHABLE)

        await self.step(once)
        self.system.push({**down, "code": "agent_unreachable", "msg": "agent link lost"})

        def replaced() -> None:
            shown_once(p, AGENT_UNREACHABLE)
            expect(p).not_to_contain_text(BOT_UNREACHABLE)

        await self.step(replaced)
        # Up, then an error of its own: that reason shows once too.
        self.system.push({**down, "status": 1, "code": "ok", "msg": "ok"})
        error = {"method": "aichatResp", "serviceId": sid, "appid": "1.00002", "content": "", "action": "",
                 "result": 413, "code": "too_large", "msg": "message larger than 65536 bytes; dropped"}
        self.system.push(error)
        self.system.push(error)

        def error_once() -> None:
            shown_once(p, "Error: The message is too large.")
            expect(p).not_to_contain_text(AGENT_UNREACHABLE)
            expect(p.locator("input.content")).to_be_enabled()

        await self.step(error_once)
        await self.assert_no_page_errors(page)

    async def test_service_list_entries_say_their_code(self) -> None:
        """A service that is down reads as its code's sentence in the list (its msg when it has no code), with the raw
        msg as the option's title."""
        sid = await self.system.add_service()
        page = await self.page_as(TESTER, "chat.html")

        def listed() -> None:
            # Fake enough of getServiceList to hold entries the servers make
            # only when a part is down: the real answer plus two down services.
            def with_down_entries(route: Any) -> None:
                answer = route.fetch().json()
                real = answer["serviceLists"][0]
                answer["serviceLists"] += [
                    {**real, "serviceId": 901, "description": "coded", "status": 0,
                     "code": "mysql_unreachable", "msg": "bot MySQL unreachable: (2003, refused)"},
                    {**{k: v for k, v in real.items() if k != "code"},
                     "serviceId": 902, "description": "uncoded", "status": 0, "msg": "an old server's reason"},
                ]
                route.fulfill(json=answer)

            page.route("**/Service/getServiceList", with_down_entries)
            page.reload()
            select = panel(page, 1).locator("select.service")
            coded = select.locator('option[value="901"]')
            expect(coded).to_contain_text(f"unavailable: {MYSQL_UNREACHABLE}")
            expect(coded).not_to_contain_text("2003")
            expect(coded).to_have_attribute("title", "bot MySQL unreachable: (2003, refused)")
            expect(coded).to_be_disabled()
            expect(select.locator('option[value="902"]')).to_contain_text("unavailable: an old server's reason")
            expect(select.locator(f'option[value="{sid}"]')).to_be_enabled()
            page.select_option("#lang", "zh")
            expect(coded).to_contain_text("不可用：无法连接到机器人的 MySQL。")
            page.select_option("#lang", "en")

        await self.step(listed)
        await self.assert_no_page_errors(page)


class AdminPageTests(PageTestCase):
    def mysql_user(self) -> tuple[str, str]:
        """A MariaDB user with a password, able to read the bot's database; dropped in cleanup."""
        user, password = f"wt_pages_{free_port()}", "pw-s3cret-pages"
        mariadb.execute(self.system.database, f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
        self.addCleanup(mariadb.execute, self.system.database, f"DROP USER IF EXISTS '{user}'@'%'")
        mariadb.execute(self.system.database, f"GRANT SELECT ON `{self.system.database}`.* TO '{user}'@'%'")
        return user, password

    def stored_password(self, sid: int) -> str:
        connection, dialect = connect_sync(self.system.options.config.registry)
        try:
            cursor = connection.cursor()
            cursor.execute(f"SELECT mysqlPwd FROM tb_service_info WHERE id = {int(sid)}")
            return str(cursor.fetchone()[0])
        finally:
            connection.close()

    async def test_admin_adds_edits_deletes(self) -> None:
        """An admin adds a service (a bad port is named beside its field), sees its status change, edits it with the
        password kept, and deletes it."""
        user, password = self.mysql_user()
        s = self.system.service()
        await self.system.add_service(description="reference bot")
        page = await self.page_as(ADMIN, "admin.html")
        new_row = page.locator("#services tbody tr").filter(has_text="new bot")

        def add() -> None:
            page.click("#add-service")
            page.fill("#f-description", "new bot")
            page.fill("#f-allowedAppids", "1.00002, 1.00003")
            page.fill("#f-wxServiceAddr", s["wxServiceAddr"])
            page.fill("#f-agentAddr", s["agentAddr"])
            page.fill("#f-redisCluster", ", ".join(f"{n['host']}:{n['port']}" for n in s["redisCluster"]))
            page.fill("#f-mysqlAddr", s["mysqlAddr"])
            page.fill("#f-mysqlPort", "70000")
            page.fill("#f-mysqlUser", user)
            page.fill("#f-mysqlPwd", "not-the-password")
            page.fill("#f-mysqlDbname", s["mysqlDbname"])
            page.click("#save-service")
            expect(page.locator("#e-mysqlPort")).to_contain_text("between 1 and 65535")
            expect(page.locator("#f-mysqlPort")).to_have_attribute("aria-invalid", "true")
            expect(page.locator("#services tbody tr")).to_have_count(1)
            page.fill("#f-mysqlPort", str(s["mysqlPort"]))
            page.click("#save-service")
            expect(page.locator("#service-editor")).to_be_hidden()
            expect(new_row).to_have_count(1)
            # The bot's MySQL refuses that password: down, with the reason.
            expect(new_row.locator(".reason")).to_contain_text("MySQL", timeout=20_000)
            expect(new_row.locator(".badge")).to_have_text("down")
            screenshot(page, self, "admin.png")

            # The right password, typed over the mask: up.
            new_row.locator("button.edit").click()
            expect(page.locator("#f-mysqlPwd")).to_have_value("********")
            page.fill("#f-mysqlPwd", password)
            page.click("#save-service")
            expect(new_row.locator(".badge")).to_have_text("up", timeout=20_000)

            # Another edit leaves the masked password alone: still up. It also lets test cases write state.
            new_row.locator("button.edit").click()
            expect(page.locator("#f-mysqlPwd")).to_have_value("********")
            expect(page.locator("#f-allowStateWrites")).not_to_be_checked()
            page.check("#f-allowStateWrites")
            page.fill("#f-description", "new bot, edited")
            page.click("#save-service")
            expect(new_row).to_contain_text("new bot, edited")
            page.wait_for_timeout(1000)
            expect(new_row.locator(".badge")).to_have_text("up")

        await self.step(add)
        sid = max(s["serviceId"] for s in await self.system.services())
        self.assertEqual(self.stored_password(sid), password)
        [stored] = [s for s in await self.system.services() if s["serviceId"] == sid]
        self.assertIs(stored["allowStateWrites"], True)

        def delete() -> None:
            page.once("dialog", lambda dialog: dialog.accept())
            new_row.locator("button.delete").click()
            expect(new_row).to_have_count(0)
            expect(page.locator("#admin-notice")).to_contain_text(f"Service {sid} deleted.")

        await self.step(delete)
        self.assertEqual([x["description"] for x in await self.system.services()], ["reference bot"])
        await self.assert_no_page_errors(page)

    async def test_health_history_and_audit_trail(self) -> None:
        """Each row shows the last 24 h as a bar (hover: the reason and the time) and a latency sparkline;
        clicking it opens the service's outages and who changed it; the whole audit trail is listed, without
        the password."""
        import time

        sid = await self.system.add_service(description="watched bot")
        await self.system.update_service(sid, description="watched bot, renamed")
        now = int(time.time() * 1000)
        connection, dialect = connect_sync(self.system.options.config.registry)
        try:
            cursor = connection.cursor()
            q = (lambda sql: sql) if dialect == "mysql" else (lambda sql: sql.replace("%s", "?"))
            # Up since yesterday but for half an hour three hours ago.
            cursor.executemany(q("INSERT INTO tb_health_event (serviceId, at, status, code, msg) "
                                 "VALUES (%s, %s, %s, %s, %s)"),
                               [[sid, now - 30 * 3_600_000, 1, "ok", "ok"],
                                [sid, now - 3 * 3_600_000, 0, "bot_unreachable", "bot unreachable: refused <x>"],
                                [sid, now - 5 * 1_800_000, 1, "ok", "ok"]])
            cursor.executemany(q("INSERT INTO tb_health_sample (serviceId, at, latencyMs) VALUES (%s, %s, %s)"),
                               [[sid, now - i * 1_800_000, 0.5 + i % 3] for i in range(1, 40)])
            connection.commit()
        finally:
            connection.close()
        page = await self.page_as(ADMIN, "admin.html")

        def look() -> None:
            row = page.locator(f'#services tr[data-service-id="{sid}"]')
            expect(row.locator(".timeline .beat")).to_have_count(48)
            expect(row.locator('.beat[data-state="up"]').first).to_be_visible()
            bad = row.locator('.beat[data-state="down"], .beat[data-state="partial"]')
            assert bad.count() >= 1, "the outage shows in the bar"
            assert "bot unreachable: refused <x>" in (bad.first.get_attribute("title") or "")
            assert row.locator(".sparkline polyline").count() >= 1
            row.locator(".timeline").click()
            panel = page.locator("#service-history")
            expect(panel).to_be_visible()
            expect(panel.locator("#history-title")).to_contain_text(f"Service {sid}")
            outage = panel.locator("#outages tbody tr").filter(has_text="refused <x>")
            expect(outage).to_have_count(1)
            expect(outage).to_contain_text("30 min 0 s")
            expect(outage.locator(".reason-text")).to_have_text("The bot cannot be reached.")
            changes = panel.locator("#service-audit tbody tr")
            expect(changes.filter(has_text="updateServices")).to_contain_text("watched bot, renamed")
            expect(changes.filter(has_text="addServices")).to_contain_text("root")
            trail = page.locator("#audit tbody")
            expect(trail.locator("tr").filter(has_text="login").first).to_contain_text(ADMIN)
            expect(trail).to_contain_text("updateServices")
            assert mariadb.PASSWORD == "" or mariadb.PASSWORD not in trail.inner_text()
            screenshot(page, self, "admin-history.png")
            page.click("#history-close")
            expect(panel).to_be_hidden()
            page.select_option("#lang", "zh")
            expect(page.locator("#audit-title")).to_have_text("登记变更记录")
            page.select_option("#lang", "en")

        await self.step(look)
        await self.assert_no_page_errors(page)

    async def test_admin_sees_sentence_and_raw_reason(self) -> None:
        """A service that is down reads on the admin page as its code's sentence with the raw msg visible beside it, as
        text."""
        await self.system.add_service(description="healthy bot")
        page = await self.page_as(ADMIN, "admin.html")
        raw = "agent unreachable: <b>connection refused</b>"

        def listed() -> None:
            # Fake enough of getServices to hold a down service with a code.
            def with_down_entry(route: Any) -> None:
                answer = route.fetch().json()
                answer["servicdLists"].append({**answer["servicdLists"][0], "serviceId": 901,
                                               "description": "coded", "status": 0,
                                               "code": "agent_unreachable", "msg": raw})
                route.fulfill(json=answer)

            page.route("**/Service/getServices", with_down_entry)
            page.reload()
            row = page.locator('#services tr[data-service-id="901"]')
            expect(row.locator(".badge")).to_have_text("down")
            expect(row.locator(".reason-text")).to_have_text(AGENT_UNREACHABLE)
            expect(row.locator(".reason-msg")).to_have_text(raw)
            expect(row.locator(".reason-msg")).to_be_visible()
            assert row.locator("b").count() == 0
            page.select_option("#lang", "zh")
            expect(row.locator(".reason-text")).to_have_text("无法连接到机器人主机上的代理（agent）。")
            page.select_option("#lang", "en")

        await self.step(listed)
        await self.assert_no_page_errors(page)

    async def test_tester_is_refused_admin(self) -> None:
        """A tester sees no admin function, is refused the admin page and the admin API; a stranger is sent to log
        in."""
        await self.system.add_service()
        page = await self.browser.page()

        def refused() -> None:
            # A wrong password is answered on the login page.
            log_in_wrong = f"{self.system.base}/login.html"
            page.goto(log_in_wrong)
            page.fill("#username", TESTER)
            page.fill("#password", "not the password")
            page.click("#login-submit")
            expect(page.locator("#login-error")).to_contain_text("wrong username or password")
            screenshot(page, self, "login.png")
            # Not logged in, the API says 401.
            status = page.evaluate("fetch('Service/getServiceList').then(r => r.status)")
            assert status == 401, status

            log_in(page, self.system.base, TESTER)
            expect(page.locator("#go-chat")).to_be_visible()
            expect(page.locator("#go-admin")).to_be_hidden()
            screenshot(page, self, "home.png")
            expect(page.locator("#nav")).not_to_contain_text("Services")
            page.goto(f"{self.system.base}/admin.html")
            expect(page.locator("#forbidden")).to_be_visible()
            expect(page.locator("#services")).to_have_count(0)
            for method, path, body in [
                ("GET", "Service/getServices", None),
                ("PUT", "Service/addServices", "[]"),
                ("DELETE", "Service/delServices", '{"serviceIds":[1]}'),
            ]:
                status = page.evaluate(
                    """([method, path, body]) => fetch(path, {method, body, credentials: "same-origin",
                        headers: body ? {"Content-Type": "application/json"} : {}}).then(r => r.status)""",
                    [method, path, body],
                )
                assert status == 403, (method, path, status)

        await self.step(refused)
        self.assertEqual(len(await self.system.services()), 1)
        await self.assert_no_page_errors(page)
