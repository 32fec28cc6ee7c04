import { startPage } from "./shell.js";

const user = await startPage();
if (user) {
  for (const el of document.querySelectorAll("[data-needs-role]")) el.hidden = el.dataset.needsRole !== user.role;
}
