"""
A user's given state (webtesting.givenstate): its checks, the Redis commands
it turns into (run against a real Redis Cluster and read back by the agent's
own reader), and the registry's allowStateWrites column, added to a registry
made before it existed (SQLite and MariaDB).
"""

from __future__ import annotations

import sqlite3

from twisted.internet import reactor
from twisted.trial import unittest

from tests.support import mariadb
from tests.support.rediscluster import start_cluster
from tests.support.registry import seed_service
from webtesting import rediscluster
from webtesting.config import MySQLConfig, RegistryConfig
from webtesting.givenstate import check_given, commands, describe
from webtesting.protocol import InvalidInput, validate_service
from webtesting.statelayout import StateLayout
from webtesting.web.registry import open_registry

NOW = 1_700_000_000_000


class CheckTests(unittest.TestCase):
    def test_a_full_given(self) -> None:
        given = check_given({"reset": True, "tags": [3, {"id": 4, "isInUse": False}], "topic": {"cur": 10},
                             "topics": [10, 9], "memory": {"name": "Alice"}})
        self.assertEqual(given["tags"], [{"id": 3}, {"id": 4, "isInUse": False}])
        self.assertEqual(describe(given), "reset, tags [3, 4], topic {'cur': 10}, topics [10, 9], memory keys ['name']")

    def test_errors_name_the_part(self) -> None:
        for raw, where in (
            ({}, "names nothing"),
            ({"mood": 1}, "given.mood"),
            ({"reset": "yes"}, "given.reset"),
            ({"tags": ["x"]}, "given.tags[0]"),
            ({"tags": [{"id": 1, "colour": 2}]}, "given.tags[0].colour"),
            ({"topic": {"next": 1}}, "given.topic.next"),
            ({"topics": [-1]}, "given.topics[0]"),
            ({"memory": {"name": 5}}, "given.memory.name"),
            ({"memory": {str(i): "x" for i in range(101)}}, "at most 100"),
            ([1], "must be an object"),
        ):
            with self.assertRaises(InvalidInput, msg=repr(raw)) as refused:
                check_given(raw)
            self.assertIn(where, str(refused.exception))

    def test_the_registry_field_is_optional_and_boolean(self) -> None:
        service = seed_service()
        self.assertIs(validate_service(service, "", with_id=False)["allowStateWrites"], False)
        self.assertIs(validate_service({**service, "allowStateWrites": True}, "", with_id=False)["allowStateWrites"],
                      True)
        with self.assertRaises(InvalidInput) as refused:
            validate_service({**service, "allowStateWrites": 1}, "[0]", with_id=False)
        self.assertIn("[0].allowStateWrites: must be true or false", str(refused.exception))


class RedisTests(unittest.TestCase):
    timeout = 60

    async def test_written_in_the_layout_the_agent_reads(self) -> None:
        """reset deletes what was there; tags, topics and memory land where the agent's reader finds them."""
        from webtesting.agent.snapshot import parse_state

        cluster_nodes = start_cluster(self)
        cluster = await rediscluster.connect(reactor, cluster_nodes.nodes)
        self.addCleanup(cluster.disconnect)
        layout = StateLayout()
        tags, _topic, _topics, memory = layout.keys("1.00002", "42")
        await cluster.pipeline([["HSET", memory, "city", "Paris"], ["HSET", tags, "99", "{}"]])
        given = check_given({"reset": True, "tags": [3, {"id": 4, "isInUse": False}],
                             "topic": {"cur": 10, "prev": 9}, "topics": [10, 9], "memory": {"name": "Alice"}})
        results = await cluster.pipeline(commands(layout, "1.00002", "42", given, NOW))
        self.assertFalse([r for r in results if isinstance(r, Exception)])

        replies = await cluster.pipeline([["HGETALL", key] for key in layout.keys("1.00002", "42")])
        state = parse_state(*replies)  # as the agent's reader parses what it reads
        self.assertEqual(state.problems, ())
        self.assertEqual(sorted(state.tags), [3, 4])
        self.assertEqual((state.tags[3].in_use, state.tags[4].in_use, state.tags[3].begin), (True, False, NOW))
        self.assertEqual((state.cur_topic, state.prev_topic, sorted(state.topics)), (10, 9, [9, 10]))
        self.assertEqual(dict(state.memory), {"name": "Alice"})


class MigrationMixin:
    def registry_config(self) -> RegistryConfig:
        raise NotImplementedError

    def make_old_table(self) -> None:
        raise NotImplementedError

    async def test_column_added_to_an_old_registry(self) -> None:
        """A registry made before allowStateWrites existed gets the column, off for its services."""
        self.make_old_table()
        registry = open_registry(self.registry_config(), reactor)
        registry.db.startService()
        self.addCleanup(registry.db.stopService)  # type: ignore[attr-defined]
        self.assertTrue(await registry.db.ready())
        [service] = await registry.list_services()
        self.assertIs(service["allowStateWrites"], False)
        await registry.update_services([{"serviceId": service["serviceId"], "allowStateWrites": True}])
        [service] = await registry.list_services()
        self.assertIs(service["allowStateWrites"], True)


OLD_COLUMNS = ("redisCluster, mysqlAddr, mysqlPort, mysqlUser, mysqlPwd, mysqlDbname, wxServiceAddr, agentAddr, "
               "allowedAppids, description")
OLD_ROW = ('[{"host":"127.0.0.2","port":7000}]', "127.0.0.1", 3306, "root", "", "db", "ws://127.0.0.1:1",
           "ws://127.0.0.2:2021/WebTesting/Agent", '["1.00002"]', "old")


class SQLiteMigrationTests(MigrationMixin, unittest.TestCase):
    def registry_config(self) -> RegistryConfig:
        if not hasattr(self, "_path"):
            self._path = self.mktemp() + ".sqlite3"
        return RegistryConfig(sqlite_path=self._path)

    def make_old_table(self) -> None:
        with sqlite3.connect(self.registry_config().sqlite_path) as conn:
            conn.execute("CREATE TABLE tb_service_info (id INTEGER PRIMARY KEY AUTOINCREMENT, redisCluster TEXT, "
                         "mysqlAddr TEXT, mysqlPort INTEGER DEFAULT 3306, mysqlUser TEXT, mysqlPwd TEXT, "
                         "mysqlDbname TEXT, wxServiceAddr TEXT, agentAddr TEXT, allowedAppids TEXT, description TEXT, "
                         "status INTEGER DEFAULT 1, msg TEXT DEFAULT 'ok')")
            conn.execute(f"INSERT INTO tb_service_info ({OLD_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", OLD_ROW)


class MariaDBMigrationTests(MigrationMixin, unittest.TestCase):
    def registry_config(self) -> RegistryConfig:
        if not hasattr(self, "_database"):
            self._database = mariadb.temporary_database(self)
        return RegistryConfig(mysql=MySQLConfig(host=mariadb.HOST, port=mariadb.PORT, user=mariadb.USER,
                                                password=mariadb.PASSWORD, database=self._database))

    def make_old_table(self) -> None:
        database = self.registry_config().mysql.database  # type: ignore[union-attr]
        mariadb.execute(database, "CREATE TABLE tb_service_info (id int(11) NOT NULL AUTO_INCREMENT, "
                                  "redisCluster varchar(1024), mysqlAddr varchar(64), mysqlPort int(11) DEFAULT 3306, "
                                  "mysqlUser varchar(64), mysqlPwd varchar(64), mysqlDbname varchar(64), "
                                  "wxServiceAddr varchar(64), agentAddr varchar(64), allowedAppids varchar(1024), "
                                  "description varchar(1024), status int(11) DEFAULT 1, msg varchar(256) DEFAULT 'ok', "
                                  "PRIMARY KEY (id))")
        mariadb.execute(database, f"INSERT INTO tb_service_info ({OLD_COLUMNS}) VALUES "
                                  "(%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)", OLD_ROW)
