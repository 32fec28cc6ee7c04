// Why something is down or failed, in plain words.
//
// The servers give every answer with result != 1, every servStatus, every
// unprompted logoutResp and every service-list entry a stable `code`
// (docs/protocol.md, "Reason codes") beside `msg`, the raw text. The page says
// the code's sentence in the person's language and keeps msg behind a
// "details" toggle: msg is network text (addresses, errno wording) that helps
// whoever fixes it, not the person chatting.
//
// An unknown code reads as a generic sentence, with msg still in the details.
// A missing code (a server older than the codes) is read from `result` where
// that is unambiguous, else it is generic too.

import { h } from "./dom.js";
import { has, t } from "./i18n.js";

const BY_RESULT = {
  400: "bad_request",
  401: "not_logged_in",
  403: "forbidden",
  413: "too_large",
  500: "internal",
  503: "unavailable",
};

// {code, msg} of a message; `fallback` is the code when the message has none
// (a caller that knows what an uncoded message means there, e.g. an
// unprompted logoutResp with 403 is an appid taken away).
export function reasonOf(message, fallback = null) {
  const m = message || {};
  let code = typeof m.code === "string" && m.code ? m.code : null;
  if (code === null) code = fallback ?? BY_RESULT[m.result] ?? null;
  const msg = typeof m.msg === "string" && m.msg !== "ok" ? m.msg : "";
  return { code, msg };
}

export function isKnown(code) {
  return typeof code === "string" && has(`reason.${code}`);
}

// The plain sentence for a code in the current language.
export function sentence(code) {
  return isKnown(code) ? t(`reason.${code}`) : t("reason.unknown");
}

// A reason as DOM: its sentence (put into `template`'s {reason} when given),
// then msg behind a <details> toggle. Text only, never HTML.
export function reasonNode(reason, template = null, { open = false } = {}) {
  const said = sentence(reason.code);
  return h("span", { className: "reason", dataset: { code: reason.code || "" } },
    h("span", { className: "reason-text" }, template ? t(template, { reason: said }) : said),
    detailsNode(reason.msg, open));
}

// The raw msg behind a "details" toggle (nothing when there is none).
export function detailsNode(msg, open = false) {
  if (!msg) return null;
  return h("details", { className: "reason-details", open },
    h("summary", { dataset: { i18n: "reason.details" } }, t("reason.details")),
    h("span", { className: "reason-msg" }, msg));
}

// What a service-list entry that is down says: its code's sentence, or its
// msg when the server sent no code.
export function entryText(entry) {
  if (entry.code) return sentence(entry.code);
  return entry.msg || sentence(null);
}
