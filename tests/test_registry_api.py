"""
The registry HTTP API (SPEC §2) over real HTTP, on real MariaDB and on SQLite.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pymysql
from twisted.trial import unittest

from tests.support import mariadb
from tests.support.http import JSONClient
from tests.support.registry import SERVICE, RunningRegistry, seed_service
from webtesting.config import MySQLConfig, RegistryConfig
from webtesting.protocol import PASSWORD_MASK

BAD_SERVICES: list[tuple[str, dict[str, Any], str]] = [
    # (what, service changes, text the msg must contain)
    ("port out of range", {"mysqlPort": 0}, "[0].mysqlPort"),
    ("port as string", {"mysqlPort": "3306"}, "[0].mysqlPort: must be an integer"),
    ("port as boolean", {"mysqlPort": True}, "[0].mysqlPort: must be an integer"),
    ("redis node port", {"redisCluster": [{"host": "h", "port": 7000}, {"host": "h", "port": 65536}]},
     "[0].redisCluster[1].port"),
    ("redis node without host", {"redisCluster": [{"port": 7000}]}, "[0].redisCluster[0].host: is required"),
    ("redis empty", {"redisCluster": []}, "[0].redisCluster: must not be empty"),
    ("redis not a list", {"redisCluster": "127.0.0.1:7000"}, "[0].redisCluster: must be an array"),
    ("redis node extra field", {"redisCluster": [{"host": "h", "port": 1, "pwd": "x"}]},
     "[0].redisCluster[0].pwd"),
    ("redis duplicate node", {"redisCluster": [{"host": "h", "port": 1}, {"host": "h", "port": 1}]},
     "[0].redisCluster[1]: duplicate"),
    ("ws address scheme", {"wxServiceAddr": "http://127.0.0.1:1443"}, "[0].wxServiceAddr"),
    ("ws address unparsable", {"agentAddr": "ws://127.0.0.1:notaport/x"}, "[0].agentAddr"),
    ("ws address too long", {"agentAddr": "ws://" + "a" * 60 + ".example/x"}, "[0].agentAddr: must be at most 64"),
    ("appid type", {"allowedAppids": ["1.00002", 3]}, "[0].allowedAppids[1]: must be a string"),
    ("appid characters", {"allowedAppids": ["1.00002", "x y"]}, "[0].allowedAppids[1]"),
    ("appids empty", {"allowedAppids": []}, "[0].allowedAppids: must not be empty"),
    ("host with spaces", {"mysqlAddr": "my host"}, "[0].mysqlAddr"),
    ("host ending in a newline", {"mysqlAddr": "localhost\n"}, "[0].mysqlAddr: must not contain whitespace"),
    ("IPv6 scope with a space", {"mysqlAddr": "fe80::1%a b"}, "[0].mysqlAddr: must not contain whitespace"),
    ("redis host with a tab", {"redisCluster": [{"host": "127.0.0.1\t", "port": 7000}]},
     "[0].redisCluster[0].host: must not contain whitespace"),
    ("ws address with a space", {"wxServiceAddr": "ws://127.0.0.1 :1443/x"},
     "[0].wxServiceAddr: must not contain whitespace"),
    ("ws address with a newline", {"agentAddr": "ws://127.0.0.2:2021/WebTesting/Agent\n"},
     "[0].agentAddr: must not contain whitespace or control characters, found '\\n'"),
    ("ws address with DEL", {"agentAddr": "ws://127.0.0.2:2021/x?\x7f"}, "[0].agentAddr: must not contain"),
    ("ws address with a zero-width space", {"wxServiceAddr": "ws://127.0.0.1:1443/\u200b"},
     "[0].wxServiceAddr: must not contain"),
    ("appid ending in a newline", {"allowedAppids": ["1.00002\n"]}, "[0].allowedAppids[0]"),
    ("dbname ending in a newline", {"mysqlDbname": "tesdb001\n"}, "[0].mysqlDbname"),
    ("description too long", {"description": "x" * 1025}, "[0].description: must be at most 1024"),
    ("description type", {"description": None}, "[0].description: must be a string, got null"),
    ("unknown field", {"colour": "red"}, "[0].colour: unknown field"),
    ("serviceId on add", {"serviceId": 3}, "[0].serviceId"),
]


class RegistryAPITestsMixin:
    """Every endpoint's success and failure cases; run once per database."""

    def registry_config(self) -> RegistryConfig:
        raise NotImplementedError

    def db_execute(self, statement: str) -> None:
        """Run a statement straight on the test's database (bypassing our code)."""
        raise NotImplementedError

    # The statements that make the database refuse a row described "boom",
    # and the error the driver raises then.
    trigger_sql: tuple[str, str]
    refused_error: type[Exception]

    async def setUp(self) -> None:
        self.running = RunningRegistry(self.registry_config())
        self.client = await self.running.start()
        self.assertTrue(self.running.registry.db.available, self.running.registry.db.reason)

    async def tearDown(self) -> None:
        await self.running.stop()

    async def call(self, method: str, endpoint: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.client.call(method, f"{SERVICE}/{endpoint}", body, **kw)

    async def add(self, *services: dict[str, Any]) -> list[int]:
        before = {s["serviceId"] for s in await self.list_all()}
        status, answer = await self.call("PUT", "addServices", list(services))
        self.assertEqual((status, answer["result"]), (200, 1), answer)
        return sorted({s["serviceId"] for s in await self.list_all()} - before)

    async def list_all(self) -> list[dict[str, Any]]:
        status, answer = await self.call("GET", "getServices")
        self.assertEqual((status, answer["result"], answer["msg"]), (200, 1, "ok"))
        return answer["servicdLists"]

    async def audit(self, query: str = "") -> list[dict[str, Any]]:
        status, answer = await self.client.call("GET", f"/WebTesting/Audit/list{query}")
        self.assertEqual((status, answer["result"]), (200, 1), answer)
        return answer["entries"]

    # -- the audit trail ----------------------------------------------------------

    async def test_audit_trail_of_service_changes(self) -> None:
        """Add, update and delete each leave who, when, from where and the fields before and after; the password
        is masked everywhere in the trail."""
        [sid] = await self.add(seed_service(mysqlPwd="first-secret"))
        status, answer = await self.call("POST", "updateServices", [seed_service(
            serviceId=sid, description="renamed", mysqlPwd="second-secret")])
        self.assertEqual(status, 200, answer)
        # Nothing changed: nothing to record.
        status, answer = await self.call("POST", "updateServices", [seed_service(
            serviceId=sid, description="renamed", mysqlPwd=PASSWORD_MASK)])
        self.assertEqual(status, 200, answer)
        await self.call("DELETE", "delServices", {"serviceIds": [sid]})
        status, answer = await self.client.call("GET", f"/WebTesting/Audit/list?serviceId={sid}")
        raw = json.dumps(answer)
        self.assertNotIn("first-secret", raw)
        self.assertNotIn("second-secret", raw)
        deleted, updated, added = answer["entries"]
        for entry in (added, updated, deleted):
            self.assertEqual((entry["actor"], entry["address"], entry["kind"], entry["target"], entry["serviceId"]),
                             ("admin", "127.0.0.1", "service", str(sid), sid))
            self.assertGreater(entry["at"], 1_700_000_000_000)
        self.assertEqual([e["action"] for e in (added, updated, deleted)],
                         ["addServices", "updateServices", "delServices"])
        self.assertIsNone(added["before"])
        self.assertEqual(set(added), {"id", "at", "actor", "address", "action", "kind", "target", "serviceId",
                                      "before", "after"})
        self.assertEqual(added["after"]["description"], seed_service()["description"])
        self.assertEqual(added["after"]["mysqlPwd"], PASSWORD_MASK)
        self.assertEqual(updated["before"], {"description": seed_service()["description"], "mysqlPwd": PASSWORD_MASK})
        self.assertEqual(updated["after"], {"description": "renamed", "mysqlPwd": PASSWORD_MASK})
        self.assertEqual(deleted["before"]["description"], "renamed")
        self.assertIsNone(deleted["after"])
        # The whole trail holds them too, with the admin's own login first.
        everything = await self.audit()
        self.assertEqual([e["action"] for e in everything][:3], ["delServices", "updateServices", "addServices"])
        self.assertEqual(everything[-1]["action"], "login")

    async def test_refused_change_leaves_no_audit_row(self) -> None:
        """A change refused as a whole (an unknown serviceId) records nothing."""
        [sid] = await self.add(seed_service())
        before = await self.audit()
        status, _answer = await self.call("POST", "updateServices", [
            seed_service(serviceId=sid, description="x"), seed_service(serviceId=sid + 100)])
        self.assertEqual(status, 404)
        status, _answer = await self.call("DELETE", "delServices", {"serviceIds": [sid, sid + 100]})
        self.assertEqual(status, 404)
        self.assertEqual(await self.audit(), before)

    async def test_audit_of_sessions(self) -> None:
        """An admin ending another account's sessions, and that account logging out, are in the trail."""
        tester = JSONClient(self.client.base)
        self.addCleanup(tester.close)
        tester.cookie = await self.running.cookie("tess", "tester")
        status, _answer = await tester.call("POST", "/WebTesting/Account/logout")
        self.assertEqual(status, 200)
        tester.cookie = await self.running.cookie("tess", "tester")
        status, answer = await self.client.call("POST", "/WebTesting/Account/endSessions", {"username": "tess"})
        self.assertEqual((status, answer["ended"]), (200, 1))
        entries = await self.audit("?kind=session&limit=4")
        self.assertEqual([(e["action"], e["actor"]) for e in entries],
                         [("endSessions", "admin"), ("login", "tess"), ("logout", "tess"), ("login", "tess")])
        self.assertEqual(entries[0]["before"], {"username": "tess"})
        self.assertEqual(entries[0]["target"], entries[1]["target"])  # the session that login opened
        paged = await self.audit(f"?kind=session&before={entries[1]['id']}&limit=2")
        self.assertEqual(paged, entries[2:4])

    async def test_audit_is_read_only_and_for_admins(self) -> None:
        """The trail has no write route, testers may not read it, and bad queries are refused by name."""
        for method in ("POST", "PUT", "DELETE"):
            status, answer = await self.client.call(method, "/WebTesting/Audit/list", {"entries": []})
            self.assertEqual((status, answer["result"]), (405, 405), method)
        for path in ("/WebTesting/Audit/add", "/WebTesting/Audit/delete"):
            status, _answer = await self.client.call("POST", path, {})
            self.assertEqual(status, 404, path)
        for query, field in (("?serviceId=x", "serviceId"), ("?limit=0", "limit"), ("?limit=1001", "limit"),
                             ("?kind=everything", "kind"), ("?before=1&before=2", "before")):
            status, answer = await self.client.call("GET", f"/WebTesting/Audit/list{query}")
            self.assertEqual(status, 400, query)
            self.assertTrue(answer["msg"].startswith(field), answer)
        tester = JSONClient(self.client.base)
        self.addCleanup(tester.close)
        tester.cookie = await self.running.cookie("tess", "tester")
        status, _answer = await tester.call("GET", "/WebTesting/Audit/list")
        self.assertEqual(status, 403)

    # -- add ------------------------------------------------------------------

    async def test_add_seed_example(self) -> None:
        """The seed's addServices example is stored and listed back field for field."""
        status, answer = await self.call("PUT", "addServices", [seed_service()])
        self.assertEqual(status, 200)
        self.assertEqual(answer, {"affectedRows": 1, "result": 1, "msg": "ok"})
        [listed] = await self.list_all()
        expected = seed_service(mysqlPwd=PASSWORD_MASK)
        for key, value in expected.items():
            self.assertEqual(listed[key], value, key)
        self.assertIsInstance(listed["serviceId"], int)
        self.assertEqual(listed["status"], 0)
        self.assertEqual(listed["msg"], "waiting for the agent link")

    async def test_add_many(self) -> None:
        """Several services are added in one request and counted in affectedRows."""
        services = [seed_service(description=f"bot {i}") for i in range(5)]
        status, answer = await self.call("PUT", "addServices", services)
        self.assertEqual((status, answer["affectedRows"]), (200, 5))
        self.assertEqual([s["description"] for s in await self.list_all()], [f"bot {i}" for i in range(5)])

    async def test_add_rejects_each_bad_field(self) -> None:
        """Each bad field is refused with 400 and a msg naming the field and its index; nothing is written."""
        for what, changes, expected in BAD_SERVICES:
            status, answer = await self.call("PUT", "addServices", [seed_service(**changes)])
            self.assertEqual(status, 400, what)
            self.assertEqual(answer["result"], 400, what)
            self.assertIn(expected, answer["msg"], what)
        self.assertEqual(await self.list_all(), [])

    async def test_add_missing_field(self) -> None:
        """A service without one of its fields is refused, naming the field."""
        service = seed_service()
        del service["mysqlDbname"]
        status, answer = await self.call("PUT", "addServices", [seed_service(), service])
        self.assertEqual(status, 400)
        self.assertEqual(answer["msg"], "[1].mysqlDbname: is required")
        self.assertEqual(await self.list_all(), [])

    async def test_add_is_all_or_nothing(self) -> None:
        """When the database refuses the second row, the first is not kept either."""
        self.db_execute(self.trigger_sql[0])
        status, answer = await self.call(
            "PUT", "addServices", [seed_service(description="fine"), seed_service(description="boom")]
        )
        self.assertEqual((status, answer), (500, {"result": 500, "msg": "internal error", "code": "internal"}))
        self.assertEqual(len(self.flushLoggedErrors(self.refused_error)), 1)
        self.assertEqual(await self.list_all(), [])

    async def test_add_body_shapes(self) -> None:
        """A body that is not a non-empty JSON array of objects is refused with a reason."""
        for body, expected in [
            ({"redisCluster": []}, "must be a JSON array"),
            ([], "at least one service"),
            (["x"], "[0]: must be an object"),
        ]:
            status, answer = await self.call("PUT", "addServices", body)
            self.assertEqual(status, 400)
            self.assertIn(expected, answer["msg"])

    # -- delete ---------------------------------------------------------------

    async def test_delete(self) -> None:
        """Deleting existing ids removes exactly those services."""
        ids = await self.add(seed_service(), seed_service(), seed_service())
        status, answer = await self.call("DELETE", "delServices", {"serviceIds": ids[:2]})
        self.assertEqual((status, answer), (200, {"affectedRows": 2, "result": 1, "msg": "ok"}))
        self.assertEqual([s["serviceId"] for s in await self.list_all()], ids[2:])

    async def test_delete_unknown_ids(self) -> None:
        """Deleting ids that don't exist deletes nothing and names the missing ids."""
        ids = await self.add(seed_service())
        status, answer = await self.call("DELETE", "delServices", {"serviceIds": [ids[0], 9999, 8888]})
        self.assertEqual(status, 404)
        self.assertEqual(answer["affectedRows"], 0)
        self.assertIn("8888, 9999", answer["msg"])
        self.assertEqual(len(await self.list_all()), 1)

    async def test_delete_bad_bodies(self) -> None:
        """Malformed delete bodies are refused naming the field."""
        for body, expected in [
            ({}, "serviceIds: is required"),
            ({"serviceIds": []}, "serviceIds: must not be empty"),
            ({"serviceIds": [1, "2"]}, "serviceIds[1]: must be an integer"),
            ({"serviceIds": [1], "x": 1}, "x: unknown field"),
            ([1, 2], "must be an object"),
        ]:
            status, answer = await self.call("DELETE", "delServices", body)
            self.assertEqual((status, answer["result"]), (400, 400), body)
            self.assertIn(expected, answer["msg"])

    # -- update ---------------------------------------------------------------

    async def test_update(self) -> None:
        """An update changes the fields it names and leaves the others."""
        [sid] = await self.add(seed_service())
        status, answer = await self.call(
            "POST", "updateServices",
            [{"serviceId": sid, "description": "新的描述", "allowedAppids": ["2.00001"], "mysqlPort": 3307,
              "mysqlPwd": "root"}],  # moving to another port needs the password again
        )
        self.assertEqual((status, answer["result"], answer["msg"]), (200, 1, "ok"))
        [listed] = await self.list_all()
        self.assertEqual(listed["description"], "新的描述")
        self.assertEqual(listed["allowedAppids"], ["2.00001"])
        self.assertEqual(listed["mysqlPort"], 3307)
        self.assertEqual(listed["redisCluster"], seed_service()["redisCluster"])

    async def test_update_seed_example(self) -> None:
        """The seed's updateServices example (a whole service object) is accepted."""
        [sid] = await self.add(seed_service())
        status, answer = await self.call(
            "POST", "updateServices", [seed_service(serviceId=sid, description="changed")]
        )
        self.assertEqual((status, answer["result"]), (200, 1))
        self.assertEqual((await self.list_all())[0]["description"], "changed")

    async def test_masked_password_is_kept(self) -> None:
        """Sending back the masked password keeps the stored one; a new one replaces it."""
        [sid] = await self.add(seed_service(mysqlPwd="s3cret"))
        [listed] = await self.list_all()
        self.assertEqual(listed["mysqlPwd"], PASSWORD_MASK)
        listed["description"] = "edited"
        status, _ = await self.call("POST", "updateServices", [listed])  # status/msg/code ride along
        self.assertEqual(status, 200)
        [stored] = await self.running.registry.list_services()
        self.assertEqual((stored["mysqlPwd"], stored["description"]), ("s3cret", "edited"))
        await self.call("POST", "updateServices", [{"serviceId": sid, "mysqlPwd": "n3w"}])
        [stored] = await self.running.registry.list_services()
        self.assertEqual(stored["mysqlPwd"], "n3w")

    async def test_moving_mysql_needs_the_password_again(self) -> None:
        """Moving a service to another MySQL server without retyping the password is refused; nothing changes."""
        [sid] = await self.add(seed_service(mysqlPwd="s3cret"))
        for change in ({"mysqlAddr": "127.0.0.9"}, {"mysqlAddr": "127.0.0.9", "mysqlPwd": PASSWORD_MASK},
                       {"mysqlPort": 3307, "description": "x"}):
            status, answer = await self.call("POST", "updateServices", [{"serviceId": sid, **change}])
            self.assertEqual(status, 400, change)
            self.assertIn("[0].mysqlPwd: retype the password", answer["msg"])
        [stored] = await self.running.registry.list_services()
        self.assertEqual((stored["mysqlAddr"], stored["mysqlPort"], stored["description"]),
                         ("127.0.0.1", 3306, seed_service()["description"]))
        status, _ = await self.call("POST", "updateServices",
                                    [{"serviceId": sid, "mysqlAddr": "127.0.0.9", "mysqlPwd": "n3w"}])
        self.assertEqual(status, 200)

    async def test_moving_agent_or_bot_needs_the_password_again(self) -> None:
        """
        Pointing a service at another agent or WxService without retyping the
        password is refused: the agent is sent the password, so an admin who
        points agentAddr at their own listener must already know it.
        """
        [sid] = await self.add(seed_service(mysqlPwd="s3cret"))
        for change in ({"agentAddr": "ws://127.0.0.1:9999/x"},
                       {"agentAddr": "ws://127.0.0.1:9999/x", "mysqlPwd": PASSWORD_MASK},
                       {"wxServiceAddr": "ws://127.0.0.1:9998/5.00034", "description": "x"}):
            status, answer = await self.call("POST", "updateServices", [{"serviceId": sid, **change}])
            self.assertEqual(status, 400, change)
            self.assertIn("[0].mysqlPwd: retype the password", answer["msg"])
        [stored] = await self.running.registry.list_services()
        self.assertEqual((stored["agentAddr"], stored["wxServiceAddr"], stored["mysqlPwd"]),
                         (seed_service()["agentAddr"], seed_service()["wxServiceAddr"], "s3cret"))
        status, _ = await self.call("POST", "updateServices",
                                    [{"serviceId": sid, "agentAddr": "ws://127.0.0.1:9999/x", "mysqlPwd": "n3w"}])
        self.assertEqual(status, 200)
        [stored] = await self.running.registry.list_services()
        self.assertEqual((stored["agentAddr"], stored["mysqlPwd"]), ("ws://127.0.0.1:9999/x", "n3w"))

    async def test_update_unknown_ids(self) -> None:
        """An update naming an unknown id changes nothing, not even the known ids."""
        [sid] = await self.add(seed_service())
        status, answer = await self.call(
            "POST", "updateServices",
            [{"serviceId": sid, "description": "changed"}, {"serviceId": 4242, "description": "x"}],
        )
        self.assertEqual(status, 404)
        self.assertIn("4242", answer["msg"])
        self.assertEqual((await self.list_all())[0]["description"], seed_service()["description"])

    async def test_update_is_all_or_nothing(self) -> None:
        """When the database refuses the second update, the first is rolled back."""
        a, b = await self.add(seed_service(), seed_service())
        self.db_execute(self.trigger_sql[1])
        status, answer = await self.call(
            "POST", "updateServices",
            [{"serviceId": a, "description": "changed"}, {"serviceId": b, "description": "boom"}],
        )
        self.assertEqual(status, 500)
        self.assertEqual(len(self.flushLoggedErrors(self.refused_error)), 1)
        self.assertEqual([s["description"] for s in await self.list_all()], [seed_service()["description"]] * 2)

    async def test_update_bad_input(self) -> None:
        """Update bodies with missing ids, bad fields or duplicates are refused naming the element."""
        [sid] = await self.add(seed_service())
        for body, expected in [
            ([{"description": "x"}], "[0].serviceId: is required"),
            ([{"serviceId": sid}], "[0]: names no field to change"),
            ([{"serviceId": sid, "mysqlPort": 99999}], "[0].mysqlPort"),
            ([{"serviceId": sid, "description": "a"}, {"serviceId": sid, "description": "b"}],
             "[1].serviceId"),
            ([{"serviceId": "1", "description": "a"}], "[0].serviceId: must be an integer"),
        ]:
            status, answer = await self.call("POST", "updateServices", body)
            self.assertEqual(status, 400, body)
            self.assertIn(expected, answer["msg"])
        self.assertEqual((await self.list_all())[0]["description"], seed_service()["description"])

    # -- lists ----------------------------------------------------------------

    async def test_service_list_for_testers(self) -> None:
        """getServiceList gives wsAddr and, per service, only what a tester needs: no address, no credential."""
        await self.add(seed_service(mysqlPwd="s3cret-pw"))
        status, answer = await self.call("GET", "getServiceList")
        self.assertEqual((status, answer["result"], answer["msg"]), (200, 1, "ok"))
        self.assertEqual(answer["wsAddr"], "ws://127.0.0.1:2999/WebTesting")
        [service] = answer["serviceLists"]
        self.assertEqual(
            sorted(service), ["allowStateWrites", "allowedAppids", "code", "description", "msg", "serviceId", "status"]
        )
        self.assertIs(service["allowStateWrites"], False)  # off unless an admin turns it on
        self.assertEqual((service["status"], service["code"]), (0, "unavailable"))  # no agent link here
        text = json.dumps(answer)
        for secret in ("s3cret-pw", "127.0.0.2", "1443", "2021", "tesdb001"):
            self.assertNotIn(secret, text)

    async def test_reasons_shown_to_testers_are_scrubbed(self) -> None:
        """A down reason reaches testers as its code's sentence only (no hosts, user, or errno words); admins see it
        whole."""
        [sid] = await self.add(seed_service(mysqlUser="botuser"))
        reason = ("bot MySQL unreachable: Access denied for user 'botuser'@'127.0.0.1' (1045); "
                  "Redis Cluster unreachable: 127.0.0.2:7000 refused")
        await self.running.registry.set_status(sid, 0, reason)
        self.running.client.cookie = await self.running.cookie("t", "tester")
        _, answer = await self.call("GET", "getServiceList")
        [entry] = answer["serviceLists"]
        for hidden in ("botuser", "127.0.0.1", "127.0.0.2", "7000", "Access denied", "refused"):
            self.assertNotIn(hidden, entry["msg"])
        # Only that it is unreachable, and the code (no link here: the status alone tells "unavailable").
        self.assertEqual((entry["msg"], entry["code"]), ("the service is unreachable", "unavailable"))
        self.running.client.cookie = await self.running.cookie("a", "admin")
        self.assertEqual((await self.list_all())[0]["msg"], reason)

    async def test_empty_password_is_shown_empty(self) -> None:
        """A service without a MySQL password shows an empty password, not the mask."""
        await self.add(seed_service(mysqlPwd=""))
        self.assertEqual((await self.list_all())[0]["mysqlPwd"], "")

    async def test_status_written_by_the_server_is_listed(self) -> None:
        """status/msg recorded by the web server show in both lists; sent in an update they are ignored."""
        [sid] = await self.add(seed_service())
        self.assertTrue(await self.running.registry.set_status(sid, 1, "ok"))
        await self.call("POST", "updateServices", [{"serviceId": sid, "status": 0, "msg": "x", "description": "d"}])
        _, answer = await self.call("GET", "getServiceList")
        self.assertEqual((answer["serviceLists"][0]["status"], answer["serviceLists"][0]["msg"]), (1, "ok"))
        self.assertFalse(await self.running.registry.set_status(sid + 1000, 0, "gone"))

    # -- transport-level errors ---------------------------------------------

    async def test_not_json(self) -> None:
        """A body that is not JSON is refused with 400 and a reason."""
        status, answer = await self.call("PUT", "addServices", raw=b"[{")
        self.assertEqual((status, answer["result"]), (400, 400))
        self.assertIn("not valid JSON", answer["msg"])
        status, answer = await self.call("PUT", "addServices", raw=b"\xff\xfe")
        self.assertIn("not UTF-8", answer["msg"])

    async def test_wrong_content_type(self) -> None:
        """A body sent as anything but UTF-8 application/json, multipart and forms included, gets the JSON 415."""
        multipart = (b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n[]\r\n--XyZ--\r\n")
        for method, endpoint, raw, content_type in [
            ("PUT", "addServices", b"[]", "text/plain"),
            ("PUT", "addServices", b"[]", None),
            ("PUT", "addServices", b"[]", "application/json; charset=latin-1"),
            ("POST", "updateServices", multipart, "multipart/form-data; boundary=XyZ"),
            ("POST", "updateServices", b"--nothing like multipart", "multipart/form-data; boundary=XyZ"),
            ("POST", "updateServices", b"--XyZ\r\n\xff\xfe\r\n--XyZ--", "multipart/form-data; boundary=\"XyZ\""),
            ("POST", "updateServices", b"a=1&b=%ff", "application/x-www-form-urlencoded"),
            ("DELETE", "delServices", multipart, "multipart/form-data"),
        ]:
            status, answer = await self.call(method, endpoint, raw=raw, content_type=content_type)
            self.assertEqual((status, answer["result"]), (415, 415), (endpoint, content_type))
        login = "/WebTesting/Account/login"
        status, answer = await self.client.call("POST", login, raw=multipart, content_type="multipart/form-data")
        self.assertEqual((status, answer["result"]), (415, 415))
        for content_type in ("application/json; charset=UTF-8", 'application/json; charset="utf-8"',
                             "Application/JSON; foo=bar"):
            status, answer = await self.call("PUT", "addServices", raw=b"[]", content_type=content_type)
            self.assertEqual((status, answer["msg"]), (400, "the body must list at least one service"))

    async def test_lone_surrogates(self) -> None:
        """A string with a lone surrogate escape is refused with 400 naming the field; nothing is written."""
        for body, where in [
            ([seed_service(description="bot \ud800")], "[0].description: "),
            ([seed_service(), seed_service(mysqlUser="\udfff")], "[1].mysqlUser: "),
            ([seed_service(redisCluster=[{"host": "127.0.0.1", "port": 7000, "\ud800": 1}])], "[0].redisCluster[0]: "),
        ]:
            status, answer = await self.call("PUT", "addServices", body)  # json.dumps writes "\ud800"
            self.assertEqual((status, answer["result"]), (400, 400), body)
            self.assertTrue(answer["msg"].startswith(where), answer["msg"])
        status, answer = await self.client.call("POST", "/WebTesting/Account/login",
                                                {"username": "ann", "password": "pass \udc00 word"})
        self.assertEqual((status, answer["msg"][:10]), (400, "password: "))
        self.assertEqual(await self.list_all(), [])

    async def test_body_too_large(self) -> None:
        """A body over the configured size is refused with 413 and nothing is written."""
        await self.running.stop()
        self.running = RunningRegistry(self.registry_config(), max_body=2048)
        self.client = await self.running.start()
        services = [seed_service(description="x" * 1000) for _ in range(3)]
        status, answer = await self.call("PUT", "addServices", services)
        self.assertEqual((status, answer["result"]), (413, 413))
        self.assertIn("2048 bytes", answer["msg"])
        self.assertEqual(await self.list_all(), [])

    async def test_wrong_method(self) -> None:
        """A known path with the wrong method answers 405 in JSON, naming the allowed method."""
        status, answer = await self.call("GET", "addServices")
        self.assertEqual((status, answer["result"]), (405, 405))
        self.assertIn("PUT", answer["msg"])

    async def test_unknown_path(self) -> None:
        """An unknown API path answers 404 in JSON."""
        status, answer = await self.call("GET", "nothingHere")
        self.assertEqual((status, answer["result"]), (404, 404))


class SQLiteRegistryAPITests(RegistryAPITestsMixin, unittest.TestCase):
    refused_error = sqlite3.IntegrityError
    trigger_sql = (
        "CREATE TRIGGER boom BEFORE INSERT ON tb_service_info WHEN NEW.description = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'boom'); END",
        "CREATE TRIGGER boom2 BEFORE UPDATE ON tb_service_info WHEN NEW.description = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'boom'); END",
    )

    def registry_config(self) -> RegistryConfig:
        if not hasattr(self, "_path"):
            self._path = self.mktemp() + "/registry.sqlite3"
        return RegistryConfig(sqlite_path=self._path)

    def db_execute(self, statement: str) -> None:
        with sqlite3.connect(self._path) as conn:
            conn.execute(statement)


class MariaDBRegistryAPITests(RegistryAPITestsMixin, unittest.TestCase):
    refused_error = pymysql.err.OperationalError
    trigger_sql = (
        "CREATE TRIGGER boom BEFORE INSERT ON tb_service_info FOR EACH ROW "
        "IF NEW.description = 'boom' THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'boom'; END IF",
        "CREATE TRIGGER boom2 BEFORE UPDATE ON tb_service_info FOR EACH ROW "
        "IF NEW.description = 'boom' THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'boom'; END IF",
    )

    def registry_config(self) -> RegistryConfig:
        if not hasattr(self, "_database"):
            self._database = mariadb.temporary_database(self)
        return RegistryConfig(
            mysql=MySQLConfig(host=mariadb.HOST, port=mariadb.PORT, user=mariadb.USER,
                              password=mariadb.PASSWORD, database=self._database)
        )

    def db_execute(self, statement: str) -> None:
        mariadb.execute(self._database, statement)
