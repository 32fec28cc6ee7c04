// Where a chat's time went. The reply to a chat carries "hops": when the web
// server sent the chat on and the reply back (webIn, webOut), when the agent
// got the chat and sent the reply (agentIn, agentOut), and when the bot's
// reply reached the agent (botReply) — Unix ms, each from its own host's
// clock, so only times of one host are subtracted (docs/protocol.md). The
// page adds its own round trip, measured on its own clock.

import { h } from "../dom.js";
import { t } from "../i18n.js";

// The hops, in the order a message travels them.
export const HOPS = ["browserWeb", "webAgent", "bot", "agent"];

// How many replies the rolling p50/p99 look back over.
export const WINDOW = 100;

// {total, browserWeb, webAgent, bot, agent} in ms, or null when the reply was not timed.
export function split(hops, totalMs) {
  if (!hops || typeof hops !== "object") return null;
  const n = (key) => (typeof hops[key] === "number" && Number.isFinite(hops[key]) ? hops[key] : null);
  const [webIn, webOut, agentIn, botReply, agentOut] = ["webIn", "webOut", "agentIn", "botReply", "agentOut"].map(n);
  if ([webIn, webOut, agentIn, botReply, agentOut].includes(null)) return null;
  const web = Math.max(0, webOut - webIn);
  const agentAll = Math.max(0, agentOut - agentIn);
  const bot = Math.min(agentAll, Math.max(0, botReply - agentIn));
  return {
    total: totalMs,
    browserWeb: Math.max(0, totalMs - web),
    webAgent: Math.max(0, web - agentAll),
    bot,
    agent: Math.max(0, agentAll - bot),
  };
}

export function quantile(values, q) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
}

const ms = (v) => (v === null ? "—" : `${v < 10 ? v.toFixed(2) : v.toFixed(1)} ms`);

// A reply's time as one small stacked bar; its title says each hop.
export function hopBar(parts) {
  const title = [...HOPS.map((hop) => `${t(`hops.${hop}`)} ${ms(parts[hop])}`), `${t("hops.total")} ${ms(parts.total)}`]
    .join(" · ");
  const bar = h("div", { className: "hops", title, role: "img", "aria-label": title });
  for (const hop of HOPS) {
    const segment = h("span", { className: "hop", dataset: { hop, ms: parts[hop].toFixed(3) } });
    segment.style.flexGrow = String(Math.max(parts[hop], 0.0001)); // CSSOM, not an inline style attribute
    bar.append(segment);
  }
  return bar;
}

// The last WINDOW replies of one panel (one service) and their p50/p99 per hop.
export class Rolling {
  constructor() {
    this.samples = [];
  }

  add(parts) {
    this.samples.push(parts);
    if (this.samples.length > WINDOW) this.samples.shift();
  }

  clear() {
    this.samples = [];
  }

  stats() {
    const of = (key) => this.samples.map((s) => s[key]);
    const out = { count: this.samples.length };
    for (const key of ["total", ...HOPS]) out[key] = { p50: quantile(of(key), 0.5), p99: quantile(of(key), 0.99) };
    return out;
  }

  // "Round trip p50 12.3 ms · p99 40.1 ms (last 37 replies)", with each hop's p50/p99 in the title.
  render(el) {
    const s = this.stats();
    el.hidden = s.count === 0;
    if (!s.count) return;
    el.textContent = t("hops.summary", { p50: ms(s.total.p50), p99: ms(s.total.p99), count: s.count });
    el.title = HOPS.map((hop) => `${t(`hops.${hop}`)}: p50 ${ms(s[hop].p50)}, p99 ${ms(s[hop].p99)}`).join("\n");
    el.dataset.p50 = s.total.p50.toFixed(3);
    el.dataset.p99 = s.total.p99.toFixed(3);
  }
}
