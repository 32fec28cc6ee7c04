// The add/edit form of a service: from a service to the inputs and back, and
// the API's validation errors shown beside the field they name.

import { byId } from "../dom.js";
import { t } from "../i18n.js";

export const FIELDS = [
  "description", "allowedAppids", "wxServiceAddr", "agentAddr", "redisCluster",
  "mysqlAddr", "mysqlPort", "mysqlUser", "mysqlPwd", "mysqlDbname", "allowStateWrites",
];

export class FieldError extends Error {
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

const input = (name) => byId(`f-${name}`);

// Show a service in the inputs; null empties them for a new one.
export function fill(service) {
  for (const name of FIELDS) {
    let value = service ? service[name] : "";
    if (name === "allowedAppids") value = (value || []).join(", ");
    if (name === "redisCluster") value = (value || []).map((n) => `${n.host}:${n.port}`).join(", ");
    if (name === "allowStateWrites") {
      input(name).checked = Boolean(value); // off unless an admin turns it on
      continue;
    }
    // The stored password comes masked; sent back unchanged it keeps the stored one.
    input(name).value = value ?? "";
  }
  clearErrors();
}

function splitList(text) {
  return text.split(/[,，\s]+/).map((s) => s.trim()).filter(Boolean);
}

function asNumber(text) {
  return /^\d+$/.test(text.trim()) ? Number(text.trim()) : text.trim();
}

// The service the inputs describe, in the API's shape; FieldError when an
// input cannot even be put in that shape (the API checks everything else).
export function read() {
  const value = (name) => input(name).value;
  const nodes = splitList(value("redisCluster")).map((node) => {
    const match = /^(.+):(\d+)$/.exec(node);
    if (!match) throw new FieldError("redisCluster", t("admin.form.badRedis"));
    return { host: match[1].replace(/^\[(.*)\]$/, "$1"), port: Number(match[2]) };
  });
  return {
    description: value("description"),
    allowedAppids: splitList(value("allowedAppids")),
    wxServiceAddr: value("wxServiceAddr").trim(),
    agentAddr: value("agentAddr").trim(),
    redisCluster: nodes,
    mysqlAddr: value("mysqlAddr").trim(),
    mysqlPort: asNumber(value("mysqlPort")),
    mysqlUser: value("mysqlUser"),
    mysqlPwd: value("mysqlPwd"),
    mysqlDbname: value("mysqlDbname").trim(),
    allowStateWrites: input("allowStateWrites").checked,
  };
}

export function clearErrors() {
  for (const name of FIELDS) {
    byId(`e-${name}`).textContent = "";
    input(name).removeAttribute("aria-invalid");
  }
  byId("form-error").textContent = "";
}

// Put an error beside its field: the API names it like
// "[0].redisCluster[1].port: must be between 1 and 65535".
export function showError(message, field = null) {
  const match = /^(?:\[\d+\]\.)?([A-Za-z]+)(\S*):\s*(.*)$/s.exec(message);
  const name = field || (match && FIELDS.includes(match[1]) ? match[1] : null);
  if (!name) {
    byId("form-error").textContent = message;
    return;
  }
  const detail = field ? message : `${match[2] ? `${match[2].replace(/^[.]/, "")}: ` : ""}${match[3]}`;
  byId(`e-${name}`).textContent = detail;
  input(name).setAttribute("aria-invalid", "true");
  input(name).focus();
}
