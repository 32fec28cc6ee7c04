"""
The reference bot's brain: small, deterministic rules, no I/O.

A L{Bot} holds one logged-in user's conversation. L{Bot.chat} takes what the
user said and the time, updates the user's state (tags, topics, memory) and
returns a L{Turn}: the replies to send now, the messages to send later without
being asked, and the state after the turn. L{state_commands} turns two
successive states into the Redis commands that bring the user's keys from one
to the other (see L{webtesting.statelayout}); L{login_commands} is what a login
sends. Nothing here touches a network, a clock or a random number, so the same
conversation always gives the same answers and the same writes.

The rules (English and Chinese input both work; the bot answers in Chinese
when the input contains a CJK character):

- B{Facts}: "my name is X" / "call me X" / "我叫X" / "我的名字是X" -> memory
  C{name}; "I live in X" / "I am from X" / "我住在X" / "我来自X" -> C{city};
  "I am N years old" / "我N岁" -> C{age}; "I like X" / "我喜欢X" -> C{likes}.
  "forget me" / "忘记我" / "忘了我" clears the memory.
- B{Tags} (L{TAG_DICT}) have C{beginTime}, C{endTime} = last trigger +
  C{tag_ttl}, and C{isInUse}. I{Momentary} tags (asked a question, greeted,
  said goodbye) are in use only on the turn that triggers them; I{lasting}
  tags (a mood, told their name) stay in use until replaced. The two moods
  replace each other (the other one is removed at once). A tag whose
  C{endTime} has passed is removed at the next turn.
- B{Topics} (L{TOPIC_DICT}): the first topic whose keywords the message
  contains becomes current and the old current one becomes the previous one;
  telling a fact with no topic keyword means "about you"; the first message
  with no keyword starts "small talk". The topic list holds every topic talked
  about with C{endTime} = last mention + C{topic_ttl}; a topic past its end
  time leaves the list, and at most C{max_topics} stay (the ones ending first
  leave).
- B{Unprompted messages}: a question (ends with ? or ？, starts with a
  question word, or contains 吗/什么/为什么/怎么/呢) or "remind me" / "later" /
  "提醒我" / "等会" makes the bot send a second message C{followup_delay}
  seconds later, action C{followUp}.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from webtesting.statelayout import StateLayout

# Dictionary of the ids the rules use; the bot writes them into its MySQL
# dictionary tables so that readers can turn ids into text.
TAG_QUESTION = 20001
TAG_GREETED = 20002
TAG_GOOD_MOOD = 20003
TAG_BAD_MOOD = 20004
TAG_TOLD_NAME = 20005
TAG_GOODBYE = 20006

TAG_DICT: Mapping[int, str] = {
    TAG_QUESTION: "asked a question / 提了问题",
    TAG_GREETED: "greeted the bot / 打了招呼",
    TAG_GOOD_MOOD: "in a good mood / 心情好",
    TAG_BAD_MOOD: "in a bad mood / 心情不好",
    TAG_TOLD_NAME: "told their name / 说了名字",
    TAG_GOODBYE: "said goodbye / 道别",
}
_MOMENTARY_TAGS = frozenset({TAG_QUESTION, TAG_GREETED, TAG_GOODBYE})

TOPIC_SMALL_TALK = 10000
TOPIC_GREETINGS = 10001
TOPIC_WEATHER = 10002
TOPIC_FOOD = 10003
TOPIC_MUSIC = 10004
TOPIC_WORK = 10005
TOPIC_TRAVEL = 10006
TOPIC_ABOUT_YOU = 10007

TOPIC_DICT: Mapping[int, str] = {
    TOPIC_SMALL_TALK: "small talk / 闲聊",
    TOPIC_GREETINGS: "greetings / 问候",
    TOPIC_WEATHER: "weather / 天气",
    TOPIC_FOOD: "food / 美食",
    TOPIC_MUSIC: "music / 音乐",
    TOPIC_WORK: "work / 工作",
    TOPIC_TRAVEL: "travel / 旅行",
    TOPIC_ABOUT_YOU: "about you / 关于你",
}

# (English whole words, Chinese substrings); checked in this order.
_TOPIC_RULES: Sequence[tuple[int, Sequence[str], Sequence[str]]] = (
    (TOPIC_GREETINGS, ("hello", "hi", "hey", "good morning"), ("你好", "您好", "早上好", "嗨")),
    (TOPIC_WEATHER, ("weather", "rain", "raining", "sunny", "snow", "hot", "cold"),
     ("天气", "下雨", "晴", "下雪", "热", "冷")),
    (TOPIC_FOOD, ("food", "eat", "eating", "hungry", "lunch", "dinner", "breakfast"),
     ("吃", "饭", "饿", "美食")),
    (TOPIC_MUSIC, ("music", "song", "songs", "sing", "singing"), ("音乐", "歌", "唱")),
    (TOPIC_WORK, ("work", "job", "office", "boss"), ("工作", "上班", "老板", "加班")),
    (TOPIC_TRAVEL, ("travel", "trip", "holiday", "vacation", "flight"), ("旅行", "旅游", "出差", "度假")),
)
_GREETING = (("hello", "hi", "hey", "good morning"), ("你好", "您好", "早上好", "嗨"))
_GOODBYE = (("bye", "goodbye", "see you"), ("再见", "拜拜"))
_GOOD_MOOD = (("happy", "great", "glad", "awesome"), ("开心", "高兴", "哈哈", "太好了"))
_BAD_MOOD = (("sad", "tired", "angry", "upset"), ("难过", "伤心", "累", "生气"))
_FORGET = (("forget me",), ("忘记我", "忘了我"))
_REMIND = (("remind me", "later"), ("提醒我", "等会"))
_ASK_NAME = (("what is my name", "what's my name", "who am i"), ("我叫什么", "我是谁"))
_QUESTION_WORDS = ("what", "why", "how", "when", "where", "who", "which", "do", "does",
                   "is", "are", "can", "could", "will", "would", "should")
_QUESTION_ZH = ("吗", "什么", "为什么", "怎么", "呢")

# Fact patterns: (memory field, pattern); the value is group 1, trimmed.
_STOP = r"[^,.!?;，。！？；]"
_FACT_PATTERNS: Sequence[tuple[str, re.Pattern[str]]] = (
    ("name", re.compile(r"\bmy name is\s+(" + _STOP + r"{1,40})", re.I)),
    ("name", re.compile(r"\bcall me\s+(" + _STOP + r"{1,40})", re.I)),
    ("name", re.compile(r"我的名字是\s*(" + _STOP + r"{1,20})")),
    ("name", re.compile(r"我叫(?!什么)\s*(" + _STOP + r"{1,20})")),
    ("city", re.compile(r"\bi live in\s+(" + _STOP + r"{1,40})", re.I)),
    ("city", re.compile(r"\bi(?: am|'m) from\s+(" + _STOP + r"{1,40})", re.I)),
    ("city", re.compile(r"我住在\s*(" + _STOP + r"{1,20})")),
    ("city", re.compile(r"我来自\s*(" + _STOP + r"{1,20})")),
    ("age", re.compile(r"\bi(?: am|'m)\s+(\d{1,3})\s+years? old\b", re.I)),
    ("age", re.compile(r"我(?:今年)?\s*(\d{1,3})\s*岁")),
    ("likes", re.compile(r"\bi (?:like|love)\s+(" + _STOP + r"{1,40})", re.I)),
    ("likes", re.compile(r"我(?:喜欢|爱)(?!你)\s*(" + _STOP + r"{1,20})")),
)
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_ECHO_LIMIT = 100


def _has(text: str, words: tuple[Sequence[str], Sequence[str]]) -> bool:
    english, chinese = words
    return _has_words(text, english) or any(w in text for w in chinese)


def _has_words(text: str, words: Sequence[str]) -> bool:
    lowered = text.lower()
    return any(re.search(r"(?<![a-z'])" + re.escape(w) + r"(?![a-z])", lowered) for w in words)


def is_question(text: str) -> bool:
    """Whether C{text} asks something (a question mark, a question word, 吗 ...)."""
    stripped = text.strip()
    if stripped.endswith(("?", "？")):
        return True
    first = re.match(r"[A-Za-z']+", stripped)
    if first is not None and first.group(0).lower() in _QUESTION_WORDS:
        return True
    return any(w in stripped for w in _QUESTION_ZH)


def is_chinese(text: str) -> bool:
    """Whether the bot should answer C{text} in Chinese."""
    return _CJK.search(text) is not None


@dataclass(frozen=True)
class BotSettings:
    """Timing of the rules; all times in seconds."""

    tag_ttl: float = 120.0
    topic_ttl: float = 600.0
    max_topics: int = 5
    followup_delay: float = 2.0


@dataclass(frozen=True)
class TagState:
    """One tag of a user: times in epoch milliseconds."""

    begin: int
    end: int
    in_use: bool

    def to_json(self) -> str:
        return json.dumps(
            {"beginTime": self.begin, "endTime": self.end, "isInUse": self.in_use},
            separators=(",", ":"),
        )


@dataclass(frozen=True)
class Snapshot:
    """A user's whole state at one moment (treat the mappings as read-only)."""

    tags: Mapping[int, TagState] = field(default_factory=dict)
    cur_topic: int | None = None
    prev_topic: int | None = None
    topics: Mapping[int, int] = field(default_factory=dict)  # topic id -> endTime
    memory: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Message:
    """One bot message: what a C{chatResp} carries."""

    content: str
    action: str


@dataclass(frozen=True)
class Later:
    """A message the bot sends by itself C{delay} seconds after the turn."""

    delay: float
    message: Message


@dataclass(frozen=True)
class Turn:
    """What one chat message caused."""

    replies: tuple[Message, ...]
    later: tuple[Later, ...]
    state: Snapshot


class Bot:
    """
    One user's conversation with the reference bot.

    @param memory: the facts remembered from earlier sessions.
    """

    def __init__(self, settings: BotSettings = BotSettings(), memory: Mapping[str, str] | None = None) -> None:
        self._settings = settings
        self._tags: dict[int, TagState] = {}
        self._cur_topic: int | None = None
        self._prev_topic: int | None = None
        self._topics: dict[int, int] = {}
        self._memory: dict[str, str] = dict(memory or {})

    def snapshot(self) -> Snapshot:
        """The user's state now."""
        return Snapshot(
            tags=dict(self._tags),
            cur_topic=self._cur_topic,
            prev_topic=self._prev_topic,
            topics=dict(self._topics),
            memory=dict(self._memory),
        )

    def chat(self, content: str, now: int) -> Turn:
        """
        The user said C{content} at C{now} (epoch milliseconds).
        """
        zh = is_chinese(content)
        self._expire(now)
        # Momentary tags are in use only on the turn that triggers them.
        for tag_id, tag in list(self._tags.items()):
            if tag_id in _MOMENTARY_TAGS and tag.in_use:
                self._tags[tag_id] = TagState(tag.begin, tag.end, False)

        replies: list[Message] = []
        later: list[Later] = []
        question = is_question(content)
        name_before = self._memory.get("name")

        if _has(content, _FORGET):
            self._memory.clear()
            self._tags.pop(TAG_TOLD_NAME, None)
            replies.append(Message("好的，我已经忘记关于你的一切。" if zh else
                                   "OK, I have forgotten everything about you.", "forget"))
            learned: dict[str, str] = {}
        else:
            learned = self._learn(content)

        if question:
            self._tag(TAG_QUESTION, now)
        if _has(content, _GREETING):
            self._tag(TAG_GREETED, now)
        if _has(content, _GOODBYE):
            self._tag(TAG_GOODBYE, now)
        if _has(content, _GOOD_MOOD):
            self._tags.pop(TAG_BAD_MOOD, None)
            self._tag(TAG_GOOD_MOOD, now)
        elif _has(content, _BAD_MOOD):
            self._tags.pop(TAG_GOOD_MOOD, None)
            self._tag(TAG_BAD_MOOD, now)
        if "name" in learned:
            self._tag(TAG_TOLD_NAME, now)

        topic = self._pick_topic(content, bool(learned))
        switched = topic is not None and topic != self._cur_topic
        if topic is not None:
            if switched:
                self._prev_topic = self._cur_topic
                self._cur_topic = topic
            self._topics[topic] = now + int(self._settings.topic_ttl * 1000)
            self._trim_topics()

        if not replies:
            replies.append(self._answer(content, zh, learned, name_before, switched))

        if question or _has(content, _REMIND):
            later.append(Later(self._settings.followup_delay, self._follow_up(content, zh)))
        return Turn(tuple(replies), tuple(later), self.snapshot())

    # -- rules ------------------------------------------------------------

    def _expire(self, now: int) -> None:
        for tag_id, tag in list(self._tags.items()):
            if tag.end < now:
                del self._tags[tag_id]
        for topic_id, end in list(self._topics.items()):
            if end < now and topic_id != self._cur_topic:
                del self._topics[topic_id]

    def _tag(self, tag_id: int, now: int) -> None:
        end = now + int(self._settings.tag_ttl * 1000)
        old = self._tags.get(tag_id)
        self._tags[tag_id] = TagState(old.begin if old is not None else now, end, True)

    def _learn(self, content: str) -> dict[str, str]:
        learned: dict[str, str] = {}
        for name, pattern in _FACT_PATTERNS:
            if name in learned:
                continue
            match = pattern.search(content)
            if match is None:
                continue
            value = match.group(1).strip()
            # "my name is Alice and I ..." -> "Alice".
            value = re.split(r"\s+(?:and|but)\s+|[和但]", value, maxsplit=1)[0].strip()
            if value:
                learned[name] = value
        self._memory.update(learned)
        return learned

    def _pick_topic(self, content: str, told_fact: bool) -> int | None:
        for topic_id, english, chinese in _TOPIC_RULES:
            if _has(content, (english, chinese)):
                return topic_id
        if told_fact:
            return TOPIC_ABOUT_YOU
        if self._cur_topic is None:
            return TOPIC_SMALL_TALK
        return None

    def _trim_topics(self) -> None:
        excess = len(self._topics) - self._settings.max_topics
        if excess <= 0:
            return
        # The ones ending first leave; the current topic always stays.
        by_end = sorted((end, tid) for tid, end in self._topics.items() if tid != self._cur_topic)
        for _, tid in by_end[:excess]:
            del self._topics[tid]

    def _answer(
        self, content: str, zh: bool, learned: Mapping[str, str], name_before: str | None, switched: bool
    ) -> Message:
        name = self._memory.get("name")
        if "name" in learned and learned["name"] != name_before:
            return Message(f"很高兴认识你，{name}！" if zh else f"Nice to meet you, {name}!", "remember")
        if learned:
            facts = ", ".join(f"{k} = {v}" for k, v in sorted(learned.items()))
            return Message(f"好的，我记住了：{facts}。" if zh else f"Got it, I will remember: {facts}.", "remember")
        if _has(content, _ASK_NAME):
            if name is None:
                return Message("你还没告诉我你的名字。" if zh else "You have not told me your name yet.", "recall")
            return Message(f"你叫{name}。" if zh else f"Your name is {name}.", "recall")
        if _has(content, _GREETING):
            if zh:
                return Message(f"你好，{name}！" if name else "你好！", "greet")
            return Message(f"Hello, {name}!" if name else "Hello!", "greet")
        if _has(content, _GOODBYE):
            return Message("再见！" if zh else "Goodbye!", "goodbye")
        if _has(content, _GOOD_MOOD):
            return Message("听到你开心我也很高兴！" if zh else "Glad to hear you are in a good mood!", "mood")
        if _has(content, _BAD_MOOD):
            return Message("抱歉听到这个，希望你很快好起来。" if zh
                           else "Sorry to hear that; I hope you feel better soon.", "mood")
        if switched and self._cur_topic is not None and self._cur_topic != TOPIC_SMALL_TALK:
            desc = TOPIC_DICT[self._cur_topic].split(" / ")[1 if zh else 0]
            return Message(f"我们来聊聊{desc}吧。" if zh else f"Let's talk about {desc}.", "topic")
        echo = content.strip()[:_ECHO_LIMIT]
        return Message(f"我听到了：{echo}" if zh else f"I hear you: {echo}", "answer")

    def _follow_up(self, content: str, zh: bool) -> Message:
        echo = content.strip()[:_ECHO_LIMIT]
        if zh:
            return Message(f"对了，关于“{echo}”，我又想了想，谢谢你告诉我。", "followUp")
        return Message(f'By the way, I thought again about "{echo}". Thanks for telling me.', "followUp")


# -- Redis writes -----------------------------------------------------------

Command = list[Any]


def login_commands(layout: StateLayout, appid: str, uid: str) -> list[Command]:
    """
    What a login sends in one pipeline: a new session starts with no tags
    and no topics, and the remembered facts are read back (the last reply is
    the memory hash).
    """
    tags, topic, topics, memory = layout.keys(appid, uid)
    return [["DEL", tags], ["DEL", topic], ["DEL", topics], ["HGETALL", memory]]


def memory_from_reply(reply: Any) -> dict[str, str]:
    """The memory hash from an HGETALL reply (a mapping or a flat list)."""
    if isinstance(reply, Mapping):
        items = list(reply.items())
    elif isinstance(reply, (list, tuple)):
        items = list(zip(reply[0::2], reply[1::2], strict=False))
    else:
        return {}
    return {_text(k): _text(v) for k, v in items}


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def state_commands(
    layout: StateLayout, appid: str, uid: str, before: Snapshot | None, after: Snapshot
) -> list[Command]:
    """
    The Redis commands that turn the user's keys from C{before} into C{after}.

    C{before} is None when what is stored is unknown (a write failed): then
    every key is deleted and written whole.
    """
    tags_key, topic_key, topics_key, memory_key = layout.keys(appid, uid)
    commands: list[Command] = []
    _hash_commands(
        commands, tags_key,
        None if before is None else {str(k): v.to_json() for k, v in before.tags.items()},
        {str(k): v.to_json() for k, v in after.tags.items()},
    )
    _hash_commands(
        commands, topic_key,
        None if before is None else _topic_fields(before),
        _topic_fields(after),
    )
    _hash_commands(
        commands, topics_key,
        None if before is None else {str(k): _topic_json(v) for k, v in before.topics.items()},
        {str(k): _topic_json(v) for k, v in after.topics.items()},
    )
    _hash_commands(
        commands, memory_key,
        None if before is None else dict(before.memory),
        dict(after.memory),
    )
    return commands


def _topic_fields(state: Snapshot) -> dict[str, str]:
    fields: dict[str, str] = {}
    if state.cur_topic is not None:
        fields["cur"] = str(state.cur_topic)
    if state.prev_topic is not None:
        fields["prev"] = str(state.prev_topic)
    return fields


def _topic_json(end: int) -> str:
    return json.dumps({"endTime": end}, separators=(",", ":"))


def _hash_commands(
    out: list[Command], key: str, before: dict[str, str] | None, after: dict[str, str]
) -> None:
    if before is None:
        out.append(["DEL", key])
        before = {}
    gone = sorted(f for f in before if f not in after)
    if gone:
        out.append(["HDEL", key, *gone])
    changed = [(f, v) for f, v in sorted(after.items()) if before.get(f) != v]
    if changed:
        out.append(["HSET", key, *[x for pair in changed for x in pair]])
