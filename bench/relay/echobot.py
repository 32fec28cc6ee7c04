"""
The bench's bot: an echo that speaks the WxService protocol
(docs/wxservice-protocol.md) and does nothing else, so that every target
of ``bench/relay`` has the same, cheap bot behind it.

    python echobot.py PORT

loginReq → loginResp (uid: a number per uname), chatReq → one chatResp with
the same content (action "answer"), logoutReq → logoutResp. Pings are
answered by Autobahn; the listen backlog is large, so a login storm queues
instead of being refused.
"""

from __future__ import annotations

import json
import sys
import zlib

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_loads = json.loads


class EchoBot(WebSocketServerProtocol):
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = _loads(payload)
        method = message.get("method")
        if method == "chatReq":
            answer = {"method": "chatResp", "content": message.get("content", ""), "action": "answer",
                      "result": 1, "msg": "ok"}
        elif method == "loginReq":
            uid = zlib.crc32(str(message.get("uname")).encode()) & 0x7FFFFFFF
            answer = {"method": "loginResp", "uid": str(uid), "result": 1, "msg": "ok"}
        elif method == "logoutReq":
            answer = {"method": "logoutResp", "result": 1, "msg": "ok"}
        else:
            answer = {"method": "error", "result": 404, "msg": f"unknown method {method!r}"}
        self.sendMessage(_dumps(answer).encode("utf-8"))


def main() -> None:
    port = int(sys.argv[1])
    factory = WebSocketServerFactory(f"ws://127.0.0.1:{port}")
    factory.protocol = EchoBot
    factory.setProtocolOptions(autoPingInterval=None)
    reactor.listenTCP(port, factory, backlog=4096, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
