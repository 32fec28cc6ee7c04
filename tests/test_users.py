"""One user's session at the agent, with a fake host and a fake WxService link: no network."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from webtesting.agent.users import UserSession, UserState
from webtesting.lifecycle import Health
from webtesting.protocol import routed_frame


class FakeHost:
    """Fake enough of the agent's WebLink for a user session: it keeps every frame."""

    def __init__(self) -> None:
        self.reactor = Clock()
        self.frames: list[tuple[bytes, dict[str, Any]]] = []
        self.troubles = 0

    @property
    def wx_url(self) -> str:
        return "ws://127.0.0.1:1/x"

    def frame(self, uuid: str, mark: bytes, message: dict[str, Any], tail: bytes = b"") -> None:
        data = routed_frame(uuid, mark, message, tail)
        self.frames.append((mark, json.loads(data[len(uuid) + 1:])))

    def user_online(self, user: UserSession) -> None:
        pass

    def user_ended(self, user: UserSession) -> None:
        pass

    def wxservice_trouble(self) -> None:
        self.troubles += 1

    def scrub(self, text: str) -> str:
        return text


class FakeLink:
    """Fake enough of a WxServiceLink: records chats and nudges."""

    def __init__(self) -> None:
        self.chats: list[str] = []
        self.nudged = 0
        self.checked = 0
        self.stopped = False

    def start(self) -> None:
        pass

    def chat(self, content: str) -> None:
        self.chats.append(content)

    def retry_now(self) -> None:
        self.nudged += 1

    def check_alive(self) -> None:
        self.checked += 1

    def stop(self) -> None:
        self.stopped = True

    def logout(self) -> None:
        self.stopped = True


class UserSessionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.host = FakeHost()
        self.link = FakeLink()
        self.user = UserSession(self.host, "a" * 32, 1, "1.00002", "ann", make_link=lambda user: self.link)  # type: ignore[arg-type,return-value]
        self.user.start()
        self.user.logged_in("7")

    def answers(self) -> list[dict[str, Any]]:
        return [m for _, m in self.host.frames if m["method"] == "aichatResp"]

    def test_chats_in_flight_are_answered_when_the_bot_goes(self) -> None:
        """Chats the bot never answered get an error each when its link drops; answered ones do not."""
        for text in ("one", "two", "three"):
            self.user.chat(text)
        self.user.bot_message("re: one", "")
        self.user.link_down(Health(False, "bot_not_responding", "no pong"))
        errors = [m for m in self.answers() if m["result"] != 1]
        self.assertEqual([(m["result"], m["code"]) for m in errors], [(503, "bot_not_responding")] * 2)
        self.assertEqual(self.user.state, UserState.RECONNECTING)
        # Back again: nothing more is owed.
        self.user.logged_in("7")
        self.user.link_down(Health(False, "bot_unreachable", "refused"))
        self.assertEqual(len([m for m in self.answers() if m["result"] != 1]), 2)

    def test_bot_may_be_frozen(self) -> None:
        """A frozen-bot hint makes an online user's link check itself; one already reconnecting does nothing."""
        self.user.bot_may_be_frozen()
        self.assertEqual(self.link.checked, 1)
        self.user.link_down(Health(False, "bot_unreachable", "refused"))
        self.user.bot_may_be_frozen()
        self.assertEqual(self.link.checked, 1)

    def test_chat_while_reconnecting_is_answered_at_once(self) -> None:
        """A chat while the bot is away is answered at once and not counted as waiting."""
        self.user.link_down(Health(False, "bot_unreachable", "refused"))
        self.user.chat("anyone?")
        self.assertEqual(self.link.chats, [])
        self.assertEqual(self.answers()[-1]["code"], "bot_unreachable")
        self.user.logged_in("7")
        self.user.link_down(Health(False, "bot_unreachable", "refused"))
        self.assertEqual(len(self.answers()), 1)

    def test_bot_back_nudges_only_reconnecting_users(self) -> None:
        """When the health checks find the bot again, a reconnecting user dials at once; an online one is left alone."""
        self.user.bot_is_back()
        self.assertEqual(self.link.nudged, 0)
        self.user.link_down(Health(False, "bot_unreachable", "refused"))
        self.user.bot_is_back()
        self.assertEqual(self.link.nudged, 1)

    def test_moved_bot_answers_waiting_chats(self) -> None:
        """When the bot moves, chats it had not answered are answered, and not again at the next drop."""
        self.link.moved = lambda: None  # type: ignore[attr-defined]
        self.user.chat("one")
        self.user.reconnect_now()
        errors = [m for m in self.answers() if m["result"] != 1]
        self.assertEqual([m["code"] for m in errors], ["bot_unreachable"])
        self.user.logged_in("7")
        self.user.link_down(Health(False, "bot_unreachable", "refused"))
        self.assertEqual(len([m for m in self.answers() if m["result"] != 1]), 1)

    def test_bot_words_after_logout_are_dropped(self) -> None:
        """A bot reply arriving after the page logged out is not sent on."""
        self.user.chat("one")
        self.user.logout()
        self.user.bot_message("late", "")
        self.assertEqual(self.answers(), [])

    def test_a_reply_carries_its_hops(self) -> None:
        """The reply to a chat carries, as its last key, when the chat came and when the bot answered (Unix ms);
        replies match chats oldest first; a message the bot sends on its own, or after an error, has no hops."""
        from prometheus_client import REGISTRY

        def bot_count() -> tuple[float, float]:
            labels = {"service": "1", "hop": "bot"}
            return (REGISTRY.get_sample_value("webtesting_chat_hop_seconds_sum", labels) or 0.0,
                    REGISTRY.get_sample_value("webtesting_chat_hop_seconds_count", labels) or 0.0)

        before = bot_count()
        self.host.reactor.advance(1000)
        self.user.chat("one")
        self.host.reactor.advance(0.25)
        self.user.chat("two")
        self.host.reactor.advance(0.5)
        self.user.bot_message("re: one", "")
        self.user.bot_message("re: two", "")
        self.user.bot_message("and another thing", "")
        one, two, unprompted = self.answers()
        self.assertEqual(list(one)[-1], "hops")
        self.assertEqual(one["hops"], {"agentIn": 1_000_000.0, "botReply": 1_000_750.0, "agentOut": 1_000_750.0})
        self.assertEqual(two["hops"]["agentIn"], 1_000_250.0)
        self.assertNotIn("hops", unprompted)
        after = bot_count()
        self.assertAlmostEqual(after[0] - before[0], 0.75 + 0.5)
        self.assertEqual(after[1] - before[1], 2)
        agent = REGISTRY.get_sample_value("webtesting_chat_hop_seconds_count", {"service": "1", "hop": "agent"})
        self.assertGreaterEqual(agent or 0, 2)
        # A chat the bot refused takes its time with it: the next reply is timed from its own chat.
        from webtesting.agent import wxservice

        self.user.chat("three")
        self.host.reactor.advance(1)
        self.user.chat("four")
        self.user.bot_error(wxservice.WxServiceError("aichatReq", 500, "no"))
        self.host.reactor.advance(1)
        self.user.bot_message("re: four", "")
        self.assertEqual(self.answers()[-1]["hops"]["agentIn"], 1_001_750.0)
        # A dropped link answers what waited: no time is left behind.
        self.user.chat("five")
        self.user.link_down(Health(False, "bot_unreachable", "refused"))
        self.user.logged_in("7")
        self.user.bot_message("hello again", "")
        self.assertNotIn("hops", self.answers()[-1])
