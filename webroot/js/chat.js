// The chat page: one WebSocket, any number of bot panels side by side.

import { api, ApiError, redirectToLogin } from "./api.js";
import { byId } from "./dom.js";
import { t } from "./i18n.js";
import { reasonNode, reasonOf } from "./reasons.js";
import { startPage } from "./shell.js";
import { ChatSocket } from "./client.js";
import { ChatPanel } from "./chat/panel.js";

const SERVICE_REFRESH_MS = 5000;

const user = await startPage();
if (user) await main();

async function main() {
  const notice = byId("chat-notice");
  let list;
  try {
    list = await api.serviceList();
  } catch (e) {
    const reason = reasonOf(e instanceof ApiError ? e.body : {}, "unavailable");
    notice.replaceChildren(reasonNode(reason));
    return;
  }
  let services = list.serviceLists || list.serviceList || [];
  const panels = [];
  let count = 0;

  const socket = new ChatSocket(list.wsAddr, {
    // A refused reconnection may mean the login expired: check, and go log in.
    beforeReconnect: async () => {
      try {
        await api.me();
      } catch (e) {
        if (e instanceof ApiError && e.status === 401) redirectToLogin();
      }
    },
  });

  const connection = byId("connection");
  let connectionState = { state: "connecting" };
  const paintConnection = () => {
    const { state, seconds } = connectionState;
    connection.dataset.state = state;
    connection.textContent = t(`chat.connection.${state}`, { seconds });
  };
  socket.addEventListener("state", (e) => {
    connectionState = e.detail;
    paintConnection();
  });
  socket.addEventListener("open", (e) => {
    for (const panel of panels) {
      if (e.detail.reconnected) panel.reconnected();
      panel.paint();
    }
  });
  socket.addEventListener("close", () => panels.forEach((panel) => panel.disconnected()));
  // An error about no service (a frame the server could not read): the page's.
  let pageError = null;
  socket.addEventListener("unrouted", (e) => {
    const message = e.detail || {};
    if (message.result !== undefined && message.result !== 1 && message.serviceId === undefined) {
      pageError = reasonOf(message);
      paintNotice();
    }
  });

  const isTaken = (serviceId, asking) =>
    panels.some((panel) => panel !== asking && panel.status !== "idle" && panel.serviceId === serviceId);
  const paintNotice = () => {
    if (!services.length) notice.replaceChildren(t("chat.noServices"));
    else if (pageError) notice.replaceChildren(reasonNode(pageError, "chat.error"));
    else notice.replaceChildren();
  };

  const template = byId("panel-template");
  const container = byId("panels");
  function addPanel() {
    count += 1;
    const panel = new ChatPanel({
      socket, number: count, template, services, isTaken,
      onClose: (gone) => {
        panels.splice(panels.indexOf(gone), 1);
        panels.forEach((p) => p.setServices(services));
      },
      // Which services are free changed for the other panels.
      onStatus: (changed) => panels.forEach((p) => p !== changed && p.setServices(services)),
    });
    panels.push(panel);
    container.append(panel.el);
    panel.paintServices();
    panel.ui.service.focus();
    return panel;
  }

  byId("add-panel").addEventListener("click", addPanel);
  document.addEventListener("langchange", () => {
    paintConnection();
    paintNotice();
    panels.forEach((panel) => panel.relabel());
  });

  paintNotice();
  addPanel();
  socket.connect();

  setInterval(async () => {
    try {
      services = (await api.serviceList()).serviceLists || [];
    } catch {
      return; // keep the last list; the next round tries again
    }
    paintNotice();
    panels.forEach((panel) => panel.setServices(services));
  }, SERVICE_REFRESH_MS);
}
