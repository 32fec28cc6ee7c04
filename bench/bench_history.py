"""
What recording history costs the relay, measured side by side in one run:
the web server's relay hop (bench/history_relay_server.py: the real browser
WebSocket, the real Relay, an echo in place of the agent) in its own
process, without and with history writing to a real SQLite registry, under
the same load of chat round trips.

    .venv/bin/python bench/bench_history.py [--sessions 100] [--seconds 8] [--runs 3]

The load (this process, Autobahn clients) keeps every session chatting in a
closed loop: a ~100-byte aichatReq, wait for its aichatResp, send the next.
For each run it reports the round trips per second and the server's CPU
(user + system, from /proc, so the history thread's decoding, inserting and
committing are counted) per round trip. Target: history costs <= 10 % of
relay throughput, i.e. of the server's CPU per round trip (the measure that
does not depend on how fast the load generator is).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol  # noqa: E402
from twisted.internet import defer, task  # noqa: E402

from tests.support.wait import free_port  # noqa: E402
from webtesting.config import RegistryConfig  # noqa: E402
from webtesting.web.accounts import add_user_sync, make_token_sync  # noqa: E402
from webtesting.web.registry import connect_sync  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TARGET = 0.10
CHAT = json.dumps({"method": "aichatReq", "serviceId": 1, "appid": "1.00002", "content": "x" * 40}).encode()
TICK = os.sysconf("SC_CLK_TCK")


class Chatter(WebSocketClientProtocol):
    """One tester: logs in, then chats in a closed loop while the factory says go."""

    def onOpen(self) -> None:
        self.sendMessage(json.dumps({"method": "loginReq", "serviceId": 1, "appid": "1.00002",
                                     "uname": f"u{id(self)}"}).encode())

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        factory: Load = self.factory  # type: ignore[assignment]
        if payload.startswith(b'{"method":"loginResp"'):
            factory.ready += 1
            if factory.ready == factory.sessions:
                factory.all_ready.callback(None)
            self.sendMessage(CHAT)
        elif payload.startswith(b'{"method":"aichatResp"'):
            factory.round_trips += 1
            if factory.going:
                self.sendMessage(CHAT)


class Load(WebSocketClientFactory):
    protocol = Chatter

    def __init__(self, url: str, cookie: str, sessions: int) -> None:
        super().__init__(url, headers={"Cookie": cookie})
        self.sessions = sessions
        self.ready = 0
        self.round_trips = 0
        self.going = True
        self.all_ready: defer.Deferred[None] = defer.Deferred()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


async def one_run(
    reactor: Any, folder: str, cookie: str, history: bool, sessions: int, seconds: float
) -> dict[str, float]:
    port = free_port()
    # e.g. WT_BENCH_WRAP="py-spy record -f raw -o /tmp/relay.txt --" for a profile of the server
    server = subprocess.Popen(
        os.environ.get("WT_BENCH_WRAP", "").split()
        + [sys.executable, os.path.join(HERE, "history_relay_server.py"), "--registry",
           os.path.join(folder, "registry.sqlite3"), "--port", str(port)]
        + (["--history"] if history and not os.environ.get("WT_BENCH_AA") else []),
        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        while server.stdout.readline().strip() != "listening":  # a wrapper may print first
            assert server.poll() is None, "the relay server did not start"
        load = Load(f"ws://127.0.0.1:{port}/WebTesting", cookie, sessions)
        for _ in range(sessions):
            reactor.connectTCP("127.0.0.1", port, load)
        await load.all_ready
        await task.deferLater(reactor, 2, lambda: None)  # warm up
        start_rt, start_cpu, start = load.round_trips, cpu_seconds(server.pid), time.monotonic()
        await task.deferLater(reactor, seconds, lambda: None)
        rts, cpu, wall = load.round_trips - start_rt, cpu_seconds(server.pid) - start_cpu, time.monotonic() - start
        load.going = False
        return {"rt_per_s": rts / wall, "server_cpu_us_per_rt": cpu / rts * 1e6}
    finally:
        server.terminate()
        server.wait()


async def main(reactor: Any, args: argparse.Namespace) -> None:
    folder = tempfile.mkdtemp(prefix="wt-bench-history-")
    connection, dialect = connect_sync(RegistryConfig(sqlite_path=os.path.join(folder, "registry.sqlite3")))
    add_user_sync(connection, dialect, "bench", "bench-password-123", "tester")
    cookie = "wt_session=" + make_token_sync(connection, dialect, "bench", "bench")
    connection.close()
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for _ in range(args.runs):  # interleaved, so that both see the same machine
        # Alternating which goes first, so that neither always runs on a warmer (or more tired) machine.
        for history in ((False, True) if len(runs[False]) % 2 == 0 else (True, False)):
            result = await one_run(reactor, folder, cookie, history, args.sessions, args.seconds)
            runs[history].append(result)
            print(f"  history {'on ' if history else 'off'}: {result['rt_per_s']:8.0f} RT/s, "
                  f"server {result['server_cpu_us_per_rt']:6.1f} us CPU per RT", flush=True)
    off_cpu = statistics.median(r["server_cpu_us_per_rt"] for r in runs[False])
    on_cpu = statistics.median(r["server_cpu_us_per_rt"] for r in runs[True])
    off_rt = statistics.median(r["rt_per_s"] for r in runs[False])
    on_rt = statistics.median(r["rt_per_s"] for r in runs[True])
    added = on_cpu / off_cpu - 1
    print(f"median of {args.runs}: server CPU per round trip {off_cpu:.1f} us without history, {on_cpu:.1f} us "
          f"with: +{added * 100:.1f} % (target <= {TARGET * 100:.0f} %); round trips/s {off_rt:.0f} -> {on_rt:.0f}")
    print(json.dumps({"sessions": args.sessions, "seconds": args.seconds, "runs": args.runs,
                      "without": {"cpu_us_per_rt": round(off_cpu, 1), "rt_per_s": round(off_rt)},
                      "with_history": {"cpu_us_per_rt": round(on_cpu, 1), "rt_per_s": round(on_rt)},
                      "added_cpu": round(added, 4), "target": TARGET, "met": added <= TARGET}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--runs", type=int, default=3)
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, parser.parse_args())))
