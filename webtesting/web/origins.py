"""
Which pages may use the API and the browser WebSocket: an exact origin check.

An origin is compared on scheme, host and port, normalised (lower case,
default port dropped), against the pages' own origin (``http.public_url``)
and ``websocket.allowed_origins``. A page on another port of the same host
is another origin, and so is ``https://`` for ``http://``. Requests without
an ``Origin`` header do not come from a browser page and are not refused
here (the session cookie still decides).

The addresses given to browsers come from the configuration too, never from
a request's Host header (L{public_urls}).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalise(origin: str) -> str | None:
    """C{scheme://host[:port]} in one spelling, or None if it is not an origin."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def origin_of(url: str) -> str | None:
    """The origin of a page URL (its path dropped)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return normalise(f"{parts.scheme}://{parts.netloc}")


class Origins:
    """The origins whose pages may act with a user's session."""

    def __init__(self, public_url: str, allowed: Iterable[str] = ()) -> None:
        own = origin_of(public_url)
        self.allowed = {o for o in (own, *(normalise(a) for a in allowed)) if o}

    def permit(self, origin: str | bytes | None) -> bool:
        if origin is None:
            return True  # not sent by a browser page
        if isinstance(origin, bytes):
            origin = origin.decode("latin-1")
        return normalise(origin) in self.allowed


def public_urls(http_listen: str, http_public: str, ws_listen: str, ws_public: str, ws_path: str) -> tuple[str, str]:
    """
    The pages' URL and the browser WebSocket's URL as browsers are told
    them: the configured ones, else built from the listen endpoints (their
    interface, or 127.0.0.1 when they listen on every interface).
    """
    from webtesting.config import listen_address

    def parts(listen: str) -> tuple[bool, str, int | None]:
        address = listen_address(listen)
        if address is None:  # not TCP: only the host can be guessed
            return False, "127.0.0.1", None
        secure, interface, port = address
        if interface in ("", "0.0.0.0", "::"):
            interface = "127.0.0.1"
        if ":" in interface:
            interface = f"[{interface}]"
        return secure, interface, port

    page = http_public.rstrip("/")
    if not page:
        secure, host, port = parts(http_listen)
        page = f"{'https' if secure else 'http'}://{host}" + (f":{port}" if port else "")
    ws = ws_public
    if not ws:
        secure, _host, port = parts(ws_listen)
        host = urlsplit(page).hostname or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        ws = f"{'wss' if secure else 'ws'}://{host}" + (f":{port}" if port else "") + ws_path
    return page, ws
