"""
Trust, tried in real headless Chromium: a page from another origin on the
same host cannot use a logged-in tester's cookie (cross-site WebSocket
hijacking, cross-origin API calls), while the real pages can; the admin page
shows sessions and who holds which bot user, and ends sessions.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from tests.test_pages import ADMIN, TESTER, PageTestCase, expect

# The attacker's page: opens the chat WebSocket and calls the API with
# whatever cookies the browser sends, and reports what happened.
EVIL = """<!doctype html><meta charset="utf-8"><title>evil</title><script>
window.results = {};
const ws = new WebSocket(%(ws)r);
ws.onopen = () => {
  window.results.ws = "open";
  ws.send(JSON.stringify({method: "loginReq", serviceId: 1, appid: "1.00002", uname: "victim"}));
};
ws.onclose = () => { window.results.ws = window.results.ws || "refused"; };
fetch(%(api)r, {method: "POST", credentials: "include", mode: "no-cors",
  headers: {"Content-Type": "text/plain"}, body: "{}"}).then(() => { window.results.api = "sent"; },
  () => { window.results.api = "failed"; });
</script>"""


def probe(page: Any, ws: str) -> str:
    """From the page's own origin: can it open the WebSocket with its cookie?"""
    return str(page.evaluate("""(url) => new Promise((done) => {
        const ws = new WebSocket(url);
        ws.onopen = () => { ws.close(); done("open"); };
        ws.onclose = () => done("refused");
    })""", ws))


class CrossOriginTests(PageTestCase):
    def attacker_site(self) -> str:
        ws = f"ws://127.0.0.1:{self.system.ws_port}/WebTesting"
        api = f"{self.system.base}/Account/logoutAll"
        root = Resource()
        root.putChild(b"evil.html", Data((EVIL % {"ws": ws, "api": api}).encode(), "text/html; charset=utf-8"))
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}/evil.html"

    async def test_page_on_another_port_cannot_use_the_cookie(self) -> None:
        """A page on another port of the same host is refused the WebSocket (403) and cannot end the session."""
        page = await self.page_as(TESTER)
        ws = f"ws://127.0.0.1:{self.system.ws_port}/WebTesting"
        self.assertEqual(await self.step(probe, page, ws), "open")  # the real page can
        evil = self.attacker_site()

        def visit() -> dict[str, str]:
            page.goto(evil)
            page.wait_for_function("window.results.ws && window.results.api")
            return dict(page.evaluate("window.results"))

        results = await self.step(visit)
        self.assertEqual(results["ws"], "refused")
        # Its cross-origin POST reached the server with the cookie, and was refused (403): the session lives.
        answer = await self.system.api("GET", "Account/sessions")
        self.assertIn(TESTER, [s["username"] for s in answer["sessions"]])
        self.assertEqual(self.system.web.getServiceNamed("websocket").factory.relay.sessions, {})

        def back() -> str:
            page.goto(f"{self.system.base}/index.html")
            page.wait_for_url("**/index.html")
            return probe(page, ws)

        self.assertEqual(await self.step(back), "open")

    async def test_other_host_name_is_sent_to_the_configured_address(self) -> None:
        """Pages opened by another name of the host (localhost) are redirected to the configured address."""
        page = await self.browser.page()
        other = self.system.base.replace("127.0.0.1", "localhost")

        def visit() -> str:
            page.goto(f"{other}/login.html")
            return str(page.url)

        self.assertTrue((await self.step(visit)).startswith(f"{self.system.base}/login.html"))


class AdminPeopleTests(PageTestCase):
    async def test_admin_sees_and_ends_sessions(self) -> None:
        """The admin page lists active sessions and who is logged in as which bot user; ending the tester's sessions
        logs them out."""
        sid = await self.system.add_service()
        await self.system.wait_status(sid, 1)
        tester = await self.page_as(TESTER, "chat.html")
        from tests.test_pages import log_in_panel

        await self.step(log_in_panel, tester, 1, sid, "1.00002", "alice")
        admin = await self.page_as(ADMIN, "admin.html")

        def sessions_and_logins() -> None:
            expect(admin.locator(f'#sessions tr[data-username="{TESTER}"]')).to_have_count(1)
            row = admin.locator('#bot-logins tr[data-uname="alice"]')
            expect(row).to_have_count(1)
            expect(row.locator("td.account")).to_have_text(TESTER)

        await self.step(sessions_and_logins)

        def end_tester() -> None:
            admin.locator(f'#sessions tr[data-username="{TESTER}"] button.end-user').click()
            expect(admin.locator(f'#sessions tr[data-username="{TESTER}"]')).to_have_count(0)
            # The tester's page is sent to the login page: its WebSocket closed (4401) and /me says 401.
            tester.wait_for_url("**/login.html*", timeout=15_000)

        await self.step(end_tester)
        await self.assert_no_page_errors(admin)

    async def test_log_out_everywhere(self) -> None:
        """"Log out everywhere" ends the account's sessions in every browser."""
        first = await self.page_as(TESTER, "chat.html")
        second = await self.page_as(TESTER, "index.html")

        def everywhere() -> None:
            second.once("dialog", lambda dialog: dialog.accept())
            second.locator("#logout-all").click()
            second.wait_for_url("**/login.html*")
            first.wait_for_url("**/login.html*", timeout=15_000)

        await self.step(everywhere)
