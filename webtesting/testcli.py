"""
``webtesting-test``: run test cases (docs/test-cases.md) against a running
WebTesting, from a terminal or CI.

    WEBTESTING_PASSWORD=… webtesting-test run --url http://host:2019 --user NAME --service 1 cases/*.yaml
    WEBTESTING_PASSWORD=… webtesting-test compare --url … --user NAME --service 1 --against 2 cases/*.yaml
    WEBTESTING_PASSWORD=… webtesting-test load --url … --user NAME --service 1 --users 200 --ramp 30 \
        --duration 120 --max-p99 2s --max-errors 1% case.yaml

Prints each case and step as it passes or fails, with what was expected
against what came; writes a JUnit XML report with ``--junit``; runs
``--parallel N`` cases at once; exits 1 if any case failed, 2 on a usage or
login error. ``load`` runs simulated testers (webtesting.loadtest) and exits
1 when a threshold is not met.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import DeferredSemaphore, ensureDeferred, gatherResults

from webtesting import loadtest
from webtesting.cases import Case, CaseError, CaseResult, compare, describe, load_file, run_case
from webtesting.client import Client, ClientError


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            return f.readline().strip()
    return os.environ.get("WEBTESTING_TOKEN", "").strip()


def _password(args: argparse.Namespace) -> str:
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as f:
            return f.readline().rstrip("\n")
    password = os.environ.get("WEBTESTING_PASSWORD")
    if not password:
        raise SystemExit("webtesting-test: give the password in WEBTESTING_PASSWORD or --password-file")
    return password


def junit(results: list[CaseResult], url: str = "") -> ET.ElementTree:
    """
    A JUnit XML report as Ant writes it (the strict form every CI reader
    takes): one testsuite, one testcase per case, a failure naming the first
    failed step (the whole step-by-step report in its text), an error for a
    case that could not run.
    """
    failures = sum(1 for r in results if not r.passed and not r.error)
    errors = sum(1 for r in results if r.error)
    suite = ET.Element("testsuite", {
        "name": "webtesting", "package": "webtesting", "id": "0",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "hostname": socket.gethostname() or "localhost",
        "tests": str(len(results)), "failures": str(failures), "errors": str(errors),
        "skipped": "0", "time": f"{sum(r.seconds for r in results):.3f}",
    })
    properties = ET.SubElement(suite, "properties")
    if url:
        ET.SubElement(properties, "property", {"name": "webtesting.url", "value": url})
    for result in results:
        case = ET.SubElement(suite, "testcase", {
            "classname": f"webtesting.service{result.service}", "name": result.case.name,
            "time": f"{result.seconds:.3f}",
        })
        if result.error:
            ET.SubElement(case, "error", {"message": result.error, "type": "error"}).text = describe(result)
        elif not result.passed:
            first = next(step for step in result.steps if not step.passed)
            ET.SubElement(case, "failure", {"message": f"step {first.index + 1}: {first.problems[0]}",
                                            "type": "expectation"}).text = describe(result)
    ET.SubElement(suite, "system-out").text = "\n\n".join(describe(r) for r in results)
    ET.SubElement(suite, "system-err").text = ""
    root = ET.Element("testsuites")
    root.append(suite)
    return ET.ElementTree(root)


async def _connect(reactor: Any, args: argparse.Namespace) -> tuple[Client, Any]:
    client = Client(args.url, reactor=reactor, timeout=args.timeout)
    token = _token(args)
    if token:
        client.use_token(token)
        await client.whoami()
    else:
        await client.login(args.user, _password(args))
    return client, await client.connect()


async def compare_services(reactor: Any, args: argparse.Namespace, cases: list[Case]) -> int:
    """Each case on --service and --against at once; both side by side; 1 if either fails the case."""
    try:
        client, first = await _connect(reactor, args)
        second = await client.connect()
    except ClientError as e:
        print(f"webtesting-test: {e}", file=sys.stderr)
        return 2
    differing = 0
    for case in cases:
        a, b = await gatherResults([
            ensureDeferred(run_case(case, first, args.service, read_state=True)),
            ensureDeferred(run_case(case, second, args.against, read_state=True)),
        ])
        differs, report = compare(a, b)
        differing += differs
        print(report, flush=True)
    await first.close()
    await second.close()
    print(f"\n{len(cases) - differing} the same, {differing} differing beyond what the cases allow")
    return 1 if differing else 0


async def run(reactor: Any, args: argparse.Namespace, cases: list[Case]) -> int:
    try:
        client, connection = await _connect(reactor, args)
    except ClientError as e:
        print(f"webtesting-test: {e}", file=sys.stderr)
        return 2
    limit = DeferredSemaphore(max(1, args.parallel))
    results: list[CaseResult] = []

    async def one(case: Case) -> None:
        service = args.service or case.service
        if service is None:
            print(f"webtesting-test: {case.source}: no service (give --service or service: in the case)",
                  file=sys.stderr)
            return
        await limit.acquire()
        try:
            # Each case on its own WebSocket when run in parallel (one login per service per socket).
            conn = connection if args.parallel <= 1 else await client.connect()
            result = await run_case(case, conn, service)
            if conn is not connection:
                await conn.close()
        finally:
            limit.release()
        results.append(result)
        print(describe(result), flush=True)

    await gatherResults([ensureDeferred(one(case)) for case in cases], consumeErrors=True)
    await connection.close()
    passed = sum(1 for r in results if r.passed)
    print(f"\n{passed} passed, {len(results) - passed} failed")
    if args.junit:
        junit(results, args.url).write(args.junit, encoding="utf-8", xml_declaration=True)
    return 0 if passed == len(results) == len(cases) else 1


async def load(reactor: Any, args: argparse.Namespace, cases: list[Case]) -> int:
    """Simulated testers following one case; live lines, a report, and the thresholds' verdict."""
    if len(cases) != 1:
        print("webtesting-test load: give exactly one case", file=sys.stderr)
        return 2
    try:
        settings = loadtest.LoadSettings(
            service=args.service, users=args.users, ramp=loadtest.parse_seconds(args.ramp),
            duration=loadtest.parse_seconds(args.duration),
            max_p99=loadtest.parse_seconds(args.max_p99) if args.max_p99 else None,
            max_errors=loadtest.parse_fraction(args.max_errors) if args.max_errors else None)
        settings.check()
        client, connection = await _connect(reactor, args)
        await connection.close()  # each simulated tester opens its own
        run = loadtest.LoadRun(client, cases[0], settings)
        await run.check_target()
    except (loadtest.LoadError, ClientError) as e:
        print(f"webtesting-test load: {e}", file=sys.stderr)
        return 2
    print(f"load: {settings.users} users over {settings.ramp:g} s, for {settings.duration:g} s, "
          f"case {cases[0].name!r} on service {settings.service}", flush=True)
    started = time.monotonic()

    def tick() -> None:
        if not done.called:
            print(loadtest.progress_line(run.stats.window(), time.monotonic() - started), flush=True)
            reactor.callLater(1.0, tick)

    done = ensureDeferred(run.run())
    reactor.callLater(1.0, tick)
    try:
        summary = await done
    except (loadtest.LoadError, ClientError) as e:
        print(f"webtesting-test load: {e}", file=sys.stderr)
        return 2
    print(loadtest.summary_text(summary), flush=True)
    prefix = args.report or time.strftime("webtesting-load-%Y%m%d-%H%M%S")
    paths = loadtest.write_report(summary, prefix, f"Load: {cases[0].name} on service {settings.service}")
    print("report: " + ", ".join(paths), flush=True)
    return 0 if summary["passed"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="webtesting-test", description=__doc__.split("\n\n")[0].strip())
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run test cases and report")
    run_parser.add_argument("cases", nargs="+", help="case files (YAML)")
    run_parser.add_argument("--url", required=True, help="the web server, e.g. http://127.0.0.1:2019")
    run_parser.add_argument("--user", help="the account to run as (with its password)")
    run_parser.add_argument("--token-file", help="a file holding an API token (webtesting-account token NAME); "
                                                 "else $WEBTESTING_TOKEN; instead of --user and a password")
    run_parser.add_argument("--password-file", help="a file whose first line is the password "
                                                    "(else $WEBTESTING_PASSWORD)")
    run_parser.add_argument("--service", type=int, help="the service id (overrides the cases' own)")
    run_parser.add_argument("--junit", help="write a JUnit XML report here")
    run_parser.add_argument("--parallel", type=int, default=1, help="cases run at once (default 1)")
    run_parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for any answer")
    compare_parser = commands.add_parser("compare", help="run cases on two services at once, side by side")
    compare_parser.add_argument("cases", nargs="+", help="case files (YAML)")
    compare_parser.add_argument("--url", required=True, help="the web server, e.g. http://127.0.0.1:2019")
    compare_parser.add_argument("--user", help="the account to run as (with its password)")
    compare_parser.add_argument("--token-file", help="an API token instead of --user and a password")
    compare_parser.add_argument("--password-file", help="a file whose first line is the password")
    compare_parser.add_argument("--service", type=int, required=True, help="one service id")
    compare_parser.add_argument("--against", type=int, required=True, help="the other service id")
    compare_parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for any answer")
    load_parser = commands.add_parser(
        "load", help="simulated testers following a case; thresholds decide the exit code")
    load_parser.add_argument("cases", nargs=1, help="the case file (YAML)")
    load_parser.add_argument("--url", required=True, help="the web server, e.g. http://127.0.0.1:2019")
    load_parser.add_argument("--user", help="the account to run as (with its password)")
    load_parser.add_argument("--token-file", help="an API token instead of --user and a password")
    load_parser.add_argument("--password-file", help="a file whose first line is the password")
    load_parser.add_argument("--service", type=int, required=True, help="the registered service to load")
    load_parser.add_argument("--users", type=int, default=10,
                             help=f"simulated testers (default 10, at most {loadtest.MAX_USERS})")
    load_parser.add_argument("--ramp", default="0", help="seconds over which they start (default 0)")
    load_parser.add_argument("--duration", default="60", help="seconds the run lasts (default 60)")
    load_parser.add_argument("--max-p99", help="fail if the p99 round trip is over this (e.g. 2s, 500ms)")
    load_parser.add_argument("--max-errors", help="fail if errors and failed checks are over this share of "
                                                   "the steps (e.g. 1%%)")
    load_parser.add_argument("--report", help="write PREFIX.json and PREFIX.html (default webtesting-load-<time>)")
    load_parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for any answer")
    args = parser.parse_args(argv)
    if not args.user and not _token(args):
        parser.error("give --user (with a password) or an API token (--token-file or $WEBTESTING_TOKEN)")
    try:
        cases = [load_file(path) for path in args.cases]
    except (CaseError, OSError) as e:
        print(f"webtesting-test: {e}", file=sys.stderr)
        return 2
    from twisted.internet import task

    code: list[int] = []

    async def go(reactor: Any) -> None:
        command = {"compare": compare_services, "load": load}.get(args.command, run)
        code.append(await command(reactor, args, cases))

    try:
        task.react(lambda reactor: ensureDeferred(go(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    return code[0] if code else 2


if __name__ == "__main__":
    sys.exit(main())
