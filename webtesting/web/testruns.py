"""
Saved test cases and runs started from the pages.

L{CaseStore}: test cases (YAML, docs/test-cases.md) kept per account in the
registry database (table ``tb_case``); a case may be shared with the team
(every account sees it; only its owner or an admin changes or deletes it).

L{TestRuns}: a run of saved cases on one service, or on two at once to
compare them, started by a page. The web server runs them as the tester,
through the client SDK (L{webtesting.client}) against its own address with
the tester's session cookie, exactly as ``webtesting-test`` would; the page
reads the run's progress (each step green or red as it ends) by polling.
Runs live in memory: a bounded number per account, forgotten an hour after
they end.

L{TestRuns} also runs the load mode (L{webtesting.loadtest}) for the Tests
page's Load tab: one saved case, simulated testers through this server's
relay, its figures read by polling while it goes. Smaller bounds than the
command line's (L{TestRuns.MAX_LOAD_USERS}, L{TestRuns.MAX_LOAD_SECONDS}),
one load per account at a time.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from webtesting.cases import Case, CaseError, CaseResult, StepResult, load, run_case, state_summary
from webtesting.client import Client, ClientError
from webtesting.loadtest import LoadError, LoadRun, LoadSettings
from webtesting.web.schema import dialect_sql as _sql

CASE_SCHEMA_MYSQL = """\
CREATE TABLE IF NOT EXISTS `tb_case` (
  `id` int NOT NULL AUTO_INCREMENT,
  `owner` varchar(64) NOT NULL COMMENT 'the account that saved it',
  `name` varchar(256) NOT NULL,
  `shared` tinyint(1) NOT NULL DEFAULT '0' COMMENT 'every account sees it',
  `yaml` mediumtext NOT NULL,
  `createdAt` bigint NOT NULL COMMENT 'Unix seconds',
  `updatedAt` bigint NOT NULL COMMENT 'Unix seconds',
  PRIMARY KEY (`id`),
  KEY `owner` (`owner`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""

CASE_SCHEMA_SQLITE = """\
CREATE TABLE IF NOT EXISTS tb_case (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  owner TEXT NOT NULL,
  name TEXT NOT NULL,
  shared INTEGER NOT NULL DEFAULT 0,
  yaml TEXT NOT NULL,
  createdAt INTEGER NOT NULL,
  updatedAt INTEGER NOT NULL
)
"""

MAX_YAML = 256 * 1024
MAX_CASES_PER_ACCOUNT = 1000


class NoSuchCase(Exception):
    """No case with that id that this account may see (or change)."""



class CaseStore:
    """Saved cases, through the registry's L{webtesting.dbpool.Database}."""

    def __init__(self, db: Any, dialect_name: str) -> None:
        self.db = db
        self._dialect = dialect_name

    def _q(self, statement: str) -> str:
        return _sql(self._dialect, statement)

    def list(self, account: str) -> Deferred[list[dict[str, Any]]]:
        """The account's own cases and those shared by others, by name."""
        select = self._q("SELECT id, owner, name, shared, updatedAt FROM tb_case WHERE owner = %s OR shared = 1 "
                         "ORDER BY name, id")

        def work(cursor: Any) -> list[dict[str, Any]]:
            cursor.execute(select, [account])
            return [{"id": r[0], "owner": r[1], "name": r[2], "shared": bool(r[3]), "updatedAt": r[4],
                     "mine": r[1] == account} for r in cursor.fetchall()]

        return self.db.run(work)

    def get(self, case_id: int, account: str, admin: bool = False) -> Deferred[dict[str, Any]]:
        select = self._q("SELECT id, owner, name, shared, yaml, updatedAt FROM tb_case WHERE id = %s")

        def work(cursor: Any) -> dict[str, Any]:
            cursor.execute(select, [case_id])
            row = cursor.fetchone()
            if row is None or not (admin or row[1] == account or row[3]):
                raise NoSuchCase(case_id)
            return {"id": row[0], "owner": row[1], "name": row[2], "shared": bool(row[3]), "yaml": row[4],
                    "updatedAt": row[5]}

        return self.db.run(work)

    def save(self, account: str, name: str, yaml_text: str, shared: bool, case_id: int | None = None,
             admin: bool = False) -> Deferred[int]:
        """Save a new case (no C{case_id}) or replace one the account owns (an admin: any); its id."""
        now = int(time.time())
        count = self._q("SELECT COUNT(*) FROM tb_case WHERE owner = %s")
        insert = self._q("INSERT INTO tb_case (owner, name, shared, yaml, createdAt, updatedAt) "
                         "VALUES (%s, %s, %s, %s, %s, %s)")
        owner_of = self._q("SELECT owner FROM tb_case WHERE id = %s")
        update = self._q("UPDATE tb_case SET name = %s, shared = %s, yaml = %s, updatedAt = %s WHERE id = %s")

        def work(cursor: Any) -> int:
            if case_id is None:
                cursor.execute(count, [account])
                if cursor.fetchone()[0] >= MAX_CASES_PER_ACCOUNT:
                    raise ValueError(f"this account holds {MAX_CASES_PER_ACCOUNT} cases, the most allowed")
                cursor.execute(insert, [account, name, int(shared), yaml_text, now, now])
                return int(cursor.lastrowid)
            cursor.execute(owner_of, [case_id])
            row = cursor.fetchone()
            if row is None or not (admin or row[0] == account):
                raise NoSuchCase(case_id)
            cursor.execute(update, [name, int(shared), yaml_text, now, case_id])
            return case_id

        return self.db.run(work)

    def delete(self, case_id: int, account: str, admin: bool = False) -> Deferred[None]:
        owner_of = self._q("SELECT owner FROM tb_case WHERE id = %s")
        delete = self._q("DELETE FROM tb_case WHERE id = %s")

        def work(cursor: Any) -> None:
            cursor.execute(owner_of, [case_id])
            row = cursor.fetchone()
            if row is None or not (admin or row[0] == account):
                raise NoSuchCase(case_id)
            cursor.execute(delete, [case_id])

        return self.db.run(work)


def check_case_text(text: str) -> Case:
    """A case's YAML, checked (L{CaseError} names the problem)."""
    if len(text) > MAX_YAML:
        raise CaseError(f"a case is at most {MAX_YAML} characters")
    return load(text, "case")


# -- runs -----------------------------------------------------------------------------


@dataclass
class RunItem:
    case_id: int
    case: Case
    a: CaseResult | None = None
    b: CaseResult | None = None
    done: bool = False


@dataclass
class Run:
    id: str
    account: str
    service: int
    against: int | None
    items: list[RunItem]
    started: float = field(default_factory=time.time)
    ended: float | None = None
    error: str = ""


def _step(step: StepResult, running: bool) -> dict[str, Any]:
    return {
        "index": step.index, "say": step.say, "running": running, "passed": step.passed and not running,
        "problems": list(step.problems), "seconds": round(step.seconds, 2),
        "replies": [{"content": r.get("content"), "action": r.get("action")} for r in step.replies],
        "state": state_summary(step.state) if step.state is not None else None,
    }


def _result(result: CaseResult | None, done: bool) -> dict[str, Any] | None:
    if result is None:
        return None
    steps = [_step(s, running=not done and i == len(result.steps) - 1) for i, s in enumerate(result.steps)]
    return {"serviceId": result.service, "uname": result.uname, "error": result.error,
            "passed": done and result.passed, "steps": steps, "seconds": round(result.seconds, 2)}


def _status(item: RunItem, comparing: bool) -> str:
    if not item.done:
        return "running" if item.a is not None else "waiting"
    assert item.a is not None
    if not comparing:
        return "passed" if item.a.passed else "failed"
    assert item.b is not None
    if item.a.passed and item.b.passed:
        return "same"
    return "differs"


def describe_run(run: Run) -> dict[str, Any]:
    """A run as the page reads it."""
    comparing = run.against is not None
    cases = []
    for item in run.items:
        entry: dict[str, Any] = {"caseId": item.case_id, "name": item.case.name, "status": _status(item, comparing),
                                 "a": _result(item.a, item.done), "b": _result(item.b, item.done)}
        if comparing and item.a is not None and item.b is not None:
            entry["diff"] = [
                {"index": sa.index,
                 "rows": [{"name": name, "a": left, "b": right, "same": left == right}
                          for name, left, right in _rows(sa, sb)]}
                for sa, sb in zip(item.a.steps, item.b.steps, strict=False)
            ]
        cases.append(entry)
    return {"runId": run.id, "serviceId": run.service, "against": run.against, "account": run.account,
            "done": run.ended is not None, "error": run.error, "cases": cases,
            "passed": sum(c["status"] in ("passed", "same") for c in cases),
            "failed": sum(c["status"] in ("failed", "differs") for c in cases)}


def _rows(a: StepResult, b: StepResult) -> list[tuple[str, Any, Any]]:
    replies = lambda s: [f"{r.get('content')} [{r.get('action')}]" for r in s.replies]  # noqa: E731
    rows: list[tuple[str, Any, Any]] = [("replies", replies(a), replies(b))]
    sa, sb = state_summary(a.state), state_summary(b.state)
    for key in ("tags", "topic", "topics", "memory"):
        rows.append((f"state.{key}", sa.get(key), sb.get(key)))
    return rows


class TooManyRuns(Exception):
    """The account has the most runs going that it may have."""


@dataclass
class LoadEntry:
    """A load run started from the Tests page."""

    id: str
    account: str
    case_id: int
    case_name: str
    run: LoadRun
    started: float = field(default_factory=time.time)
    ended: float | None = None
    error: str = ""
    summary: dict[str, Any] | None = None


def describe_load(entry: LoadEntry) -> dict[str, Any]:
    """A load run as the page reads it: the last second's figures, and the run's so far (or its summary)."""
    settings = entry.run.settings
    summary = entry.summary if entry.summary is not None else entry.run.stats.summary(settings)
    return {"loadId": entry.id, "caseId": entry.case_id, "caseName": entry.case_name,
            "serviceId": settings.service, "account": entry.account, "done": entry.ended is not None,
            "error": entry.error, "elapsed": round((entry.ended or time.time()) - entry.started, 1),
            "now": entry.run.stats.window(), "summary": summary}


class TestRuns:
    """Runs of saved cases, started from the Tests page (see the module's docstring)."""

    _log = Logger()
    MAX_CASES = 50
    MAX_RUNNING_PER_ACCOUNT = 2
    KEEP_PER_ACCOUNT = 20
    KEEP_SECONDS = 3600.0

    MAX_LOAD_USERS = 200
    MAX_LOAD_SECONDS = 600.0

    def __init__(self, url: str, reactor: Any, timeout: float = 15.0) -> None:
        self.url = url  # this web server's own address, as pages open it
        self._reactor = reactor
        self._timeout = timeout
        self.runs: dict[str, Run] = {}
        self.loads: dict[str, LoadEntry] = {}
        self._counter = itertools.count(1)

    def _prune(self) -> None:
        now = time.time()
        for run_id, run in list(self.runs.items()):
            if run.ended is not None and now - run.ended > self.KEEP_SECONDS:
                del self.runs[run_id]
        for load_id, entry in list(self.loads.items()):
            if entry.ended is not None and now - entry.ended > self.KEEP_SECONDS:
                del self.loads[load_id]

    def start_load(self, account: str, token: str, case_id: int, case: Case, settings: LoadSettings) -> LoadEntry:
        """Start simulated testers on a registered service (checked by the run itself); L{LoadError} if refused."""
        self._prune()
        settings.check()
        if settings.users > self.MAX_LOAD_USERS:
            raise LoadError(f"users: at most {self.MAX_LOAD_USERS} from a page (webtesting-test load goes further)")
        if settings.duration > self.MAX_LOAD_SECONDS:
            raise LoadError(f"duration: at most {self.MAX_LOAD_SECONDS:g} s from a page")
        if any(e.account == account and e.ended is None for e in self.loads.values()):
            raise TooManyRuns("a load of this account is still going; stop it or wait for it")
        client = Client(self.url, reactor=self._reactor, timeout=self._timeout)
        client.use_token(token)
        entry = LoadEntry(f"l{next(self._counter)}-{os.urandom(6).hex()}", account, case_id, case.name,
                          LoadRun(client, case, settings))
        self.loads[entry.id] = entry
        ensureDeferred(self._load(entry)).addErrback(
            lambda f: self._log.failure("load run {load_id}", f, load_id=entry.id))
        return entry

    async def _load(self, entry: LoadEntry) -> None:
        try:
            entry.summary = await entry.run.run()
        except (LoadError, ClientError) as e:
            entry.error = str(e)
        finally:
            entry.ended = time.time()

    def start(self, account: str, token: str, cases: list[tuple[int, Case]], service: int,
              against: int | None) -> Run:
        self._prune()
        mine = [r for r in self.runs.values() if r.account == account]
        if sum(r.ended is None for r in mine) >= self.MAX_RUNNING_PER_ACCOUNT:
            raise TooManyRuns(f"{self.MAX_RUNNING_PER_ACCOUNT} runs of this account are still going; wait for one")
        for old in sorted((r for r in mine if r.ended is not None), key=lambda r: r.started)[
                :max(0, len(mine) - self.KEEP_PER_ACCOUNT + 1)]:
            self.runs.pop(old.id, None)
        run = Run(f"r{next(self._counter)}-{os.urandom(6).hex()}", account, service, against,
                  [RunItem(case_id, case) for case_id, case in cases])
        self.runs[run.id] = run
        ensureDeferred(self._go(run, token)).addErrback(
            lambda f: self._log.failure("test run {run_id}", f, run_id=run.id))
        return run

    async def _go(self, run: Run, token: str) -> None:
        client = Client(self.url, reactor=self._reactor, timeout=self._timeout)
        client.use_token(token)
        conns = []
        try:
            try:
                conns.append(await client.connect())
                if run.against is not None:
                    conns.append(await client.connect())  # one login per service per connection
            except ClientError as e:
                run.error = f"could not open the chat WebSocket: {e}"
                return
            for item in run.items:
                # Both services run the same case at once, with the same uname.
                run_id = os.urandom(5).hex()
                comparing = run.against is not None
                item.a = CaseResult(item.case, run.service, "")  # the page sees it running at once
                runs = [ensureDeferred(run_case(item.case, conns[0], run.service, run_id, read_state=comparing,
                                                progress=item.a))]
                if run.against is not None:
                    item.b = CaseResult(item.case, run.against, "")
                    runs.append(ensureDeferred(run_case(item.case, conns[1], run.against, run_id,
                                                        read_state=True, progress=item.b)))
                for d in runs:
                    await d
                item.done = True
        finally:
            for conn in conns:
                await conn.close()
            run.ended = time.time()
