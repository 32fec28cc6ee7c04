// "Save as test case": a panel's conversation since its login, from the
// server's history (History/get), turned into a test case
// (docs/test-cases.md) whose steps expect the replies and state changes that
// were seen. Before saving, the tester starts it at a chosen turn and loosens
// each check: a reply's exact text can become "contains" or be dropped, a
// state check can be dropped. Saved server-side (Cases/save) for the
// account, optionally shared with the team. The file is YAML in JSON's flow
// style (JSON is YAML), which webtesting-test reads as it is.

import { request as apiRequest } from "../api.js";
import { h, uid } from "../dom.js";
import { t } from "../i18n.js";

const text = (desc, id) => (desc ? desc.split(" / ")[0] : String(id));

// The steps of one login's events: each chat with the replies that followed
// it (until the next chat) and what the state pushes after it changed.
export function buildSteps(events) {
  const steps = [];
  let step = null;
  let topic = null;
  for (const e of events) {
    if (e.kind === "say") {
      step = { say: e.content, replies: [], checks: [] };
      steps.push(step);
    } else if (e.kind === "reply" && step && e.result === undefined) {
      step.replies.push({ content: e.content, action: e.action || "", mode: "text" });
    } else if (e.kind === "state") {
      const cur = e.curTopic || {};
      if (step) addStateChecks(step, e, cur.id !== topic ? cur : null);
      topic = cur.id;
    }
  }
  return steps;
}

function addStateChecks(step, e, newTopic) {
  const put = (check) => {
    // A later change of the same thing replaces the earlier check.
    step.checks = step.checks.filter((c) => c.key !== check.key);
    step.checks.push({ ...check, on: true });
  };
  for (const m of e.memory?.new || []) put({ key: `memory:${m.key}`, kind: "memory", name: m.key, value: m.value });
  for (const m of e.memory?.deleted || []) {
    if (!(e.memory?.new || []).some((n) => n.key === m.key)) put({ key: `memory:${m.key}`, kind: "memoryAbsent", name: m.key });
  }
  for (const tag of e.tag?.newTags || []) put({ key: `tag:${tag.id}`, kind: "tagPresent", name: text(tag.desc, tag.id) });
  for (const tag of e.tag?.deletedTags || []) {
    if (!(e.tag?.newTags || []).some((n) => n.id === tag.id)) put({ key: `tag:${tag.id}`, kind: "tagAbsent", name: text(tag.desc, tag.id) });
  }
  if (newTopic && newTopic.id) put({ key: "topic", kind: "topic", name: text(newTopic.desc, newTopic.id) });
}

// The case, as an object that JSON (hence YAML) writes out.
export function caseOf({ name, appid, steps, from }) {
  const out = [];
  for (const s of steps.slice(from)) {
    const step = { say: s.say };
    const each = s.replies.filter((r) => r.mode !== "drop").map((r) => {
      const check = r.mode === "contains" ? { contains: r.content } : { text: r.content };
      if (r.action && r.keepAction !== false) check.action = r.action;
      return check;
    });
    const state = {};
    for (const c of s.checks.filter((x) => x.on)) {
      if (c.kind === "memory") (state.memory ||= {})[c.name] = c.value;
      else if (c.kind === "memoryAbsent") (state.memory_absent ||= []).push(c.name);
      else if (c.kind === "tagPresent") ((state.tags ||= {}).present ||= []).push(c.name);
      else if (c.kind === "tagAbsent") ((state.tags ||= {}).absent ||= []).push(c.name);
      else if (c.kind === "topic") state.topic = { current: c.name };
    }
    const expect = {};
    if (each.length) expect.replies = { each };
    if (Object.keys(state).length) expect.state = state;
    if (Object.keys(expect).length) step.expect = expect;
    out.push(step);
  }
  return { name, appid, steps: out };
}

export function caseText(c) {
  return `# Saved from the chat page (WebTesting). JSON is YAML: webtesting-test runs this file as it is.\n${
    JSON.stringify(c, null, 2)}\n`;
}

function checkLabel(c) {
  switch (c.kind) {
    case "memory": return t("save.check.memory", { key: c.name, value: c.value });
    case "memoryAbsent": return t("save.check.memoryAbsent", { key: c.name });
    case "tagPresent": return t("save.check.tagPresent", { tag: c.name });
    case "tagAbsent": return t("save.check.tagAbsent", { tag: c.name });
    default: return t("save.check.topic", { topic: c.name });
  }
}

// The dialog inside a panel.
export class SaveDialog {
  constructor(container, { serviceId, appid, uname, onClose }) {
    this.container = container;
    this.key = { serviceId, appid, uname };
    this.onClose = onClose;
    this.steps = [];
    this.from = 0;
  }

  async open() {
    this.container.hidden = false;
    this.container.replaceChildren(h("p", { className: "muted" }, t("save.loading")));
    let events;
    try {
      ({ events } = await apiRequest("POST", "History/get", { body: this.key }));
    } catch (e) {
      this.container.replaceChildren(h("p", { className: "error" }, e.message));
      return;
    }
    // This login's events: after the last login that was not a restore.
    const logins = events.filter((e) => e.kind === "login" && !e.restored);
    const since = logins.length ? logins[logins.length - 1].id : 0;
    this.steps = buildSteps(events.filter((e) => e.id >= since));
    this.render();
  }

  render() {
    const nameId = uid("case-name");
    const fromId = uid("case-from");
    if (!this.steps.length) {
      this.container.replaceChildren(h("p", { className: "muted save-empty" }, t("save.nothing")),
        h("button", { type: "button", className: "save-cancel", onclick: () => this.close() }, t("save.cancel")));
      return;
    }
    const from = h("select", { id: fromId, className: "save-from", onchange: (e) => {
      this.from = Number(e.target.value);
      this.render();
    } }, ...this.steps.map((s, i) => new Option(t("save.fromTurn", { n: i + 1, say: s.say }), String(i))));
    from.value = String(this.from);
    const name = h("input", { id: nameId, className: "save-name", maxLength: 256,
      value: this.name || `${this.key.uname}: ${this.steps[this.from].say}`.slice(0, 80) });
    name.addEventListener("input", () => { this.name = name.value; });
    const shared = h("input", { type: "checkbox", className: "save-shared" });
    const steps = this.steps.slice(this.from).map((s, i) => h("li", { className: "save-step" },
      h("strong", {}, `${t("save.step", { n: i + 1 })}: `), s.say,
      h("ul", {},
        ...s.replies.map((r) => {
          const mode = h("select", { className: "save-reply-mode", onchange: (e) => { r.mode = e.target.value; } },
            new Option(t("save.exact"), "text"), new Option(t("save.contains"), "contains"),
            new Option(t("save.drop"), "drop"));
          mode.value = r.mode;
          return h("li", { className: "save-reply" }, mode, " ", h("span", { className: "save-reply-text" }, r.content),
            r.action ? h("span", { className: "msg-action" }, r.action) : null);
        }),
        ...s.checks.map((c) => {
          const box = h("input", { type: "checkbox", className: "save-check", checked: c.on,
            onchange: (e) => { c.on = e.target.checked; } });
          return h("li", { className: "save-state" }, h("label", {}, box, " ", checkLabel(c)));
        }))));
    const status = h("p", { className: "save-status", role: "status" });
    const save = h("button", { type: "button", className: "save-confirm primary", onclick: async () => {
      const c = caseOf({ name: name.value.trim() || "saved case", appid: this.key.appid, steps: this.steps, from: this.from });
      save.disabled = true;
      try {
        const answer = await apiRequest("POST", "Cases/save", { body: { yaml: caseText(c), shared: shared.checked } });
        status.replaceChildren(t("save.saved", { name: answer.name }), " ",
          h("a", { href: "tests.html", className: "save-open" }, t("save.openTests")));
      } catch (e) {
        status.className = "save-status error";
        status.textContent = e.message;
      } finally {
        save.disabled = false;
      }
    } }, t("save.save"));
    this.container.replaceChildren(
      h("h3", {}, t("save.title")),
      h("div", { className: "field" }, h("label", { htmlFor: nameId }, t("save.name")), name),
      h("div", { className: "field" }, h("label", { htmlFor: fromId }, t("save.from")), from),
      h("ol", { className: "save-steps" }, ...steps),
      h("label", {}, shared, " ", t("save.shared")),
      h("div", { className: "actions" }, save,
        h("button", { type: "button", className: "save-cancel", onclick: () => this.close() }, t("save.cancel"))),
      status);
  }

  close() {
    this.container.hidden = true;
    this.container.replaceChildren();
    this.onClose();
  }
}
