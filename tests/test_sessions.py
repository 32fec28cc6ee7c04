"""The relay's routing decisions, with no network at all."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from webtesting.protocol import LOGGED_IN, LOGGED_OUT, ROUTE, routed_frame
from webtesting.web.sessions import BrowserSession, Relay


class FakeLink:
    """Fake enough of an AgentLink for the relay: an up flag and the messages sent."""

    def __init__(self, service_id: int, up: bool = True) -> None:
        self.service_id = service_id
        self.up = up
        self.connected = up
        self.reason = "ok" if up else "agent unreachable: connection refused"
        self.code = "ok" if up else "agent_unreachable"
        self.sent: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.sent.append(dict(message))


class RelayTests(unittest.TestCase):
    def setUp(self) -> None:
        self.links: dict[int, Any] = {1: FakeLink(1), 2: FakeLink(2), 3: FakeLink(3, up=False)}
        counter = iter(range(1000))
        self.clock = Clock()
        self.relay = Relay(self.links, new_uuid=lambda: f"{next(counter):032x}", clock=self.clock, deadline=10)
        self.received: list[dict[str, Any]] = []
        self.session = self.relay.open_session(lambda data: self.received.append(json.loads(data)))

    def send(self, message: Any, session: BrowserSession | None = None) -> dict[str, Any]:
        raw = message if isinstance(message, bytes) else json.dumps(message).encode()
        before = len(self.received)
        self.relay.from_browser(session or self.session, raw)
        return self.received[-1] if len(self.received) > before else {}

    def login(self, service_id: int = 1, appid: str = "1.00002") -> None:
        self.assertEqual(self.send({"method": "loginReq", "serviceId": service_id, "appid": appid, "uname": "u"}), {})
        self.agent(service_id, LOGGED_IN, {"method": "loginResp", "strUid": "7", "result": 1, "msg": "ok"})

    def agent(self, service_id: int, mark: bytes, message: dict[str, Any], uuid: str | None = None) -> None:
        self.relay.from_agent(service_id, routed_frame(uuid or self.session.uuid, mark, message))

    def test_sessions_get_unique_ids(self) -> None:
        """Each browser connection gets its own uuid."""
        other = self.relay.open_session(lambda data: None)
        self.assertNotEqual(other.uuid, self.session.uuid)
        self.assertEqual(len(self.relay.sessions), 2)

    def test_malformed_json(self) -> None:
        """Malformed JSON gets an error answer, and the session keeps working."""
        answer = self.send(b"{nope")
        self.assertEqual((answer["method"], answer["result"]), ("error", 400))
        self.assertIn("not valid JSON", answer["msg"])
        self.login()
        self.assertEqual(self.links[1].sent[0]["method"], "loginReq")

    def test_not_an_object(self) -> None:
        """A JSON value that is not an object, or an object without a method, is refused."""
        self.assertIn("JSON object", self.send(b"[1]")["msg"])
        self.assertIn("method", self.send({"serviceId": 1})["msg"])

    def test_unknown_method(self) -> None:
        """An unknown method is answered 404, naming it."""
        answer = self.send({"method": "fooReq"})
        self.assertEqual((answer["method"], answer["result"]), ("error", 404))
        self.assertIn("'fooReq'", answer["msg"])

    def test_bad_fields(self) -> None:
        """Missing or wrong-typed fields are answered with the request's own answer, naming the field."""
        cases = [
            ({"method": "loginReq", "appid": "1.00002", "uname": "u"}, "serviceId: is required"),
            ({"method": "loginReq", "serviceId": "1", "appid": "1.00002", "uname": "u"},
             "serviceId: must be an integer"),
            ({"method": "loginReq", "serviceId": 1, "uname": "u"}, "appid: is required"),
            ({"method": "loginReq", "serviceId": 1, "appid": 5, "uname": "u"}, "appid: must be a string"),
            ({"method": "loginReq", "serviceId": 1, "appid": "1.00002"}, "uname: is required"),
            ({"method": "loginReq", "serviceId": 1, "appid": "1.00002", "uname": ""}, "uname: must not be empty"),
            ({"method": "aichatReq", "serviceId": 1, "appid": "1.00002"}, "content: is required"),
            ({"method": "aichatReq", "serviceId": 1, "appid": "1.00002", "content": "  "},
             "content: must not be blank"),
            ({"method": "setStatusPushReq", "serviceId": 1, "appid": "1.00002"}, "enabled: is required"),
        ]
        for message, expected in cases:
            answer = self.send(message)
            self.assertEqual(answer["method"], message["method"].replace("Req", "Resp"))
            self.assertEqual(answer["result"], 400)
            self.assertIn(expected, answer["msg"])
        self.assertEqual(self.links[1].sent, [])

    def test_login_is_forwarded_with_uuid(self) -> None:
        """A login goes to the service's link with the session's uuid added."""
        self.send({"method": "loginReq", "serviceId": 1, "appid": "1.00002", "uname": "hxw"})
        self.assertEqual(
            self.links[1].sent,
            [{"method": "loginReq", "serviceId": 1, "appid": "1.00002", "uname": "hxw", "uuid": self.session.uuid,
              "account": ""}],
        )

    def test_unknown_service(self) -> None:
        """A login to a service that does not exist is answered 404."""
        answer = self.send({"method": "loginReq", "serviceId": 99, "appid": "1.00002", "uname": "u"})
        self.assertEqual((answer["result"], answer["serviceId"], answer["appid"]), (404, 99, "1.00002"))

    def test_service_down(self) -> None:
        """A login to a service whose link is down is answered 503 with the link's reason."""
        answer = self.send({"method": "loginReq", "serviceId": 3, "appid": "1.00002", "uname": "u"})
        self.assertEqual(answer["result"], 503)
        self.assertIn("connection refused", answer["msg"])
        self.assertEqual(self.session.logins, {})

    def test_two_services_at_once(self) -> None:
        """One session logs in to two services; each request goes to the service it names."""
        self.login(1)
        self.login(2, appid="1.00003")
        self.send({"method": "aichatReq", "serviceId": 2, "appid": "1.00003", "content": "hi two"})
        self.send({"method": "aichatReq", "serviceId": 1, "appid": "1.00002", "content": "hi one"})
        self.assertEqual(self.links[1].sent[-1]["content"], "hi one")
        self.assertEqual(self.links[2].sent[-1]["content"], "hi two")
        answer = self.send({"method": "aichatReq", "appid": "1.00002", "content": "which?"})
        self.assertEqual(answer["result"], 400)
        self.assertIn("serviceId: is required (logged in to 2 services)", answer["msg"])

    def test_service_id_optional_with_one_login(self) -> None:
        """With exactly one login, a request without serviceId goes to that service."""
        self.login(2)
        self.send({"method": "getUserStatusReq", "appid": "1.00002"})
        self.assertEqual(self.links[2].sent[-1], {
            "method": "getUserStatusReq", "appid": "1.00002", "serviceId": 2, "uuid": self.session.uuid,
        })

    def test_requests_need_a_login(self) -> None:
        """Chat before login, or with another appid than the login's, is refused."""
        answer = self.send({"method": "aichatReq", "serviceId": 1, "appid": "1.00002", "content": "x"})
        self.assertEqual(answer["result"], 401)
        self.login(1)
        answer = self.send({"method": "aichatReq", "serviceId": 1, "appid": "9.9", "content": "x"})
        self.assertEqual(answer["result"], 400)
        self.assertIn("as appid 1.00002", answer["msg"])

    def test_second_login_same_service(self) -> None:
        """A second login on the same service is refused until the first logs out."""
        self.login(1)
        answer = self.send({"method": "loginReq", "serviceId": 1, "appid": "1.00003", "uname": "u"})
        self.assertEqual(answer["result"], 400)
        self.assertIn("log out first", answer["msg"])

    def test_agent_frames_are_routed_by_uuid(self) -> None:
        """Agent frames reach the session their uuid names, byte for byte, and no other."""
        other_received: list[bytes] = []
        other = self.relay.open_session(other_received.append)
        self.agent(1, ROUTE, {"method": "aichatResp", "content": "你好", "serviceId": 1, "appid": "1.00002"},
                   uuid=other.uuid)
        self.assertEqual(self.received, [])
        self.assertEqual(json.loads(other_received[0])["content"], "你好")

    def test_login_marks(self) -> None:
        """A '+' frame makes the login active, a '-' frame ends it."""
        self.send({"method": "loginReq", "serviceId": 1, "appid": "1.00002", "uname": "u"})
        self.assertFalse(self.session.logins[1].active)
        self.agent(1, LOGGED_IN, {"method": "loginResp", "result": 1})
        self.assertTrue(self.session.logins[1].active)
        self.agent(1, LOGGED_OUT, {"method": "logoutResp", "result": 1})
        self.assertEqual(self.session.logins, {})
        self.assertEqual([m["method"] for m in self.received], ["loginResp", "logoutResp"])

    def test_failed_login_can_be_retried(self) -> None:
        """After a failed login ('-'), the session may log in to that service again."""
        self.send({"method": "loginReq", "serviceId": 1, "appid": "1.00002", "uname": "u"})
        self.agent(1, LOGGED_OUT, {"method": "loginResp", "result": 403, "msg": "appid not allowed"})
        self.assertEqual(self.send({"method": "loginReq", "serviceId": 1, "appid": "1.00002", "uname": "u"}), {})

    def test_frames_for_gone_sessions_are_dropped(self) -> None:
        """A frame for a session that has gone is dropped quietly."""
        self.relay.from_agent(1, routed_frame("f" * 32, ROUTE, {"method": "aichatResp"}))
        self.assertEqual(self.received, [])

    def test_close_tells_every_agent(self) -> None:
        """When the browser goes away each agent it was logged in at is told, and the session is cleared."""
        self.login(1)
        self.login(2)
        self.relay.close_session(self.session)
        for sid in (1, 2):
            self.assertEqual(self.links[sid].sent[-1], {"method": "sessionClosed", "uuid": self.session.uuid})
        self.assertNotIn(self.session.uuid, self.relay.sessions)

    def test_service_status_reaches_logged_in_sessions(self) -> None:
        """servStatus goes to the sessions logged in to that service, with serviceId and appid."""
        bystander: list[bytes] = []
        self.relay.open_session(bystander.append)
        self.login(1)
        self.relay.service_status(1, 0, "agent link lost", "agent_unreachable")
        self.assertEqual(self.received[-1], {
            "method": "servStatus", "serviceId": 1, "appid": "1.00002", "status": 0, "msg": "agent link lost",
            "code": "agent_unreachable",
        })
        self.assertEqual(bystander, [])

    def test_logins_are_restored_on_a_new_link(self) -> None:
        """When a link comes back, the relay gives the loginReq to send again, and marks them pending."""
        self.login(1)
        [again] = self.relay.logins_to_restore(1)
        self.assertEqual(again, {
            "method": "loginReq", "serviceId": 1, "appid": "1.00002", "uname": "u", "uuid": self.session.uuid,
            "account": "", "restore": True,  # a restore never takes over a newer login (test_one_login)
        })
        self.assertFalse(self.session.logins[1].active)

    def test_logout_while_link_down(self) -> None:
        """Logging out while the link is down succeeds at once, and the login is not restored later."""
        self.login(1)
        self.links[1].up = False
        answer = self.send({"method": "logoutReq", "serviceId": 1, "appid": "1.00002"})
        self.assertEqual((answer["method"], answer["result"]), ("logoutResp", 1))
        self.assertEqual(self.relay.logins_to_restore(1), [])

    def test_logout_while_agent_refuses_settings(self) -> None:
        """A link that is connected but not up still hears that the login is over."""
        self.login(1)
        self.links[1].up = False  # connected, settings refused
        self.send({"method": "logoutReq", "serviceId": 1, "appid": "1.00002"})
        self.assertEqual(self.links[1].sent[-1], {"method": "sessionClosed", "uuid": self.session.uuid})

    def test_chat_while_link_down(self) -> None:
        """Chat while the link is down is answered 503; nothing is sent."""
        self.login(1)
        self.links[1].up = False
        sent = len(self.links[1].sent)
        answer = self.send({"method": "aichatReq", "serviceId": 1, "appid": "1.00002", "content": "x"})
        self.assertEqual(answer["result"], 503)
        self.assertEqual(len(self.links[1].sent), sent)

    def test_removed_service(self) -> None:
        """A service removed from the registry ends its logins and tells the browser."""
        self.login(1)
        self.relay.service_removed(1)
        self.assertEqual((self.received[-1]["method"], self.received[-1]["code"]), ("logoutResp", "service_deleted"))
        self.assertNotEqual(self.received[-1]["result"], 1)
        self.assertEqual(self.session.logins, {})

    def chat(self, content: str = "x") -> dict[str, Any]:
        return self.send({"method": "aichatReq", "serviceId": 1, "appid": "1.00002", "content": content})

    def test_unanswered_request_times_out(self) -> None:
        """A request the agent never answers is answered with code timeout at its deadline, once."""
        self.login(1)
        self.chat("one")
        self.clock.advance(4)
        self.chat("two")
        self.clock.advance(5.9)
        self.assertEqual(self.received[-1]["method"], "loginResp")
        self.clock.advance(0.2)
        self.assertEqual((self.received[-1]["method"], self.received[-1]["code"], self.received[-1]["result"]),
                         ("aichatResp", "timeout", 504))
        # The bot's late reply answers the oldest request still waiting ("two").
        self.agent(1, ROUTE, {"method": "aichatResp", "content": "late", "result": 1, "msg": "ok"})
        self.clock.advance(10)
        self.assertEqual([m.get("code") for m in self.received if m["method"] == "aichatResp"], ["timeout", None])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_requests_keep_their_deadline_behind_a_login(self) -> None:
        """A chat sent while another login waits (60 s) still times out at its own 10 s."""
        self.login(1)
        self.send({"method": "loginReq", "serviceId": 2, "appid": "1.00002", "uname": "v"})
        self.clock.advance(1)
        self.chat("one")
        self.clock.advance(10)
        self.assertEqual([(m["method"], m.get("code")) for m in self.received[-1:]], [("aichatResp", "timeout")])
        self.clock.advance(49)
        self.assertEqual((self.received[-1]["method"], self.received[-1]["serviceId"], self.received[-1]["code"]),
                         ("loginResp", 2, "timeout"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_answered_requests_leave_no_timer(self) -> None:
        """Answered requests are not failed later, and no timer is left once nothing is pending."""
        self.login(1)
        for n in range(3):
            self.chat(str(n))
        for n in range(3):
            self.agent(1, ROUTE, {"method": "aichatResp", "content": str(n), "result": 1, "msg": "ok"})
        self.clock.advance(11)
        self.assertFalse([m for m in self.received if m.get("code") == "timeout"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_link_lost_answers_pending_at_once(self) -> None:
        """When the link drops, every request waiting there is answered at once, and the page hears servStatus 0."""
        self.login(1)
        self.chat("a")
        self.chat("b")
        self.relay.link_lost(1, "agent_not_responding", "the agent stopped answering")
        methods = [(m["method"], m.get("code")) for m in self.received[-3:]]
        self.assertEqual(methods, [("servStatus", "agent_not_responding"), ("aichatResp", "agent_not_responding"),
                                   ("aichatResp", "agent_not_responding")])
        self.clock.advance(11)
        self.assertEqual(len([m for m in self.received if m["method"] == "aichatResp"]), 2)

    def test_restored_login_is_announced_before_service_is_up(self) -> None:
        """A restored login's loginResp reaches the page before servStatus 1, and chat waits for it."""
        self.login(1)
        self.relay.logins_to_restore(1)
        answer = self.chat()
        self.assertEqual((answer["result"], answer["code"]), (503, "unavailable"))
        self.relay.service_status(1, 1, "ok")
        self.assertNotEqual(self.received[-1]["method"], "servStatus")
        self.agent(1, LOGGED_IN, {"method": "loginResp", "strUid": "7", "result": 1, "msg": "ok"})
        self.assertEqual([m["method"] for m in self.received[-2:]], ["loginResp", "servStatus"])
        self.assertEqual(self.received[-1]["status"], 1)
        self.assertEqual(self.chat(), {})  # forwarded now

    def test_restored_login_refused_is_a_logout(self) -> None:
        """A restored login the bot refuses reaches the page as an unprompted logoutResp (relogin_refused)."""
        self.login(1)
        self.relay.logins_to_restore(1)
        self.agent(1, LOGGED_OUT, {"method": "loginResp", "result": 403, "msg": "user banned"})
        last = self.received[-1]
        self.assertEqual((last["method"], last["code"]), ("logoutResp", "relogin_refused"))
        self.assertIn("user banned", last["msg"])
        self.assertEqual(self.session.logins, {})

    def test_login_that_times_out_can_be_tried_again(self) -> None:
        """A login never answered ends at its own deadline; the agent is told to forget it, and the page may retry."""
        self.send({"method": "loginReq", "serviceId": 1, "appid": "1.00002", "uname": "u"})
        self.clock.advance(59.9)
        self.assertEqual(self.received, [])  # a login may wait its turn behind a storm
        self.clock.advance(0.1)
        self.assertEqual((self.received[-1]["method"], self.received[-1]["code"]), ("loginResp", "timeout"))
        self.assertIn("within 60 s", self.received[-1]["msg"])
        self.assertEqual(self.links[1].sent[-1], {"method": "sessionClosed", "uuid": self.session.uuid})
        self.assertEqual(self.session.logins, {})

    def test_closed_session_pending_dropped(self) -> None:
        """Requests of a session that went away are not answered, and leave no timer."""
        self.login(1)
        self.chat()
        self.relay.close_session(self.session)
        count = len(self.received)
        self.clock.advance(11)
        self.assertEqual(len(self.received), count)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RelayFaultTests(RelayTests):
    """What a dropped link or a busy page does to logins and their waiting requests."""

    def test_login_under_way_when_link_drops_is_over(self) -> None:
        """A login never confirmed when its link drops is answered and forgotten: the page may log in again."""
        self.send({"method": "loginReq", "serviceId": 1, "appid": "1.00002", "uname": "u"})
        self.relay.link_lost(1, "agent_unreachable", "agent link lost")
        self.assertEqual((self.received[-1]["method"], self.received[-1]["code"]), ("loginResp", "agent_unreachable"))
        self.assertEqual(self.session.logins, {})
        self.assertEqual(self.send({"method": "loginReq", "serviceId": 1, "appid": "1.00002", "uname": "u"}), {})

    def test_restore_interrupted_is_tried_again(self) -> None:
        """A restore cut short by another drop says nothing to the page and is sent again on the next link."""
        self.login(1)
        self.relay.logins_to_restore(1)
        count = len(self.received)
        self.relay.link_lost(1, "agent_unreachable", "agent link lost")
        self.assertEqual([m["method"] for m in self.received[count:]], [])
        self.assertEqual(len(self.relay.logins_to_restore(1)), 1)
        self.agent(1, LOGGED_IN, {"method": "loginResp", "strUid": "7", "result": 1, "msg": "ok"})
        self.assertEqual([m["method"] for m in self.received[count:]], ["loginResp", "servStatus"])
        self.clock.advance(61)  # the login's deadline: the sweep finds nothing and is not set again
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_logout_waiting_when_link_drops_succeeds(self) -> None:
        """A logout waiting for the agent when the link drops is answered ok (the agent forgets its users)."""
        self.login(1)
        self.send({"method": "logoutReq", "serviceId": 1, "appid": "1.00002"})
        self.relay.link_lost(1, "agent_unreachable", "agent link lost")
        self.assertEqual((self.received[-1]["method"], self.received[-1]["result"]), ("logoutResp", 1))
        self.assertEqual(self.session.logins, {})
        self.assertEqual(self.relay.logins_to_restore(1), [])

    def test_own_logout_during_restore_is_a_logout(self) -> None:
        """The page's own logout while its login is being restored is answered as such, not as a refusal."""
        self.login(1)
        self.relay.logins_to_restore(1)
        self.send({"method": "logoutReq", "serviceId": 1, "appid": "1.00002"})
        self.agent(1, LOGGED_OUT, {"method": "logoutResp", "result": 1, "msg": "ok"})
        self.assertEqual((self.received[-1]["method"], self.received[-1]["result"]), ("logoutResp", 1))
        self.assertNotIn("relogin_refused", json.dumps(self.received))

    def test_restore_failing_for_an_unreachable_bot_says_so(self) -> None:
        """A restore that fails because the bot is unreachable ends the login with that code, not 'refused'."""
        self.login(1)
        self.relay.logins_to_restore(1)
        self.agent(1, LOGGED_OUT, {"method": "loginResp", "result": 503, "msg": "bot down", "code": "bot_unreachable"})
        self.assertEqual((self.received[-1]["method"], self.received[-1]["code"]), ("logoutResp", "bot_unreachable"))

    def test_requests_in_flight_are_capped(self) -> None:
        """A page cannot queue without end: past the cap, requests are answered 503 at once and not sent."""
        from webtesting.web.sessions import MAX_IN_FLIGHT

        self.login(1)
        sent = len(self.links[1].sent)
        for n in range(MAX_IN_FLIGHT + 5):
            self.send({"method": "aichatReq", "serviceId": 1, "appid": "1.00002", "content": str(n)})
        self.assertEqual(len(self.links[1].sent) - sent, MAX_IN_FLIGHT)
        refused = [m for m in self.received if m["method"] == "aichatResp" and m.get("result") == 503]
        self.assertEqual(len(refused), 5)

    def test_a_timed_reply_gets_the_web_servers_times(self) -> None:
        """The agent's hops on a chat reply get webIn and webOut added (Unix ms, this server's clock), byte for
        byte otherwise; the time here goes to the metrics; the history keeps the reply without hops; a reply
        with no hops, or with nothing waiting for it, passes unchanged."""
        from prometheus_client import REGISTRY

        def count(hop: str) -> float:
            return REGISTRY.get_sample_value("webtesting_chat_hop_seconds_count", {"service": "1", "hop": hop}) or 0

        self.login(1)
        self.clock.advance(2000)
        self.chat("one")
        self.clock.advance(0.010)
        before = count("web")
        sum_before = REGISTRY.get_sample_value("webtesting_chat_hop_seconds_sum", {"service": "1", "hop": "web"}) or 0
        hops = {"agentIn": 5.0, "botReply": 7.5, "agentOut": 8.0}
        reply = {"method": "aichatResp", "serviceId": 1, "appid": "1.00002", "content": "re", "action": "",
                 "result": 1, "msg": "ok", "hops": hops}
        delivered: list[bytes] = []
        self.session.deliver = delivered.append
        recorded: list[Any] = []

        class History:
            def record(self, *event: Any) -> None:
                recorded.append(event)

        self.relay.history = History()  # type: ignore[assignment]
        self.agent(1, ROUTE, reply)
        [raw] = delivered
        # The history keeps the reply without its timings.
        [(*_, kind, body)] = recorded
        self.assertEqual((kind, json.loads(body)), ("reply", {k: v for k, v in reply.items() if k != "hops"}))
        sent = routed_frame(self.session.uuid, ROUTE, reply)[33:]
        self.assertEqual(raw, sent[:-2] + b',"webIn":2000000.000,"webOut":2000010.000}}')
        self.assertEqual(json.loads(raw)["hops"], {**hops, "webIn": 2_000_000.0, "webOut": 2_000_010.0})
        self.assertEqual(count("web"), before + 1)
        added = (REGISTRY.get_sample_value("webtesting_chat_hop_seconds_sum", {"service": "1", "hop": "web"}) or 0
                 ) - sum_before
        self.assertTrue(abs(added - 0.010) < 1e-6, added)
        # No hops (an older agent, an error): as it came; an unprompted reply (nothing waiting) likewise.
        self.chat("two")
        plain = {k: v for k, v in reply.items() if k != "hops"}
        self.agent(1, ROUTE, plain)
        self.assertEqual(delivered[-1], routed_frame(self.session.uuid, ROUTE, plain)[33:])
        self.agent(1, ROUTE, reply)
        self.assertEqual(delivered[-1], sent)
        self.assertEqual(count("web"), before + 1)
        # Hops that are not an object of the agent's numbers at the very end: as they came, never spliced.
        for odd in ({**plain, "hops": {}}, {**reply, "extra": 1}):
            self.chat("three")
            self.agent(1, ROUTE, odd)
            self.assertEqual(delivered[-1], routed_frame(self.session.uuid, ROUTE, odd)[33:])
            json.loads(delivered[-1])
