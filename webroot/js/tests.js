// The Tests page: saved cases (Cases/list), run on a service or on two at
// once to compare them (Cases/run), each step turning green or red as the
// server reports it (Cases/run/<id>, read every half second).

import { api, request } from "./api.js";
import { byId, h } from "./dom.js";
import { t } from "./i18n.js";
import { startPage } from "./shell.js";

const POLL_MS = 500;

const user = await startPage();
if (user) await main();

async function main() {
  let cases = [];
  let services = [];

  async function loadCases() {
    ({ cases } = await request("GET", "Cases/list"));
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
  }

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
      await follow(runId);
    } catch (e) {
      error.textContent = e.message;
    } finally {
      byId("run").disabled = false;
    }
    return undefined;
  });

  async function follow(runId) {
    for (;;) {
      const { run } = await request("GET", `Cases/run/${encodeURIComponent(runId)}`);
      paint(run);
      if (run.done) return;
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }

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
