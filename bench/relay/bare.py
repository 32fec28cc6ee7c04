"""
A bare Autobahn three-hop relay, the bench's floor for what Twisted and
Autobahn cost: the seed's shape (browser → web → agent → bot) with nothing
else — no validation, no sessions, no state, no deadlines.

    python bare.py web PORT AGENT_PORT     browser WebSocket; one link to the agent
    python bare.py agent PORT BOT_PORT     the agent; one bot WebSocket per login

The web hop tags each browser frame with the connection's ``uuid`` and sends
it over its single link; the agent opens a WxService connection per
``loginReq`` and turns ``aichatReq`` into ``chatReq`` and ``chatResp`` back
into ``aichatResp``. One JSON parse and one encode per frame per hop, as a
relay that routes on a field must do.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
    connectWS,
)
from twisted.internet import reactor

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_loads = json.loads


def _send(protocol: Any, message: dict[str, Any]) -> None:
    protocol.sendMessage(_dumps(message).encode("utf-8"))


# -- web hop -------------------------------------------------------------------

class Browser(WebSocketServerProtocol):
    def onOpen(self) -> None:
        self.uuid = self.factory.add(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = _loads(payload)
        message["uuid"] = self.uuid
        _send(self.factory.link, message)

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        self.factory.browsers.pop(getattr(self, "uuid", None), None)


class WebFactory(WebSocketServerFactory):
    protocol = Browser

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.browsers: dict[str, Browser] = {}
        self.link: Any = None
        self._next = 0

    def add(self, browser: Browser) -> str:
        self._next += 1
        uuid = f"b{self._next}"
        self.browsers[uuid] = browser
        return uuid


class AgentLink(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.web.link = self
        self.factory.ready()  # the web hop listens once its link is up

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = _loads(payload)
        browser = self.factory.web.browsers.get(message.pop("uuid", None))
        if browser is not None:
            _send(browser, message)


# -- agent hop -----------------------------------------------------------------

class WebLink(WebSocketServerProtocol):
    def onOpen(self) -> None:
        self.users: dict[str, BotUser] = {}

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = _loads(payload)
        uuid = message["uuid"]
        method = message["method"]
        if method == "loginReq":
            user = self.users[uuid] = BotUser(self, uuid, message)
            user.connect(self.factory.bot_url)
        elif method == "aichatReq":
            self.users[uuid].send({"method": "chatReq", "content": message["content"]})
        elif method == "logoutReq":
            self.users[uuid].send({"method": "logoutReq"})


class BotUser:
    def __init__(self, link: WebLink, uuid: str, login: dict[str, Any]) -> None:
        self.link = link
        self.uuid = uuid
        self.service_id = login.get("serviceId")
        self.appid = login["appid"]
        self.first = {"method": "loginReq", "appid": login["appid"], "uname": login["uname"]}
        self.protocol: Any = None

    def connect(self, url: str) -> None:
        factory = WebSocketClientFactory(url)
        factory.protocol = BotConnection
        factory.user = self  # type: ignore[attr-defined]
        factory.setProtocolOptions(autoPingInterval=None)
        connectWS(factory)

    def send(self, message: dict[str, Any]) -> None:
        _send(self.protocol, message)

    def answer(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        if method == "chatResp":
            message["method"] = "aichatResp"
        elif method == "loginResp":
            message["strUid"] = message.pop("uid", "")
        message["uuid"] = self.uuid
        message["serviceId"] = self.service_id
        message["appid"] = self.appid
        _send(self.link, message)


class BotConnection(WebSocketClientProtocol):
    def onOpen(self) -> None:
        user = self.factory.user
        user.protocol = self
        user.send(user.first)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.user.answer(_loads(payload))


def main() -> None:
    role, port, upstream = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if role == "web":
        web = WebFactory(f"ws://127.0.0.1:{port}")
        web.setProtocolOptions(autoPingInterval=None)
        link = WebSocketClientFactory(f"ws://127.0.0.1:{upstream}")
        link.protocol = AgentLink
        link.web = web  # type: ignore[attr-defined]
        link.ready = lambda: reactor.listenTCP(  # type: ignore[attr-defined]
            port, web, backlog=4096, interface="127.0.0.1")
        connectWS(link)
    else:
        agent = WebSocketServerFactory(f"ws://127.0.0.1:{port}")
        agent.protocol = WebLink
        agent.bot_url = f"ws://127.0.0.1:{upstream}/5.00034"  # type: ignore[attr-defined]
        agent.setProtocolOptions(autoPingInterval=None)
        reactor.listenTCP(port, agent, backlog=4096, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
