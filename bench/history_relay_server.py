"""
The web server's relay hop, alone in its own process, for bench_history.py:
the real browser WebSocket (L{BrowserFactory}, Autobahn), the real L{Relay}
and, with C{--history}, the real L{History} writing to the registry database
given. Behind it, instead of an agent link, an echo that answers every
request at once (a login with loginResp, a chat with its own text), so that
only this process's work is measured.

    python bench/history_relay_server.py --registry FILE --port N [--history]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import reactor  # noqa: E402

from webtesting.config import RegistryConfig  # noqa: E402
from webtesting.protocol import LOGGED_IN, ROUTE, routed_frame  # noqa: E402
from webtesting.web.accounts import SessionStore  # noqa: E402
from webtesting.web.history import History  # noqa: E402
from webtesting.web.registry import open_registry  # noqa: E402
from webtesting.web.sessions import Relay  # noqa: E402
from webtesting.web.ws import BrowserFactory  # noqa: E402

SID = 1


class EchoLink:
    """An agent link that answers every request at once, as an infinitely fast agent and bot would."""

    service_id = SID
    up = connected = True
    reason = code = ""
    record = None

    def __init__(self) -> None:
        self.relay: Relay | None = None

    def send(self, message: dict[str, Any]) -> None:
        assert self.relay is not None
        uuid, appid = message["uuid"], message.get("appid", "")
        if message["method"] == "loginReq":
            self.relay.from_agent(SID, routed_frame(uuid, LOGGED_IN, {
                "method": "loginResp", "serviceId": SID, "appid": appid, "strUid": "1", "result": 1, "msg": "ok"}))
        elif message["method"] == "aichatReq":
            self.relay.from_agent(SID, routed_frame(uuid, ROUTE, {
                "method": "aichatResp", "serviceId": SID, "appid": appid, "content": message["content"],
                "action": "", "result": 1, "msg": "ok"}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--history", action="store_true")
    args = parser.parse_args()
    registry = open_registry(RegistryConfig(sqlite_path=args.registry), reactor)
    registry.db.startService()
    link = EchoLink()
    relay = Relay({SID: link}, clock=reactor, max_logins_per_account=1_000_000)
    link.relay = relay
    if args.history:
        db: Any = registry.db
        if os.environ.get("WT_HISTORY_NOOP"):
            from twisted.internet.defer import succeed

            class NoDB:
                def run(self, work: Any) -> Any:
                    return succeed(None)
            db = NoDB()
        history = History(db, registry.dialect_name, reactor, batch=int(os.environ.get("WT_HISTORY_BATCH", "10000")))
        history.startService()
        relay.history = history
        reactor.addSystemEventTrigger("before", "shutdown", history.stopService)
    sessions = SessionStore(registry.db, registry.dialect_name, 3600)
    factory = BrowserFactory(relay, sessions, path="/WebTesting", max_per_account=1_000_000)
    reactor.listenTCP(args.port, factory, interface="127.0.0.1")
    print("listening", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
