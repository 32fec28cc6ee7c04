// The admin page's people: who is logged in to which bot user (asked of every
// agent, GET Service/getLogins) and the active login sessions of the accounts
// (GET Account/sessions), each of which an admin can end.

import { api, ApiError } from "../api.js";
import { byId, h } from "../dom.js";
import { formatTime, t } from "../i18n.js";

const label = (key) => h("span", { dataset: { i18n: key } }, t(key));

function emptyRow(columns, key) {
  return h("tr", {}, h("td", { colSpan: columns, className: "empty", dataset: { i18n: key } }, t(key)));
}

// Seconds (the API's times) as the page's local time.
const when = (seconds) => (typeof seconds === "number" ? formatTime(seconds * 1000) : "");

export function mountPeople({ say }) {
  const logins = document.querySelector("#bot-logins tbody");
  const unknown = byId("logins-unknown");
  const sessions = document.querySelector("#sessions tbody");
  let shown = { logins: "", sessions: "" };

  function loginRow(l) {
    return h("tr", { dataset: { serviceId: l.serviceId, uname: l.uname } },
      h("td", {}, String(l.serviceId)),
      h("td", {}, l.appid),
      h("td", { className: "uname" }, l.uname),
      h("td", { className: "account" }, l.account || ""),
      h("td", {}, when(l.since)));
  }

  function sessionRow(s) {
    return h("tr", { dataset: { sessionId: s.id, username: s.username } },
      h("td", { className: "account" }, s.username),
      h("td", {}, label(`role.${s.role}`)),
      h("td", { className: "addr" }, s.address || ""),
      h("td", { className: "description" }, s.userAgent || ""),
      h("td", {}, when(s.lastSeen)),
      h("td", { className: "actions" },
        h("button", { type: "button", className: "end-session danger", onclick: () => end({ id: s.id }),
          dataset: { i18n: "admin.sessions.end" } }, t("admin.sessions.end")),
        h("button", { type: "button", className: "end-user", onclick: () => end({ username: s.username }),
          dataset: { i18n: "admin.sessions.endUser" } }, t("admin.sessions.endUser"))));
  }

  async function end(which) {
    try {
      const answer = await api.endSessions(which);
      say(t("admin.sessions.ended", { count: answer.ended ?? 0 }));
      await refresh(true);
    } catch (e) {
      say(e.message, true);
    }
  }

  async function refresh(force = false) {
    const [loginAnswer, sessionAnswer] = await Promise.allSettled([api.botLogins(), api.sessions()]);
    if (loginAnswer.status === "fulfilled") {
      const list = loginAnswer.value.logins || [];
      const missing = loginAnswer.value.unknown || [];
      const key = JSON.stringify([list, missing]);
      if (force || key !== shown.logins) {
        shown.logins = key;
        logins.replaceChildren(...(list.length ? list.map(loginRow) : [emptyRow(5, "admin.logins.empty")]));
        unknown.hidden = !missing.length;
        unknown.textContent = missing.length ? t("admin.logins.unknown", { ids: missing.join(", ") }) : "";
      }
    }
    if (sessionAnswer.status === "fulfilled") {
      const list = sessionAnswer.value.sessions || [];
      const key = JSON.stringify(list);
      if (force || key !== shown.sessions) {
        shown.sessions = key;
        sessions.replaceChildren(...(list.length ? list.map(sessionRow) : [emptyRow(6, "admin.sessions.empty")]));
      }
    } else if (sessionAnswer.reason instanceof ApiError && sessionAnswer.reason.status === 403) {
      location.reload(); // no longer an admin: the page says why
    }
  }

  document.addEventListener("langchange", () => refresh(true));
  return refresh;
}
