// The Tests page: saved cases (Cases/list), run on a service or on two at
// once to compare them (Cases/run), each step turning green or red as the
// server reports it (Cases/run/<id>, read every half second); and the Load
// tab: simulated testers following one case (Cases/load), its figures read
// every second (Cases/load/<id>) and drawn as they come.

import { api, request } from "./api.js";
import { byId, h } from "./dom.js";
import { t } from "./i18n.js";
import { startPage } from "./shell.js";

const POLL_MS = 500;
const LOAD_POLL_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";

const user = await startPage();
if (user) await main();

async function main() {
  let cases = [];
  let services = [];

  async function loadCases() {
    ({ cases } = await request("GET", "Cases/list"));
    byId("load-case").replaceChildren(...cases.map((c) => new Option(c.name, String(c.id))));
    byId("no-cases").hidden = cases.length > 0;
    byId("cases").replaceChildren(...cases.map((c) => h("li", { className: "case", dataset: { id: String(c.id) } },
      h("label", {}, h("input", { type: "checkbox", className: "case-pick", value: String(c.id) }), " ",
        h("span", { className: "case-name" }, c.name)),
      " ", h("span", { className: "muted" }, t("tests.owner", { owner: c.owner })),
      c.shared ? h("span", { className: "badge" }, t("tests.shared")) : null,
      " ", h("a", { href: `/WebTesting/Cases/download/${c.id}`, className: "case-download" }, t("tests.download")),
      c.mine || user.role === "admin"
        ? h("button", { type: "button", className: "link-button case-delete", onclick: async () => {
          await request("POST", "Cases/delete", { body: { id: c.id } });
          await loadCases();
        } }, t("tests.delete"))
        : null)));
  }

  async function loadServices() {
    ({ serviceLists: services } = await api.serviceList());
    const label = (s) => `#${s.serviceId} ${s.description}${s.status === 1 ? "" : ` — ${s.msg}`}`;
    byId("run-service").replaceChildren(...services.map((s) => new Option(label(s), String(s.serviceId))));
    byId("run-against").replaceChildren(new Option(t("tests.noCompare"), ""),
      ...services.map((s) => new Option(label(s), String(s.serviceId))));
    byId("load-service").replaceChildren(...services.map((s) => new Option(label(s), String(s.serviceId))));
  }

  function showTab(which) {
    for (const name of ["run", "load"]) {
      byId(`tab-${name}`).setAttribute("aria-selected", String(name === which));
      byId(`${name}-panel`).hidden = name !== which;
    }
  }
  byId("tab-run").addEventListener("click", () => showTab("run"));
  byId("tab-load").addEventListener("click", () => showTab("load"));

  let loading = null; // the load run being followed
  const number = (id) => (byId(id).value === "" ? null : Number(byId(id).value));
  byId("load-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = byId("load-error");
    error.textContent = "";
    const body = {
      caseId: Number(byId("load-case").value), serviceId: Number(byId("load-service").value),
      users: number("load-users"), ramp: number("load-ramp") ?? 0, duration: number("load-duration"),
    };
    if (!body.caseId) return (error.textContent = t("tests.pickCases"));
    if (number("load-max-p99") !== null) body.maxP99Ms = number("load-max-p99");
    if (number("load-max-errors") !== null) body.maxErrorsPercent = number("load-max-errors");
    byId("load-start").disabled = true;
    try {
      ({ loadId: loading } = await request("POST", "Cases/load", { body }));
      byId("load-stop").disabled = false;
      byId("load-result").replaceChildren();
      await follow(`Cases/load/${encodeURIComponent(loading)}`, "load", paintLoad, LOAD_POLL_MS);
    } catch (e) {
      error.textContent = e.message;
    } finally {
      loading = null;
      byId("load-start").disabled = false;
      byId("load-stop").disabled = true;
    }
    return undefined;
  });
  byId("load-stop").addEventListener("click", async () => {
    if (loading) await request("POST", "Cases/loadStop", { body: { loadId: loading } });
  });

  byId("case-add").addEventListener("click", async () => {
    const status = byId("case-add-status");
    try {
      const answer = await request("POST", "Cases/save", {
        body: { yaml: byId("case-yaml").value, shared: byId("case-shared").checked } });
      status.className = "";
      status.textContent = t("save.saved", { name: answer.name });
      byId("case-yaml").value = "";
      await loadCases();
    } catch (e) {
      status.className = "error";
      status.textContent = e.message;
    }
  });

  byId("run-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = byId("run-error");
    error.textContent = "";
    const caseIds = [...document.querySelectorAll(".case-pick:checked")].map((box) => Number(box.value));
    if (!caseIds.length) return (error.textContent = t("tests.pickCases"));
    const serviceId = Number(byId("run-service").value);
    if (!serviceId) return (error.textContent = t("tests.pickService"));
    const against = byId("run-against").value ? Number(byId("run-against").value) : null;
    byId("run").disabled = true;
    try {
      const { runId } = await request("POST", "Cases/run", { body: { caseIds, serviceId, against } });
      await follow(`Cases/run/${encodeURIComponent(runId)}`, "run", paint, POLL_MS);
    } catch (e) {
      error.textContent = e.message;
    } finally {
      byId("run").disabled = false;
    }
    return undefined;
  });

  await Promise.all([loadCases(), loadServices()]);
}

function paint(run) {
  byId("run-summary").textContent = run.error || (run.done ? t("tests.summary", run) : "");
  byId("results").replaceChildren(...run.cases.map((c) => h("li", { className: `result is-${c.status}`,
    dataset: { status: c.status } },
  h("div", { className: "result-head" }, h("strong", {}, c.name), " ",
    h("span", { className: `badge status-${c.status}` }, t(`tests.status.${c.status}`))),
  ...[c.a, c.b].filter(Boolean).filter((r) => r.error).map((r) => h("p", { className: "error" },
    `#${r.serviceId}: ${r.error}`)),
  run.against ? compared(c, run) : steps(c.a))));
}

function stepName(s) {
  return `${t("tests.step", { n: s.index + 1 })}: ${s.say === null ? t("tests.wait") : s.say}`;
}

function stepClass(s) {
  return s.running ? "is-running" : s.passed ? "is-passed" : "is-failed";
}

function steps(result) {
  if (!result) return null;
  return h("ol", { className: "steps" }, ...result.steps.map((s) => h("li", { className: `step ${stepClass(s)}` },
    h("span", { className: "step-name" }, stepName(s)),
    s.replies.length ? h("div", { className: "muted" }, s.replies.map((r) => `“${r.content}”`).join(" · ")) : null,
    s.problems.length ? h("ul", { className: "problems" }, ...s.problems.map((p) => h("li", {}, p))) : null)));
}

const shown = (v) => (Array.isArray(v) ? v.map((x) => (x === null ? "—" : String(x))).join("; ") || "—"
  : v === null || v === undefined ? "—" : String(v));

// Side by side: per step, each reply and state part of both services, differences marked.
function compared(c, run) {
  if (!c.a || !c.b) return null;
  return h("ol", { className: "steps" }, ...(c.diff || []).map((d) => {
    const sa = c.a.steps[d.index];
    const sb = c.b.steps[d.index];
    return h("li", { className: `step compare ${d.rows.every((r) => r.same) ? "is-same" : "is-different"}` },
      h("span", { className: "step-name" }, stepName(sa)),
      h("table", { className: "diff" },
        h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", {}, `#${run.serviceId}`), h("th", {}, `#${run.against}`))),
        h("tbody", {}, ...d.rows.map((r) => h("tr", { className: r.same ? "same" : "differs" },
          h("th", { scope: "row" }, `${r.same ? "=" : "≠"} ${r.name}`), h("td", {}, shown(r.a)), h("td", {}, shown(r.b)))))),
      ...[[c.a.serviceId, sa], [c.b.serviceId, sb]].flatMap(([sid, s]) => (s ? s.problems : []).map((p) =>
        h("p", { className: "problem error" }, `#${sid}: ${p}`))));
  }));
}

// Read a run (or a load) every few ms and paint it, until the server says it is done.
async function follow(path, key, paintIt, every) {
  for (;;) {
    const { [key]: state } = await request("GET", path);
    paintIt(state);
    if (state.done) return;
    await new Promise((resolve) => setTimeout(resolve, every));
  }
}

const ms = (v) => (v === null || v === undefined ? "—" : `${Math.round(v)} ms`);

function paintLoad(load) {
  const now = load.summary.timeline.length ? load.now : { users: 0, roundTrips: 0, p50: null, p99: null,
    errors: 0, failedChecks: 0 };
  byId("load-live").hidden = false;
  byId("load-live").dataset.done = String(load.done);
  byId("load-now-users").textContent = String(load.done ? load.summary.peakUsers : now.users);
  byId("load-now-rts").textContent = String(load.done ? load.summary.rtPerSecond : now.roundTrips);
  byId("load-now-p50").textContent = ms(load.done ? load.summary.p50 : now.p50);
  byId("load-now-p99").textContent = ms(load.done ? load.summary.p99 : now.p99);
  byId("load-now-errors").textContent = String(load.summary.errors);
  byId("load-now-failed").textContent = String(load.summary.failedChecks);
  chart(load.summary.timeline);
  if (!load.done) return;
  const s = load.summary;
  const result = byId("load-result");
  if (load.error) {
    result.replaceChildren(h("p", { className: "error" }, load.error));
    return;
  }
  result.replaceChildren(...[
    h("p", { className: `verdict ${s.passed ? "pass" : "fail"}`, dataset: { passed: String(s.passed) } },
      t(s.passed ? "load.passed" : "load.failed")),
    h("p", {}, t("load.summary", { ...s, errorPercent: (s.errorRate * 100).toFixed(2) })),
    s.thresholds.length ? h("ul", { className: "thresholds" }, ...s.thresholds.map((v) => h("li",
      { className: v.passed ? "pass" : "fail" }, `${v.passed ? "PASS" : "FAIL"} ${v.threshold}: ${v.got}`))) : null,
    s.reasons.length ? h("ul", { className: "problems" }, ...s.reasons.map((r) => h("li", {}, `${r.count}× ${r.reason}`)))
      : null,
    h("a", { href: `/WebTesting/Cases/load/${encodeURIComponent(load.loadId)}/report.html`, target: "_blank",
      className: "load-report" }, t("load.report")),
  ].filter(Boolean));
}

// p50 and p99 per second as lines, round trips per second as bars.
function chart(timeline) {
  const svg = byId("load-chart");
  // An SVG element has no "hidden" property: the attribute itself.
  svg.toggleAttribute("hidden", timeline.length === 0);
  const width = 600;
  const height = 160;
  const pad = 10;
  const last = Math.max(1, ...timeline.map((r) => r.t));
  const topMs = Math.max(1, ...timeline.map((r) => r.p99 || 0));
  const topRt = Math.max(1, ...timeline.map((r) => r.roundTrips));
  const x = (tt) => pad + ((width - 2 * pad) * tt) / last;
  const y = (v, top) => height - pad - ((height - 2 * pad) * v) / top;
  const el = (name, attrs) => {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  };
  const bars = timeline.map((r) => el("rect", { class: "rt", x: x(r.t) - 1, y: y(r.roundTrips, topRt), width: 2,
    height: height - pad - y(r.roundTrips, topRt) }));
  const line = (key) => el("polyline", { class: key, points: timeline.filter((r) => r[key] !== null)
    .map((r) => `${x(r.t).toFixed(1)},${y(r[key], topMs).toFixed(1)}`).join(" ") });
  svg.replaceChildren(...bars, line("p50"), line("p99"));
}
