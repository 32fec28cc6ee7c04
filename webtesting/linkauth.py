"""
Authentication of the web server ⇄ agent link (docs/protocol.md §4): a
challenge–response in the first frames, so the shared secret never crosses
the wire and nothing a listener sees can be replayed.

After the WebSocket opens::

    agent → web   {"method":"authChallenge","version":1,"nonce":SN}
    web → agent   {"method":"authReq","serviceId":S,"nonce":CN,"proof":proof("web")}
    agent → web   {"method":"authResp","result":1,"msg":"ok","proof":proof("agent")}

    K = HMAC-SHA256(secret, "webtesting agent link key v1")
    proof(role) = base64url(HMAC-SHA256(K, "webtesting-agent-link/1\\n{role}\\n{S}\\n{SN}\\n{CN}"))

Both nonces are fresh (32 random bytes), so a proof is good for one link
only; it names the service, so a link is bound to one service; it names the
side, so one side's proof is never the other's. The agent proves itself only
after the web has (no oracle for a stranger who connects to the agent), and
the web sends the service's settings only after the agent has (a listener at
a wrong address learns nothing but the web's proof for its own nonce).

Either side that is not satisfied closes the link with L{CLOSE_CODE}.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Any

VERSION = 1
CLOSE_CODE = 4401
CLOSE_REASON = "authentication failed"
NONCE_BYTES = 32
# How long the agent waits for authReq, and the web for the agent's proof.
DEADLINE = 10.0

_KEY_LABEL = b"webtesting agent link key v1"
_NONCE_LEN = len(base64.urlsafe_b64encode(bytes(NONCE_BYTES)).rstrip(b"="))


class AuthFailed(Exception):
    """The peer's authentication frame is missing, malformed or wrong (the reason is for logs only)."""


def link_key(secret: str) -> bytes:
    return hmac.new(secret.encode("utf-8"), _KEY_LABEL, hashlib.sha256).digest()


def new_nonce() -> str:
    return base64.urlsafe_b64encode(os.urandom(NONCE_BYTES)).rstrip(b"=").decode("ascii")


def proof(key: bytes, role: str, service_id: int, agent_nonce: str, web_nonce: str) -> str:
    message = f"webtesting-agent-link/{VERSION}\n{role}\n{service_id}\n{agent_nonce}\n{web_nonce}"
    digest = hmac.new(key, message.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _nonce(value: Any) -> str:
    if not isinstance(value, str) or len(value) != _NONCE_LEN or not value.isascii():
        raise AuthFailed("a malformed nonce")
    return value


def _service_id(value: Any) -> int:
    if type(value) is not int or not 1 <= value < 2**31:
        raise AuthFailed("a malformed serviceId")
    return value


def _check(expected: str, got: Any) -> None:
    if not isinstance(got, str) or not hmac.compare_digest(expected.encode("ascii"), got.encode("utf-8", "replace")):
        raise AuthFailed("a wrong proof")


def challenge(agent_nonce: str) -> dict[str, Any]:
    return {"method": "authChallenge", "version": VERSION, "nonce": agent_nonce}


class AgentSide:
    """The agent's half: it challenges, then checks the web's answer."""

    def __init__(self, secret: str) -> None:
        self._key = link_key(secret)
        self.nonce = new_nonce()

    def challenge(self) -> dict[str, Any]:
        return challenge(self.nonce)

    def answer(self, message: Any) -> tuple[int, dict[str, Any]]:
        """
        Check the web's C{authReq}: the service id the link is bound to, and
        the C{authResp} that proves the agent in turn. L{AuthFailed} if wrong.
        """
        if not isinstance(message, dict) or message.get("method") != "authReq":
            raise AuthFailed("the first frame was not authReq")
        service_id = _service_id(message.get("serviceId"))
        web_nonce = _nonce(message.get("nonce"))
        _check(proof(self._key, "web", service_id, self.nonce, web_nonce), message.get("proof"))
        return service_id, {
            "method": "authResp", "result": 1, "msg": "ok",
            "proof": proof(self._key, "agent", service_id, self.nonce, web_nonce),
        }


class WebSide:
    """The web server's half, for one link to one service."""

    def __init__(self, secret: str, service_id: int) -> None:
        self._key = link_key(secret)
        self.service_id = service_id
        self.nonce = new_nonce()
        self._agent_nonce: str | None = None

    def answer(self, message: Any) -> dict[str, Any]:
        """The C{authReq} for the agent's C{authChallenge}; L{AuthFailed} if it is not one."""
        if not isinstance(message, dict) or message.get("method") != "authChallenge" or self._agent_nonce:
            raise AuthFailed("the agent did not open with authChallenge")
        if message.get("version") != VERSION:
            raise AuthFailed(f"the agent speaks link authentication version {message.get('version')!r}")
        self._agent_nonce = _nonce(message.get("nonce"))
        return {
            "method": "authReq", "serviceId": self.service_id, "nonce": self.nonce,
            "proof": proof(self._key, "web", self.service_id, self._agent_nonce, self.nonce),
        }

    def verify(self, message: Any) -> None:
        """Check the agent's C{authResp}; L{AuthFailed} if it does not prove the agent."""
        if self._agent_nonce is None:
            raise AuthFailed("authResp before authChallenge")
        if not isinstance(message, dict) or message.get("method") != "authResp" or message.get("result") != 1:
            raise AuthFailed("the agent refused the link")
        _check(proof(self._key, "agent", self.service_id, self._agent_nonce, self.nonce), message.get("proof"))
