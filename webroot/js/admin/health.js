// The admin page's look back: each service's last 24 hours as a timeline bar
// (up, down, partial; hover shows the reason and the time) with a p50 latency
// sparkline (GET Health/timeline); a service's history — its outages, and who
// changed it (GET Health/history, GET Audit/list?serviceId=) — and the whole
// audit trail of the registry (GET Audit/list).

import { api } from "../api.js";
import { byId, h } from "../dom.js";
import { formatTime, t } from "../i18n.js";
import { sentence } from "../reasons.js";

const SVG = "http://www.w3.org/2000/svg";
const AUDIT_PAGE = 50;

const label = (key) => h("span", { dataset: { i18n: key } }, t(key));

function emptyRow(columns, key) {
  return h("tr", {}, h("td", { colSpan: columns, className: "empty", dataset: { i18n: key } }, t(key)));
}

export function duration(ms) {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours} h ${m % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });

// One bucket's hover text: its hours, its state, and its worst reason with when it began.
function beatTitle(b, width) {
  const span = `${clock(b.start)}–${clock(b.start + width)}`;
  let text = `${span}: ${t(`admin.health.${b.state}`)}`;
  if (b.state !== "up" && b.state !== "none" && b.reason) {
    text += ` — ${b.code ? sentence(b.code) : ""} ${b.reason} (${formatTime(b.at)})`;
  }
  if (b.p50Ms !== null && b.p50Ms !== undefined) text += ` · p50 ${b.p50Ms.toFixed(1)} ms`;
  return text;
}

export function timelineBar(entry, width, onOpen) {
  return h("button", {
    type: "button", className: "timeline", onclick: onOpen,
    title: entry.uptime === null ? t("admin.health.noRecord") : t("admin.health.uptime", { pct: entry.uptime.toFixed(2) }),
    "aria-label": t("admin.health.open", { id: entry.serviceId }),
  }, entry.buckets.map((b) => h("span", { className: "beat", dataset: { state: b.state }, title: beatTitle(b, width) })));
}

// The p50 latency of each bucket as a line; a bucket without samples breaks it.
export function sparkline(entry) {
  const values = entry.buckets.map((b) => b.p50Ms);
  const known = values.filter((v) => v !== null && v !== undefined);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "sparkline");
  svg.setAttribute("viewBox", `0 0 ${values.length} 20`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const max = Math.max(...known, 0.001);
  const sorted = [...known].sort((a, b) => a - b);
  const median = sorted.length ? sorted[Math.floor(sorted.length / 2)] : null;
  svg.setAttribute("aria-label", median === null ? t("admin.health.noLatency")
    : t("admin.health.latency", { ms: median.toFixed(1), max: max.toFixed(1) }));
  const title = document.createElementNS(SVG, "title");
  title.textContent = svg.getAttribute("aria-label");
  svg.append(title);
  let points = [];
  const flush = () => {
    if (points.length) {
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", (points.length === 1 ? [points[0], points[0].replace(/^[\d.]+/, (x) => String(Number(x) + 0.8))] : points).join(" "));
      svg.append(line);
    }
    points = [];
  };
  values.forEach((v, i) => {
    if (v === null || v === undefined) flush();
    else points.push(`${i + 0.5},${(19 - (v / max) * 18).toFixed(2)}`);
  });
  flush();
  return svg;
}

function showValue(v) {
  if (v === null || v === undefined) return "—";
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

// "field: before → after", one line per changed field.
export function changeLines(entry) {
  const keys = [...new Set([...Object.keys(entry.before || {}), ...Object.keys(entry.after || {})])].sort();
  return keys.map((k) => h("div", { className: "change" },
    h("code", {}, k), ": ",
    entry.before ? h("span", { className: "was" }, showValue(entry.before[k])) : null,
    entry.before && entry.after ? " → " : null,
    entry.after ? h("span", { className: "now" }, showValue(entry.after[k])) : null));
}

function auditRow(e) {
  return h("tr", { dataset: { auditId: e.id, action: e.action } },
    h("td", {}, formatTime(e.at)),
    h("td", { className: "account" }, e.actor),
    h("td", { className: "addr" }, e.address),
    h("td", {}, e.action),
    h("td", {}, `${e.kind} ${e.target}`),
    h("td", { className: "changes" }, changeLines(e)));
}

export function mountHealth({ say }) {
  const panel = byId("service-history");
  const trail = document.querySelector("#audit tbody");
  let timeline = { services: [], bucketMs: 0 };
  let open = null; // the serviceId whose history is shown
  let shownTrail = "";
  let trailLimit = AUDIT_PAGE;

  async function refreshTimeline() {
    try {
      timeline = await api.healthTimeline();
      return true;
    } catch (e) {
      say(t("admin.health.loadFailed", { msg: e.message }), true);
      return false;
    }
  }

  // The cells of one service's row: its bar and its sparkline (empty until the timeline came).
  function cells(serviceId) {
    const entry = (timeline.services || []).find((s) => s.serviceId === serviceId);
    if (!entry) return h("td", { className: "health" });
    return h("td", { className: "health" }, timelineBar(entry, timeline.bucketMs, () => openHistory(serviceId)),
      sparkline(entry));
  }

  async function openHistory(serviceId) {
    open = serviceId;
    panel.hidden = false;
    byId("history-title").textContent = t("admin.health.historyTitle", { id: serviceId });
    await refreshHistory();
    panel.scrollIntoView({ block: "nearest" });
  }

  async function refreshHistory() {
    if (open === null) return;
    const serviceId = open;
    const [history, changes] = await Promise.allSettled([
      api.healthHistory(serviceId), api.audit({ serviceId, limit: 100 })]);
    if (open !== serviceId) return;
    const outages = document.querySelector("#outages tbody");
    if (history.status === "fulfilled") {
      const v = history.value;
      byId("history-summary").textContent = t("admin.health.summary", {
        uptime: v.uptime === null ? "—" : v.uptime.toFixed(2),
        p50: v.p50Ms === null ? "—" : v.p50Ms.toFixed(1),
        since: formatTime(v.since),
      });
      outages.replaceChildren(...(v.outages.length ? v.outages.map((o) => h("tr", { dataset: { state: o.state } },
        h("td", {}, formatTime(o.start)),
        h("td", {}, o.end === null ? label("admin.health.ongoing") : formatTime(o.end)),
        h("td", {}, duration(o.durationMs)),
        h("td", {}, h("span", { className: `badge ${o.state === "partial" ? "partial" : "down"}` },
          t(`admin.health.${o.state}`))),
        h("td", { className: "reason" }, h("span", { className: "reason-text" }, sentence(o.code)),
          h("span", { className: "reason-msg" }, o.reasons.join(" · ")))))
        : [emptyRow(5, "admin.health.noOutages")]));
    } else {
      say(history.reason.message, true);
    }
    const audit = document.querySelector("#service-audit tbody");
    if (changes.status === "fulfilled") {
      const list = changes.value.entries || [];
      audit.replaceChildren(...(list.length ? list.map(auditRow) : [emptyRow(6, "admin.audit.empty")]));
    }
  }

  function closeHistory() {
    open = null;
    panel.hidden = true;
  }

  async function refreshTrail(force = false) {
    try {
      const answer = await api.audit({ limit: trailLimit });
      const list = answer.entries || [];
      const key = JSON.stringify(list);
      if (!force && key === shownTrail) return;
      shownTrail = key;
      trail.replaceChildren(...(list.length ? list.map(auditRow) : [emptyRow(6, "admin.audit.empty")]));
      byId("audit-more").hidden = list.length < trailLimit;
    } catch (e) {
      say(e.message, true);
    }
  }

  byId("history-close").addEventListener("click", closeHistory);
  byId("audit-more").addEventListener("click", () => {
    trailLimit = Math.min(1000, trailLimit + AUDIT_PAGE);
    refreshTrail(true);
  });
  document.addEventListener("langchange", () => {
    refreshTrail(true);
    if (open !== null) openHistory(open);
  });
  return { refreshTimeline, cells, refreshHistory, refreshTrail, openHistory, key: () => timeline.until };
}
