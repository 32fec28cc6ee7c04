"""
The reference bot's MySQL: the tag and topic dictionary tables its rules use,
created (with the database) and filled once the server answers.
"""

from __future__ import annotations

from typing import Any

from webtesting.dbpool import Database, mysql_connector, mysql_is_fault
from webtesting.statelayout import StateLayout
from webtesting.wxsim.bot import TAG_DICT, TOPIC_DICT
from webtesting.wxsim.config import BotMySQLConfig


def dictionary_rows() -> dict[str, list[tuple[int, str]]]:
    """The tag and topic ids the bot's rules use, with their text."""
    return {
        "tags": sorted(TAG_DICT.items()),
        "topics": sorted(TOPIC_DICT.items()),
    }


def dictionary_database(config: BotMySQLConfig, layout: StateLayout, reactor: Any) -> Database:
    """
    The bot's MySQL as a service: once reachable (retried every
    C{retry_interval} seconds until then), the database is created if
    missing, the dictionary tables too, and the rules' ids are upserted.
    """
    base = mysql_connector(
        config.host, config.port, config.user, config.password, None,
        config.connect_timeout, config.read_timeout, config.write_timeout,
    )
    database = config.database  # checked by the config: letters, digits, '_'

    def connect() -> Any:
        conn = base()
        try:
            with conn.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4")
            conn.select_db(database)
        except BaseException:
            conn.close()
            raise
        return conn

    rows = dictionary_rows()

    def prepare(cursor: Any) -> None:
        for table, items in ((layout.tag_table, rows["tags"]), (layout.topic_table, rows["topics"])):
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS `{table}` ("
                " id INT PRIMARY KEY, content VARCHAR(255) NOT NULL"
                ") DEFAULT CHARSET=utf8mb4"
            )
            cursor.executemany(
                f"INSERT INTO `{table}` (id, content) VALUES (%s, %s)"
                " ON DUPLICATE KEY UPDATE content = VALUES(content)",
                items,
            )

    return Database(
        "wxsim-dictionary", connect, reactor,
        is_fault=mysql_is_fault, threads=1, code="mysql_unreachable",
        request_timeout=config.read_timeout, retry_interval=config.retry_interval,
        prepare=prepare,
    )
