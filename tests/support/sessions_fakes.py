"""
Fake enough of an AgentLink for browser WebSocket tests: it answers every
loginReq with a successful loginResp through the relay, as an agent would.
"""

from __future__ import annotations

import json
from typing import Any

from webtesting.protocol import LOGGED_IN, ROUTE, routed_frame


class StaticLink:
    def __init__(self, service_id: int) -> None:
        self.service_id = service_id
        self.up = True
        self.connected = True
        self.reason = "ok"
        self.code = "ok"
        self.sent: list[dict[str, Any]] = []
        self.relay: Any = None

    def send(self, message: dict[str, Any]) -> None:
        # Encoded as the real link does, so that what it cannot send fails here too.
        json.dumps(message, ensure_ascii=False).encode()
        self.sent.append(dict(message))
        if message["method"] == "loginReq" and self.relay is not None:
            answer = {"method": "loginResp", "serviceId": self.service_id, "appid": message["appid"],
                      "strUid": "1", "result": 1, "msg": "ok"}
            self.relay.from_agent(self.service_id, routed_frame(message["uuid"], LOGGED_IN, answer))
        elif message["method"] == "logoutReq" and self.relay is not None:
            self.relay.from_agent(self.service_id, routed_frame(message["uuid"], ROUTE, {"method": "logoutResp"}))
