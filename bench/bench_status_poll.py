"""
CPU time per user-poll of the agent's state reader, against a real 3-master
Redis Cluster that this script starts (and stops) itself.

    .venv/bin/python bench/bench_status_poll.py [--users 1000,5000] [--rounds 7]

For each N it writes N users' state (a few tags, topics and facts each),
watches them all with a L{StatusPoller} and times whole polls
(C{time.process_time}, this process only: the Redis servers are not
counted) with both readers, one after the other in the same run:

- whole: the reader as it was until issue 11, kept as the baseline
  (C{digests=False}): four HGETALL per user per poll, compared here;
- digest: the default, one script call per user that answers nil while
  the user's state has not moved (L{webtesting.agent.status.STATE_SCRIPT}),

each in two cases:

- steady: nothing changed since the last poll (the usual case: most users
  are idle at any moment);
- all changed: every user's state is parsed, resolved and diffed as if it
  had changed (the reader's cache and each watcher's last state dropped).

Tag/topic texts come from a scratch database on the MariaDB of the test
set-up (127.0.0.1:3306, root) when it answers; without it the texts are
missing, which only changes what is pushed. Target (issue 11): a steady
user-poll of the digest reader costs <= 1/5 of the whole reader's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from tests.support.rediscluster import start_cluster  # noqa: E402
from webtesting import rediscluster  # noqa: E402
from webtesting.agent.statereader import Dictionary, StateReader  # noqa: E402
from webtesting.agent.status import StatusPoller, StatusUpdate  # noqa: E402
from webtesting.statelayout import StateLayout  # noqa: E402

LAYOUT = StateLayout()


def user_commands(appid: str, uid: int) -> list[list[Any]]:
    tags, topic, topics, memory = LAYOUT.keys(appid, str(uid))
    tag_fields: list[Any] = []
    for t in range(3):
        tag_fields += [str(1 + (uid + t) % 20),
                       json.dumps({"beginTime": 1700000000000, "endTime": 1700000120000, "isInUse": t != 2})]
    topic_fields: list[Any] = []
    for t in range(3):
        topic_fields += [str(100 + (uid + t) % 10), json.dumps({"endTime": 1700000600000})]
    return [
        ["HSET", tags, *tag_fields],
        ["HSET", topic, "cur", str(100 + uid % 10), "prev", str(100 + (uid + 1) % 10)],
        ["HSET", topics, *topic_fields],
        ["HSET", memory, "name", f"user {uid}", "city", "Paris", "food", "tofu"],
    ]


def mariadb_dictionary(reactor: Any) -> tuple[Any, Any]:
    """A Database on a scratch MariaDB database with the dictionary tables, and its cleanup."""
    try:
        from tests.support import mariadb
        from webtesting.dbpool import Database, mysql_connector, mysql_is_fault

        name = f"wt_bench_{os.getpid()}"
        with mariadb.connect() as conn, conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}`")
    except (AssertionError, OSError) as e:
        print(f"(no MariaDB: texts will be missing: {e})")
        return None, lambda: None
    mariadb.execute(name, f"CREATE TABLE {LAYOUT.tag_table} (id INT PRIMARY KEY, content VARCHAR(255))")
    mariadb.execute(name, f"CREATE TABLE {LAYOUT.topic_table} (id INT PRIMARY KEY, content VARCHAR(255))")
    mariadb.execute(name, f"INSERT INTO {LAYOUT.tag_table} VALUES "
                    + ",".join(f"({i},'tag {i}')" for i in range(1, 21)))
    mariadb.execute(name, f"INSERT INTO {LAYOUT.topic_table} VALUES "
                    + ",".join(f"({i},'topic {i}')" for i in range(100, 110)))
    db = Database("bench", mysql_connector(mariadb.HOST, mariadb.PORT, mariadb.USER, mariadb.PASSWORD,
                                           name, 2.0, 5.0, 5.0),
                  reactor, is_fault=mysql_is_fault, threads=2, request_timeout=5.0)
    db.startService()

    def cleanup() -> Deferred_:
        d = db.stopService()

        def drop(_: object) -> None:
            with mariadb.connect() as conn, conn.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")

        return d.addCallback(drop)

    return db, cleanup


Deferred_ = defer.Deferred


async def _poll(poller: StatusPoller) -> None:
    d = poller.tick()
    if d is None:
        raise RuntimeError("a poll was skipped: the last one is still running")
    await d


async def measure(reactor: Any, client: rediscluster.RedisCluster, db: Any, n: int, rounds: int,
                  digests: bool) -> tuple[float, float]:
    appid = "1.00002"
    commands: list[list[Any]] = []
    for uid in range(n):
        commands += user_commands(appid, uid)
    for result in await client.pipeline(commands):
        if isinstance(result, Exception):
            raise result
    reader = StateReader(client, Dictionary(db, LAYOUT, reactor), LAYOUT, reactor, timeout=10.0, digests=digests)
    poller = StatusPoller(reader, reactor, chunk=int(os.environ.get("WT_POLL_CHUNK", "1000")))
    pushed = [0]

    def push(update: StatusUpdate) -> None:
        pushed[0] += 1

    for uid in range(n):
        poller.watch(uid, appid, str(uid), push)
    await _poll(poller)  # warm: connections, texts, first pushes
    steady, cold = [], []
    walls = []
    for _ in range(rounds):
        started, wall = time.process_time(), time.perf_counter()
        await _poll(poller)
        steady.append((time.process_time() - started) / n * 1e6)
        walls.append(time.perf_counter() - wall)
    print(f"        (digests={digests}: a steady poll of {n} users takes {statistics.median(walls) * 1e3:.0f} ms)")
    for _ in range(rounds):
        for uid in range(n):
            reader.forget((appid, str(uid)))
            poller._watches[uid].sent = None  # as if every user had changed
        started = time.process_time()
        await _poll(poller)
        cold.append((time.process_time() - started) / n * 1e6)
    return statistics.median(steady), statistics.median(cold)


async def main(reactor: Any, sizes: list[int], rounds: int) -> None:
    import hiredis

    cluster = start_cluster(None)
    db, cleanup = mariadb_dictionary(reactor)
    if db is not None:
        await db.ready()
    client = await rediscluster.connect(reactor, cluster.nodes, timeout=10.0)
    try:
        print(f"hiredis {hiredis.__version__}; 3 masters on ports {[p for _, p in cluster.nodes]}; "
              f"median of {rounds} polls; CPU of this process per user-poll")
        print(f"{'users':>7} {'reader':>8} {'steady us':>10} {'all changed us':>15}  "
              f"target: steady <= 1/5 of the whole reader's")
        for n in sizes:
            whole = await measure(reactor, client, db, n, rounds, digests=False)
            digest = await measure(reactor, client, db, n, rounds, digests=True)
            print(f"{n:>7} {'whole':>8} {whole[0]:>10.1f} {whole[1]:>15.1f}")
            flag = "ok" if digest[0] * 5 <= whole[0] else "OVER"
            print(f"{n:>7} {'digest':>8} {digest[0]:>10.1f} {digest[1]:>15.1f}  "
                  f"{whole[0] / digest[0]:.1f}x less steady {flag}")
    finally:
        await client.disconnect()
        await defer.maybeDeferred(cleanup)
        cluster.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", default="1000,5000", help="comma-separated user counts")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    sizes = [int(x) for x in args.users.split(",")]
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sizes, args.rounds)))
