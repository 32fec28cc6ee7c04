"""
``bench/relay/run``: one load, four relays, one run.

It starts an echo bot that speaks the WxService protocol (echobot.py) and
puts the same closed-loop chat load (node/load.js: N users, each sending a
~100-byte chat and waiting for the answer) through each target in turn:

- ``bot``: the bot alone (the load speaks WxService to it);
- ``bare``: a bare Autobahn three-hop relay (bare.py: web, agent, bot);
- ``webtesting``: the product: ``twistd webtesting-web`` and
  ``webtesting-agent`` with the shipped etc/*.yaml (ports, secrets, paths and
  the per-account limits changed), the registry on embedded SQLite, a real
  3-master Redis Cluster and MariaDB behind the registered service;
- ``node``: the same three-hop relay in Node's ``ws`` (node/relay.js).

The servers are pinned to CPU 0 and the load to CPU 1 (when there are two),
as in issue 11's figures. For each target and N it prints round trips per
second, p50/p99/p99.9 latency and each server process's CPU time per round
trip (user + system from /proc, every thread), as a table and as JSON.

Options: ``--users 1,100,1000 --seconds 10 --warmup 2 --targets
bot,bare,webtesting,node --json FILE``. ``--url http://host:2019 --service
N`` (token in ``$WEBTESTING_TOKEN``) measures a running WebTesting instead of
starting one (no CPU figures then).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from tests.support import mariadb  # noqa: E402
from tests.support.rediscluster import free_ports, start_cluster  # noqa: E402

sys.path.insert(0, os.path.dirname(HERE))
from harness import Bench, Proc, api, child_setup, say, start_webtesting  # noqa: E402

APPID = "1.00002"
TARGETS = ("bot", "bare", "webtesting", "node")
# Not in the default run: WebTesting with history.record off, to measure what history costs.
# And WebTesting with --workers worker processes of the web server and of the agent (workers: N).
EXTRA_TARGETS = ("webtesting-nohistory", "webtesting-workers")


@dataclass
class Target:
    name: str
    url: str
    mode: str  # "bot" or "browser"
    procs: list[Proc] = field(default_factory=list)
    cookie: str = ""
    origin: str = ""
    service_id: int = 1
    cluster: Any = None  # WebTesting's: the bot users' state lives there
    metrics: dict[str, str] = field(default_factory=dict)  # process name -> its /metrics URL


# -- the targets ---------------------------------------------------------------

def python() -> str:
    return sys.executable


def start_bot(bench: Bench) -> tuple[Proc, int]:
    [port] = free_ports(1)
    return bench.start("echobot", [python(), os.path.join(HERE, "echobot.py"), str(port)], port), port


def bot_target(bench: Bench, bot: Proc, bot_port: int) -> Target:
    return Target("bot", f"ws://127.0.0.1:{bot_port}/5.00034", "bot", [bot])


def hop_target(bench: Bench, name: str, argv: list[str], bot: Proc, bot_port: int) -> Target:
    agent_port, web_port = free_ports(2)
    agent = bench.start(f"{name}-agent", argv + ["agent", str(agent_port), str(bot_port)], agent_port)
    web = bench.start(f"{name}-web", argv + ["web", str(web_port), str(agent_port)], web_port)
    return Target(name, f"ws://127.0.0.1:{web_port}/", "browser", [web, agent, bot])


def webtesting_target(bench: Bench, bot: Proc, bot_port: int, max_users: int, history: bool = True,
                      checkout: str = "", workers: int = 1) -> Target:
    cluster = start_cluster()
    bench.cleanups.append(cluster.stop)
    database = f"wt_bench_relay_{os.getpid()}_{os.urandom(3).hex()}"
    with mariadb.connect() as conn, conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{database}`")

    def drop() -> None:
        with mariadb.connect() as conn, conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{database}`")

    bench.cleanups.append(drop)
    # The agent reads tag and topic texts from the bot's MySQL dictionary tables.
    for table in ("tb_tag_dict", "tb_topic_dict"):
        mariadb.execute(database, f"CREATE TABLE {table} (id INT PRIMARY KEY, content VARCHAR(255))")

    limits = max(100, max_users * 2)
    wt = start_webtesting(bench, web_changes={"websocket": {"max_per_account": limits,
                                                            "max_logins_per_account": limits},
                                              "history": {"record": history},
                                              # only when asked: a --compare checkout may not know the key
                                              **({"workers": workers} if workers > 1 else {})},
                          agent_changes={"workers": workers} if workers > 1 else {},
                          name=("" if history else "-nohistory") + ("-compared" if checkout else "")
                          + (f"-workers{workers}" if workers > 1 else ""),
                          checkout=checkout)
    web, agent, tokens, base, agent_port = wt.web, wt.agent, wt.tokens, wt.base, wt.agent_port
    answer = api(base, tokens["admin"], "PUT", "Service/addServices", [{
        "redisCluster": [{"host": h, "port": p} for h, p in cluster.nodes],
        "mysqlAddr": mariadb.HOST, "mysqlPort": mariadb.PORT, "mysqlUser": mariadb.USER,
        "mysqlPwd": mariadb.PASSWORD, "mysqlDbname": database,
        "wxServiceAddr": f"ws://127.0.0.1:{bot_port}/5.00034",
        "agentAddr": f"ws://127.0.0.1:{agent_port}/WebTesting/Agent",
        "allowedAppids": [APPID], "description": "bench/relay echo bot",
    }])
    assert answer.get("result") == 1, answer
    services = api(base, tokens["admin"], "GET", "Service/getServices")["servicdLists"]
    service_id = max(s["serviceId"] for s in services)
    deadline = time.monotonic() + 30
    while not any(s["serviceId"] == service_id and s["status"] == 1
                  for s in api(base, tokens["admin"], "GET", "Service/getServices")["servicdLists"]):
        if time.monotonic() > deadline:
            raise SystemExit(f"the service did not come up:\n{agent.tail()}\n{web.tail()}")
        time.sleep(0.2)
    name = "webtesting" if history else "webtesting-nohistory"
    if workers > 1:
        name += f"-workers{workers}"
    if checkout:
        name += "@" + os.path.basename(os.path.abspath(checkout))
    return Target(name, f"ws://127.0.0.1:{wt.ws_port}/WebTesting",
                  "browser", [web, agent, bot],
                  cookie=f"wt_session={tokens['tester']}", origin=base, service_id=service_id, cluster=cluster,
                  metrics={agent.name: f"http://127.0.0.1:{wt.agent_metrics_port}/metrics",
                           web.name: f"{base}/metrics"})


def running_target(url: str, service_id: int) -> Target:
    token = os.environ.get("WEBTESTING_TOKEN", "")
    if not token:
        raise SystemExit("--url needs an API token in $WEBTESTING_TOKEN (webtesting-account token NAME)")
    services = api(url.rstrip("/"), token, "GET", "Service/getServiceList")
    ws_addr = services["wsAddr"]
    return Target("webtesting", ws_addr, "browser", [], cookie=f"wt_session={token}", origin=url.rstrip("/"),
                  service_id=service_id)


# -- the load ------------------------------------------------------------------

def _profile(bench: Bench, proc: Proc, folder: str, label: str, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy on a server process for the measured seconds: a flame graph (SVG)."""
    spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    # WT_PYSPY_FORMAT=raw: collapsed stacks (one line per stack and count), for scripts.
    form = os.environ.get("WT_PYSPY_FORMAT", "flamegraph")
    out = os.path.join(folder, f"{label}-{proc.name}.{'svg' if form == 'flamegraph' else 'txt'}")
    return subprocess.Popen(
        [spy, "record", "--pid", str(proc.popen.pid), "--duration", str(int(seconds)), "--rate", "200",
         "--nonblocking", "--format", form, "--output", out,
         # WT_PYSPY_ARGS="--gil": only the thread holding the GIL, i.e. Python's CPU without the syscalls.
         *os.environ.get("WT_PYSPY_ARGS", "").split()],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=child_setup(bench.load_cpu))


def _load_events(bench: Bench, target: Target, users: int, result: dict[str, Any],
                 **options: Any) -> Iterator[dict[str, Any]]:
    """Run node/load.js on C{target} with N users; its events after "ready" (logins noted in C{result})."""
    options = {"url": target.url, "mode": target.mode, "users": users, "cookie": target.cookie,
               "origin": target.origin, "serviceId": target.service_id, "appid": APPID, "inFlight": 200,
               **options}
    process = subprocess.Popen(["node", os.path.join(HERE, "node", "load.js"), json.dumps(options)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=HERE,
                               preexec_fn=child_setup(bench.load_cpu))
    assert process.stdout is not None and process.stderr is not None
    result["_pid"] = process.pid  # the users' unames are bench-<pid>-<i>
    ended = False
    for line in iter(process.stdout.readline, b""):
        event = json.loads(line)
        if event["event"] == "ready":
            result["loginSeconds"] = round(event["loginSeconds"], 2)
            result["loginFailures"] = event["failed"]
            if event["failed"]:
                say(f"{target.name} N={users}: {event['failed']} logins failed, e.g. {event['errors']}")
            continue
        ended = ended or event["event"] == "end"
        yield event
    process.wait()
    result.pop("_pid", None)
    if not ended:
        raise SystemExit(f"the load generator failed on {target.name}: {process.stderr.read().decode()[-2000:]}")


def _cpu(target: Target) -> dict[str, tuple[float, float]]:
    """(user, system) CPU seconds of each of the target's processes."""
    return {p.name: p.cpu_split() for p in target.procs}


def run_load(bench: Bench, target: Target, users: int, warmup: float, seconds: float,
             profile: str = "") -> dict[str, Any]:
    result: dict[str, Any] = {"target": target.name, "users": users}
    before: dict[str, tuple[float, float]] = {}
    profilers: list[subprocess.Popen[bytes]] = []
    for event in _load_events(bench, target, users, result, warmup=warmup, duration=seconds):
        if event["event"] == "start":
            before = _cpu(target)
            if profile:
                profilers = [_profile(bench, p, profile, f"{target.name}-N{users}", seconds)
                             for p in target.procs if p.name != "echobot" and not p.name.startswith("node")]
        elif event["event"] == "end":
            after = _cpu(target)
            count = event["roundTrips"]

            def per_rt(seconds_of: Any, after: Any = after, before: Any = before,
                       count: int = count) -> dict[str, int | None]:
                return {name: round(seconds_of(after[name], before[name]) * 1e6 / count) if count else None
                        for name in before}

            result.update({
                "rtPerSecond": round(event["rtPerSecond"]),
                "p50": event["p50"], "p99": event["p99"], "p999": event["p999"], "errors": event["errors"],
                "cpuMicrosPerRT": per_rt(lambda a, b: sum(a) - sum(b)),
                "systemMicrosPerRT": per_rt(lambda a, b: a[1] - b[1]),
                "rssKiB": {p.name: p.rss_kib() for p in target.procs},
            })
    for profiler in profilers:
        profiler.wait()
    return result


def run_idle(bench: Bench, target: Target, users: int, seconds: float, login_rate: float = 0.0) -> dict[str, Any]:
    """N users logged in and saying nothing: memory per session and CPU while idle, per process."""
    rss_before = {p.name: p.rss_kib() for p in target.procs}
    result: dict[str, Any] = {"target": target.name, "users": users, "idle": True}
    before: dict[str, float] = {}
    gc_before: dict[str, Any] = {}
    gc_late: dict[str, Any] = {}  # filled by the timer below
    scrape: threading.Timer | None = None
    started = 0.0
    writer: StateWriter | None = None
    for event in _load_events(bench, target, users, result, warmup=3, duration=seconds, idle=True,
                              loginRate=login_rate):
        if event["event"] == "start":  # 3 s after the last login
            if target.cluster is not None:
                writer = StateWriter(target.cluster, result["_pid"], users)
                writer.start()
            gc_before = {name: gc_pauses(url) for name, url in target.metrics.items()}
            # Read again a second before the end: once the load generator leaves, the agent is busy
            # ending 10,000 sessions and answers no scrape for a while.
            scrape = threading.Timer(max(0.0, seconds - 1.0), lambda: gc_late.update(
                {name: gc_pauses(url) for name, url in target.metrics.items()}))
            scrape.start()
            before = {p.name: p.cpu_seconds() for p in target.procs}
            started = time.monotonic()
            rss = {p.name: p.rss_kib() for p in target.procs}
            result["rssKiBPerSession"] = {name: round((rss[name] - rss_before[name]) / max(1, users), 1)
                                          for name in rss}
        elif event["event"] == "end":
            after = {p.name: p.cpu_seconds() for p in target.procs}
            elapsed = time.monotonic() - started
            result["idleCpuShare"] = {name: round((after[name] - before[name]) / elapsed, 4) for name in before}
            result["idleCpuMicrosPerUserSecond"] = {
                name: round((after[name] - before[name]) / elapsed / max(1, users) * 1e6, 1) for name in before}
            if writer is not None:
                writer.stop()
                result["stateWrites"] = writer.writes
                result["statePushes"] = event["statePushes"]
                result["statePushMs"] = {"p50": event["stateP50"], "p99": event["stateP99"], "max": event["stateMax"]}
            if target.metrics and scrape is not None:
                scrape.join()
                result["gcPausesIdle"] = {name: _gc_difference(gc_before.get(name, {}), after)
                                          for name, after in gc_late.items()}
                result["gcPausesLogins"] = gc_before
    return result


def _gc_difference(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    if "error" in after or "error" in before:
        return after if "error" in after else before
    return {gen: {"count": a["count"] - before.get(gen, {}).get("count", 0),
                  "seconds": round(a["seconds"] - before.get(gen, {}).get("seconds", 0.0), 3),
                  "slowestUpTo": a["slowestUpTo"]}  # over the whole run
            for gen, a in after.items()}


def gc_pauses(url: str) -> dict[str, Any]:
    """A daemon's garbage collector pauses so far (webtesting_gc_pause_seconds): count, total and the slowest
    bucket per generation."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
    except OSError as e:
        return {"error": str(e)}
    found: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "webtesting_gc_pause_seconds":
            continue
        for sample in family.samples:
            entry = found.setdefault(f"gen{sample.labels['generation']}", {"count": 0, "seconds": 0.0,
                                                                           "slowestUpTo": 0.0})
            if sample.name.endswith("_count"):
                entry["count"] = int(sample.value)
            elif sample.name.endswith("_sum"):
                entry["seconds"] = round(sample.value, 3)
    for family in text_string_to_metric_families(text):
        if family.name != "webtesting_gc_pause_seconds":
            continue
        below: dict[str, float] = {}
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                generation = f"gen{sample.labels['generation']}"
                bound = float(sample.labels["le"])
                if sample.value > below.get(generation, 0.0):
                    found[generation]["slowestUpTo"] = bound
                below[generation] = sample.value
    return found


class StateWriter(threading.Thread):
    """
    While sessions idle, writes one random user's memory fact C{benchAt} (the
    wall clock, ms) into the bot's Redis Cluster 20 times a second, as a bot
    would; node/load.js times how long each takes to reach the browser.
    """

    def __init__(self, cluster: Any, pid: int, users: int) -> None:
        super().__init__(daemon=True)
        self._cluster = cluster
        self._unames = [f"bench-{pid}-{i}" for i in range(users)]
        self._quit = threading.Event()
        self.writes = 0

    def run(self) -> None:
        from webtesting.rediscluster import key_slot
        from webtesting.statelayout import StateLayout

        layout = StateLayout()
        rng = random.Random(7)
        while not self._quit.wait(0.05):
            uid = str(zlib.crc32(rng.choice(self._unames).encode()) & 0x7FFFFFFF)  # as echobot.py gives uids
            key = layout.keys(APPID, uid)[3]
            self._cluster.command(self._cluster.owner(key_slot(key)), "HSET", key, "benchAt",
                                  f"{time.time() * 1000:.1f}")
            self.writes += 1

    def stop(self) -> None:
        self._quit.set()
        self.join()


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One target's and N's runs: the run with the median RT/s, and the range over all runs."""
    ordered = sorted(runs, key=lambda r: r["rtPerSecond"])
    middle = dict(ordered[len(ordered) // 2])
    middle["rtPerSecondRange"] = [ordered[0]["rtPerSecond"], ordered[-1]["rtPerSecond"]]
    return middle


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "node": node,
            "kernel": platform.release(), "date": time.strftime("%Y-%m-%d")}


def table(results: list[dict[str, Any]]) -> Iterator[str]:
    yield "| target | N | RT/s (range) | p50 ms | p99 ms | p99.9 ms | CPU µs per RT (process: µs) | errors |"
    yield "|---|---|---|---|---|---|---|---|"
    for r in results:
        cpu = ", ".join(f"{name}: {us}" for name, us in r.get("cpuMicrosPerRT", {}).items())
        low, high = r.get("rtPerSecondRange", [r["rtPerSecond"]] * 2)
        spread = f" ({low:,}–{high:,})" if low != high else ""
        yield (f"| {r['target']} | {r['users']} | {r['rtPerSecond']:,}{spread} | {r['p50']:.2f} | {r['p99']:.2f} "
               f"| {r['p999']:.2f} | {cpu} | {r['errors'] + r.get('loginFailures', 0)} |")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/relay/run", description=__doc__.split("\n\n")[1])
    parser.add_argument("--users", default="1,100,1000", help="comma-separated N (default 1,100,1000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per N (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (default 2)")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"default {','.join(TARGETS)}; also {','.join(EXTRA_TARGETS)}")
    parser.add_argument("--rounds", type=int, default=1, help="measure each target and N this many times, "
                        "in turn; medians are reported (default 1)")
    parser.add_argument("--idle", action="store_true",
                        help="log N users in and keep them silent: memory per session and idle CPU per process")
    parser.add_argument("--login-rate", type=float, default=0.0,
                        help="open the N logins as a storm at this many per second (default: 200 waiting at most)")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes of the web server and of the agent in the webtesting-workers target "
                             "(default 2; measure it with --no-pin, or the workers share CPU 0)")
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument("--no-pin", action="store_true", help="do not pin servers to CPU 0 and the load to CPU 1")
    parser.add_argument("--profile", default="", help="py-spy the Python relays while measuring; "
                        "a flame graph (SVG) per process and N goes to this folder")
    parser.add_argument("--url", default="", help="measure this running WebTesting instead of starting one")
    parser.add_argument("--service", type=int, default=1, help="with --url: the service to chat with")
    parser.add_argument("--compare", default="", metavar="CHECKOUT",
                        help="also measure WebTesting from another checkout (e.g. a git worktree of the last "
                             "release), round by round with this one: what a change costs, on one noisy machine")
    parser.add_argument("--compare-first", action="store_true",
                        help="start the compared checkout's daemons first (two instances of the same code differed "
                             "by up to 9%% at N = 100 in one run: swap them between runs)")
    args = parser.parse_args(argv)
    users = [int(n) for n in args.users.split(",")]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - set(TARGETS) - set(EXTRA_TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if not shutil.which("node"):
        raise SystemExit("bench/relay needs node (the load generator is node/load.js)")
    if not os.path.isdir(os.path.join(HERE, "node", "node_modules", "ws")):
        say("npm install (ws) in bench/relay/node")
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund"], cwd=os.path.join(HERE, "node"),
                       check=True)
    folder = tempfile.mkdtemp(prefix="wt-bench-relay-")
    bench = Bench(folder, pin=not args.no_pin)
    runs: list[dict[str, Any]] = []
    try:
        bot, bot_port = start_bot(bench)
        started: list[Target] = []
        for name in targets:
            say(f"starting {name}")
            if name == "bot":
                started.append(bot_target(bench, bot, bot_port))
            elif name == "bare":
                started.append(hop_target(bench, "bare", [python(), os.path.join(HERE, "bare.py")], bot, bot_port))
            elif name == "node":
                started.append(hop_target(bench, "node", ["node", os.path.join(HERE, "node", "relay.js")], bot,
                                          bot_port))
            elif name == "webtesting-workers":
                started.append(webtesting_target(bench, bot, bot_port, max(users), workers=args.workers))
            elif name == "webtesting-nohistory":
                started.append(webtesting_target(bench, bot, bot_port, max(users), history=False))
            elif args.url:
                started.append(running_target(args.url, args.service))
            else:
                pair = ["", args.compare] if args.compare else [""]
                if args.compare_first:
                    pair.reverse()
                for checkout in pair:
                    say(f"starting webtesting from {checkout or ROOT}")
                    started.append(webtesting_target(bench, bot, bot_port, max(users), checkout=checkout))
        # Rounds go through every target in turn, so that a slow spell of the
        # machine does not fall on one target only; the medians are reported.
        # Every other round goes backwards: measured twice in a row, the same
        # code was 8% apart at N = 100 depending on which went first.
        for round_ in range(args.rounds):
            for target in (started if round_ % 2 == 0 else started[::-1]):
                for n in users:
                    say(f"round {round_ + 1}/{args.rounds}: {target.name}, N={n}")
                    if args.idle:
                        runs.append(run_idle(bench, target, n, args.seconds, args.login_rate))
                        continue
                    runs.append(run_load(bench, target, n, args.warmup, args.seconds, args.profile))
                    time.sleep(1.0)  # let the relays forget the last round's users
    finally:
        bench.close()
        if os.environ.get("WT_BENCH_KEEP"):
            say(f"kept the daemons' files (logs, configuration) in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    if args.idle:
        for r in runs:
            print(json.dumps(r))
        return 0
    results = [median_of([r for r in runs if (r["target"], r["users"]) == key])
               for key in dict.fromkeys((r["target"], r["users"]) for r in runs)]
    report = {"machine": machine(), "seconds": args.seconds, "rounds": args.rounds, "results": results, "runs": runs}
    print("\n".join(table(results)))
    print(json.dumps(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
