"""
One login per bot user over all of an agent's workers (``workers: N``).

Each worker keeps its own holders (L{webtesting.agent.server.Holders}): who
holds a bot user through one of its links. With several workers, worker 0
also keeps the L{LoginBook}: which worker holds each (service, appid, uname).
A worker tells it of each login it starts (L{BookClient.claim}) and each it
ends (L{BookClient.release}); a newer login on another worker makes worker 0
tell the older one's worker to end it (C{evict}), as a second login on the
same worker already does; a restored login (C{restore: true}) held on
another worker is refused instead, as on one worker. Admins' C{listLogins}
asks the book.

Worker 0 reaches the book directly (L{LocalBook}); the others over their
channel (L{RemoteBook}, L{book_handlers}).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed

Key = tuple[int, str, str]  # (service id, appid, uname)


@dataclass(frozen=True)
class Entry:
    worker: int
    uuid: str
    account: str
    since: int


class LoginBook:
    """Worker 0's book; C{evict(worker, key, uuid, account)} ends login C{uuid} on another worker."""

    def __init__(self, evict: Callable[[int, Key, str, str], None]) -> None:
        self._evict = evict
        self.held: dict[Key, Entry] = {}

    def claim(self, worker: int, key: Key, uuid: str, account: str, since: int, restore: bool) -> str | None:
        """
        C{worker} starts a login: None if it may, else (only for a restored
        login) the account that holds the bot user on another worker.
        """
        current = self.held.get(key)
        if current is not None and current.worker != worker:
            if restore:
                return current.account or "someone"
            self._evict(current.worker, key, current.uuid, account)
        self.held[key] = Entry(worker, uuid, account, since)
        return None

    def release(self, worker: int, key: Key, uuid: str) -> None:
        current = self.held.get(key)
        if current is not None and (current.worker, current.uuid) == (worker, uuid):
            del self.held[key]

    def worker_gone(self, worker: int) -> None:
        """A worker died: its logins died with it."""
        for key in [k for k, e in self.held.items() if e.worker == worker]:
            del self.held[key]

    def logins(self, service_id: int) -> list[dict[str, Any]]:
        return [{"serviceId": sid, "appid": appid, "uname": uname, "account": e.account, "since": e.since}
                for (sid, appid, uname), e in sorted(self.held.items()) if sid == service_id]


class BookClient(Protocol):
    """How a worker's links use the book."""

    def claim(self, key: Key, uuid: str, account: str, since: int, restore: bool) -> Deferred[str | None]: ...

    def release(self, key: Key, uuid: str) -> None: ...

    def logins(self, service_id: int) -> Deferred[list[dict[str, Any]]]: ...


class LocalBook:
    """Worker 0's links: the book itself."""

    def __init__(self, book: LoginBook) -> None:
        self.book = book

    def claim(self, key: Key, uuid: str, account: str, since: int, restore: bool) -> Deferred[str | None]:
        return succeed(self.book.claim(0, key, uuid, account, since, restore))

    def release(self, key: Key, uuid: str) -> None:
        self.book.release(0, key, uuid)

    def logins(self, service_id: int) -> Deferred[list[dict[str, Any]]]:
        return succeed(self.book.logins(service_id))


class RemoteBook:
    """Another worker's links: the book over the channel to worker 0 (L{webtesting.workers.Channel})."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    def claim(self, key: Key, uuid: str, account: str, since: int, restore: bool) -> Deferred[str | None]:
        d: Deferred[str | None] = self.channel.call("claim", key=list(key), uuid=uuid, account=account,
                                                    since=since, restore=restore)
        return d

    def release(self, key: Key, uuid: str) -> None:
        self.channel.send("release", key=list(key), uuid=uuid)

    def logins(self, service_id: int) -> Deferred[list[dict[str, Any]]]:
        d: Deferred[list[dict[str, Any]]] = self.channel.call("logins", serviceId=service_id)
        return d


def _key(value: Any) -> Key:
    sid, appid, uname = value
    if not (isinstance(sid, int) and isinstance(appid, str) and isinstance(uname, str)):
        raise ValueError(f"not a login key: {value!r}")
    return sid, appid, uname


def book_handlers(book: LoginBook, worker_of: Callable[[Any], int]) -> dict[str, Callable[..., Any]]:
    """Worker 0's answers to the other workers (C{worker_of(channel)}: whose channel it is)."""

    def claim(channel: Any, key: Any, uuid: str, account: str, since: int, restore: bool) -> str | None:
        return book.claim(worker_of(channel), _key(key), uuid, account, since, bool(restore))

    def release(channel: Any, key: Any, uuid: str) -> None:
        book.release(worker_of(channel), _key(key), uuid)

    def logins(channel: Any, serviceId: int) -> list[dict[str, Any]]:  # noqa: N803 - the wire's name
        return book.logins(serviceId)

    return {"claim": claim, "release": release, "logins": logins}
