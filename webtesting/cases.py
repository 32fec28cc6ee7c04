"""
Test cases: a conversation with expectations on the bot's replies and on
the user's state (tags, topics, memory), run through the client SDK.

The format is documented in docs/test-cases.md. L{load} reads and checks a
case (clear errors naming the field); L{run_case} runs it against a service
and gives a L{CaseResult}: for each step what was expected, what came, and
whether it passed.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from twisted.internet.defer import Deferred

from webtesting.client import ClientError, Connection, WaitTimeout
from webtesting.givenstate import check_given
from webtesting.protocol import InvalidInput

DEFAULT_WITHIN = 5.0


class CaseError(Exception):
    """A case file that does not follow the format; the message names the field."""


# -- reading ---------------------------------------------------------------------

_REPLY_KEYS = {"text", "contains", "regex", "any_of", "action"}
_STEP_KEYS = {"say", "wait", "within", "expect"}


def _where(path: str, problem: str) -> CaseError:
    return CaseError(f"{path}: {problem}")


def _str_list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        raise _where(path, "must be a list of ids or texts")
    return value


def _check_replies(value: Any, path: str) -> dict[str, Any]:
    if isinstance(value, list):
        value = {"each": value}
    if not isinstance(value, dict):
        raise _where(path, "must be a list of reply checks, or {count, each}")
    unknown = set(value) - {"count", "each"}
    if unknown:
        raise _where(path, f"unknown keys {sorted(unknown)}")
    if "count" in value and (type(value["count"]) is not int or value["count"] < 0):
        raise _where(f"{path}.count", "must be a whole number ≥ 0")
    each = value.get("each", [])
    if not isinstance(each, list):
        raise _where(f"{path}.each", "must be a list")
    for i, check in enumerate(each):
        where = f"{path}[{i}]"
        if not isinstance(check, dict) or not check or set(check) - _REPLY_KEYS:
            raise _where(where, f"must be a mapping of {sorted(_REPLY_KEYS)}")
        if "regex" in check:
            try:
                re.compile(str(check["regex"]))
            except re.error as e:
                raise _where(f"{where}.regex", f"is not a regular expression: {e}") from None
        if "any_of" in check and not isinstance(check["any_of"], list):
            raise _where(f"{where}.any_of", "must be a list of texts")
    return {"count": value.get("count"), "each": each}


def _check_state(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _where(path, "must be a mapping (tags, in_use, topic, topics, memory, memory_absent)")
    allowed = {"tags", "in_use", "topic", "topics", "memory", "memory_absent"}
    unknown = set(value) - allowed
    if unknown:
        raise _where(path, f"unknown keys {sorted(unknown)}; use {sorted(allowed)}")
    if "tags" in value:
        tags = value["tags"]
        if not isinstance(tags, dict) or set(tags) - {"present", "absent"}:
            raise _where(f"{path}.tags", "must be {present: [...], absent: [...]}")
        for k, v in tags.items():
            _str_list(v, f"{path}.tags.{k}")
    if "in_use" in value and (not isinstance(value["in_use"], dict)
                              or not all(isinstance(v, bool) for v in value["in_use"].values())):
        raise _where(f"{path}.in_use", "must map tag ids or texts to true or false")
    if "topic" in value and (not isinstance(value["topic"], dict) or set(value["topic"]) - {"current", "previous"}):
        raise _where(f"{path}.topic", "must be {current: id or text, previous: id or text}")
    if "topics" in value:
        topics = value["topics"]
        if not isinstance(topics, dict) or set(topics) - {"contains", "excludes"}:
            raise _where(f"{path}.topics", "must be {contains: [...], excludes: [...]}")
        for k, v in topics.items():
            _str_list(v, f"{path}.topics.{k}")
    if "memory" in value and not isinstance(value["memory"], dict):
        raise _where(f"{path}.memory", "must map keys to the values expected")
    if "memory_absent" in value:
        _str_list(value["memory_absent"], f"{path}.memory_absent")
    return value


@dataclass
class Step:
    say: str | None
    wait: float
    within: float
    replies: dict[str, Any] | None
    state: dict[str, Any] | None


@dataclass
class Case:
    name: str
    appid: str
    uname: str
    steps: list[Step]
    service: int | None = None
    source: str = ""
    given: dict[str, Any] | None = None  # the user's starting state (webtesting.givenstate)


def load(text: str, source: str = "<case>") -> Case:
    """Read and check one case (YAML); L{CaseError} names the first problem."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CaseError(f"{source}: not YAML: {e}") from None
    if not isinstance(data, dict):
        raise CaseError(f"{source}: a case is a mapping with name, appid and steps")
    unknown = set(data) - {"name", "service", "appid", "uname", "given", "steps"}
    if unknown:
        raise CaseError(f"{source}: unknown keys {sorted(unknown)}")
    for key in ("name", "appid"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise CaseError(f"{source}: {key}: is required (text)")
    service = data.get("service")
    if service is not None and (type(service) is not int or service < 1):
        raise CaseError(f"{source}: service: must be a service id")
    uname = data.get("uname", "wt-{run}")
    if not isinstance(uname, str) or not uname:
        raise CaseError(f"{source}: uname: must be text (a template; {{run}} is unique per run)")
    given = None
    if "given" in data:
        try:
            given = check_given(data["given"], "given")
        except InvalidInput as e:
            raise CaseError(f"{source}: {e}") from None
    steps_data = data.get("steps")
    if not isinstance(steps_data, list) or not steps_data:
        raise CaseError(f"{source}: steps: is required (a list)")
    steps = []
    for i, raw in enumerate(steps_data):
        path = f"{source}: steps[{i}]"
        if not isinstance(raw, dict) or set(raw) - _STEP_KEYS:
            raise _where(path, f"a step is a mapping of {sorted(_STEP_KEYS)}")
        if ("say" in raw) == ("wait" in raw):
            raise _where(path, "give either say (a message) or wait (seconds for unprompted replies)")
        if "say" in raw and (not isinstance(raw["say"], str) or not raw["say"].strip()):
            raise _where(f"{path}.say", "must be non-blank text")
        wait = raw.get("wait", 0)
        within = raw.get("within", DEFAULT_WITHIN)
        for key, value in (("wait", wait), ("within", within)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 600:
                raise _where(f"{path}.{key}", "must be seconds between 0 and 600")
        expect = raw.get("expect", {})
        if not isinstance(expect, dict) or set(expect) - {"replies", "state"}:
            raise _where(f"{path}.expect", "must be {replies: ..., state: ...}")
        steps.append(Step(
            say=raw.get("say"), wait=float(wait), within=float(within),
            replies=_check_replies(expect["replies"], f"{path}.expect.replies") if "replies" in expect else None,
            state=_check_state(expect["state"], f"{path}.expect.state") if "state" in expect else None,
        ))
    return Case(str(data["name"]), str(data["appid"]), uname, steps, service, source, given)


def load_file(path: str) -> Case:
    with open(path, encoding="utf-8") as f:
        return load(f.read(), path)


# -- checking ---------------------------------------------------------------------


def _reply_problem(check: dict[str, Any], reply: dict[str, Any]) -> str | None:
    content = str(reply.get("content", ""))
    if "text" in check and content != str(check["text"]):
        return f"text: expected {check['text']!r}, got {content!r}"
    if "contains" in check and str(check["contains"]) not in content:
        return f"contains: {check['contains']!r} not in {content!r}"
    if "regex" in check and not re.search(str(check["regex"]), content):
        return f"regex: {check['regex']!r} does not match {content!r}"
    if "any_of" in check and content not in [str(t) for t in check["any_of"]]:
        return f"any_of: {content!r} is none of {check['any_of']!r}"
    if "action" in check and str(reply.get("action", "")) != str(check["action"]):
        return f"action: expected {check['action']!r}, got {reply.get('action')!r}"
    return None


def reply_problems(expected: dict[str, Any], replies: list[dict[str, Any]]) -> list[str]:
    problems = []
    count = expected.get("count")
    if count is not None and len(replies) != count:
        problems.append(f"count: expected {count} replies, got {len(replies)}")
    for i, check in enumerate(expected.get("each", [])):
        if i >= len(replies):
            problems.append(f"reply {i + 1}: expected {check}, but only {len(replies)} replies came")
            continue
        problem = _reply_problem(check, replies[i])
        if problem:
            problems.append(f"reply {i + 1}: {problem}")
    return problems


def _names(item: dict[str, Any]) -> set[str]:
    """What a tag or topic may be called in a case: its id, its text, or one language of "en / zh"."""
    desc = str(item.get("desc", "") or "")
    return ({str(item.get("id")), desc} | {part.strip() for part in desc.split(" / ")}) - {"", "None"}


def _has(items: list[dict[str, Any]], wanted: Any) -> dict[str, Any] | None:
    return next((item for item in items if str(wanted) in _names(item)), None)


def state_problems(expected: dict[str, Any], state: dict[str, Any]) -> list[str]:
    """What in C{state} (a getUserStatusResp) breaks C{expected}; tags and topics match by id or text."""
    problems = []
    tags = list((state.get("tag") or {}).get("curTags") or [])
    for wanted in (expected.get("tags") or {}).get("present", []):
        if _has(tags, wanted) is None:
            present = sorted(t.get("desc") or t.get("id") for t in tags)
            problems.append(f"tags: {wanted!r} is not present (tags: {present})")
    for wanted in (expected.get("tags") or {}).get("absent", []):
        if _has(tags, wanted) is not None:
            problems.append(f"tags: {wanted!r} is present")
    for wanted, in_use in (expected.get("in_use") or {}).items():
        tag = _has(tags, wanted)
        if tag is None:
            problems.append(f"in_use: tag {wanted!r} is not present")
        elif bool(tag.get("isInUse")) != in_use:
            problems.append(f"in_use: tag {wanted!r} is {'' if tag.get('isInUse') else 'not '}in use")
    topic = state.get("curTopic") or {}
    for key, field_id, field_desc in (("current", "id", "desc"), ("previous", "prevId", "prevDesc")):
        if key in (expected.get("topic") or {}):
            wanted = str(expected["topic"][key])
            got = _names({"id": topic.get(field_id), "desc": topic.get(field_desc)})
            if wanted not in got:
                actual = topic.get(field_desc) or topic.get(field_id)
                problems.append(f"topic.{key}: expected {wanted!r}, got {actual!r}")
    topics = list((state.get("curTopicList") or {}).get("curTopics") or [])
    for wanted in (expected.get("topics") or {}).get("contains", []):
        if _has(topics, wanted) is None:
            problems.append(f"topics: {wanted!r} is not in the topic list")
    for wanted in (expected.get("topics") or {}).get("excludes", []):
        if _has(topics, wanted) is not None:
            problems.append(f"topics: {wanted!r} is in the topic list")
    memory = {str(e.get("key")): e.get("value") for e in (state.get("memory") or {}).get("cur") or []}
    for key, value in (expected.get("memory") or {}).items():
        if str(memory.get(str(key))) != str(value) or str(key) not in memory:
            problems.append(f"memory.{key}: expected {value!r}, got {memory.get(str(key))!r}")
    for key in expected.get("memory_absent", []):
        if str(key) in memory:
            problems.append(f"memory.{key}: expected absent, got {memory[str(key)]!r}")
    return problems


# -- running -----------------------------------------------------------------------


@dataclass
class StepResult:
    index: int
    say: str | None
    replies: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    answered_in: float | None = None  # seconds from saying to the bot's answer (a say step)
    error: str = ""  # the say got no answer (an error answer, a timeout, the connection lost)

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass
class CaseResult:
    case: Case
    service: int
    uname: str
    steps: list[StepResult] = field(default_factory=list)
    error: str = ""  # the case could not run (login refused, connection lost)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.error and all(step.passed for step in self.steps)


def _sleep(reactor: Any, seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


async def run_case(case: Case, connection: Connection, service: int, run_id: str | None = None,
                   *, read_state: bool = False, progress: CaseResult | None = None,
                   on_step: Callable[[StepResult], None] | None = None) -> CaseResult:
    """
    Run C{case} on C{service} through an open L{Connection}; never raises for
    a failing bot. With C{read_state}, the state is read after every step
    (for comparing two services), not only where the case checks it. Steps
    are added to C{progress} (a new L{CaseResult} if None) as they run, so
    that a watcher sees them, and each is given to C{on_step} when it ends.
    """
    reactor = connection.client.reactor
    uname = case.uname.replace("{run}", run_id or uuidlib.uuid4().hex[:10])
    result = progress if progress is not None else CaseResult(case, service, uname)
    result.uname = uname
    started = time.monotonic()
    try:
        bot = await connection.login(service, case.appid, uname)
    except ClientError as e:
        result.error = f"login as {uname!r} failed: {e}"
        return result
    if case.given is not None:
        # The bot user's uid is known once logged in; the state is written then, and the
        # user logs in again so that a bot which reads its state at login finds it.
        try:
            await bot.set_state(case.given)
            await bot.logout(timeout=5)
            bot = await connection.login(service, case.appid, uname)
        except ClientError as e:
            result.error = f"writing the given state failed: {e}"
            if bot.ended is None and service in connection.logins:
                with contextlib.suppress(ClientError):
                    await bot.logout(timeout=5)
            return result
    try:
        for index, step in enumerate(case.steps):
            step_result = StepResult(index, step.say)
            result.steps.append(step_result)
            step_started = time.monotonic()
            seen = len(bot.replies)
            if step.say is not None:
                try:
                    await bot.chat(step.say, timeout=max(step.within, 1.0))
                    step_result.answered_in = time.monotonic() - step_started
                except ClientError as e:
                    step_result.error = str(e)
                    step_result.problems.append(f"say: {e}")
            wanted = step.replies or {}
            needed = max(len(wanted.get("each", [])), wanted.get("count") or 0)
            deadline = step_started + (step.wait or step.within)
            # Unprompted replies: wait the step's `wait`, or until the replies expected have come.
            while time.monotonic() < deadline and (step.wait or len(bot.replies) - seen < needed):
                await _sleep(reactor, 0.05)
                if bot.ended is not None:
                    break
            step_result.replies = bot.replies[seen:]
            if step.replies is not None:
                step_result.problems += reply_problems(step.replies, step_result.replies)
            if step.state is not None:
                # The state may lag the replies by a poll: look until it matches or the step's time is up.
                until = time.monotonic() + step.within
                while True:
                    try:
                        step_result.state = await bot.state(timeout=max(step.within, 1.0))
                        problems = state_problems(step.state, step_result.state)
                    except (ClientError, WaitTimeout) as e:
                        problems = [f"state: {e}"]
                    if not problems or time.monotonic() >= until:
                        break
                    await _sleep(reactor, 0.2)
                step_result.problems += problems
            elif read_state:
                try:
                    step_result.state = await bot.state(timeout=max(step.within, 1.0))
                except (ClientError, WaitTimeout):
                    step_result.state = None
            if bot.ended is not None:
                step_result.problems.append(f"the login ended: {bot.ended.get('code')}: {bot.ended.get('msg')}")
            step_result.seconds = time.monotonic() - step_started
            if on_step is not None:
                on_step(step_result)
            if bot.ended is not None:
                break
    finally:
        if bot.ended is None:
            with contextlib.suppress(ClientError):
                await bot.logout(timeout=5)
        result.seconds = time.monotonic() - started
    return result


def describe(result: CaseResult) -> str:
    """A readable report: each step passed or failed, with what was expected against what came."""
    lines = [f"{'PASS' if result.passed else 'FAIL'}  {result.case.name}  (service {result.service}, "
             f"uname {result.uname}, {result.seconds:.1f} s)"]
    if result.error:
        lines.append(f"  error: {result.error}")
    for step in result.steps:
        what = f"say {step.say!r}" if step.say is not None else "wait"
        lines.append(f"  {'ok  ' if step.passed else 'FAIL'} step {step.index + 1}: {what}")
        if not step.passed:
            for problem in step.problems:
                lines.append(f"         - {problem}")
            for reply in step.replies:
                lines.append(f"         got reply: {reply.get('content')!r} (action {reply.get('action')!r})")
    return "\n".join(lines)


# -- comparing two services ---------------------------------------------------------


def state_summary(state: dict[str, Any] | None) -> dict[str, Any]:
    """What of a state is compared between two services: texts, not ids or times."""
    if state is None:
        return {}
    topic = state.get("curTopic") or {}
    return {
        "tags": sorted(f"{t.get('desc') or t.get('id')}{'' if t.get('isInUse') else ' (not in use)'}"
                       for t in (state.get("tag") or {}).get("curTags") or []),
        "topic": [topic.get("desc") or topic.get("id"), topic.get("prevDesc") or topic.get("prevId")],
        "topics": sorted(str(t.get("desc") or t.get("id"))
                         for t in (state.get("curTopicList") or {}).get("curTopics") or []),
        "memory": sorted(f"{e.get('key')}={e.get('value')}" for e in (state.get("memory") or {}).get("cur") or []),
    }


def _replies(step: StepResult) -> list[str]:
    return [f"“{r.get('content')}” [{r.get('action')}]" for r in step.replies]


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return "; ".join("—" if v is None else str(v) for v in value) or "—"
    return "—" if value is None else str(value)


def compare(a: CaseResult, b: CaseResult) -> tuple[bool, str]:
    """
    The two runs of one case side by side, step by step, with differences
    marked (≠); returns (differs, report). Differences the case does not
    check are shown but allowed: the runs differ "beyond what the case
    allows" only when one of them fails.
    """
    differs = not (a.passed and b.passed)
    status = lambda r: "PASS" if r.passed else "FAIL"  # noqa: E731
    lines = [f"{'DIFF' if differs else 'SAME' if a.passed else 'FAIL'}  {a.case.name}  "
             f"(service {a.service}: {status(a)}, service {b.service}: {status(b)})"]
    for result in (a, b):
        if result.error:
            lines.append(f"  service {result.service}: {result.error}")
    for sa, sb in zip(a.steps, b.steps, strict=False):
        what = f"say {sa.say!r}" if sa.say is not None else "wait"
        lines.append(f"  step {sa.index + 1}: {what}")
        for name, left, right in (("replies", _replies(sa), _replies(sb)),
                                  *((f"state.{k}", state_summary(sa.state).get(k), state_summary(sb.state).get(k))
                                    for k in ("tags", "topic", "topics", "memory"))):
            mark = "=" if left == right else "≠"
            if mark == "=":
                lines.append(f"    = {name}: {_shown(left)}")
            else:
                lines.append(f"    ≠ {name}:")
                lines.append(f"        service {a.service}: {_shown(left)}")
                lines.append(f"        service {b.service}: {_shown(right)}")
        for service, step in ((a.service, sa), (b.service, sb)):
            for problem in step.problems:
                lines.append(f"    ! service {service}: {problem}")
    return differs, "\n".join(lines)

