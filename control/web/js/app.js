// The single-page shell: who is logged in, the navigation bar and a hash router
// (#/login, #/catalogue, #/phone/<leaseId>, #/watch/<phoneId>, #/operator).

import { api, get, h } from "./api.js";
import { loginPage } from "./login.js";
import { cataloguePage } from "./catalogue.js";
import { phonePage } from "./phone.js";
import { operatorPage } from "./operator.js";

const main = document.getElementById("app");
const nav = document.getElementById("nav");
let user = null;
let cleanup = () => {};

async function whoami() {
  try {
    user = await get("/auth/whoami");
  } catch {
    user = null;
  }
}

function renderNav() {
  nav.replaceChildren();
  if (!user) return;
  nav.append(h("a", { href: "#/catalogue" }, "Phones"));
  if (user.role === "operator") nav.append(h("a", { href: "#/operator" }, "Operator"));
  nav.append(
    h("span", { class: "who" }, `${user.name} (${user.role})`),
    h("button", {
      onclick: async () => {
        await api("POST", "/auth/logout").catch(() => {});
        user = null;
        location.hash = "#/login";
        route();
      },
    }, "Log out"),
  );
}

async function route() {
  cleanup();
  cleanup = () => {};
  const [, page, arg] = location.hash.split("/");
  if (!user) await whoami();
  renderNav();
  main.replaceChildren();
  if (!user || page === "login") {
    return loginPage(main, async () => {
      await whoami();
      location.hash = "#/catalogue";
      route();
    });
  }
  const pages = {
    phone: () => phonePage(main, { leaseId: decodeURIComponent(arg || "") }),
    watch: () => phonePage(main, { phoneId: decodeURIComponent(arg || "") }),
    operator: () => operatorPage(main),
  };
  cleanup = (await (pages[page] || (() => cataloguePage(main)))()) || (() => {});
}

window.addEventListener("hashchange", route);
route();
