// Chinese and English strings, and the language switch.
//
// Static text in the HTML carries data-i18n="key" (textContent),
// data-i18n-placeholder, data-i18n-title or data-i18n-aria-label; dynamic text
// uses t(key, vars). The choice is remembered in localStorage and defaults from
// navigator.language. Changing it fires "langchange" on document.

const STRINGS = {
  en: {
    "app.name": "WebTesting",
    "lang.label": "Language",
    "nav.home": "Home",
    "nav.chat": "Chat",
    "nav.admin": "Services",
    "nav.logout": "Log out",
    "nav.user": "{username} ({role})",
    "nav.logoutAll": "Log out everywhere",
    "nav.logoutAllConfirm": "End every session of this account, in every browser?",
    "role.tester": "tester",
    "role.admin": "admin",

    "login.title": "Log in",
    "login.username": "Username",
    "login.password": "Password",
    "login.submit": "Log in",
    "login.busy": "Logging in…",
    "login.failed": "Login failed: {msg}",
    "login.throttled": "Too many login attempts. Try again in {seconds} s.",
    "login.hint": "Ask an admin for an account.",

    "home.title": "What would you like to do?",
    "home.chat": "Chat",
    "home.chat.desc": "Talk to a deployed bot and watch the user's tags, topics and memory change live.",
    "home.admin": "Services",
    "home.admin.desc": "Register bot deployments, edit or delete them, and see which are healthy and why not.",
    "home.dbviews": "Database views",
    "home.dbviews.desc": "Coming later.",

    "chat.title": "Chat",
    "chat.addPanel": "Add panel",
    "chat.connection.open": "Connected",
    "chat.connection.connecting": "Connecting…",
    "chat.connection.lost": "Connection lost; reconnecting in {seconds} s",
    "chat.noServices": "No services are registered yet.",
    "chat.service": "Service",
    "chat.appid": "Appid",
    "chat.uname": "User name",
    "chat.login": "Log in",
    "chat.logout": "Log out",
    "chat.closePanel": "Close panel",
    "chat.loggingIn": "Logging in…",
    "chat.loggedIn": "Logged in as {uname} (uid {uid})",
    "chat.loginFailed": "Login failed: {reason}",
    "chat.unameRequired": "Enter a user name.",
    "chat.serviceDown": "unavailable: {reason}",
    "chat.pickService": "Pick a service",
    "chat.message": "Message",
    "chat.send": "Send",
    "chat.emptyContent": "Type a message first.",
    "chat.you": "You",
    "chat.historyEnd": "— earlier conversations above —",
    "chat.bot": "Bot",
    "chat.error": "Error: {reason}",
    "chat.down": "Service down: {reason}",
    "chat.wentDown": "The service went down.",
    "chat.ended": "Not logged in: {reason}",
    "chat.loginEnded": "The login ended.",
    "chat.up": "Service back up.",
    "chat.reconnected": "Reconnected; logging in again.",
    "chat.notConnected": "Not connected to the server.",
    "chat.inOtherPanel": "in use in another panel",
    "chat.panel": "Bot {n}",
    "chat.loggedOut": "Logged out.",
    "chat.cannotSend": "Sending is disabled while the service is down.",

    "state.title": "User state",
    "state.refresh": "Refresh state",
    "state.auto": "Auto refresh",
    "state.tags": "Tags",
    "state.topic": "Current topic",
    "state.prevTopic": "Previous topic",
    "state.topics": "Topic list",
    "state.memory": "Memory",
    "state.none": "none",
    "state.new": "new",
    "state.deleted": "deleted",
    "state.inUse": "in use",
    "state.notInUse": "not in use",
    "state.time": "{begin} – {end}",
    "state.until": "until {end}",
    "state.updated": "Updated {time}",

    "admin.title": "Services",
    "admin.add": "Add service",
    "admin.refreshNote": "The list refreshes by itself every few seconds.",
    "admin.col.id": "ID",
    "admin.col.status": "Status",
    "admin.col.description": "Description",
    "admin.col.appids": "Appids",
    "admin.col.wx": "WxService",
    "admin.col.agent": "Agent",
    "admin.col.actions": "Actions",
    "admin.status.up": "up",
    "admin.status.down": "down",
    "admin.edit": "Edit",
    "admin.delete": "Delete",
    "admin.confirmDelete": "Delete service {id} ({description})?",
    "admin.deleted": "Service {id} deleted.",
    "admin.saved": "Saved.",
    "admin.added": "Service added.",
    "admin.form.addTitle": "Add a service",
    "admin.form.editTitle": "Edit service {id}",
    "admin.form.description": "Description",
    "admin.form.allowedAppids": "Allowed appids (comma separated)",
    "admin.form.wxServiceAddr": "WxService address",
    "admin.form.agentAddr": "Agent address",
    "admin.form.redisCluster": "Redis Cluster masters (host:port, comma separated)",
    "admin.form.mysqlAddr": "MySQL host",
    "admin.form.mysqlPort": "MySQL port",
    "admin.form.mysqlUser": "MySQL user",
    "admin.form.mysqlPwd": "MySQL password",
    "admin.form.mysqlPwdKeep": "unchanged unless you type a new one",
    "admin.form.mysqlDbname": "MySQL database",
    "admin.form.allowStateWrites": "Test cases may set a user's starting state (writes to the bot's Redis)",
    "admin.form.save": "Save",
    "admin.form.cancel": "Cancel",
    "admin.form.badRedis": "write each master as host:port",
    "admin.empty": "No services yet.",
    "admin.loadFailed": "Could not load the services: {msg}",
    "admin.logins.title": "Who is logged in to the bots",
    "admin.logins.appid": "Appid",
    "admin.logins.uname": "Bot user",
    "admin.logins.account": "Account",
    "admin.logins.since": "Since",
    "admin.logins.empty": "Nobody is logged in to a bot.",
    "admin.logins.unknown": "Services whose agent did not answer: {ids}",
    "admin.sessions.title": "Active sessions",
    "admin.sessions.username": "Account",
    "admin.sessions.role": "Role",
    "admin.sessions.address": "Address",
    "admin.sessions.userAgent": "Browser",
    "admin.sessions.lastSeen": "Last seen",
    "admin.sessions.end": "End",
    "admin.sessions.endUser": "End all of this account",
    "admin.sessions.ended": "Ended {count} sessions.",
    "admin.sessions.empty": "No active sessions.",

    "forbidden.title": "Not allowed",
    "forbidden.text": "This page is for admins. You are logged in as {username} ({role}).",
    "error.network": "The server did not answer.",

    "reason.details": "Details",
    "reason.unknown": "The service is unavailable, or something went wrong.",
    "reason.ok": "Everything is working.",
    "reason.waiting_for_agent": "Waiting for the service's agent to connect.",
    "reason.agent_unreachable": "The agent on the bot's host cannot be reached.",
    "reason.agent_unknown_host": "The agent's host name cannot be found.",
    "reason.agent_address_invalid": "The agent's address is not valid; an admin must correct it.",
    "reason.agent_refused": "The agent refused the connection.",
    "reason.agent_not_responding": "The agent stopped responding.",
    "reason.settings_refused": "The agent refused the service's settings.",
    "reason.bot_unreachable": "The bot cannot be reached.",
    "reason.bot_address_invalid": "The bot's address is not valid; an admin must correct it.",
    "reason.bot_not_responding": "The bot stopped responding.",
    "reason.redis_unreachable": "The bot's Redis cannot be reached.",
    "reason.redis_partial": "Part of the bot's Redis Cluster is down.",
    "reason.mysql_unreachable": "The bot's MySQL cannot be reached.",
    "reason.registry_unavailable": "The service registry is unavailable.",
    "reason.appid_revoked": "This appid is no longer allowed on the service.",
    "reason.service_deleted": "The service was removed from the registry.",
    "reason.login_ended": "The login was ended elsewhere.",
    "reason.relogin_refused": "The bot refused to log in again.",
    "reason.bad_request": "The request was not valid.",
    "reason.unknown_method": "The server does not know this request.",
    "reason.too_large": "The message is too large.",
    "reason.not_logged_in": "You are not logged in to this service.",
    "reason.forbidden": "This is not allowed.",
    "reason.unavailable": "The service is unavailable right now.",
    "reason.timeout": "No answer came in time.",
    "reason.internal": "The server ran into an internal error.",
    "reason.bot_refused": "The bot refused the request.",
    "reason.agent_auth_failed": "The agent link could not be authenticated; an admin must check the agent's address and secret.",
    "reason.agent_tls_failed": "The agent's certificate was not the expected one; an admin must check it.",
    "reason.too_many_attempts": "Too many login attempts; wait a little and try again.",
    "reason.logged_in_elsewhere": "This bot user was logged in elsewhere, so this login ended.",
    "reason.session_ended": "Your session ended; log in again.",
    "reason.too_many_websockets": "This account has too many pages open.",
    "reason.too_many_logins": "This account holds too many bot logins; log out of some first.",
    "reason.origin_refused": "Requests from this page's address are not allowed.",
  },
  zh: {
    "app.name": "WebTesting",
    "lang.label": "语言",
    "nav.home": "首页",
    "nav.chat": "聊天",
    "nav.admin": "服务管理",
    "nav.logout": "退出登录",
    "nav.user": "{username}（{role}）",
    "nav.logoutAll": "退出所有登录",
    "nav.logoutAllConfirm": "结束此账号在所有浏览器中的登录？",
    "role.tester": "测试员",
    "role.admin": "管理员",

    "login.title": "登录",
    "login.username": "用户名",
    "login.password": "密码",
    "login.submit": "登录",
    "login.busy": "正在登录…",
    "login.failed": "登录失败：{msg}",
    "login.throttled": "登录尝试次数过多，请 {seconds} 秒后再试。",
    "login.hint": "请向管理员申请账号。",

    "home.title": "您想做什么？",
    "home.chat": "聊天",
    "home.chat.desc": "与已部署的机器人对话，实时查看用户的标签、话题和记忆。",
    "home.admin": "服务管理",
    "home.admin.desc": "登记机器人部署，编辑或删除，查看哪些正常、哪些异常及原因。",
    "home.dbviews": "数据库视图",
    "home.dbviews.desc": "即将推出。",

    "chat.title": "聊天",
    "chat.addPanel": "添加面板",
    "chat.connection.open": "已连接",
    "chat.connection.connecting": "正在连接…",
    "chat.connection.lost": "连接已断开，{seconds} 秒后重连",
    "chat.noServices": "还没有登记任何服务。",
    "chat.service": "服务",
    "chat.appid": "Appid",
    "chat.uname": "用户名",
    "chat.login": "登录",
    "chat.logout": "退出",
    "chat.closePanel": "关闭面板",
    "chat.loggingIn": "正在登录…",
    "chat.loggedIn": "已登录：{uname}（uid {uid}）",
    "chat.loginFailed": "登录失败：{reason}",
    "chat.unameRequired": "请输入用户名。",
    "chat.serviceDown": "不可用：{reason}",
    "chat.pickService": "请选择服务",
    "chat.message": "消息",
    "chat.send": "发送",
    "chat.emptyContent": "请先输入消息。",
    "chat.you": "我",
    "chat.historyEnd": "— 以上为之前的对话 —",
    "chat.bot": "机器人",
    "chat.error": "错误：{reason}",
    "chat.down": "服务不可用：{reason}",
    "chat.wentDown": "服务中断了。",
    "chat.ended": "未登录：{reason}",
    "chat.loginEnded": "登录已结束。",
    "chat.up": "服务已恢复。",
    "chat.reconnected": "已重新连接，正在重新登录。",
    "chat.notConnected": "未连接到服务器。",
    "chat.inOtherPanel": "已在其他面板中使用",
    "chat.panel": "机器人 {n}",
    "chat.loggedOut": "已退出。",
    "chat.cannotSend": "服务不可用期间无法发送。",

    "state.title": "用户状态",
    "state.refresh": "刷新状态",
    "state.auto": "自动刷新",
    "state.tags": "标签",
    "state.topic": "当前话题",
    "state.prevTopic": "上一个话题",
    "state.topics": "话题列表",
    "state.memory": "记忆",
    "state.none": "无",
    "state.new": "新",
    "state.deleted": "已删除",
    "state.inUse": "使用中",
    "state.notInUse": "未使用",
    "state.time": "{begin} – {end}",
    "state.until": "至 {end}",
    "state.updated": "更新于 {time}",

    "admin.title": "服务管理",
    "admin.add": "添加服务",
    "admin.refreshNote": "列表每隔几秒自动刷新。",
    "admin.col.id": "ID",
    "admin.col.status": "状态",
    "admin.col.description": "描述",
    "admin.col.appids": "Appid",
    "admin.col.wx": "WxService",
    "admin.col.agent": "Agent",
    "admin.col.actions": "操作",
    "admin.status.up": "正常",
    "admin.status.down": "异常",
    "admin.edit": "编辑",
    "admin.delete": "删除",
    "admin.confirmDelete": "删除服务 {id}（{description}）？",
    "admin.deleted": "服务 {id} 已删除。",
    "admin.saved": "已保存。",
    "admin.added": "服务已添加。",
    "admin.form.addTitle": "添加服务",
    "admin.form.editTitle": "编辑服务 {id}",
    "admin.form.description": "描述",
    "admin.form.allowedAppids": "允许的 appid（逗号分隔）",
    "admin.form.wxServiceAddr": "WxService 地址",
    "admin.form.agentAddr": "Agent 地址",
    "admin.form.redisCluster": "Redis Cluster 主节点（host:port，逗号分隔）",
    "admin.form.mysqlAddr": "MySQL 主机",
    "admin.form.mysqlPort": "MySQL 端口",
    "admin.form.mysqlUser": "MySQL 用户",
    "admin.form.mysqlPwd": "MySQL 密码",
    "admin.form.mysqlPwdKeep": "不重新输入则保持不变",
    "admin.form.mysqlDbname": "MySQL 数据库",
    "admin.form.allowStateWrites": "测试用例可设置用户的初始状态（写入机器人的 Redis）",
    "admin.form.save": "保存",
    "admin.form.cancel": "取消",
    "admin.form.badRedis": "每个主节点写成 host:port",
    "admin.empty": "还没有服务。",
    "admin.loadFailed": "无法加载服务列表：{msg}",
    "admin.logins.title": "机器人用户的登录情况",
    "admin.logins.appid": "Appid",
    "admin.logins.uname": "机器人用户",
    "admin.logins.account": "账号",
    "admin.logins.since": "登录时间",
    "admin.logins.empty": "目前没有人登录机器人。",
    "admin.logins.unknown": "代理（agent）没有回答的服务：{ids}",
    "admin.sessions.title": "活动会话",
    "admin.sessions.username": "账号",
    "admin.sessions.role": "角色",
    "admin.sessions.address": "地址",
    "admin.sessions.userAgent": "浏览器",
    "admin.sessions.lastSeen": "最近活动",
    "admin.sessions.end": "结束",
    "admin.sessions.endUser": "结束该账号的全部会话",
    "admin.sessions.ended": "已结束 {count} 个会话。",
    "admin.sessions.empty": "没有活动会话。",

    "forbidden.title": "无权访问",
    "forbidden.text": "此页面仅供管理员使用。您当前的身份是 {username}（{role}）。",
    "error.network": "服务器没有响应。",

    "reason.details": "详情",
    "reason.unknown": "服务不可用，或者出了问题。",
    "reason.ok": "一切正常。",
    "reason.waiting_for_agent": "正在等待该服务的代理（agent）连接。",
    "reason.agent_unreachable": "无法连接到机器人主机上的代理（agent）。",
    "reason.agent_unknown_host": "找不到代理（agent）的主机名。",
    "reason.agent_address_invalid": "代理（agent）地址无效，需要管理员修改。",
    "reason.agent_refused": "代理（agent）拒绝了连接。",
    "reason.agent_not_responding": "代理（agent）没有响应。",
    "reason.settings_refused": "代理（agent）拒绝了该服务的配置。",
    "reason.bot_unreachable": "无法连接到机器人。",
    "reason.bot_address_invalid": "机器人地址无效，需要管理员修改。",
    "reason.bot_not_responding": "机器人没有响应。",
    "reason.redis_unreachable": "无法连接到机器人的 Redis。",
    "reason.redis_partial": "机器人的 Redis Cluster 部分节点不可用。",
    "reason.mysql_unreachable": "无法连接到机器人的 MySQL。",
    "reason.registry_unavailable": "服务注册库暂时不可用。",
    "reason.appid_revoked": "该 appid 已不再允许用于此服务。",
    "reason.service_deleted": "该服务已从注册库中删除。",
    "reason.login_ended": "登录已在别处结束。",
    "reason.relogin_refused": "机器人拒绝了重新登录。",
    "reason.bad_request": "请求无效。",
    "reason.unknown_method": "服务器不认识这个请求。",
    "reason.too_large": "消息太大。",
    "reason.not_logged_in": "尚未登录此服务。",
    "reason.forbidden": "不允许此操作。",
    "reason.unavailable": "服务暂时不可用。",
    "reason.timeout": "请求超时，没有收到回答。",
    "reason.internal": "服务器内部错误。",
    "reason.bot_refused": "机器人拒绝了该请求。",
    "reason.agent_auth_failed": "代理（agent）连接认证失败，需要管理员检查代理地址和密钥。",
    "reason.agent_tls_failed": "代理（agent）的证书与预期不符，需要管理员检查。",
    "reason.too_many_attempts": "登录尝试次数过多，请稍后再试。",
    "reason.logged_in_elsewhere": "该机器人用户已在别处登录，本次登录已结束。",
    "reason.session_ended": "会话已结束，请重新登录。",
    "reason.too_many_websockets": "该账号打开的页面太多。",
    "reason.too_many_logins": "该账号登录的机器人用户太多，请先退出一些。",
    "reason.origin_refused": "不允许来自该页面地址的请求。",
  },
};

export const LANGUAGES = [["zh", "中文"], ["en", "English"]];
const STORAGE_KEY = "wt.lang";

function initialLang() {
  const saved = safeStorage(() => localStorage.getItem(STORAGE_KEY));
  if (saved && STRINGS[saved]) return saved;
  return (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
}

function safeStorage(fn) {
  try {
    return fn();
  } catch {
    return null; // storage disabled: the choice just isn't remembered
  }
}

let lang = initialLang();

export function getLang() {
  return lang;
}

export function setLang(next) {
  if (!STRINGS[next] || next === lang) return;
  lang = next;
  safeStorage(() => localStorage.setItem(STORAGE_KEY, next));
  applyI18n(document);
  document.dispatchEvent(new CustomEvent("langchange", { detail: { lang } }));
}

// Whether key has a string (in the current language or, failing that, English).
export function has(key) {
  return key in STRINGS[lang] || key in STRINGS.en;
}

// The string for key in the current language, with {name} replaced from vars.
export function t(key, vars = {}) {
  const text = STRINGS[lang][key] ?? STRINGS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? String(vars[name]) : whole));
}

const ATTRIBUTES = [
  ["i18nPlaceholder", "placeholder"],
  ["i18nTitle", "title"],
  ["i18nAriaLabel", "aria-label"],
];

export function applyI18n(root) {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const [data, attribute] of ATTRIBUTES) {
    const selector = `[data-${data.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase())}]`;
    for (const el of root.querySelectorAll(selector)) el.setAttribute(attribute, t(el.dataset[data]));
  }
  const title = document.querySelector("meta[name=wt-title]");
  if (title) document.title = `${t(title.content)} · ${t("app.name")}`;
}

// Fill a <select> with the languages and keep it in step with the choice.
export function mountLangSwitch(select) {
  select.replaceChildren(
    ...LANGUAGES.map(([code, name]) => new Option(name, code, false, code === lang)),
  );
  select.addEventListener("change", () => setLang(select.value));
  document.addEventListener("langchange", () => {
    select.value = lang;
  });
}

export function formatTime(ms) {
  if (ms === null || ms === undefined || ms === "") return "—";
  const date = new Date(Number(ms));
  if (Number.isNaN(date.getTime())) return String(ms);
  return date.toLocaleString(lang === "zh" ? "zh-CN" : "en-GB", { hour12: false });
}
