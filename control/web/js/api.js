// Calls to the control service's REST API (/api/v1) with the session cookie; state-changing
// requests carry the CSRF header the server requires for cookie authentication.

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? body.error + (body.detail ? `: ${body.detail}` : "") : `HTTP ${status}`);
    this.status = status;
  }
}

/** `method` `path` (under /api/v1) with an optional JSON body; resolves to the JSON reply. */
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CloudPhone-CSRF"] = "1";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(`/api/v1${path}`, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (!res.ok) throw new ApiError(res.status, data);
  return { status: res.status, data };
}

/** Shorthand for GET returning just the JSON. */
export const get = async (path) => (await api("GET", path)).data;

/** Build an element: h("div", {class: "x", onclick: f}, child, "text", ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c);
  return el;
}

/** "1h 02m 05s" for a duration in ms. */
export function duration(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  const hh = Math.floor(s / 3600);
  const mm = String(Math.floor((s % 3600) / 60)).padStart(2, "0");
  const ss = String(s % 60).padStart(2, "0");
  return hh ? `${hh}h ${mm}m ${ss}s` : `${mm}m ${ss}s`;
}
