"""
``bench/bench_session_memory.py [N] [link|connect]``: Python heap per bot
user's WxService link at the agent, measured with tracemalloc.

It starts bench/relay/echobot.py, opens N logged-in links as the agent's
user sessions hold them (L{webtesting.agent.wxservice.WxServiceLink};
C{connect}: bare connections through L{webtesting.agent.wxservice.connect},
as the health check has one), and reports the traced bytes per link, by
file and by the largest allocation sites.
The relay bench's ``--idle`` mode measures the whole daemons (RSS); this one
is for trying a change to one connection's objects in seconds.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
import tracemalloc
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tests.support.rediscluster import free_ports  # noqa: E402


class _Listener:
    """Both a WxServiceListener and a LinkListener that ignore everything (but count logins)."""

    logins = 0

    def bot_message(self, content: str, action: str) -> None:
        pass

    def bot_error(self, error: Any) -> None:
        pass

    def connection_lost(self, reason: str) -> None:
        pass

    def logged_in(self, uid: str) -> None:
        _Listener.logins += 1

    def link_down(self, health: Any) -> None:
        pass

    def login_refused(self, error: Any) -> None:
        pass


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    mode = sys.argv[2] if len(sys.argv) > 2 else "link"  # or "connect": one bare connection
    [port] = free_ports(1)
    bot = subprocess.Popen([sys.executable, os.path.join(HERE, "relay", "echobot.py"), str(port)])
    try:
        import socket

        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        from twisted.internet import reactor, task

        from webtesting.agent import wxservice

        async def run() -> None:
            url = f"ws://127.0.0.1:{port}/5.00034"
            warm = [await wxservice.connect(reactor, url, _Listener(), ping=(30.0, 2.0)) for _ in range(20)]
            gc.collect()
            tracemalloc.start(8)
            before = tracemalloc.take_snapshot()
            if mode == "link":  # what a logged-in user holds: a reconnecting link, logged in
                conns = [wxservice.WxServiceLink(reactor, lambda: url, _Listener(), "1.00002", f"u{n}",
                                                 wxservice.LinkSettings(ping_interval=30.0))
                         for n in range(count)]
                for link in conns:
                    link.start()
                while _Listener.logins < count:
                    await task.deferLater(reactor, 0.1, lambda: None)
            else:
                conns = [await wxservice.connect(reactor, url, _Listener(), ping=(30.0, 2.0))
                         for _ in range(count)]
            await task.deferLater(reactor, 0.5, lambda: None)
            gc.collect()
            after = tracemalloc.take_snapshot()
            total = sum(s.size_diff for s in after.compare_to(before, "filename"))
            print(f"{count} {'logged-in links' if mode == 'link' else 'connections'}: {total / count:,.0f} bytes "
                  "each (Python heap)")
            for stat in after.compare_to(before, "filename")[:8]:
                print(f"  {stat.size_diff / count:7,.0f} B  in {os.path.relpath(stat.traceback[0].filename)}")
            for stat in after.compare_to(before, "lineno")[:12]:
                frame = stat.traceback[0]
                print(f"  {stat.size_diff / count:7,.0f} B  {os.path.relpath(frame.filename)}:{frame.lineno}")
            for conn in warm:
                conn.close()

        task.react(lambda _reactor: __import__("twisted.internet.defer", fromlist=["ensureDeferred"])
                   .ensureDeferred(run()))
    finally:
        bot.terminate()
        bot.wait()


if __name__ == "__main__":
    main()
