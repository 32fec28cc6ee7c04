"""
JSON-lines application logs, for log shippers (Loki, Elasticsearch, the
journal's JSON export): one JSON object per event, one per line.

    twistd --logger webtesting.logs.json_lines --nodaemon webtesting-web --config …

twistd calls L{json_lines} for its log observer (C{--logger} takes precedence
over C{--logfile}). The lines go to standard output (the journal under
systemd), or to the file named by C{$WEBTESTING_LOG_FILE}. Each object is
Twisted's own event serialisation (L{twisted.logger.eventAsJSON}): the
format string, its fields, the level, the namespace and the time.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from twisted.logger import FileLogObserver, jsonFileLogObserver


def json_lines() -> FileLogObserver:
    """The log observer: JSON lines on standard output or in C{$WEBTESTING_LOG_FILE}."""
    path = os.environ.get("WEBTESTING_LOG_FILE", "")
    # The file lives as long as the daemon.
    out: IO[Any] = open(path, "a", encoding="utf-8") if path else sys.stdout  # noqa: SIM115
    # No RFC 7464 record separator: plain JSON lines.
    return jsonFileLogObserver(out, recordSeparator="")
