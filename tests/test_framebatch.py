"""
Several messages per WebSocket message on the web ⇄ agent link
(webtesting.framebatch): the batcher on a Clock, and the real link, which
batches with an agent that takes the offer and speaks one message per frame
with one that does not.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.support.system import System
from webtesting import framebatch
from webtesting.framebatch import Batcher


class BatcherTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sent: list[bytes] = []
        self.batcher = Batcher(self.clock, self.sent.append)

    def test_one_turn_is_one_message(self) -> None:
        for text in (b'{"a":1}', b'{"b":2}', b"u" * 32 + b'={"c":3}'):
            self.batcher.add(text)
        self.assertEqual(self.sent, [], "nothing leaves before the turn ends")
        self.clock.advance(0)
        self.assertEqual(self.sent, [b'{"a":1}\n{"b":2}\n' + b"u" * 32 + b'={"c":3}'])
        self.assertEqual(framebatch.split(self.sent[0]), [b'{"a":1}', b'{"b":2}', b"u" * 32 + b'={"c":3}'])

    def test_a_lone_message_goes_as_it_is(self) -> None:
        self.batcher.add(b'{"a":1}')
        self.clock.advance(0)
        self.batcher.add(b'{"b":2}')
        self.clock.advance(0)
        self.assertEqual(self.sent, [b'{"a":1}', b'{"b":2}'])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_full_batch_leaves_at_once(self) -> None:
        big = b"x" * (framebatch.BATCH_BYTES // 2)
        self.batcher.add(big)
        self.batcher.add(big)
        self.assertEqual(len(self.sent), 1, "sent as soon as it reached the batch size")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.batcher.add(b"{}")
        self.clock.advance(0)
        self.assertEqual(self.sent[1:], [b"{}"])

    def test_drop_forgets(self) -> None:
        self.batcher.add(b"{}")
        self.batcher.drop()
        self.clock.advance(0)
        self.assertEqual(self.sent, [])

    def test_split_keeps_a_message_without_newline(self) -> None:
        self.assertEqual(framebatch.split(b'{"content":"a\\nb"}'), [b'{"content":"a\\nb"}'])


class LinkTests(unittest.TestCase):
    timeout = 120

    async def chat_twice(self, system: System) -> None:
        self.sizes: list[int] = []
        split = framebatch.split

        def counting(payload: bytes) -> list[bytes]:
            parts = split(payload)
            self.sizes.append(len(parts))
            return parts

        self.patch(framebatch, "split", counting)
        sid = await system.add_service()
        browsers = [await system.browser() for _ in range(3)]
        for i, browser in enumerate(browsers):
            browser.send({"method": "loginReq", "serviceId": sid, "appid": "1.00002", "uname": f"batch{i}"})
        for browser in browsers:
            self.assertEqual((await browser.expect("loginResp"))["result"], 1)
        for _ in range(5):
            # Sent in one turn: they cross the link together where the agent took the offer.
            for i, browser in enumerate(browsers):
                browser.send({"method": "aichatReq", "serviceId": sid, "appid": "1.00002",
                              "content": f"my name is Batch{i}"})
            for i, browser in enumerate(browsers):
                reply: Any = await browser.expect("aichatResp")
                self.assertEqual(reply["result"], 1)
                self.assertIn(f"Batch{i}", reply["content"])
        self.link = system.links.links[sid]

    async def test_batches_with_an_agent_that_takes_the_offer(self) -> None:
        system = System(self)
        await system.start()
        await self.chat_twice(system)
        self.assertIsNotNone(self.link._batch, "the agent took webtesting.batch")
        [agent_side] = system.agent.factory.open_links
        self.assertIsNotNone(agent_side._batch)
        self.assertGreater(max(self.sizes), 1, "some frame carried several messages")

    async def test_one_message_per_frame_with_an_agent_that_does_not(self) -> None:
        system = System(self)
        system.agent.factory.batch_frames = False  # as agents before framebatch
        await system.start()
        await self.chat_twice(system)
        self.assertIsNone(self.link._batch)
        [agent_side] = system.agent.factory.open_links
        self.assertIsNone(agent_side._batch)
        self.assertEqual(self.sizes, [], "nothing was split")
