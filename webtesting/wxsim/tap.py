"""
``twistd webtesting-wxsim``: the reference bot (a WxService) as a daemon.

    twistd -n webtesting-wxsim --config etc/wxsim.yaml
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.python import usage

from webtesting.config import ConfigError, listening_endpoint, load
from webtesting.wxsim.config import WxsimConfig
from webtesting.wxsim.server import make_bot_service


class Options(usage.Options):
    """Command line of ``twistd webtesting-wxsim``."""

    optParameters = [
        ["config", "c", None, "YAML configuration file (see etc/wxsim.yaml); built-in defaults when omitted."],
    ]

    def postOptions(self) -> None:
        # Every problem of the file is reported here, before anything listens.
        try:
            self["parsed"] = load(WxsimConfig, self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Any, reactor: Any = None) -> service.MultiService:
    """
    The bot's service tree: Redis Cluster store, MySQL dictionary, WebSocket
    listener. C{options} is an L{Options} (or a mapping with C{config} or an
    already loaded C{parsed} L{WxsimConfig}).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    config = options.get("parsed")
    if config is None:
        try:
            config = load(WxsimConfig, options.get("config"))
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
    endpoint = listening_endpoint(reactor, config.websocket.listen)
    return make_bot_service(config, reactor, endpoint)
