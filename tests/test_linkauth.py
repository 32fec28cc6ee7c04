"""
The web server ⇄ agent link's authentication (webtesting.linkauth), over
real loopback WebSockets: a rogue listener set as a service's agentAddr
learns nothing it can use, the real agent refuses whatever it replays, a
link is bound to its service, and a wss:// link trusts only the pinned
certificate.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor, ssl
from twisted.trial import unittest

from tests.support import wsclient
from tests.support.agent import SECRET, RunningAgent
from tests.support.fakestate import fake_state_factory
from tests.support.wait import eventually, free_port
from tests.test_links import BACKOFF, LinkTestsBase, up
from webtesting import linkauth
from webtesting.web.sessions import names_only
from webtesting.wslink import pinned_tls


class ProofTests(unittest.TestCase):
    def test_round_trip(self) -> None:
        """Both halves agree with the same secret; the link is bound to the service the web named."""
        agent, web = linkauth.AgentSide(SECRET), linkauth.WebSide(SECRET, 7)
        service_id, resp = agent.answer(web.answer(agent.challenge()))
        self.assertEqual(service_id, 7)
        web.verify(resp)  # no exception

    def test_wrong_secret_either_way(self) -> None:
        """A web without the secret is refused by the agent; an agent without it is refused by the web."""
        agent, web = linkauth.AgentSide("another secret, long enough"), linkauth.WebSide(SECRET, 7)
        with self.assertRaises(linkauth.AuthFailed):
            agent.answer(web.answer(agent.challenge()))
        real, web = linkauth.AgentSide(SECRET), linkauth.WebSide(SECRET, 7)
        request = web.answer(real.challenge())
        _, resp = real.answer(request)
        other = linkauth.WebSide(SECRET, 7)
        other.answer(real.challenge())
        with self.assertRaises(linkauth.AuthFailed):
            other.verify(resp)  # an agent proof for another link's nonces

    def test_a_proof_names_its_side_service_and_nonces(self) -> None:
        """The web's proof is not the agent's; changing the service or either nonce changes the proof."""
        key = linkauth.link_key(SECRET)
        a, b = linkauth.new_nonce(), linkauth.new_nonce()
        proofs = {
            linkauth.proof(key, "web", 1, a, b), linkauth.proof(key, "agent", 1, a, b),
            linkauth.proof(key, "web", 2, a, b), linkauth.proof(key, "web", 1, b, a),
        }
        self.assertEqual(len(proofs), 4)
        self.assertNotEqual(a, b)

    def test_malformed_requests(self) -> None:
        """Anything but a well-formed authReq is refused, never an exception of another kind."""
        agent = linkauth.AgentSide(SECRET)
        good = linkauth.WebSide(SECRET, 3).answer(agent.challenge())
        for bad in (None, [], "x", {"method": "agentInfoReq"}, {**good, "serviceId": "3"},
                    {**good, "serviceId": 0}, {**good, "nonce": "short"}, {**good, "proof": 5},
                    {**good, "proof": "é" * 43}, {**good, "serviceId": True}):
            with self.assertRaises(linkauth.AuthFailed, msg=repr(bad)):
                agent.answer(bad)


class Rogue(WebSocketServerProtocol):
    """A listener at a wrong agentAddr: records everything, plays along as far as it can."""

    factory: RogueFactory

    def onConnect(self, request: Any) -> None:
        self.factory.seen_headers.append(dict(request.headers))

    def onOpen(self) -> None:
        self.factory.protocols.append(self)
        self.sendMessage(json.dumps(linkauth.challenge(linkauth.new_nonce())).encode())

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.frames.append(payload)
        message = json.loads(payload)
        if message.get("method") == "authReq" and self.factory.fake_resp:
            self.sendMessage(json.dumps({"method": "authResp", "result": 1, "msg": "ok",
                                         "proof": base64.urlsafe_b64encode(os.urandom(32)).decode()}).encode())


class RogueFactory(WebSocketServerFactory):
    protocol = Rogue

    def __init__(self, fake_resp: bool) -> None:
        super().__init__()
        self.fake_resp = fake_resp
        self.seen_headers: list[dict[str, str]] = []
        self.frames: list[bytes] = []
        self.protocols: list[Rogue] = []


class RogueListenerTests(LinkTestsBase):
    def rogue(self, fake_resp: bool = False) -> tuple[RogueFactory, str]:
        factory = RogueFactory(fake_resp)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return factory, f"ws://127.0.0.1:{port.getHost().port}/x"

    def assert_learned_nothing(self, rogue: RogueFactory) -> None:
        seen = json.dumps(rogue.seen_headers).encode() + b"".join(rogue.frames)
        key = linkauth.link_key(SECRET)
        for secret in (SECRET.encode(), key, key.hex().encode(), base64.urlsafe_b64encode(key).rstrip(b"=")):
            self.assertNotIn(secret, seen)
        self.assertNotIn("authorization", {h.lower() for headers in rogue.seen_headers for h in headers})
        methods = [json.loads(f).get("method") for f in rogue.frames]
        self.assertNotIn("agentInfoReq", methods)
        self.assertNotIn(b"mysqlPwd", seen)

    async def test_rogue_listener_learns_nothing_it_can_replay(self) -> None:
        """A listener at a wrong agentAddr gets no secret and no settings, and what it got is refused by the agent."""
        rogue, url = self.rogue()
        sid = await self.add(agentAddr=url, mysqlPwd="s3cret-db-password")
        links = self.links()
        await eventually(lambda: bool(rogue.frames), what="the web answering the rogue's challenge")
        self.assert_learned_nothing(rogue)
        self.assertNotIn(b"s3cret-db-password", b"".join(rogue.frames))
        # Replayed to the real agent, the captured authReq is refused.
        agent = self.agent()
        agent.start()
        client = await wsclient.connect(agent.url)
        await client.expect("authChallenge")
        client.send(rogue.frames[0])
        _clean, code, _reason = await client.closed
        self.assertEqual(code, linkauth.CLOSE_CODE)
        self.assertEqual(agent.links(), [])
        # The link never counts as up; the web gives up on the silent peer in time.
        self.assertFalse(up(links, sid))

    async def test_rogue_that_fakes_the_agent_proof(self) -> None:
        """A listener that answers with a made-up proof is closed, marked agent_auth_failed, and gets no settings."""
        rogue, url = self.rogue(fake_resp=True)
        sid = await self.add(agentAddr=url, mysqlPwd="s3cret-db-password")
        links = self.links()
        await eventually(lambda: self.status_is(sid, 0, "could not prove"), what="agent_auth_failed")
        link = links.links[sid]
        self.assertEqual(link.code, "agent_auth_failed")
        self.assert_learned_nothing(rogue)
        # Retried at the longest delay, not hammered.
        factory = link._dialer.factory
        assert factory is not None
        self.assertEqual(factory.delay, BACKOFF.maximum)

    async def test_frames_before_authentication_and_silence(self) -> None:
        """The agent closes (4401) a client that sends anything but authReq first, and one that says nothing."""
        agent = self.agent()
        agent.factory.auth_deadline = 0.3
        agent.start()
        client = await wsclient.connect(agent.url)
        await client.expect("authChallenge")
        client.send({"method": "agentInfoReq", "serviceId": 1})
        self.assertEqual((await client.closed)[1], linkauth.CLOSE_CODE)
        silent = await wsclient.connect(agent.url)
        _clean, code, _reason = await silent.closed
        self.assertEqual(code, linkauth.CLOSE_CODE)
        self.assertEqual(agent.links(), [])

    async def test_link_is_bound_to_its_service(self) -> None:
        """A link authenticated for one service cannot configure another."""
        agent = self.agent()
        agent.start()
        client = await wsclient.connect_agent(agent.url, SECRET, 1)
        from tests.support.registry import seed_service

        client.send({"method": "agentInfoReq", "serviceId": 2,
                     **{k: v for k, v in seed_service().items() if k != "agentAddr"}})
        answer = await client.expect("agentInfoResp")
        self.assertEqual(answer["result"], 403)
        [link] = agent.links()
        self.assertIsNone(link.service)
        await client.close()

    async def test_web_drops_frames_naming_another_service(self) -> None:
        """An agent's status report or routed frame about another service is not believed."""
        agent = self.agent()
        agent.start()
        sid = await self.add(agentAddr=agent.url)
        links = self.links()
        await eventually(lambda: up(links, sid), what="up")
        [proto] = list(agent.factory.open_links)
        proto.sendMessage(json.dumps({"method": "agentStatusReq", "serviceId": sid + 1, "status": 0,
                                      "msg": "fake outage", "code": "redis_unreachable"}).encode())
        proto.sendMessage(json.dumps({"method": "agentStatusReq", "serviceId": sid, "status": 0,
                                      "msg": "real outage", "code": "redis_unreachable"}).encode())
        await eventually(lambda: self.status_is(sid, 0, "real outage"), what="the real report")
        self.assertNotIn("fake", (await self.record(sid))["msg"])

    def test_names_only(self) -> None:
        """The relay's check of a routed frame's serviceId, read without decoding."""
        uuid = b"a" * 32 + b"+"
        self.assertTrue(names_only(uuid + b'{"method":"aichatResp","serviceId":12,"appid":"x"}', 12))
        self.assertTrue(names_only(uuid + b'{"method":"error","result":400}', 12))
        self.assertTrue(names_only(uuid + b'{"method":"x","content":"\\"serviceId\\":3"}', 12))
        self.assertFalse(names_only(uuid + b'{"method":"aichatResp","serviceId":13}', 12))
        self.assertFalse(names_only(uuid + b'{"method":"aichatResp","serviceId":123}', 12))
        self.assertFalse(names_only(uuid + b'{"serviceId":12,"x":{"serviceId":4}}', 12))


def self_signed(folder: str, name: str) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (IP SAN) and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(folder, f"{name}.crt"), os.path.join(folder, f"{name}.key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


class PinnedTLSTests(LinkTestsBase):
    def tls_agent(self) -> tuple[RunningAgent, str, str]:
        folder = self.mktemp()
        os.makedirs(folder)
        cert, key = self_signed(folder, "agent")
        other, _ = self_signed(folder, "other")
        with open(cert, "rb") as c, open(key, "rb") as k:
            server = ssl.PrivateCertificate.loadPEM(c.read() + k.read()).options()
        agent = RunningAgent(free_port(), fake_state_factory(self.sources), tls=server)
        self.agents.append(agent)
        self.addCleanup(agent.kill)
        agent.start()
        return agent, cert, other

    def pinned_links(self, ca_file: str) -> Any:
        from webtesting.web.links import AgentLinks

        links = AgentLinks(self.registry, self.relay, reactor, secret=SECRET, sync_interval=0.2,
                           backoff=BACKOFF, connect_timeout=2, tls=pinned_tls(ca_file))
        links.startService()
        self.addCleanup(links.stopService)
        return links

    async def test_wss_with_the_pinned_certificate(self) -> None:
        """Over wss:// with the agent's own certificate pinned, the link comes up and the agent gets its settings."""
        agent, cert, _other = self.tls_agent()
        sid = await self.add(agentAddr=agent.url)
        links = self.pinned_links(cert)
        await eventually(lambda: up(links, sid), what="wss link up")
        [link] = agent.links()
        self.assertEqual(link.bound_id, sid)

    async def test_wss_with_another_certificate_pinned(self) -> None:
        """A wss:// agent whose certificate is not the pinned one is refused: agent_tls_failed, no link."""
        agent, _cert, other = self.tls_agent()
        sid = await self.add(agentAddr=agent.url)
        links = self.pinned_links(other)
        await eventually(lambda: self.status_is(sid, 0, "certificate"), what="tls refused")
        link = links.links[sid]
        self.assertEqual(link.code, "agent_tls_failed")
        self.assertEqual(agent.links(), [])
        factory = link._dialer.factory
        assert factory is not None
        self.assertEqual(factory.delay, BACKOFF.maximum)  # a wrong certificate is not hammered

    def test_ca_file_without_certificate(self) -> None:
        """A ca_file that holds no certificate is a clear error at start, not a link that never works."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a certificate\n")
        with self.assertRaises(ValueError):
            pinned_tls(path)
