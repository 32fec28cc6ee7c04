// What every page but the login page shares: the top bar (navigation, who is
// logged in, language, log out) and the check that someone is logged in, with
// the right role.

import { api, ApiError, redirectToLogin } from "./api.js";
import { h, byId } from "./dom.js";
import { applyI18n, mountLangSwitch, t } from "./i18n.js";

const LINKS = [
  ["index.html", "nav.home", null],
  ["chat.html", "nav.chat", null],
  ["tests.html", "nav.tests", null],
  ["admin.html", "nav.admin", "admin"],
];

function renderNav(user) {
  const nav = byId("nav");
  const here = location.pathname.split("/").pop() || "index.html";
  nav.replaceChildren(
    ...LINKS.filter(([, , role]) => !role || user.role === role).map(([href, key]) =>
      h("a", { href, "aria-current": href === here ? "page" : null, dataset: { i18n: key } }, t(key)),
    ),
  );
  const who = byId("who");
  const paint = () => {
    who.textContent = user.username ? t("nav.user", { username: user.username, role: t(`role.${user.role}`) }) : "";
  };
  paint();
  document.addEventListener("langchange", paint);
  const logout = byId("logout");
  logout.hidden = false;
  logout.addEventListener("click", async () => {
    try {
      await api.logout();
    } finally {
      location.assign("login.html");
    }
  });
  // Ends every session of this account, in every browser, at once.
  const logoutAll = h("button", { type: "button", id: "logout-all", className: "link-button",
    dataset: { i18n: "nav.logoutAll" } }, t("nav.logoutAll"));
  logoutAll.addEventListener("click", async () => {
    if (!confirm(t("nav.logoutAllConfirm"))) return;
    try {
      await api.logoutAll();
    } finally {
      location.assign("login.html");
    }
  });
  logout.after(logoutAll);
}

function showForbidden(user) {
  const main = document.querySelector("main");
  const text = h("p", {}, "");
  const paint = () => {
    text.textContent = t("forbidden.text", { username: user.username, role: t(`role.${user.role}`) });
  };
  paint();
  document.addEventListener("langchange", paint);
  main.replaceChildren(
    h("section", { className: "card forbidden", role: "alert", id: "forbidden" },
      h("h1", { dataset: { i18n: "forbidden.title" } }, t("forbidden.title")), text,
      h("p", {}, h("a", { href: "index.html", dataset: { i18n: "nav.home" } }, t("nav.home")))),
  );
}

// Start a page: texts, language switch, and the logged-in user. Resolves to
// the user ({username, role}) or to null when the page must not go on (not
// logged in: already on the way to the login page; wrong role: told so).
export async function startPage({ role = null } = {}) {
  applyI18n(document);
  mountLangSwitch(byId("lang"));
  let user;
  try {
    user = await api.me();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      redirectToLogin();
      return null;
    }
    throw e;
  }
  document.body.dataset.role = user.role;
  renderNav(user);
  if (role && user.role !== role) {
    showForbidden(user);
    return null;
  }
  return user;
}
