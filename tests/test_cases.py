"""
Test cases (webtesting.cases) and the ``webtesting-test`` command: the
format's checks, reply and state checks that can each fail, and the example
suite run by the real command against the real product.
"""

from __future__ import annotations

import glob
import os
import sys
import xml.etree.ElementTree as ET
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.support.browser import PASSWORD, PagesSystem
from tests.support.wait import eventually
from webtesting.cases import CaseError, load, reply_problems, run_case, state_problems
from webtesting.client import Client, ServerError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JUNIT_XSD = os.path.join(ROOT, "tests", "support", "junit.xsd")


def validate_junit(path: str) -> None:
    """The report validates against the strict JUnit schema (Ant's form, tests/support/junit.xsd)."""
    from lxml import etree

    schema = etree.XMLSchema(etree.parse(JUNIT_XSD))
    document = etree.parse(path)
    if not schema.validate(document):
        raise AssertionError(f"{path} is not a valid JUnit report: {schema.error_log}")
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "reference-bot", "*.yaml")))

STATE = {
    "tag": {"curTags": [{"id": 20005, "desc": "told their name / 说了名字", "isInUse": True},
                        {"id": 20002, "desc": "greeted the bot / 打了招呼", "isInUse": False}]},
    "curTopic": {"id": 10002, "desc": "weather / 天气", "prevId": 10001, "prevDesc": "greetings / 问候"},
    "curTopicList": {"curTopics": [{"id": 10001, "desc": "greetings / 问候"}, {"id": 10002, "desc": "weather / 天气"}]},
    "memory": {"cur": [{"key": "name", "value": "Alice"}]},
}


class JUnitSchemaTests(unittest.TestCase):
    def test_the_schema_refuses_what_ci_readers_do_not_take(self) -> None:
        """The schema is strict enough to fail: a report without its required parts does not validate."""
        path = self.mktemp() + ".xml"
        with open(path, "w", encoding="utf-8") as f:
            f.write('<testsuites><testsuite name="x" tests="1"><testcase name="a"/></testsuite></testsuites>')
        with self.assertRaises(AssertionError) as refused:
            validate_junit(path)
        self.assertIn("not a valid JUnit report", str(refused.exception))


class FormatTests(unittest.TestCase):
    def test_examples_load(self) -> None:
        """Every example case follows the format."""
        self.assertGreaterEqual(len(EXAMPLES), 3)
        for path in EXAMPLES:
            with open(path, encoding="utf-8") as f:
                case = load(f.read(), path)
            self.assertTrue(case.steps)

    def test_errors_name_the_field(self) -> None:
        """A malformed case is refused with the field named."""
        for text, where in (
            ("name: x\nsteps: [{say: hi}]", "appid"),
            ("name: x\nappid: '1'\nsteps: []", "steps"),
            ("name: x\nappid: '1'\nsteps: [{say: hi, wait: 1}]", "steps[0]"),
            ("name: x\nappid: '1'\nsteps: [{say: hi, expect: {replies: [{regex: '('}]}}]", "regex"),
            ("name: x\nappid: '1'\nsteps: [{say: hi, expect: {state: {mood: 1}}}]", "state"),
            ("name: x\nappid: '1'\nsteps: [{wait: -1}]", "wait"),
            ("[1, 2]", "mapping"),
            ("name: x\nappid: '1'\nsteps: [{say: hi}]\nextra: 1", "unknown"),
        ):
            with self.assertRaises(CaseError, msg=text) as refused:
                load(text, "case.yaml")
            self.assertIn(where, str(refused.exception))


class CheckTests(unittest.TestCase):
    def test_reply_checks_can_fail(self) -> None:
        """Each reply check passes on a matching reply and fails, saying why, on another."""
        reply = [{"content": "Nice to meet you, Alice!", "action": "remember"}]
        for check in ({"text": "Nice to meet you, Alice!"}, {"contains": "Alice"}, {"regex": "meet .*Alice"},
                      {"any_of": ["x", "Nice to meet you, Alice!"]}, {"action": "remember"}):
            self.assertEqual(reply_problems({"each": [check]}, reply), [], check)
        for check in ({"text": "Hello"}, {"contains": "Bob"}, {"regex": "^Bob"}, {"any_of": ["x"]},
                      {"action": "answer"}):
            [problem] = reply_problems({"each": [check]}, reply)
            self.assertIn("Alice", problem if "action" not in check else problem + "Alice")
        self.assertEqual(reply_problems({"count": 2}, reply), ["count: expected 2 replies, got 1"])
        self.assertIn("only 1 replies came", reply_problems({"each": [{}, {"contains": "x"}]}, reply)[0])

    def test_state_checks_can_fail(self) -> None:
        """Tags, in-use flags, topics and memory are checked by id or text; each can fail."""
        passing = {
            "tags": {"present": [20005, "told their name", "说了名字"], "absent": ["said goodbye"]},
            "in_use": {"told their name": True, 20002: False},
            "topic": {"current": "weather", "previous": 10001},
            "topics": {"contains": ["greetings"], "excludes": ["food"]},
            "memory": {"name": "Alice"}, "memory_absent": ["city"],
        }
        self.assertEqual(state_problems(passing, STATE), [])
        failing = [
            {"tags": {"present": ["said goodbye"]}}, {"tags": {"absent": [20005]}},
            {"in_use": {"greeted the bot": True}}, {"topic": {"current": "food"}}, {"topic": {"previous": 10002}},
            {"topics": {"contains": ["music"]}}, {"topics": {"excludes": ["weather"]}},
            {"memory": {"name": "Bob"}}, {"memory": {"city": "Paris"}}, {"memory_absent": ["name"]},
        ]
        for expected in failing:
            self.assertEqual(len(state_problems(expected, STATE)), 1, expected)


class RunTests(unittest.TestCase):
    timeout = 180

    async def setUp(self) -> None:
        self.system = PagesSystem(self)
        await self.system.start()
        self.system.add_user("tess", "tester")
        self.sid = await self.system.add_service(allowStateWrites=True)
        await self.system.wait_status(self.sid, 1)
        self.url = f"http://127.0.0.1:{self.system.http_port}"

    async def test_example_cases_pass_and_a_wrong_one_fails(self) -> None:
        """Through the SDK: the examples pass; a wrong reply and a wrong state each fail with a readable diff."""
        client = Client(self.url)
        await client.login("tess", PASSWORD)
        conn = await client.connect()
        self.addCleanup(conn.close)
        for path in EXAMPLES:
            with open(path, encoding="utf-8") as f:
                result = await run_case(load(f.read(), path), conn, self.sid)
            self.assertTrue(result.passed, f"{path}: {[s.problems for s in result.steps]}")
        wrong = load("name: wrong\nappid: '1.00002'\nsteps:\n"
                     "  - say: my name is Alice\n    within: 1\n"
                     "    expect: {replies: [{contains: Bob}], state: {memory: {name: Bob}}}\n")
        result = await run_case(wrong, conn, self.sid)
        self.assertFalse(result.passed)
        problems = result.steps[0].problems
        self.assertEqual(len(problems), 2, problems)
        self.assertIn("contains: 'Bob' not in", problems[0])
        self.assertIn("memory.name: expected 'Bob', got 'Alice'", problems[1])

    async def test_the_command(self) -> None:
        """webtesting-test run: exit 0 and a JUnit report for the examples; exit 1 and the diff for a wrong case."""
        report = os.path.abspath(self.mktemp() + ".xml")
        env = {**os.environ, "WEBTESTING_PASSWORD": PASSWORD}
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "webtesting.testcli", "run", "--url", self.url, "--user", "tess",
                             "--service", str(self.sid), "--junit", report, "--parallel", "2", *EXAMPLES],
            env=env, path=ROOT, reactor=reactor)
        self.assertEqual(code, 0, (out + err).decode())
        self.assertIn(f"{len(EXAMPLES)} passed, 0 failed", out.decode())
        validate_junit(report)
        suite = ET.parse(report).getroot().find("testsuite")
        assert suite is not None
        self.assertEqual((suite.get("tests"), suite.get("failures"), suite.get("errors")),
                         (str(len(EXAMPLES)), "0", "0"))
        wrong = os.path.abspath(self.mktemp() + ".yaml")
        with open(wrong, "w", encoding="utf-8") as f:
            f.write("name: expects the wrong name\nappid: '1.00002'\nsteps:\n"
                    "  - say: what's my name?\n    within: 1\n    expect: {replies: [{text: Your name is Bob.}]}\n")
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "webtesting.testcli", "run", "--url", self.url, "--user", "tess",
                             "--service", str(self.sid), "--junit", report, wrong],
            env=env, path=ROOT, reactor=reactor)
        text = out.decode()
        self.assertEqual(code, 1, text + err.decode())
        self.assertIn("FAIL  expects the wrong name", text)
        self.assertIn("text: expected 'Your name is Bob.'", text)
        self.assertIn("0 passed, 1 failed", text)
        validate_junit(report)
        failure: Any = ET.parse(report).getroot().find("testsuite/testcase/failure")
        self.assertIn("step 1", failure.get("message"))
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "webtesting.testcli", "run", "--url", self.url, "--user", "tess", wrong],
            env={**os.environ, "WEBTESTING_PASSWORD": "wrong password"}, path=ROOT, reactor=reactor)
        self.assertEqual(code, 2, (out + err).decode())
        self.assertIn("not_logged_in", err.decode())

    async def test_given_state(self) -> None:
        """
        A case's given state is written into the bot's Redis only where the
        registry allows it: refused elsewhere with a clear reason; once allowed,
        it starts the case from that state whatever earlier runs left, and the
        agent logs the write with the account.
        """
        from twisted.logger import formatEvent, globalLogPublisher

        lines: list[str] = []
        observer = lambda event: lines.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        closed = await self.system.add_service(description="no state writes")
        await self.system.wait_status(closed, 1)
        client = Client(self.url)
        await client.login("tess", PASSWORD)
        [listed] = [s for s in await client.services() if s["serviceId"] == closed]
        self.assertIs(listed["allowStateWrites"], False)
        conn = await client.connect()
        self.addCleanup(conn.close)
        known = next(p for p in EXAMPLES if "known-user" in p)
        with open(known, encoding="utf-8") as f:
            case = load(f.read(), known)
        case.uname = "known-user"
        refused = await run_case(case, conn, closed)
        self.assertFalse(refused.passed)
        self.assertIn("state_writes_off", refused.error or "")
        self.assertIn("allowStateWrites", refused.error or "")
        # Earlier runs left another name; the given state replaces it.
        bot = await conn.login(self.sid, "1.00002", "known-user")
        await bot.chat("my name is Carol")
        await bot.logout()
        result = await run_case(case, conn, self.sid)
        self.assertTrue(result.passed, [s.problems for s in result.steps] + [result.error])
        self.assertTrue(any("tess wrote the state of 1.00002/known-user" in line
                            and "memory keys ['city', 'name']" in line for line in lines), lines[-20:])
        self.assertFalse(any("Lisbon" in line for line in lines))  # values stay out of the log
        # A state the bot kept is replaced only where the case says reset.
        await self.system.update_service(closed, allowStateWrites=True)
        await eventually(lambda: self.system.web.getServiceNamed("agent-links").links[closed].record
                         ["allowStateWrites"], what="the setting reaching the link")
        bot = await conn.login(closed, "1.00002", "known-user")
        with self.assertRaises(ServerError) as bad:
            await bot.set_state({"memory": {"name": 5}})
        self.assertEqual((bad.exception.result, bad.exception.code), (400, "bad_request"))
        for _ in range(50):  # the agent hears of the change right after the web server
            try:
                await bot.set_state({"memory": {"name": "Dora"}})
                break
            except ServerError as e:
                self.assertEqual(e.code, "state_writes_off")
                await deferLater(reactor, 0.1, lambda: None)
        else:
            self.fail("the agent never allowed the write")
        await bot.logout()
        bot = await conn.login(closed, "1.00002", "known-user")
        reply = await bot.chat("what's my name?")
        self.assertEqual(reply["content"], "Your name is Dora.")
        await bot.logout()

    async def test_api_token(self) -> None:
        """An API token (webtesting-account token) runs the command without a password, and ending it stops it."""
        from webtesting.web.accounts import make_token_sync
        from webtesting.web.registry import connect_sync

        connection, dialect = connect_sync(self.system.options.config.registry)
        try:
            token = make_token_sync(connection, dialect, "tess", "ci")
        finally:
            connection.close()
        env = {**os.environ, "WEBTESTING_TOKEN": token}
        env.pop("WEBTESTING_PASSWORD", None)
        command = ["-m", "webtesting.testcli", "run", "--url", self.url, "--service", str(self.sid), EXAMPLES[0]]
        out, err, code = await getProcessOutputAndValue(sys.executable, command, env=env, path=ROOT, reactor=reactor)
        self.assertEqual(code, 0, (out + err).decode())
        sessions = (await self.system.api("GET", "Account/sessions"))["sessions"]
        [listed] = [s for s in sessions if s["id"].startswith("tok-")]
        self.assertEqual((listed["username"], listed["userAgent"]), ("tess", "API token ci"))
        self.assertNotIn(token, repr(sessions))
        answer = await self.system.api("POST", "Account/endSessions", {"id": listed["id"]})
        self.assertEqual(answer["ended"], 1)
        out, err, code = await getProcessOutputAndValue(sys.executable, command, env=env, path=ROOT, reactor=reactor)
        self.assertEqual(code, 2, (out + err).decode())
        self.assertIn("not_logged_in", err.decode())



class CompareTests(unittest.TestCase):
    timeout = 180

    async def test_compare_two_services(self) -> None:
        """
        The same cases on two services at once: a reference bot configured to
        follow up later (bot.followup_delay 10 s) fails the follow-up case, shown
        side by side with the difference marked, exit 1; two services on the
        same bot are the same, exit 0.
        """
        from tests.support.system import another_bot

        system = PagesSystem(self)
        await system.start()
        system.add_user("tess", "tester")
        _, on_slow = await another_bot(self, system.database, followup_delay=10)
        first = await system.add_service(description="today's bot", allowStateWrites=True)
        changed = await system.add_service(description="the bot with a slower follow-up", allowStateWrites=True,
                                           **on_slow)
        same = await system.add_service(description="today's bot again", allowStateWrites=True)
        for sid in (first, changed, same):
            await system.wait_status(sid, 1)
        url = f"http://127.0.0.1:{system.http_port}"
        env = {**os.environ, "WEBTESTING_PASSWORD": PASSWORD}
        follow_up = next(p for p in EXAMPLES if "follow-up" in p)

        async def compare(other: int, *cases: str) -> tuple[str, int]:
            out, err, code = await getProcessOutputAndValue(
                sys.executable, ["-m", "webtesting.testcli", "compare", "--url", url, "--user", "tess",
                                 "--service", str(first), "--against", str(other), *cases],
                env=env, path=ROOT, reactor=reactor)
            return (out + err).decode(), code

        text, code = await compare(changed, follow_up)
        self.assertEqual(code, 1, text)
        self.assertIn(f"DIFF  a question gets a follow-up  (service {first}: PASS, service {changed}: FAIL)", text)
        self.assertIn("= replies: “Let's talk about weather.” [topic]", text)
        self.assertIn("≠ replies:", text)
        self.assertIn(f"service {changed}: —", text)
        self.assertIn(f"! service {changed}: count: expected 1 replies, got 0", text)
        text, code = await compare(same, *EXAMPLES)
        self.assertEqual(code, 0, text)
        self.assertIn(f"{len(EXAMPLES)} the same, 0 differing", text)
        self.assertNotIn("≠ replies", text)
