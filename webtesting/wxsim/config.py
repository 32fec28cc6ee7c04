"""
The reference bot's configuration (etc/wxsim.yaml), loaded with
L{webtesting.config.load}.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from webtesting.config import MySQLConfig, endpoint_field, number_field
from webtesting.statelayout import StateLayout
from webtesting.wxsim.bot import BotSettings


def _check_key_template(value: str) -> str | None:
    if "{appid}" not in value:
        return f"must contain {{appid}}, got {value!r}"
    try:
        value.format(appid="x")
    except (ValueError, KeyError, IndexError) as e:
        return f"is not a valid template ({e}); write literal braces doubled"
    return None


def _check_database(value: str) -> str | None:
    import re

    if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", value):
        return f"must be 1-64 letters, digits or '_', got {value!r}"
    return None


@dataclass(frozen=True)
class RedisNodeConfig:
    """One master node of the bot's Redis Cluster."""

    host: str = "127.0.0.1"
    port: int = number_field(7000, 1, 65535)


def _default_nodes() -> list[RedisNodeConfig]:
    return [RedisNodeConfig("127.0.0.1", p) for p in (7000, 7001, 7002)]


@dataclass(frozen=True)
class RedisConfig:
    """The bot's Redis Cluster, where it writes user state."""

    nodes: list[RedisNodeConfig] = field(default_factory=_default_nodes)
    # Deadline of one command or pipeline, and of connecting.
    timeout: float = number_field(2.0, 0.05, 60)
    # How long to wait before trying again when the cluster cannot be reached.
    retry_interval: float = number_field(2.0, 0.05, 3600)
    # uid allocation: a counter, and one hash per appid: uname -> uid.
    uid_counter_key: str = "wxsim:uid-counter"
    uid_map_key: str = field(default="wxsim:{{{appid}}}:uids", metadata={"check": _check_key_template})


@dataclass(frozen=True, repr=False)
class BotMySQLConfig(MySQLConfig):
    """The bot's MySQL, where it keeps the tag/topic dictionary tables."""

    database: str = field(default="wxsim", metadata={"check": _check_database})
    # Seconds between attempts while MySQL cannot be reached.
    retry_interval: float = number_field(5.0, 0.05, 3600)


@dataclass(frozen=True)
class WebSocketConfig:
    """Where the bot listens and how big a message may be."""

    listen: str = endpoint_field("tcp:1443")
    # A larger text message gets a 413 error answer; one over 16 times this is
    # refused by the WebSocket layer, which closes the connection (1009).
    max_message_bytes: int = number_field(64 * 1024, 256, 16 * 1024 * 1024)
    # Longest chat content, in characters.
    max_content_chars: int = number_field(2000, 1, 1_000_000)
    open_handshake_timeout: float = number_field(5.0, 0.1, 600)
    close_handshake_timeout: float = number_field(1.0, 0.1, 600)


@dataclass(frozen=True)
class BotConfig:
    """Timing of the bot's rules, in seconds (see webtesting/wxsim/bot.py)."""

    followup_delay: float = number_field(2.0, 0, 3600)
    tag_ttl: float = number_field(120.0, 0.001, 365 * 86400)
    topic_ttl: float = number_field(600.0, 0.001, 365 * 86400)
    max_topics: int = number_field(5, 1, 1000)

    def settings(self) -> BotSettings:
        return BotSettings(
            tag_ttl=self.tag_ttl,
            topic_ttl=self.topic_ttl,
            max_topics=self.max_topics,
            followup_delay=self.followup_delay,
        )


@dataclass(frozen=True)
class WxsimConfig:
    """Everything ``twistd webtesting-wxsim`` reads; see etc/wxsim.yaml."""

    websocket: WebSocketConfig = WebSocketConfig()
    redis: RedisConfig = RedisConfig()
    mysql: BotMySQLConfig = BotMySQLConfig()
    state: StateLayout = StateLayout()
    bot: BotConfig = BotConfig()
