"""
The HTTP API described as OpenAPI 3.1, served at C{/WebTesting/openapi.json}.

Written by hand next to the routes of L{webtesting.web.http.RegistryAPI}; a
test checks that it validates, and that every route the server answers is
described here and the reverse (tests/test_openapi.py). Field names are the
wire names of SPEC §2, the seed's C{servicdLists} spelling included.
"""

from __future__ import annotations

from typing import Any

from webtesting.protocol import PASSWORD_MASK

PREFIX = "/WebTesting"

_INT32 = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(**fields: Any) -> dict[str, Any]:
    """The schema of a success answer: C{result} 1, C{msg} "ok" and C{fields}."""
    return {
        "allOf": [_ref("Answer"), {"type": "object", "properties": fields, "required": list(fields)}]
    } if fields else _ref("Answer")


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _operation(
    summary: str,
    answer: dict[str, Any] | None = None,
    *,
    body: dict[str, Any] | None = None,
    who: str = "tester",
    description: str = "",
    content: dict[str, Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """
    One operation. C{summary} is "Tag: what it does"; C{who} is "admin",
    "tester" (any logged-in account) or "anyone".
    """
    tag, _, text = summary.partition(": ")
    op: dict[str, Any] = {"summary": text, "tags": [tag]}
    if description:
        op["description"] = description
    if who != "anyone":
        op["security"] = [{"session": []}]
        if who == "admin":
            op["description"] = (op.get("description", "") + " Admins only (403 for a tester).").strip()
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    ok = {"description": "Done", **(content or _json(answer or _answer()))}
    op["responses"] = {
        "200": ok,
        "default": {"description": "Refused or failed: `result` is the HTTP status, `msg` says why",
                    **_json(_ref("Answer"))},
    }
    return op


def _path_parameter(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query_parameter(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _schemas() -> dict[str, Any]:
    redis_node = {
        "type": "object", "additionalProperties": False, "required": ["host", "port"],
        "properties": {"host": {"type": "string", "maxLength": 255},
                       "port": {"type": "integer", "minimum": 1, "maximum": 65535}},
    }
    service_fields = {
        "redisCluster": {"type": "array", "items": _ref("RedisNode"), "minItems": 1,
                         "description": "every master node of the bot's Redis Cluster"},
        "mysqlAddr": {"type": "string"},
        "mysqlPort": {"type": "integer", "minimum": 1, "maximum": 65535},
        "mysqlUser": {"type": "string"},
        "mysqlPwd": {"type": "string", "description": f"write-only: lists show {PASSWORD_MASK!r}"},
        "mysqlDbname": {"type": "string"},
        "wxServiceAddr": {"type": "string", "maxLength": 64, "examples": ["ws://127.0.0.1:1443/5.00034"]},
        "agentAddr": {"type": "string", "maxLength": 64, "examples": ["ws://127.0.0.1:2021/WebTesting/Agent"]},
        "allowedAppids": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "description": {"type": "string", "maxLength": 1024},
        "allowStateWrites": {"type": "boolean", "description": "test cases may write the bot users' state"},
    }
    required = [name for name in service_fields if name != "allowStateWrites"]
    status = {
        "serviceId": _INT32,
        "status": {"type": "integer", "enum": [0, 1], "description": "1: the agent and everything behind it answer"},
        "msg": {"type": "string", "description": "why not, when status is 0"},
        "code": {"type": "string", "description": "a stable reason code (see docs/protocol.md)"},
    }
    return {
        "Answer": {
            "type": "object", "required": ["result", "msg"],
            "properties": {
                "result": {"type": "integer", "description": "1: success; else the error's HTTP status"},
                "msg": {"type": "string", "description": '"ok", or the reason, naming the field at fault'},
                "code": {"type": "string"},
            },
        },
        "RedisNode": redis_node,
        "NewService": {"type": "object", "additionalProperties": False, "required": required,
                       "properties": service_fields},
        "ServiceUpdate": {"type": "object", "additionalProperties": False, "required": ["serviceId", *required],
                          "properties": {"serviceId": _INT32, **service_fields}},
        "ListedService": {"type": "object", "properties": {**service_fields, **status}},
        "TesterService": {
            "type": "object", "description": "no address or credential",
            "properties": {"serviceId": _INT32, "allowedAppids": service_fields["allowedAppids"],
                           "description": service_fields["description"],
                           **{k: status[k] for k in ("status", "msg", "code")}},
        },
        "CaseSummary": {"type": "object", "properties": {
            "id": _INT32, "name": {"type": "string"}, "account": {"type": "string"}, "shared": {"type": "boolean"},
        }},
        "HealthTimeline": {"type": "object", "properties": {
            "serviceId": _INT32,
            "uptime": {"type": ["number", "null"], "description": "percent of the recorded time up"},
            "buckets": {"type": "array", "items": {"type": "object", "properties": {
                "start": {"type": "integer", "description": "Unix milliseconds"},
                "state": {"type": "string", "enum": ["up", "down", "partial", "none"],
                          "description": "partial: some time not up, or a partial outage; none: no record"},
                "notUpMs": {"type": "integer"},
                "code": {"type": ["string", "null"]}, "reason": {"type": ["string", "null"]},
                "at": {"type": ["integer", "null"], "description": "when the bucket's worst health began"},
                "p50Ms": {"type": ["number", "null"],
                          "description": "median agent-link ping round trip in the bucket"}}}},
        }},
        "Outage": {"type": "object", "properties": {
            "start": {"type": "integer"}, "end": {"type": ["integer", "null"], "description": "null: not over"},
            "durationMs": {"type": "integer"}, "state": {"type": "string", "enum": ["down", "partial"]},
            "code": {"type": "string"}, "reason": {"type": "string", "description": "the first reason"},
            "reasons": {"type": "array", "items": {"type": "string"}},
        }},
        "AuditEntry": {"type": "object", "properties": {
            "id": {"type": "integer"}, "at": {"type": "integer", "description": "Unix milliseconds"},
            "actor": {"type": "string", "description": "the account, or cli:<os user> (webtesting-account)"},
            "address": {"type": "string", "description": "where the change came from"},
            "action": {"type": "string", "examples": ["addServices", "updateServices", "delServices", "login",
                                                      "logout", "logoutAll", "endSessions", "addUser", "deleteUser"]},
            "kind": {"type": "string", "enum": ["service", "user", "session"]},
            "target": {"type": "string", "description": "the serviceId, username or session id changed"},
            "serviceId": {"type": ["integer", "null"]},
            "before": {"type": ["object", "null"],
                       "description": f"changed fields before; passwords show as {PASSWORD_MASK!r}"},
            "after": {"type": ["object", "null"], "description": "changed fields after"},
        }},
        "Report": {"type": "object",
                   "description": "a run's or a load's progress and results, as the Tests page shows them"},
    }


def document(version: str = "0.1.0") -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP API."""
    service, account, history, cases = (f"{PREFIX}/{part}" for part in ("Service", "Account", "History", "Cases"))
    account_body = {"type": "object", "additionalProperties": False, "required": ["username", "password"],
                    "properties": {"username": {"type": "string"}, "password": {"type": "string"}}}
    by_id = {"type": "object", "required": ["id"], "properties": {"id": _INT32}}
    paths: dict[str, Any] = {
        "/metrics": {"get": _operation(
            "Operations: Prometheus metrics of this web server", who="anyone",
            description="The text exposition format (README: Metrics). 404 with http.metrics: false.",
            content={"content": {"text/plain": {"schema": {"type": "string"}}}})},
        f"{PREFIX}/openapi.json": {"get": _operation(
            "API: this description", who="anyone",
            content={"content": {"application/json": {"schema": {"type": "object"}}}})},
        f"{service}/addServices": {"put": _operation(
            "Registry: add services", _answer(affectedRows={"type": "integer"}),
            body={"type": "array", "items": _ref("NewService"), "minItems": 1}, who="admin",
            description="All or nothing, in one statement.")},
        f"{service}/delServices": {"delete": _operation(
            "Registry: delete services", _answer(affectedRows={"type": "integer"}),
            body={"type": "object", "required": ["serviceIds"],
                  "properties": {"serviceIds": {"type": "array", "items": _INT32, "minItems": 1}}}, who="admin")},
        f"{service}/updateServices": {"post": _operation(
            "Registry: update services", _answer(affectedRows={"type": "integer"}),
            body={"type": "array", "items": _ref("ServiceUpdate"), "minItems": 1}, who="admin",
            description=f"All or nothing, in one transaction. A mysqlPwd of {PASSWORD_MASK!r} keeps the stored one.")},
        f"{service}/getServices": {"get": _operation(
            "Registry: list services, in full", _answer(servicdLists={"type": "array", "items": _ref("ListedService")}),
            who="admin")},
        f"{service}/getServiceList": {"get": _operation(
            "Registry: list services for testers",
            _answer(wsAddr={"type": "string"}, serviceLists={"type": "array", "items": _ref("TesterService")}))},
        f"{service}/getLogins": {"get": _operation(
            "Registry: who is logged in as which bot user",
            _answer(logins={"type": "array", "items": {"type": "object"}},
                    unknown={"type": "array", "items": _INT32, "description": "services whose agent did not answer"}),
            who="admin")},
        f"{account}/login": {"post": _operation(
            "Accounts: log in",
            _answer(username={"type": "string"}, role={"type": "string", "enum": ["admin", "tester"]}),
            body=account_body, who="anyone",
            description="Sets the session cookie. Attempts are throttled per username and per address (429).")},
        f"{account}/logout": {"post": _operation("Accounts: log out", who="anyone")},
        f"{account}/logoutAll": {"post": _operation(
            "Accounts: log out everywhere", _answer(ended={"type": "integer"}))},
        f"{account}/sessions": {"get": _operation(
            "Accounts: list login sessions", _answer(sessions={"type": "array", "items": {"type": "object"}}),
            who="admin")},
        f"{account}/endSessions": {"post": _operation(
            "Accounts: end a session, or all of an account's", _answer(ended={"type": "integer"}),
            body={"type": "object", "properties": {"id": {"type": "string"}, "username": {"type": "string"}},
                  "description": "either id or username"}, who="admin")},
        f"{account}/me": {"get": _operation(
            "Accounts: who am I", _answer(username={"type": "string"}, role={"type": "string"}))},
        f"{history}/get": {"post": _operation(
            "History: one bot user's last turns",
            _answer(serviceId=_INT32, appid={"type": "string"}, uname={"type": "string"},
                    events={"type": "array", "items": {"type": "object"}}),
            body={"type": "object", "required": ["serviceId", "appid", "uname"], "properties": {
                "serviceId": _INT32, "appid": {"type": "string"}, "uname": {"type": "string"},
                "turns": {"type": "integer", "minimum": 1}, "before": {"type": "integer", "minimum": 1},
                "account": {"type": "string", "description": "an admin may read another account's"}}})},
        f"{history}/list": {"get": _operation(
            "History: the bot users the caller has history with",
            _answer(botUsers={"type": "array", "items": {"type": "object"}}))},
        f"{cases}/list": {"get": _operation(
            "Cases: the caller's and the shared ones", _answer(cases={"type": "array", "items": _ref("CaseSummary")}))},
        f"{cases}/get": {"post": _operation("Cases: one case", _answer(case={"type": "object"}), body=by_id)},
        f"{cases}/save": {"post": _operation(
            "Cases: save a case", _answer(id=_INT32, name={"type": "string"}),
            body={"type": "object", "required": ["yaml"], "properties": {
                "yaml": {"type": "string", "description": "the case, as docs/test-cases.md describes"},
                "shared": {"type": "boolean"}, "id": _INT32}})},
        f"{cases}/delete": {"post": _operation("Cases: delete a case", body=by_id)},
        f"{cases}/download/{{case_id}}": {"get": _operation(
            "Cases: a case as a YAML file", parameters=[_path_parameter("case_id", _INT32)],
            content={"content": {"application/yaml": {"schema": {"type": "string"}}}})},
        f"{cases}/run": {"post": _operation(
            "Cases: run saved cases on a service", _answer(runId={"type": "string"}),
            body={"type": "object", "required": ["caseIds", "serviceId"], "properties": {
                "caseIds": {"type": "array", "items": _INT32, "minItems": 1}, "serviceId": _INT32,
                "against": {**_INT32, "description": "a second service, run at once to compare"}}})},
        f"{cases}/run/{{run_id}}": {"get": _operation(
            "Cases: a run's progress and results", _answer(run=_ref("Report")),
            parameters=[_path_parameter("run_id", {"type": "string"})])},
        f"{cases}/load": {"post": _operation(
            "Cases: start a load (simulated testers following a case)", _answer(loadId={"type": "string"}),
            body={"type": "object", "required": ["caseId", "serviceId", "users", "duration"], "properties": {
                "caseId": _INT32, "serviceId": _INT32, "users": {"type": "integer", "minimum": 1},
                "ramp": {"type": "integer", "minimum": 0}, "duration": {"type": "integer", "minimum": 1},
                "maxP99Ms": {"type": "integer", "minimum": 1}, "maxErrorsPercent": {"type": "integer", "minimum": 0,
                                                                                   "maximum": 100}}})},
        f"{cases}/load/{{load_id}}": {"get": _operation(
            "Cases: a load's progress and verdict", _answer(load=_ref("Report")),
            parameters=[_path_parameter("load_id", {"type": "string"})])},
        f"{cases}/loadStop": {"post": _operation(
            "Cases: stop a load", body={"type": "object", "required": ["loadId"],
                                        "properties": {"loadId": {"type": "string"}}})},
        f"{cases}/load/{{load_id}}/report.html": {"get": _operation(
            "Cases: a load's report page", parameters=[_path_parameter("load_id", {"type": "string"})],
            content={"content": {"text/html": {"schema": {"type": "string"}}}})},
        f"{PREFIX}/Health/timeline": {"get": _operation(
            "Health: every service's recent health in buckets",
            _answer(since={"type": "integer"}, until={"type": "integer"}, bucketMs={"type": "integer"},
                    services={"type": "array", "items": _ref("HealthTimeline")}), who="admin",
            parameters=[_query_parameter("hours", {"type": "integer", "minimum": 1, "maximum": 744},
                                         "how far back (24)"),
                        _query_parameter("buckets", {"type": "integer", "minimum": 1, "maximum": 500},
                                         "how many buckets (48)")])},
        f"{PREFIX}/Health/history": {"get": _operation(
            "Health: one service's outages",
            _answer(serviceId=_INT32, since={"type": "integer"}, until={"type": "integer"},
                    uptime={"type": ["number", "null"]}, p50Ms={"type": ["number", "null"]},
                    outages={"type": "array", "items": _ref("Outage")}), who="admin",
            parameters=[{**_query_parameter("serviceId", _INT32, "the service"), "required": True},
                        _query_parameter("days", {"type": "integer", "minimum": 1},
                                         "how far back (all that is kept: health_history.keep_days)")])},
        f"{PREFIX}/Audit/list": {"get": _operation(
            "Audit: who changed what in the registry, newest first",
            _answer(entries={"type": "array", "items": _ref("AuditEntry")}), who="admin",
            description="Read only: nothing in the API writes, edits or deletes the trail.",
            parameters=[_query_parameter("serviceId", _INT32, "only this service's changes"),
                        _query_parameter("kind", {"type": "string", "enum": ["service", "user", "session"]},
                                         "only changes of this kind"),
                        _query_parameter("before", {"type": "integer", "minimum": 1},
                                         "only entries older than this id (the next page)"),
                        _query_parameter("limit", {"type": "integer", "minimum": 1, "maximum": 1000},
                                         "at most this many (100)")])},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "WebTesting HTTP API",
            "version": version,
            "description": "The registry of deployed bots, accounts, conversation history and test cases "
                           "(SPEC §2). Every answer is JSON with `result` (1: success, else the HTTP status) "
                           "and `msg`. State-changing requests from a page of another origin are refused (403). "
                           "The chat itself runs over the WebSocket at /WebTesting (docs/protocol.md).",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "wt_session",
                            "description": "set by Account/login; or an API token (webtesting-account token)"},
            },
        },
    }
