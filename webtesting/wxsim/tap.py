"""
``twistd webtesting-wxsim``: the reference bot (a WxService) as a daemon.

    twistd -n webtesting-wxsim --config etc/wxsim.yaml
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.python import usage

from webtesting.config import ConfigError, listening_endpoint, load
from webtesting.logs import LOG_FORMAT_OPTION, apply_log_format
from webtesting.wxsim.config import WxsimConfig
from webtesting.wxsim.server import make_bot_service


class Options(usage.Options):
    """Command line of ``twistd webtesting-wxsim``."""

    optParameters = [
        ["config", "c", None, "YAML configuration file (see etc/wxsim.yaml); built-in defaults if left out"],
        LOG_FORMAT_OPTION,
    ]

    def postOptions(self) -> None:
        try:
            apply_log_format(self)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        # Every problem of the file is reported here, before anything listens.
        try:
            self.config: WxsimConfig = load(WxsimConfig, self["config"])
        except ConfigError as e:
            raise usage.UsageError(f"configuration errors:\n{e}") from None

    @classmethod
    def loaded(cls, config: WxsimConfig) -> Options:
        """Options holding an already loaded configuration (for tests and embedding)."""
        options = cls()
        options.config = config
        return options


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    """The bot's service tree: WebSocket listener, Redis Cluster store, MySQL dictionary."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    config = options.config
    return make_bot_service(config, reactor, listening_endpoint(reactor, config.websocket.listen))
