// The admin page: the registry's services with their live status, refreshed
// every few seconds; add, edit and delete.

import { api, ApiError } from "./api.js";
import { byId, h } from "./dom.js";
import { t } from "./i18n.js";
import { sentence } from "./reasons.js";
import { startPage } from "./shell.js";
import { fill, read, clearErrors, showError, FieldError } from "./admin/form.js";
import { mountHealth } from "./admin/health.js";
import { mountPeople } from "./admin/people.js";

const REFRESH_MS = 3000;
const TIMELINE_MS = 30000; // the server works the timeline out at most every 10 s

const user = await startPage({ role: "admin" });
if (user) main();

function main() {
  const notice = byId("admin-notice");
  const body = document.querySelector("#services tbody");
  const editor = byId("service-editor");
  let services = [];
  let shown = "";
  let editing = null; // serviceId being edited, 0 for a new one, null when closed
  const health = mountHealth({ say: (text, isError) => say(text, isError) });

  const say = (text, isError = false) => {
    notice.textContent = text;
    notice.classList.toggle("error", isError);
  };

  // Why a service is down: the plain sentence testers see, and the raw msg
  // (admins fix things, so they see it whole). No code (an older server): msg.
  function reason(s) {
    const said = s.code ? h("span", { className: "reason-text", dataset: { code: s.code } }, sentence(s.code)) : null;
    return h("span", { className: "reason" }, said, s.msg ? h("span", { className: "reason-msg" }, s.msg) : null);
  }

  function row(s) {
    const up = s.status === 1;
    return h("tr", { dataset: { serviceId: s.serviceId, status: s.status } },
      h("td", {}, String(s.serviceId)),
      h("td", { className: "status-cell" },
        h("span", { className: up ? "badge up" : "badge down", dataset: { i18n: up ? "admin.status.up" : "admin.status.down" } },
          t(up ? "admin.status.up" : "admin.status.down")),
        up ? null : reason(s)),
      health.cells(s.serviceId),
      h("td", { className: "description" }, s.description),
      h("td", {}, (s.allowedAppids || []).join(", ")),
      h("td", { className: "addr" }, s.wxServiceAddr),
      h("td", { className: "addr" }, s.agentAddr),
      h("td", { className: "actions" },
        h("button", { type: "button", className: "history", onclick: () => health.openHistory(s.serviceId), dataset: { i18n: "admin.history" } }, t("admin.history")),
        h("button", { type: "button", className: "edit", onclick: () => openEditor(s), dataset: { i18n: "admin.edit" } }, t("admin.edit")),
        h("button", { type: "button", className: "delete danger", onclick: () => remove(s), dataset: { i18n: "admin.delete" } }, t("admin.delete"))));
  }

  function render(force = false) {
    const key = JSON.stringify([services, health.key()]);
    if (!force && key === shown) return;
    shown = key;
    body.replaceChildren(...(services.length
      ? services.map(row)
      : [h("tr", {}, h("td", { colSpan: 8, className: "empty", dataset: { i18n: "admin.empty" } }, t("admin.empty")))]));
  }

  async function refresh() {
    try {
      const answer = await api.services();
      services = answer.servicdLists || answer.serviceLists || [];
      render();
      if (notice.dataset.loadFailed) {
        say("");
        delete notice.dataset.loadFailed;
      }
    } catch (e) {
      if (e instanceof ApiError && e.status === 403) {
        location.reload(); // the role changed: the page tells the person why
        return;
      }
      notice.dataset.loadFailed = "1";
      say(t("admin.loadFailed", { msg: e.message }), true);
    }
  }

  function openEditor(service) {
    editing = service ? service.serviceId : 0;
    byId("editor-title").textContent = service
      ? t("admin.form.editTitle", { id: service.serviceId })
      : t("admin.form.addTitle");
    fill(service);
    byId("pwd-note").hidden = !service;
    editor.hidden = false;
    byId("f-description").focus();
  }

  function closeEditor() {
    editing = null;
    editor.hidden = true;
    clearErrors();
  }

  async function save(event) {
    event.preventDefault();
    clearErrors();
    let service;
    try {
      service = read();
    } catch (e) {
      if (e instanceof FieldError) return showError(e.message, e.field);
      throw e;
    }
    const button = byId("save-service");
    button.disabled = true;
    try {
      if (editing) {
        await api.updateServices([{ serviceId: editing, ...service }]);
        health.refreshTrail();
        say(t("admin.saved"));
      } else {
        await api.addServices([service]);
        say(t("admin.added"));
      }
      closeEditor();
      await refresh();
    } catch (e) {
      showError(e.message);
    } finally {
      button.disabled = false;
    }
  }

  async function remove(service) {
    if (!confirm(t("admin.confirmDelete", { id: service.serviceId, description: service.description }))) return;
    try {
      await api.delServices([service.serviceId]);
      say(t("admin.deleted", { id: service.serviceId }));
      if (editing === service.serviceId) closeEditor();
      await refresh();
    } catch (e) {
      say(e.message, true);
    }
  }

  byId("add-service").addEventListener("click", () => openEditor(null));
  byId("cancel-edit").addEventListener("click", closeEditor);
  byId("service-form").addEventListener("submit", save);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && editing !== null) closeEditor();
  });
  document.addEventListener("langchange", () => render(true));

  const refreshPeople = mountPeople({ say });
  const refreshAll = () => Promise.all([refresh(), refreshPeople(), health.refreshTrail(), health.refreshHistory()]);
  const refreshTimeline = async () => {
    if (await health.refreshTimeline()) render();
  };
  refreshAll();
  refreshTimeline();
  setInterval(refreshAll, REFRESH_MS);
  setInterval(refreshTimeline, TIMELINE_MS);
}
