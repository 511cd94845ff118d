// The login form: POST /auth/login sets the HttpOnly session cookie.

import { api, h } from "./api.js";

export function loginPage(main, onLoggedIn) {
  const error = h("p", { class: "error" });
  const name = h("input", { name: "name", autocomplete: "username", required: true });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const form = h("form", { class: "card login" },
    h("h2", {}, "Log in"),
    h("label", {}, "User", name),
    h("label", {}, "Password", password),
    h("button", { type: "submit" }, "Log in"),
    error,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    try {
      await api("POST", "/auth/login", { name: name.value, password: password.value });
      onLoggedIn();
    } catch (e) {
      error.textContent = e.message;
    }
  });
  main.append(form);
  name.focus();
}
