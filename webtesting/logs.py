"""
JSON-lines application logs, for log shippers (Loki, Elasticsearch, the
journal's JSON export): one JSON object per event, one per line.

    twistd --nodaemon webtesting-web --config … --log-format json
    twistd --logger webtesting.logs.json_lines --nodaemon webtesting-web --config …

The daemons' C{--log-format json} (L{LOG_FORMAT_OPTION}, L{apply_log_format})
is the second line said shorter: twistd calls L{json_lines} for its log
observer. The lines go to twistd's C{--logfile} when one is given (not
rotated), else to the file named by C{$WEBTESTING_LOG_FILE}, else to
standard output (the journal under systemd). Each object is Twisted's own
event serialisation (L{twisted.logger.eventAsJSON}): the format string, its
fields, the level, the namespace and the time.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from twisted.logger import FileLogObserver, jsonFileLogObserver

LOG_FORMAT_OPTION = ["log-format", None, "text", "the application log's format: text, or json (one JSON object "
                     "per line)"]


def apply_log_format(options: Any) -> None:
    """
    A daemon's C{--log-format}: C{json} makes twistd (the subcommand's
    parent options, read when twistd starts its logging) use L{json_lines},
    writing to its C{--logfile} if one is given. Raises L{ValueError} for
    another format than text or json.
    """
    chosen = options["log-format"]
    if chosen not in ("text", "json"):
        raise ValueError(f"--log-format: {chosen!r} is not text or json")
    parent = getattr(options, "parent", None)
    if chosen != "json" or parent is None:
        return
    parent["logger"] = "webtesting.logs.json_lines"  # twistd imports it after this, as for its own --logger
    logfile = parent.get("logfile")
    if logfile and logfile != "-":
        os.environ["WEBTESTING_LOG_FILE"] = os.path.abspath(logfile)


def json_lines() -> FileLogObserver:
    """The log observer: JSON lines on standard output or in C{$WEBTESTING_LOG_FILE}."""
    path = os.environ.get("WEBTESTING_LOG_FILE", "")
    # The file lives as long as the daemon.
    out: IO[Any] = open(path, "a", encoding="utf-8") if path else sys.stdout  # noqa: SIM115
    # No RFC 7464 record separator: plain JSON lines.
    return jsonFileLogObserver(out, recordSeparator="")
