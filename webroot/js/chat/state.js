// The live view of one user's state: tags, current and previous topic, the
// topic list and memory. New items carry a "new" badge and deleted ones stay
// struck through, each for MARK_MS after the update that reported them.

import { h } from "../dom.js";
import { formatTime, t } from "../i18n.js";

const MARK_MS = 15000;

// kind -> how to read a getUserStatusResp: [cur, new, deleted] and an item's identity
const KINDS = {
  tags: {
    lists: (m) => [m.tag?.curTags, m.tag?.newTags, m.tag?.deletedTags],
    key: (item) => `tag:${item.id}`,
  },
  topics: {
    lists: (m) => [m.curTopicList?.curTopics, m.curTopicList?.newTopics, m.curTopicList?.deletedTopics],
    key: (item) => `topic:${item.id}`,
  },
  memory: {
    lists: (m) => [m.memory?.cur, m.memory?.new, m.memory?.deleted],
    key: (item) => `memory:${item.key}=${item.value}`,
  },
};

function describe(id, desc) {
  if (id === null || id === undefined) return t("state.none");
  return desc ? `${desc} (#${id})` : `#${id}`;
}

export class StateView {
  constructor(root) {
    this.root = root;
    this.state = null;
    this.marks = new Map(); // key -> {until, deleted, item, kind}
    this.timer = null;
    this.lists = {
      tags: root.querySelector(".state-tags"),
      topics: root.querySelector(".state-topics"),
      memory: root.querySelector(".state-memory"),
    };
    this.topic = root.querySelector(".state-topic");
    this.prevTopic = root.querySelector(".state-prev-topic");
    this.updated = root.querySelector(".state-updated");
    this.error = root.querySelector(".state-error");
    this.topicChangedAt = 0;
    this.render();
  }

  clear() {
    this.state = null;
    this.marks.clear();
    this.error.textContent = "";
    this.render();
  }

  // text or a node (a reason with its details toggle)
  showError(what) {
    this.error.replaceChildren(what);
  }

  update(message, now = Date.now()) {
    const until = now + MARK_MS;
    for (const [kind, spec] of Object.entries(KINDS)) {
      const [cur = [], added = [], deleted = []] = spec.lists(message);
      const present = new Set(cur.map(spec.key));
      for (const item of added) this.marks.set(spec.key(item), { until, deleted: false, item, kind });
      for (const item of deleted) {
        const key = spec.key(item);
        if (!present.has(key)) this.marks.set(key, { until, deleted: true, item, kind });
      }
      // Something shown as deleted that is back is no longer deleted.
      for (const [key, mark] of this.marks) if (mark.deleted && present.has(key)) this.marks.delete(key);
    }
    const before = this.state?.curTopic?.id;
    if (this.state && message.curTopic?.id !== before) this.topicChangedAt = until;
    this.state = message;
    this.error.textContent = "";
    this.updatedAt = now;
    this.render(now);
  }

  render(now = Date.now()) {
    for (const [key, mark] of this.marks) if (mark.until <= now) this.marks.delete(key);
    const s = this.state || {};
    this.updated.textContent = this.state ? t("state.updated", { time: formatTime(this.updatedAt) }) : "";
    this.updated.dataset.time = this.state ? String(this.updatedAt) : "";
    this.renderList("tags", s.tag?.curTags || [], (tag) => [
      h("span", { className: "item-text" }, describe(tag.id, tag.desc)),
      h("span", { className: tag.isInUse ? "badge in-use" : "badge idle" },
        t(tag.isInUse ? "state.inUse" : "state.notInUse")),
      h("span", { className: "item-time" },
        t("state.time", { begin: formatTime(tag.beginTime), end: formatTime(tag.endTime) })),
    ]);
    this.renderList("topics", s.curTopicList?.curTopics || [], (topic) => [
      h("span", { className: "item-text" }, describe(topic.id, topic.desc)),
      h("span", { className: "item-time" }, t("state.until", { end: formatTime(topic.endTime) })),
    ]);
    this.renderList("memory", s.memory?.cur || [], (item) => [
      h("span", { className: "memory-key" }, item.key),
      h("span", { className: "memory-value" }, item.value),
    ]);
    const topic = s.curTopic || {};
    this.topic.textContent = describe(topic.id, topic.desc);
    this.topic.classList.toggle("is-new", this.topicChangedAt > now);
    this.prevTopic.textContent = describe(topic.prevId, topic.prevDesc);
    this.schedule(now);
  }

  renderList(kind, items, parts) {
    const spec = KINDS[kind];
    const rows = items.map((item) => {
      const mark = this.marks.get(spec.key(item));
      const isNew = mark && !mark.deleted;
      return h("li", { className: isNew ? "is-new" : "", dataset: { key: spec.key(item) } },
        ...parts(item),
        isNew ? h("span", { className: "badge new" }, t("state.new")) : null);
    });
    for (const [key, mark] of this.marks) {
      if (mark.kind !== kind || !mark.deleted) continue;
      rows.push(h("li", { className: "is-deleted", dataset: { key } },
        h("del", {}, ...parts(mark.item)),
        h("span", { className: "badge deleted" }, t("state.deleted"))));
    }
    if (rows.length === 0) rows.push(h("li", { className: "empty" }, t("state.none")));
    this.lists[kind].replaceChildren(...rows);
  }

  // Re-render when the next mark runs out.
  schedule(now) {
    clearTimeout(this.timer);
    let next = this.topicChangedAt > now ? this.topicChangedAt : Infinity;
    for (const mark of this.marks.values()) next = Math.min(next, mark.until);
    if (next !== Infinity) this.timer = setTimeout(() => this.render(), next - now + 10);
  }

  dispose() {
    clearTimeout(this.timer);
  }
}
