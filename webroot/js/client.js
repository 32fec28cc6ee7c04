// WebTesting's browser client: the chat WebSocket, as the chat page uses it.
// Served at a stable URL, /WebTesting/js/client.js (an ES module with no
// imports), for other pages and tools in the browser; docs/client.md.
//
//   import { ChatSocket } from "/WebTesting/js/client.js";
//   const { wsAddr } = await (await fetch("/WebTesting/Service/getServiceList")).json();
//   const socket = new ChatSocket(wsAddr);
//   socket.route(1, (message) => console.log(message));   // everything about service 1
//   socket.addEventListener("open", () => socket.send({method: "loginReq", serviceId: 1,
//                                                       appid: "1.00002", uname: "alice"}));
//   socket.connect();
//
// One WebSocket, shared by every panel of the chat page.
//
// Messages are routed by serviceId to whoever subscribed to that service;
// the rest (errors about a frame that could not be read) go to "unrouted"
// listeners. If the connection drops it is opened again after a growing
// delay (1 s, 2 s, 4 s … 30 s); "open" tells listeners whether it was a
// reconnection, so the panels can log in again on the new session.
//
// The answer to a logoutReq this page sent is taken here and goes nowhere:
// the panel went back to "not logged in" when it asked, and may already be
// logging in there again (or another panel may). Every logoutResp a panel
// receives is therefore one it did not ask for: the servers ended the login.
// A new loginReq on a service waits for those answers (loggedOut): the web
// server holds a login until the agent has confirmed its end.

const INITIAL_DELAY = 1000;
const MAX_DELAY = 30000;

export class ChatSocket extends EventTarget {
  constructor(url, { beforeReconnect = async () => {} } = {}) {
    super();
    this.url = url;
    this.beforeReconnect = beforeReconnect;
    this.ws = null;
    this.delay = INITIAL_DELAY;
    this.timer = null;
    this.opened = false; // whether any connection has opened yet
    this.closing = false;
    this.routes = new Map(); // serviceId -> handler(message)
    this.logoutsAsked = new Map(); // serviceId -> logoutReq sent and not answered yet
    this.logoutWaiters = new Map(); // serviceId -> [resolve] waiting for those answers
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  connect() {
    this.timer = null;
    this.emit("state", { state: "connecting" });
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.addEventListener("open", () => {
      const reconnected = this.opened;
      this.opened = true;
      this.delay = INITIAL_DELAY;
      this.emit("state", { state: "open" });
      this.emit("open", { reconnected });
    });
    ws.addEventListener("message", (event) => this.dispatch(event.data));
    ws.addEventListener("close", () => {
      if (this.ws !== ws) return;
      this.ws = null;
      // That session's answers will never come (and its logins are gone).
      this.logoutsAsked.clear();
      for (const serviceId of [...this.logoutWaiters.keys()]) this.answered(serviceId);
      this.emit("close", {});
      if (!this.closing) this.scheduleReconnect();
    });
  }

  async scheduleReconnect() {
    const delay = this.delay;
    this.delay = Math.min(this.delay * 2, MAX_DELAY);
    this.emit("state", { state: "lost", seconds: Math.round(delay / 1000) });
    try {
      await this.beforeReconnect();
    } catch {
      // Checking the login failed (server away): just try again later.
    }
    this.timer = setTimeout(() => this.connect(), delay);
  }

  close() {
    this.closing = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close();
  }

  dispatch(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return; // the server only sends JSON; ignore anything else
    }
    if (message && message.method === "logoutResp" && this.logoutsAsked.get(message.serviceId) > 0) {
      const left = this.logoutsAsked.get(message.serviceId) - 1;
      if (left > 0) this.logoutsAsked.set(message.serviceId, left);
      else {
        this.logoutsAsked.delete(message.serviceId);
        this.answered(message.serviceId);
      }
      return;
    }
    const handler = message && this.routes.get(message.serviceId);
    if (handler) handler(message);
    else this.emit("unrouted", message);
  }

  // Resolves when every logoutReq sent for serviceId has its answer, or the
  // connection is gone.
  loggedOut(serviceId) {
    if (!(this.logoutsAsked.get(serviceId) > 0)) return Promise.resolve();
    return new Promise((resolve) => {
      if (!this.logoutWaiters.has(serviceId)) this.logoutWaiters.set(serviceId, []);
      this.logoutWaiters.get(serviceId).push(resolve);
    });
  }

  answered(serviceId) {
    const waiters = this.logoutWaiters.get(serviceId) || [];
    this.logoutWaiters.delete(serviceId);
    waiters.forEach((resolve) => resolve());
  }

  route(serviceId, handler) {
    this.routes.set(serviceId, handler);
  }

  unroute(serviceId, handler) {
    if (this.routes.get(serviceId) === handler) this.routes.delete(serviceId);
  }

  // Send one request; false when the connection is not open.
  send(message) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(message));
    if (message.method === "logoutReq") {
      this.logoutsAsked.set(message.serviceId, (this.logoutsAsked.get(message.serviceId) || 0) + 1);
    }
    return true;
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
