import { api, ApiError, safeNext } from "./api.js";
import { byId } from "./dom.js";
import { applyI18n, mountLangSwitch, t } from "./i18n.js";

applyI18n(document);
mountLangSwitch(byId("lang"));

const form = byId("login-form");
const error = byId("login-error");
const submit = byId("login-submit");
const next = safeNext(new URLSearchParams(location.search).get("next"));

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.textContent = "";
  submit.disabled = true;
  submit.textContent = t("login.busy");
  try {
    await api.login(byId("username").value.trim(), byId("password").value);
    location.assign(next);
  } catch (e) {
    if (e instanceof ApiError && e.status === 429) {
      // The throttle: say when to try again, in the person's language.
      error.textContent = t("login.throttled", { seconds: e.retryAfter ?? 60 });
    } else {
      const msg = e instanceof ApiError && e.status ? e.message : t("error.network");
      error.textContent = t("login.failed", { msg });
    }
    byId("password").select();
  } finally {
    submit.disabled = false;
    submit.textContent = t("login.submit");
  }
});
