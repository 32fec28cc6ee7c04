// The HTTP API, same origin, with the session cookie. A 401 sends the person
// to the login page and back here afterwards.

export const BASE = "/WebTesting";

export class ApiError extends Error {
  constructor(status, body, retryAfter = null) {
    super(body && body.msg ? body.msg : `HTTP ${status}`);
    this.status = status;
    this.retryAfter = retryAfter; // seconds, from a 429's Retry-After
    this.result = body && body.result;
    this.body = body || {};
  }
}

export function loginUrl() {
  const here = location.pathname + location.search + location.hash;
  return `login.html?next=${encodeURIComponent(here)}`;
}

export function redirectToLogin() {
  location.assign(loginUrl());
}

// Only a path on this site may be a place to go back to after logging in.
export function safeNext(value) {
  if (typeof value === "string" && value.startsWith(`${BASE}/`) && !value.startsWith("//")) return value;
  return "index.html";
}

// request("GET", "Service/getServiceList") -> the answer's JSON (result 1),
// or throws ApiError. Options: {body, noRedirect}.
export async function request(method, path, { body, noRedirect = false } = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(`${BASE}/${path}`, init);
  } catch (e) {
    throw new ApiError(0, { result: 0, msg: e.message || "network error" });
  }
  let answer = null;
  try {
    answer = await response.json();
  } catch {
    answer = { result: response.status, msg: response.statusText || `HTTP ${response.status}` };
  }
  if (response.status === 401 && !noRedirect) {
    redirectToLogin();
    throw new ApiError(401, answer);
  }
  if (!response.ok || answer.result !== 1) {
    const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
    throw new ApiError(response.status, answer, Number.isFinite(retry) ? retry : null);
  }
  return answer;
}

export const api = {
  me: () => request("GET", "Account/me", { noRedirect: true }),
  login: (username, password) =>
    request("POST", "Account/login", { body: { username, password }, noRedirect: true }),
  logout: () => request("POST", "Account/logout", { body: {}, noRedirect: true }),
  logoutAll: () => request("POST", "Account/logoutAll", { body: {}, noRedirect: true }),
  sessions: () => request("GET", "Account/sessions"),
  endSessions: (which) => request("POST", "Account/endSessions", { body: which }),
  botLogins: () => request("GET", "Service/getLogins"),
  serviceList: () => request("GET", "Service/getServiceList"),
  services: () => request("GET", "Service/getServices"),
  addServices: (services) => request("PUT", "Service/addServices", { body: services }),
  updateServices: (services) => request("POST", "Service/updateServices", { body: services }),
  delServices: (serviceIds) => request("DELETE", "Service/delServices", { body: { serviceIds } }),
  healthTimeline: () => request("GET", "Health/timeline"),
  healthHistory: (serviceId) => request("GET", `Health/history?serviceId=${encodeURIComponent(serviceId)}`),
  audit: (query = {}) => request("GET", `Audit/list?${new URLSearchParams(query)}`),
};
