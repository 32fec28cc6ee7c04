// One chat panel: its own login on one service, its messages and the user's
// live state. Several panels share the page's one WebSocket; the socket hands
// each panel the messages carrying its serviceId.
//
// A panel shows one reason at a time (the banner): why its service is down,
// why its login ended or failed, or why a request was refused. The same
// reason again changes nothing; a different one replaces it. Reasons come as a
// code, said in plain words, with the raw msg behind a "details" toggle
// (../reasons.js).

import { request as apiRequest } from "../api.js";
import { h, uid } from "../dom.js";
import { applyI18n, getLang, t } from "../i18n.js";
import { detailsNode, entryText, reasonNode, reasonOf } from "../reasons.js";
import { Rolling, hopBar, split } from "./hops.js";
import { SaveDialog } from "./save.js";
import { StateView } from "./state.js";

// idle: choosing a service; loggingIn: waiting for loginResp; active: logged in
const IDLE = "idle";
const LOGGING_IN = "loggingIn";
const ACTIVE = "active";

// Earlier turns shown when a panel logs in.
const HISTORY_TURNS = 50;

// What the banner says about a reason of each kind.
const REASON_TEMPLATES = {
  down: "chat.down", // servStatus 0: the service is down, sending waits
  ended: "chat.ended", // the servers ended the login: not logged in any more
  loginFailed: "chat.loginFailed",
  error: "chat.error", // a request was refused
};

export class ChatPanel {
  constructor({ socket, number, template, services, isTaken, onClose, onStatus = () => {} }) {
    this.socket = socket;
    this.number = number;
    this.services = services;
    this.isTaken = isTaken;
    this.onClose = onClose;
    this.onStatus = onStatus; // told when this panel takes or frees a service
    this.status = IDLE;
    this.serviceId = null;
    this.appid = null;
    this.uname = null;
    this.down = false; // servStatus said the service is down
    this.reason = null; // {kind, code, msg}: what the banner says, or null
    this.bannerShown = null; // what the banner was last built from
    this.pushes = true;
    this.handler = (message) => this.receive(message);
    this.chatsSent = []; // when each chat still waiting for its reply was sent (performance.now()), oldest first
    this.rolling = new Rolling(); // this login's last replies, hop by hop

    this.el = template.content.firstElementChild.cloneNode(true);
    this.el.dataset.panel = String(number);
    const $ = (selector) => this.el.querySelector(selector);
    this.ui = {
      title: $(".panel-title"),
      close: $(".panel-close"),
      loginForm: $(".panel-login"),
      service: $("select.service"),
      serviceInfo: $(".service-info"),
      appid: $("select.appid"),
      uname: $("input.uname"),
      loginButton: $("button.login"),
      loginStatus: $(".login-status"),
      session: $(".session"),
      sessionText: $(".session-text"),
      logout: $("button.logout"),
      saveCase: $("button.save-case"),
      savePanel: $(".save-panel"),
      banner: $(".service-banner"),
      messages: $(".messages"),
      sendForm: $(".send-form"),
      content: $("input.content"),
      send: $("button.send"),
      hint: $(".send-hint"),
      latency: $(".latency"),
      refresh: $("button.refresh"),
      auto: $("input.auto"),
    };
    // Unique ids so that every label points at its own control.
    for (const label of this.el.querySelectorAll("label[data-for]")) {
      const control = this.el.querySelector(`.${label.dataset.for}`);
      control.id = uid(label.dataset.for);
      label.htmlFor = control.id;
    }
    applyI18n(this.el);
    this.stateView = new StateView($(".state"));
    this.wire();
    this.paint();
  }

  wire() {
    const ui = this.ui;
    ui.service.addEventListener("change", () => this.paintServiceInfo());
    ui.loginForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.login();
    });
    ui.logout.addEventListener("click", () => this.logout());
    ui.saveCase.addEventListener("click", () => {
      ui.saveCase.disabled = true;
      new SaveDialog(ui.savePanel, {
        serviceId: this.serviceId, appid: this.appid, uname: this.uname,
        onClose: () => { ui.saveCase.disabled = false; },
      }).open();
    });
    ui.close.addEventListener("click", () => this.close());
    ui.sendForm.addEventListener("submit", (event) => {
      event.preventDefault();
      this.sendChat();
    });
    ui.content.addEventListener("input", () => {
      ui.hint.textContent = "";
    });
    ui.refresh.addEventListener("click", () => this.request("getUserStatusReq"));
    ui.auto.addEventListener("change", () => {
      this.pushes = ui.auto.checked;
      this.request("setStatusPushReq", { enabled: this.pushes });
    });
  }

  // -- the service list (refreshed by the page) -----------------------------

  setServices(services) {
    this.services = services;
    // A service that left the list was deleted: whatever the server said.
    if (this.status !== IDLE && !services.some((s) => s.serviceId === this.serviceId)) {
      this.ended({ code: "service_deleted", msg: "" });
    }
    if (this.status === IDLE) this.paintServices();
    this.paintServiceInfo();
  }

  paintServices() {
    const select = this.ui.service;
    const chosen = select.value;
    const options = [new Option(t("chat.pickService"), "")];
    for (const s of this.services) {
      let label = `#${s.serviceId} ${s.description}`;
      let disabled = false;
      if (s.status !== 1) {
        label += ` — ${t("chat.serviceDown", { reason: entryText(s) })}`;
        disabled = true;
      } else if (this.isTaken(s.serviceId, this)) {
        label += ` — ${t("chat.inOtherPanel")}`;
        disabled = true;
      }
      const option = new Option(label, String(s.serviceId));
      option.disabled = disabled;
      // An option holds text only: its raw reason is the hover title.
      if (s.status !== 1 && s.msg) option.title = s.msg;
      options.push(option);
    }
    select.replaceChildren(...options);
    const still = this.services.find((s) => String(s.serviceId) === chosen);
    select.value = still && still.status === 1 ? chosen : "";
    this.paintServiceInfo();
  }

  selectedService() {
    const id = this.status === IDLE ? Number(this.ui.service.value) : this.serviceId;
    return this.services.find((s) => s.serviceId === id) || null;
  }

  paintServiceInfo() {
    const service = this.selectedService();
    const info = this.ui.serviceInfo;
    const open = Boolean(info.querySelector("details")?.open); // the list refreshes every few seconds
    info.replaceChildren();
    if (service) {
      info.append(h("span", { className: "service-desc" }, service.description));
      // A logged-in panel's banner says why it is down: not twice.
      if (service.status !== 1 && !this.down) {
        info.append(h("span", { className: "service-reason" },
          t("chat.serviceDown", { reason: entryText(service) }),
          service.code ? detailsNode(service.msg, open) : null));
      }
    }
    if (this.status !== IDLE) return;
    const appids = service ? service.allowedAppids : [];
    const keep = this.ui.appid.value;
    this.ui.appid.replaceChildren(...appids.map((a) => new Option(a, a)));
    if (appids.includes(keep)) this.ui.appid.value = keep;
  }

  // -- logging in and out -----------------------------------------------------

  login() {
    const service = this.selectedService();
    const appid = this.ui.appid.value;
    const uname = this.ui.uname.value.trim();
    if (!service) return this.setLoginStatus(t("chat.pickService"), true);
    if (!uname) {
      this.ui.uname.focus();
      return this.setLoginStatus(t("chat.unameRequired"), true);
    }
    if (this.isTaken(service.serviceId, this)) return this.setLoginStatus(t("chat.inOtherPanel"), true);
    this.reason = null; // a new attempt: the old reason is history
    this.serviceId = service.serviceId;
    this.appid = appid;
    this.uname = uname;
    this.sendLogin();
  }

  sendLogin() {
    if (!this.socket.isOpen) {
      this.setLoginStatus(t("chat.notConnected"), true);
      return;
    }
    const serviceId = this.serviceId;
    this.socket.route(serviceId, this.handler);
    this.status = LOGGING_IN;
    this.setLoginStatus(t("chat.loggingIn"), false);
    this.paint();
    this.onStatus(this);
    // Logged out there a moment ago: the server is still ending that login.
    this.socket.loggedOut(serviceId).then(() => {
      if (this.status !== LOGGING_IN || this.serviceId !== serviceId) return;
      // Not sent: the connection is gone, and reconnected() logs in again.
      this.socket.send({ method: "loginReq", serviceId, appid: this.appid, uname: this.uname });
    });
  }

  logout() {
    if (this.status !== IDLE) {
      this.socket.send({ method: "logoutReq", serviceId: this.serviceId, appid: this.appid });
      this.system(t("chat.loggedOut"));
    }
    this.reason = null;
    this.toIdle();
  }

  // The servers ended the login (appid revoked, service deleted, ended
  // elsewhere, re-login refused): back to "not logged in", saying why. The
  // servers have forgotten the login already, so nothing is sent.
  ended(reason) {
    if (this.status === IDLE) return;
    this.system(t("chat.loginEnded"));
    this.setReason("ended", reason);
    this.toIdle();
  }

  toIdle() {
    if (this.serviceId !== null) this.socket.unroute(this.serviceId, this.handler);
    this.chatsSent = [];
    this.rolling.clear();
    this.rolling.render(this.ui.latency);
    this.status = IDLE;
    this.down = false;
    this.paintServices();
    this.paint();
    this.onStatus(this);
  }

  close() {
    this.logout();
    this.stateView.dispose();
    this.el.remove();
    this.onClose(this);
  }

  // The socket opened again: this is a new session, so log in again.
  reconnected() {
    if (this.status === IDLE) return;
    this.system(t("chat.reconnected"));
    this.sendLogin();
  }

  disconnected() {
    this.chatsSent = []; // the replies to these will never come on a new socket
    this.paint();
  }

  // -- messages from the server -------------------------------------------------

  receive(message) {
    switch (message.method) {
      case "loginResp":
        return this.onLogin(message);
      case "aichatResp": {
        const parts = this.timed(message);
        if (message.result === 1) return this.say("bot", message.content, message.action, parts);
        return this.error(message);
      }
      case "getUserStatusResp":
        if (message.result === 1) return this.stateView.update(message);
        return this.stateError(message);
      case "setStatusPushResp":
        if (message.result === 1) this.ui.auto.checked = this.pushes = Boolean(message.enabled);
        else this.error(message);
        return undefined;
      case "servStatus":
        return this.onServStatus(message);
      case "logoutResp":
        // Never one this panel asked for (the socket keeps those): the
        // servers ended the login. An older server says 403 for a revoked appid.
        return this.ended(reasonOf(message, message.result === 403 ? "appid_revoked" : "login_ended"));
      default:
        if (message.result !== 1) this.error(message);
        return undefined;
    }
  }

  onLogin(message) {
    if (this.status === IDLE) return;
    if (message.result !== 1) {
      // While logged in, a failed login is a re-login the bot refused.
      if (this.status === ACTIVE) return this.ended(reasonOf(message, "relogin_refused"));
      this.setLoginStatus("", false);
      this.setReason("loginFailed", reasonOf(message));
      this.toIdle();
      return;
    }
    const first = this.status === LOGGING_IN;
    this.status = ACTIVE;
    this.down = false;
    this.reason = null;
    this.strUid = message.strUid;
    this.setLoginStatus("", false);
    if (first) this.stateView.clear();
    // A new login starts with pushes on; keep the person's choice.
    if (!this.pushes) this.request("setStatusPushReq", { enabled: false });
    this.paint();
    if (first) {
      this.ui.content.focus();
      this.showHistory();
    }
  }

  // The earlier turns with this bot user (the server keeps them: a reload
  // loses nothing), shown above this login's messages.
  async showHistory() {
    const key = { serviceId: this.serviceId, appid: this.appid, uname: this.uname };
    let events;
    try {
      ({ events } = await apiRequest("POST", "History/get", { body: { ...key, turns: HISTORY_TURNS } }));
    } catch {
      return; // history is a convenience: the chat goes on without it
    }
    if (this.serviceId !== key.serviceId || this.uname !== key.uname || this.status === IDLE) return;
    // This login's own events are on the page already.
    const logins = events.filter((e) => e.kind === "login" && !e.restored);
    const cut = logins.length ? logins[logins.length - 1].id : Infinity;
    const earlier = events.filter((e) => e.id < cut);
    this.history = events.filter((e) => e.id >= cut);
    if (!earlier.some((e) => e.kind === "say" || e.kind === "reply")) return;
    const items = [];
    for (const e of earlier) {
      if (e.kind === "say") items.push(this.message("me", e.content, "", true));
      else if (e.kind === "reply" && e.result === undefined) items.push(this.message("bot", e.content, e.action, true));
      else if (e.kind === "reply") items.push(h("li", { className: "msg msg-error msg-earlier" }, e.msg));
      else if (e.kind === "login" && !e.restored) {
        items.push(h("li", { className: "msg msg-system msg-earlier" }, new Date(e.at).toLocaleString()));
      }
    }
    items.push(h("li", { className: "msg msg-system history-end", dataset: { i18n: "chat.historyEnd" } },
      t("chat.historyEnd")));
    const list = this.ui.messages;
    list.prepend(...items);
    list.scrollTop = list.scrollHeight;
  }

  onServStatus(message) {
    if (this.status === IDLE) return;
    if (message.status === 1) {
      if (this.down) this.system(t("chat.up"));
      this.down = false;
      if (this.reason?.kind === "down") this.reason = null;
    } else {
      const reason = reasonOf(message);
      // Today's web server says a deletion this way, and forgets the login.
      if (reason.code === "service_deleted") return this.ended(reason);
      if (!this.down) this.system(t("chat.wentDown"), true);
      this.down = true;
      this.setReason("down", reason);
    }
    this.paintServiceInfo();
    this.paint();
  }

  // Show `reason` as the panel's one reason; the same again changes nothing.
  setReason(kind, reason) {
    const r = this.reason;
    if (r && r.kind === kind && r.code === reason.code && r.msg === reason.msg) return;
    this.reason = { kind, code: reason.code, msg: reason.msg };
    this.paint();
  }

  // A request was refused. While the service is down its reason stands: the
  // errors then are its echoes.
  error(message) {
    if (this.down) return;
    this.setReason("error", reasonOf(message));
  }

  stateError(message) {
    const reason = reasonOf(message);
    if (this.reason && this.reason.code === reason.code) return; // said in the banner already
    this.stateView.showError(reasonNode(reason, "chat.error"));
  }

  // -- chatting -----------------------------------------------------------------

  sendChat() {
    const content = this.ui.content.value;
    if (!content.trim()) {
      this.ui.hint.textContent = t("chat.emptyContent");
      this.ui.content.focus();
      return;
    }
    if (this.down) {
      this.ui.hint.textContent = t("chat.cannotSend");
      return;
    }
    if (!this.request("aichatReq", { content })) return;
    this.say("me", content, "");
    this.ui.content.value = "";
    this.ui.hint.textContent = "";
    if (this.reason?.kind === "error") {
      this.reason = null; // a new request: the last refusal is history
      this.paint();
    }
  }

  request(method, fields = {}) {
    if (this.status !== ACTIVE) return false;
    const sent = this.socket.send({ method, serviceId: this.serviceId, appid: this.appid, ...fields });
    if (!sent) this.ui.hint.textContent = t("chat.notConnected");
    else if (method === "aichatReq") this.chatsSent.push(performance.now());
    return sent;
  }

  // The hops of the reply to the oldest chat waiting (an error answers one too;
  // a message the bot sends on its own answers none), or null.
  timed(message) {
    if (!message.hops && message.result === 1) return null;
    const sent = this.chatsSent.shift();
    if (sent === undefined) return null;
    const parts = split(message.hops, performance.now() - sent);
    if (parts) {
      this.rolling.add(parts);
      this.rolling.render(this.ui.latency);
    }
    return parts;
  }

  say(who, content, action, parts = null) {
    const item = this.message(who, content, action, false);
    if (parts) item.append(hopBar(parts));
    this.append(item);
  }

  message(who, content, action, earlier) {
    const key = who === "me" ? "chat.you" : "chat.bot";
    return h("li", { className: `msg msg-${who}${earlier ? " msg-earlier" : ""}` },
      h("span", { className: "msg-who", dataset: { i18n: key } }, t(key)),
      h("span", { className: "msg-text" }, content),
      action ? h("span", { className: "msg-action", title: "action" }, action) : null);
  }

  system(text, isError = false) {
    this.append(h("li", { className: isError ? "msg msg-error" : "msg msg-system" }, text));
  }

  append(item) {
    const list = this.ui.messages;
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.append(item);
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  // -- painting -----------------------------------------------------------------

  setLoginStatus(text, isError) {
    this.ui.loginStatus.textContent = text;
    this.ui.loginStatus.classList.toggle("error", Boolean(isError && text));
  }

  paint() {
    const ui = this.ui;
    const idle = this.status === IDLE;
    const active = this.status === ACTIVE;
    const service = this.selectedService();
    ui.title.textContent = service && !idle
      ? `${t("chat.panel", { n: this.number })} · #${service.serviceId} ${service.description}`
      : t("chat.panel", { n: this.number });
    for (const control of [ui.service, ui.appid, ui.uname, ui.loginButton]) control.disabled = !idle;
    ui.loginButton.hidden = active;
    ui.session.hidden = !active;
    if (active) ui.sessionText.textContent = t("chat.loggedIn", { uname: this.uname, uid: this.strUid });
    const connected = this.socket.isOpen;
    const canSend = active && connected && !this.down;
    ui.content.disabled = !canSend;
    ui.send.disabled = !canSend;
    ui.refresh.disabled = !(active && connected);
    ui.auto.disabled = !(active && connected);
    this.paintBanner(active && !connected);
    this.el.classList.toggle("is-down", active && (!connected || this.down));
    this.el.dataset.status = this.down ? "down" : this.status;
  }

  // Built again only when what it says changed, so an open "details" stays open.
  paintBanner(notConnected) {
    const banner = this.ui.banner;
    const shown = JSON.stringify([getLang(), notConnected, notConnected ? null : this.reason]);
    if (shown === this.bannerShown) return;
    const before = this.bannerShown && JSON.parse(this.bannerShown)[2];
    this.bannerShown = shown;
    const r = this.reason;
    if (notConnected) banner.replaceChildren(t("chat.notConnected"));
    else if (r) {
      // Still the same code (a new language, a new msg): keep the toggle as it was.
      const open = Boolean(before && before.code === r.code && banner.querySelector("details")?.open);
      banner.replaceChildren(reasonNode(r, REASON_TEMPLATES[r.kind], { open }));
    } else banner.replaceChildren();
    banner.hidden = !notConnected && !r;
    banner.dataset.kind = notConnected ? "notConnected" : r ? r.kind : "";
  }

  relabel() {
    if (this.status === IDLE) this.paintServices();
    this.paintServiceInfo();
    this.paint();
    this.stateView.render();
  }
}
