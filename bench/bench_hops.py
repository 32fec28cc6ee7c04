"""
What timing each chat hop by hop (the reply's "hops", docs/protocol.md) costs
the web server and the agent, per round trip, measured in process on their
own hot paths: the web server's relay (a chat in, its reply out, with and
without the agent's hops to splice into) and the agent's user session (a
chat to the bot, its reply framed, timed or not). The whole relay's CPU per
round trip comes from bench/relay/run; this gives the part the hops add,
which a three-process bench on a shared machine cannot resolve below its
noise.

    .venv/bin/python bench/bench_hops.py [--rounds 7] [--n 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from twisted.internet.task import Clock  # noqa: E402

from webtesting.agent.users import UserSession  # noqa: E402
from webtesting.protocol import LOGGED_IN, ROUTE, hops_tail, routed_frame  # noqa: E402
from webtesting.web.sessions import Relay  # noqa: E402

CONTENT = "x" * 100


class _Link:
    up = connected = True
    service_id = 1
    code = reason = "ok"

    def send(self, message: dict[str, Any]) -> None:
        pass


def web_round_trip(timed: bool) -> Any:
    """One chat through the web server's relay and its reply back, as a callable."""
    relay = Relay({1: _Link()}, clock=Clock())
    session = relay.open_session(lambda data: None)
    relay.from_browser(session, json.dumps({"method": "loginReq", "serviceId": 1, "appid": "1.00002",
                                            "uname": "u"}).encode())
    relay.from_agent(1, routed_frame(session.uuid, LOGGED_IN, {"method": "loginResp", "serviceId": 1,
                                                               "appid": "1.00002", "result": 1, "msg": "ok"}))
    reply = {"method": "aichatResp", "serviceId": 1, "appid": "1.00002", "content": CONTENT, "action": "",
             "result": 1, "msg": "ok"}
    now = time.time()
    frame = routed_frame(session.uuid, ROUTE, reply, hops_tail(now, now, now) if timed else b"")
    chat = json.dumps({"method": "aichatReq", "serviceId": 1, "appid": "1.00002", "content": CONTENT}).encode()

    def once() -> None:
        relay.from_browser(session, chat)
        relay.from_agent(1, frame)

    return once


class _Host:
    def __init__(self) -> None:
        self.reactor = Clock()

    wx_url = "ws://127.0.0.1:1/x"

    def frame(self, uuid: str, mark: bytes, message: dict[str, Any], tail: bytes = b"") -> None:
        routed_frame(uuid, mark, message, tail)  # what the agent's link does before sending

    def user_online(self, user: Any) -> None:
        pass

    def user_ended(self, user: Any) -> None:
        pass

    def wxservice_trouble(self) -> None:
        pass

    def scrub(self, text: str) -> str:
        return text


class _BotLink:
    def start(self) -> None:
        pass

    def chat(self, content: str) -> None:
        pass


def agent_round_trip(timed: bool) -> Any:
    """One chat through the agent's user session and its reply framed, as a callable."""
    user = UserSession(_Host(), "a" * 32, 1, "1.00002", "u", make_link=lambda _: _BotLink())  # type: ignore[arg-type,return-value]
    user.start()
    user.logged_in("7")

    def once() -> None:
        user.chat(CONTENT)
        if not timed:
            user._chat_times = None  # the reply then goes out as before hops (an unprompted message's path)
        user.bot_message("re", "")

    return once


def measure(fn: Any, n: int) -> float:
    """CPU µs per call."""
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1e6


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/bench_hops.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args(argv)
    results: dict[str, dict[str, float]] = {}
    for name, make in (("web", web_round_trip), ("agent", agent_round_trip)):
        plain, timed = make(False), make(True)
        measure(plain, args.n // 10)
        measure(timed, args.n // 10)
        runs: dict[str, list[float]] = {"plain": [], "timed": []}
        for _ in range(args.rounds):  # interleaved, medians reported
            runs["plain"].append(measure(plain, args.n))
            runs["timed"].append(measure(timed, args.n))
        results[name] = {k: round(statistics.median(v), 2) for k, v in runs.items()}
        results[name]["added"] = round(results[name]["timed"] - results[name]["plain"], 2)
    for name, r in results.items():
        print(f"{name}: {r['plain']:.2f} µs per round trip without hops, {r['timed']:.2f} with: +{r['added']:.2f} µs")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
