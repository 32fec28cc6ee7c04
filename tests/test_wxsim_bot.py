"""
The reference bot's rules and the Redis writes they cause, with no network.
"""

from __future__ import annotations

import json
from dataclasses import replace

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from webtesting.config import ConfigError, from_mapping
from webtesting.statelayout import StateLayout
from webtesting.wxsim import tap
from webtesting.wxsim.bot import (
    TAG_BAD_MOOD,
    TAG_DICT,
    TAG_GOOD_MOOD,
    TAG_GREETED,
    TAG_QUESTION,
    TAG_TOLD_NAME,
    TOPIC_ABOUT_YOU,
    TOPIC_DICT,
    TOPIC_FOOD,
    TOPIC_GREETINGS,
    TOPIC_SMALL_TALK,
    TOPIC_WEATHER,
    Bot,
    BotSettings,
    Snapshot,
    TagState,
    is_chinese,
    is_question,
    login_commands,
    memory_from_reply,
    state_commands,
)
from webtesting.wxsim.config import WxsimConfig

T0 = 1_700_000_000_000
LAYOUT = StateLayout()


def apply(store: dict[str, dict[str, str]], commands: list[list[object]]) -> None:
    """Fake enough of Redis hashes to check what a list of writes leaves behind."""
    for command in commands:
        name, key, *args = command
        assert isinstance(key, str)
        if name == "DEL":
            store.pop(key, None)
        elif name == "HDEL":
            for f in args:
                store.get(key, {}).pop(str(f), None)
            if not store.get(key, True):
                store.pop(key, None)
        elif name == "HSET":
            h = store.setdefault(key, {})
            for f, v in zip(args[0::2], args[1::2], strict=False):
                h[str(f)] = str(v)
        else:
            raise AssertionError(f"unexpected command {name}")


def stored(state: Snapshot) -> dict[str, dict[str, str]]:
    """What the user's keys should hold for C{state}."""
    out: dict[str, dict[str, str]] = {}
    apply(out, state_commands(LAYOUT, "1.00002", "7", None, state))
    return out


class FactTests(SynchronousTestCase):
    def test_english_name(self) -> None:
        """Saying "my name is Alice" makes the bot remember name = Alice and greet Alice by name."""
        bot = Bot()
        turn = bot.chat("Hi, my name is Alice.", T0)
        self.assertEqual(turn.state.memory, {"name": "Alice"})
        self.assertEqual(turn.replies[0].content, "Nice to meet you, Alice!")
        self.assertEqual(turn.replies[0].action, "remember")
        self.assertTrue(turn.state.tags[TAG_TOLD_NAME].in_use)

    def test_chinese_name(self) -> None:
        """Saying "我叫小明" remembers name = 小明 and the bot answers in Chinese."""
        turn = Bot().chat("我叫小明，我住在北京", T0)
        self.assertEqual(turn.state.memory, {"name": "小明", "city": "北京"})
        self.assertEqual(turn.replies[0].content, "很高兴认识你，小明！")

    def test_other_facts(self) -> None:
        """City, age and likes are remembered from English and Chinese sentences."""
        bot = Bot()
        bot.chat("I live in Paris and I am 30 years old", T0)
        self.assertEqual(bot.snapshot().memory, {"city": "Paris", "age": "30"})
        bot.chat("我喜欢唱歌", T0 + 1)
        self.assertEqual(bot.snapshot().memory["likes"], "唱歌")

    def test_recall_name(self) -> None:
        """Asking "what is my name?" answers with the remembered name."""
        bot = Bot(memory={"name": "Bob"})
        self.assertEqual(bot.chat("what is my name?", T0).replies[0].content, "Your name is Bob.")
        self.assertEqual(Bot().chat("我叫什么？", T0).replies[0].content, "你还没告诉我你的名字。")

    def test_forget(self) -> None:
        """"forget me" clears the memory and removes the told-their-name tag."""
        bot = Bot()
        bot.chat("my name is Alice", T0)
        turn = bot.chat("please forget me", T0 + 1000)
        self.assertEqual(turn.state.memory, {})
        self.assertNotIn(TAG_TOLD_NAME, turn.state.tags)
        self.assertEqual(turn.replies[0].action, "forget")


class TagTests(SynchronousTestCase):
    def test_momentary_tag(self) -> None:
        """A greeting tag is in use on the turn that sets it and kept, not in use, on the next turn."""
        bot = Bot()
        first = bot.chat("hello", T0)
        self.assertEqual(first.state.tags[TAG_GREETED], TagState(T0, T0 + 120_000, True))
        second = bot.chat("the food here is nice", T0 + 5000)
        self.assertEqual(second.state.tags[TAG_GREETED], TagState(T0, T0 + 120_000, False))

    def test_tag_expires(self) -> None:
        """A tag whose end time has passed is removed at the next turn."""
        bot = Bot(BotSettings(tag_ttl=10))
        bot.chat("hello", T0)
        turn = bot.chat("nice", T0 + 10_001)
        self.assertNotIn(TAG_GREETED, turn.state.tags)

    def test_moods_replace_each_other(self) -> None:
        """A sad message removes the good-mood tag and adds the bad-mood one."""
        bot = Bot()
        bot.chat("I am so happy", T0)
        turn = bot.chat("now I am sad", T0 + 1000)
        self.assertNotIn(TAG_GOOD_MOOD, turn.state.tags)
        self.assertTrue(turn.state.tags[TAG_BAD_MOOD].in_use)

    def test_retrigger_keeps_begin(self) -> None:
        """Asking a second question keeps the tag's begin time and moves its end time."""
        bot = Bot(BotSettings(tag_ttl=60))
        bot.chat("why?", T0)
        turn = bot.chat("how?", T0 + 2000)
        self.assertEqual(turn.state.tags[TAG_QUESTION], TagState(T0, T0 + 62_000, True))


class TopicTests(SynchronousTestCase):
    def test_first_topic(self) -> None:
        """A first message with no keyword starts small talk, with no previous topic."""
        turn = Bot().chat("ok", T0)
        self.assertEqual((turn.state.cur_topic, turn.state.prev_topic), (TOPIC_SMALL_TALK, None))
        self.assertEqual(turn.state.topics, {TOPIC_SMALL_TALK: T0 + 600_000})

    def test_switch_keeps_previous(self) -> None:
        """Talking about the weather after a greeting makes weather current and greetings previous."""
        bot = Bot()
        bot.chat("hello", T0)
        turn = bot.chat("今天天气怎么样", T0 + 1000)
        self.assertEqual((turn.state.cur_topic, turn.state.prev_topic), (TOPIC_WEATHER, TOPIC_GREETINGS))
        self.assertEqual(set(turn.state.topics), {TOPIC_GREETINGS, TOPIC_WEATHER})

    def test_no_keyword_keeps_topic(self) -> None:
        """A message with no topic keyword keeps the current topic."""
        bot = Bot()
        bot.chat("I am hungry", T0)
        turn = bot.chat("ok", T0 + 1000)
        self.assertEqual(turn.state.cur_topic, TOPIC_FOOD)

    def test_fact_means_about_you(self) -> None:
        """Telling a fact with no topic keyword switches to "about you"."""
        turn = Bot().chat("I live in Berlin", T0)
        self.assertEqual(turn.state.cur_topic, TOPIC_ABOUT_YOU)

    def test_topic_list_limit_and_expiry(self) -> None:
        """The topic list keeps at most max_topics and drops topics past their end time."""
        bot = Bot(BotSettings(max_topics=2, topic_ttl=10))
        bot.chat("hello", T0)
        bot.chat("weather", T0 + 1)
        turn = bot.chat("food", T0 + 2)
        self.assertEqual(set(turn.state.topics), {TOPIC_WEATHER, TOPIC_FOOD})
        turn = bot.chat("ok", T0 + 10_005)
        self.assertEqual(set(turn.state.topics), {TOPIC_FOOD})

    def test_dictionary_covers_rules(self) -> None:
        """Every tag and topic id the rules can write has text in the dictionary, short enough for VARCHAR(255)."""
        for text in [*TAG_DICT.values(), *TOPIC_DICT.values()]:
            self.assertLessEqual(len(text), 255)
        bot = Bot()
        for line in ["hello", "weather?", "food", "music", "work", "travel", "my name is X",
                     "happy", "sad", "bye", "ok"]:
            state = bot.chat(line, T0).state
            self.assertLessEqual(set(state.tags), set(TAG_DICT))
            self.assertLessEqual(set(state.topics), set(TOPIC_DICT))


class FollowUpTests(SynchronousTestCase):
    def test_question_schedules_follow_up(self) -> None:
        """A question makes the bot schedule one unprompted followUp message after the configured delay."""
        turn = Bot(BotSettings(followup_delay=0.5)).chat("Do you like music?", T0)
        self.assertEqual(len(turn.later), 1)
        self.assertEqual(turn.later[0].delay, 0.5)
        self.assertEqual(turn.later[0].message.action, "followUp")

    def test_remind_keyword(self) -> None:
        """"提醒我" schedules a follow-up even without a question."""
        self.assertEqual(len(Bot().chat("提醒我喝水", T0).later), 1)

    def test_statement_no_follow_up(self) -> None:
        """A plain statement schedules nothing."""
        self.assertEqual(Bot().chat("I am hungry", T0).later, ())

    def test_deterministic(self) -> None:
        """The same conversation at the same times gives the same turns."""
        lines = ["hello", "my name is Ann", "what's the weather?", "我很开心", "bye"]
        a, b = Bot(), Bot()
        self.assertEqual([a.chat(m, T0 + i) for i, m in enumerate(lines)],
                         [b.chat(m, T0 + i) for i, m in enumerate(lines)])

    def test_language_detection(self) -> None:
        """CJK text is Chinese; question detection covers ?, ？, question words and 吗."""
        self.assertTrue(is_chinese("你好 world"))
        self.assertFalse(is_chinese("hello"))
        for q in ["really?", "真的？", "how are you", "你吃饭了吗"]:
            self.assertTrue(is_question(q), q)
        self.assertFalse(is_question("I am fine."))


class WriteTests(SynchronousTestCase):
    def test_full_write_when_unknown(self) -> None:
        """With nothing known about the stored state, every key is deleted and written whole."""
        bot = Bot()
        state = bot.chat("hello, my name is Alice", T0).state
        commands = state_commands(LAYOUT, "1.00002", "7", None, state)
        self.assertEqual([c[:2] for c in commands if c[0] == "DEL"],
                         [["DEL", k] for k in LAYOUT.keys("1.00002", "7")])
        result = stored(state)
        self.assertEqual(result["wt:{1.00002:7}:memory"], {"name": "Alice"})
        # A topic keyword wins over "about you".
        self.assertEqual(result["wt:{1.00002:7}:topic"], {"cur": str(TOPIC_GREETINGS)})
        tag = json.loads(result["wt:{1.00002:7}:tags"][str(TAG_GREETED)])
        self.assertEqual(tag, {"beginTime": T0, "endTime": T0 + 120_000, "isInUse": True})

    def test_deltas_reach_same_state(self) -> None:
        """Applying each turn's delta writes leaves the same keys as writing the final state whole."""
        bot = Bot(BotSettings(tag_ttl=2, max_topics=3))
        store: dict[str, dict[str, str]] = {}
        before: Snapshot | None = None
        lines = ["hello", "my name is Ann", "weather?", "happy", "food", "sad", "music",
                 "forget me", "work", "bye"]
        for i, line in enumerate(lines):
            turn = bot.chat(line, T0 + i * 1000)
            apply(store, state_commands(LAYOUT, "1.00002", "7", before, turn.state))
            before = turn.state
            self.assertEqual(store, stored(turn.state), line)

    def test_unchanged_state_writes_nothing(self) -> None:
        """A turn that changes nothing produces no commands."""
        state = Snapshot(memory={"name": "A"})
        self.assertEqual(state_commands(LAYOUT, "a", "1", state, state), [])

    def test_keys_share_a_slot(self) -> None:
        """Every command of a user's write names a key with the same {appid:uid} hash tag."""
        state = Bot().chat("hello my name is Z", T0).state
        tags = {c[1][c[1].index("{"):c[1].index("}") + 1] for c in state_commands(LAYOUT, "1.00002", "42", None, state)}
        self.assertEqual(tags, {"{1.00002:42}"})

    def test_login_commands(self) -> None:
        """A login clears tags and topics and reads the memory back last."""
        commands = login_commands(LAYOUT, "1.00002", "9")
        self.assertEqual(commands[-1], ["HGETALL", "wt:{1.00002:9}:memory"])
        self.assertEqual([c[0] for c in commands[:-1]], ["DEL", "DEL", "DEL"])

    def test_memory_reply_shapes(self) -> None:
        """HGETALL replies as a mapping, a flat list or bytes all give a text memory."""
        self.assertEqual(memory_from_reply({b"name": b"\xe5\xb0\x8f\xe6\x98\x8e"}), {"name": "小明"})
        self.assertEqual(memory_from_reply(["name", "A", "age", 30]), {"name": "A", "age": "30"})
        self.assertEqual(memory_from_reply(None), {})


class ConfigTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """The built-in defaults listen on 1443 and use Redis 7000-7002 and MySQL database wxsim."""
        config = from_mapping(WxsimConfig, {})
        self.assertEqual(config.websocket.listen, "tcp:1443")
        self.assertEqual([(n.host, n.port) for n in config.redis.nodes],
                         [("127.0.0.1", 7000), ("127.0.0.1", 7001), ("127.0.0.1", 7002)])
        self.assertEqual((config.mysql.port, config.mysql.user, config.mysql.database), (3306, "root", "wxsim"))
        self.assertNotIn("password=''", repr(config.mysql))

    def test_all_problems_reported(self) -> None:
        """Every problem in the file is reported at once, by key."""
        with self.assertRaises(ConfigError) as caught:
            from_mapping(WxsimConfig, {
                "websocket": {"listen": "nonsense:1"},
                "redis": {"nodes": [{"host": "h", "port": 0}], "extra": 1},
                "mysql": {"database": "bad name"},
                "state": {"tags_key": "no-placeholders"},
                "bot": {"followup_delay": -1},
            })
        text = str(caught.exception)
        for key in ["websocket.listen", "redis.nodes[0].port", "redis.extra", "mysql.database",
                    "state.tags_key", "bot.followup_delay"]:
            self.assertIn(key, text)

    def test_usage_error(self) -> None:
        """A bad configuration file is a usage error of twistd, naming the file."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("websocket:\n  listen: 12\nnope: 1\n")
        options = tap.Options()
        with self.assertRaises(usage.UsageError) as caught:
            options.parseOptions(["--config", path])
        self.assertIn("websocket.listen", str(caught.exception))
        self.assertIn("nope", str(caught.exception))

    def test_shipped_config(self) -> None:
        """etc/wxsim.yaml loads and equals the built-in defaults."""
        import os

        from webtesting.config import load

        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "wxsim.yaml")
        loaded = load(WxsimConfig, path)
        defaults = load(WxsimConfig, None)
        # A list from YAML comes back as a tuple.
        self.assertEqual(list(loaded.redis.nodes), list(defaults.redis.nodes))
        same_nodes = replace(loaded, redis=replace(loaded.redis, nodes=defaults.redis.nodes))
        self.assertEqual(same_nodes, defaults)


class WorkedExampleTests(SynchronousTestCase):
    def test_documented_example(self) -> None:
        """The worked example of docs/wxservice-protocol.md is what the bot really writes."""
        bot = Bot()
        t0 = 1_700_000_000_000
        first = bot.chat("hello, my name is Alice", t0)
        self.assertEqual(first.replies[0].content, "Nice to meet you, Alice!")
        self.assertEqual(state_commands(LAYOUT, "1.00002", "17", Snapshot(), first.state), [
            ["HSET", "wt:{1.00002:17}:tags",
             "20002", '{"beginTime":1700000000000,"endTime":1700000120000,"isInUse":true}',
             "20005", '{"beginTime":1700000000000,"endTime":1700000120000,"isInUse":true}'],
            ["HSET", "wt:{1.00002:17}:topic", "cur", "10001"],
            ["HSET", "wt:{1.00002:17}:topics", "10001", '{"endTime":1700000600000}'],
            ["HSET", "wt:{1.00002:17}:memory", "name", "Alice"],
        ])
        second = bot.chat("what's the weather like?", t0 + 1000)
        self.assertEqual(state_commands(LAYOUT, "1.00002", "17", first.state, second.state), [
            ["HSET", "wt:{1.00002:17}:tags",
             "20001", '{"beginTime":1700000001000,"endTime":1700000121000,"isInUse":true}',
             "20002", '{"beginTime":1700000000000,"endTime":1700000120000,"isInUse":false}'],
            ["HSET", "wt:{1.00002:17}:topic", "cur", "10002", "prev", "10001"],
            ["HSET", "wt:{1.00002:17}:topics", "10002", '{"endTime":1700000601000}'],
        ])
        self.assertEqual([later.message.action for later in second.later], ["followUp"])
