"""
The product end to end: a browser WebSocket client logs in to the reference
bot through the web server and the agent, chats, and watches the user's
state change — with a real Redis Cluster, real MariaDB, real sockets.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from tests.support import mariadb
from tests.support.system import System
from tests.support.wait import eventually


def push(message: dict[str, Any]) -> bool:
    return message.get("method") == "getUserStatusResp"


class EndToEndTests(unittest.TestCase):
    timeout = 120

    async def setUp(self) -> None:
        self.system = System(self)
        await self.system.start()
        self.sid = await self.system.add_service()
        self.browser = await self.system.browser()

    async def login(self, browser: Any = None, sid: int | None = None, appid: str = "1.00002",
                    uname: str = "alice") -> dict[str, Any]:
        browser = browser or self.browser
        browser.send({"method": "loginReq", "serviceId": sid or self.sid, "appid": appid, "uname": uname})
        answer = await browser.expect("loginResp")
        self.assertEqual((answer["result"], answer["msg"]), (1, "ok"), answer)
        return answer

    async def test_chat_and_live_state(self) -> None:
        """Login, chat (with the bot's unprompted second message), state pushes with correct diffs, logout."""
        answer = await self.login()
        self.assertEqual((answer["serviceId"], answer["appid"]), (self.sid, "1.00002"))
        self.assertTrue(answer["strUid"])
        first = await self.browser.expect(push)
        self.assertEqual(first["result"], 1)
        self.assertEqual(first["tag"]["newTags"], [])
        self.assertEqual(first["tag"]["deletedTags"], [])
        self.assertEqual(first["memory"]["new"], [])
        self.assertIn("uuid", first)

        self.browser.send({"method": "aichatReq", "serviceId": self.sid, "appid": "1.00002",
                           "content": "my name is Alice"})
        reply = await self.browser.expect("aichatResp")
        self.assertEqual((reply["result"], reply["serviceId"], reply["appid"]), (1, self.sid, "1.00002"))
        self.assertIn("Alice", reply["content"])
        # Timed at every hop: each host's times in order, the agent's inside the web server's (one clock here).
        hops = reply["hops"]
        self.assertEqual(list(hops), ["agentIn", "botReply", "agentOut", "webIn", "webOut"])
        self.assertTrue(hops["webIn"] <= hops["agentIn"] <= hops["botReply"] <= hops["agentOut"] <= hops["webOut"],
                        hops)
        self.assertLess(hops["webOut"] - hops["webIn"], 10_000)
        state = await self.browser.expect(lambda m: push(m) and m["memory"]["new"])
        self.assertEqual(state["memory"]["new"], [{"key": "name", "value": "Alice"}])
        self.assertIn({"key": "name", "value": "Alice"}, state["memory"]["cur"])
        self.assertTrue(state["tag"]["newTags"], "telling a name adds a tag")
        for tag in state["tag"]["newTags"]:
            self.assertTrue(tag["desc"], "tag ids are turned into text through MySQL")

        # A question makes the bot speak again later, unprompted, and switches the topic.
        self.browser.send({"method": "aichatReq", "serviceId": self.sid, "appid": "1.00002",
                           "content": "what's the weather like?"})
        await self.browser.expect("aichatResp")
        later = await self.browser.expect(lambda m: m.get("method") == "aichatResp" and m["action"] == "followUp")
        self.assertEqual((later["serviceId"], later["appid"]), (self.sid, "1.00002"))
        self.assertNotIn("hops", later)  # unprompted: no chat to time
        state = await self.browser.expect(lambda m: push(m) and m["curTopic"]["id"] is not None
                                          and m["curTopicList"]["newTopics"])
        self.assertTrue(state["curTopic"]["desc"])

        # Asking for the state answers at once; with nothing changed, new/deleted are empty.
        self.browser.send({"method": "getUserStatusReq", "serviceId": self.sid, "appid": "1.00002"})
        asked = await self.browser.expect(push)
        self.assertEqual(asked["result"], 1)

        self.browser.send({"method": "logoutReq", "serviceId": self.sid, "appid": "1.00002"})
        self.assertEqual((await self.browser.expect("logoutResp"))["result"], 1)
        await eventually(lambda: not self.system.agent.links()[0].users, what="user cleared at the agent")

    async def test_pushes_can_be_turned_off(self) -> None:
        """With pushes off, changes are not pushed, but asking still answers."""
        await self.login()
        await self.browser.expect(push)
        self.browser.send({"method": "setStatusPushReq", "serviceId": self.sid, "appid": "1.00002",
                           "enabled": False})
        self.assertEqual((await self.browser.expect("setStatusPushResp"))["enabled"], False)
        self.browser.send({"method": "aichatReq", "serviceId": self.sid, "appid": "1.00002",
                           "content": "my name is Bob"})
        await self.browser.expect("aichatResp")
        with self.assertRaises(defer.TimeoutError):
            await self.browser.expect(push, timeout=1.0)
        self.browser.send({"method": "getUserStatusReq", "serviceId": self.sid, "appid": "1.00002"})
        asked = await self.browser.expect(push)
        self.assertEqual(asked["memory"]["new"], [{"key": "name", "value": "Bob"}])

    async def test_appid_not_allowed(self) -> None:
        """A login with an appid the service does not allow is refused, and can be retried."""
        self.browser.send({"method": "loginReq", "serviceId": self.sid, "appid": "9.99999", "uname": "x"})
        answer = await self.browser.expect("loginResp")
        self.assertEqual((answer["result"], answer["code"]), (403, "forbidden"))
        await self.login()

    async def test_two_services_at_once(self) -> None:
        """One browser session talks to two services; every answer says which service it is from."""
        other = await self.system.add_service(description="second", allowedAppids=["1.00003"])
        await self.login()
        await self.login(sid=other, appid="1.00003", uname="bob")
        self.browser.send({"method": "aichatReq", "serviceId": other, "appid": "1.00003",
                           "content": "my name is Bob"})
        reply = await self.browser.expect("aichatResp")
        self.assertEqual(reply["serviceId"], other)
        self.assertIn("Bob", reply["content"])
        self.browser.send({"method": "aichatReq", "serviceId": self.sid, "appid": "1.00002",
                           "content": "my name is Alice"})
        reply = await self.browser.expect("aichatResp")
        self.assertEqual(reply["serviceId"], self.sid)
        self.assertIn("Alice", reply["content"])
        pushed = await self.browser.expect(lambda m: push(m) and m["serviceId"] == other and m["memory"]["cur"])
        self.assertEqual(pushed["memory"]["cur"], [{"key": "name", "value": "Bob"}])

    async def test_browser_going_away_logs_the_user_out(self) -> None:
        """When the browser goes away the agent clears the user and closes its WxService connection."""
        await self.login()
        await eventually(lambda: self.system.agent.links()[0].users, what="user at the agent")
        await self.browser.close()
        await eventually(lambda: not self.system.agent.links()[0].users, what="user cleared")

    async def test_agent_killed_and_back(self) -> None:
        """Agent killed mid-chat: servStatus down and the registry says why; agent back: the login is restored."""
        await self.login()
        await self.system.agent.kill()
        down = await self.browser.expect("servStatus")
        self.assertEqual((down["status"], down["serviceId"]), (0, self.sid))
        await eventually(lambda: self._status_is(0), what="registry status 0")
        self.browser.send({"method": "aichatReq", "serviceId": self.sid, "appid": "1.00002", "content": "hi"})
        self.assertEqual((await self.browser.expect("aichatResp"))["result"], 503)
        self.system.agent.start()
        up = await self.browser.expect(lambda m: m.get("method") == "servStatus" and m["status"] == 1)
        self.assertEqual(up["serviceId"], self.sid)
        self.assertEqual((await self.browser.expect("loginResp"))["result"], 1)
        await eventually(lambda: self._status_is(1), what="registry status 1")
        self.browser.send({"method": "aichatReq", "serviceId": self.sid, "appid": "1.00002",
                           "content": "my name is Alice"})
        self.assertEqual((await self.browser.expect("aichatResp"))["result"], 1)

    async def _status_is(self, status: int) -> bool:
        return (await self.system.status(self.sid))[0] == status

    async def test_wxservice_killed_and_back(self) -> None:
        """WxService killed: servStatus down once; back: the agent logs the user in again by itself."""
        await self.login()
        await self.browser.expect(push)
        await self.system.bot.stop()
        down = await self.browser.expect("servStatus")
        self.assertEqual((down["status"], down["code"]), (0, "bot_unreachable"))
        await eventually(lambda: self._status_is(0), what="registry says WxService is down")
        await self.system.bot.start()
        up = await self.browser.expect(lambda m: m.get("method") == "servStatus" and m["status"] == 1)
        self.assertEqual(up["serviceId"], self.sid)
        self.browser.send({"method": "aichatReq", "serviceId": self.sid, "appid": "1.00002",
                           "content": "my name is Carol"})
        reply = await self.browser.expect(lambda m: m.get("method") == "aichatResp" and m["result"] == 1)
        self.assertIn("Carol", reply["content"])
        self.assertEqual([m for m in self.browser.messages if m.get("method") == "servStatus"], [])
        await eventually(lambda: self._status_is(1), what="registry status 1 again")

    async def test_changed_wxservice_address(self) -> None:
        """A changed wxServiceAddr reaches the agent within one sync and the user follows it."""
        await self.login()
        await self.system.registry.update_services([{"serviceId": self.sid, "wxServiceAddr": "ws://127.0.0.1:1/none",
                                                     "mysqlPwd": mariadb.PASSWORD}])
        down = await self.browser.expect("servStatus")
        self.assertEqual(down["status"], 0)
        await self.system.registry.update_services([{"serviceId": self.sid, "wxServiceAddr": self.system.bot.url,
                                                     "mysqlPwd": mariadb.PASSWORD}])
        await self.browser.expect(lambda m: m.get("method") == "servStatus" and m["status"] == 1)
        self.browser.send({"method": "aichatReq", "serviceId": self.sid, "appid": "1.00002", "content": "hello"})
        self.assertEqual((await self.browser.expect("aichatResp"))["result"], 1)
