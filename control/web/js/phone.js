// The live phone: video from the WebRTC stream, touch/keyboard/buttons back to the phone, a
// stats overlay, and (for the lease holder) the lease countdown with renew and release.

import { api, get, h, duration } from "./api.js";
import { PhoneStream } from "./stream.js";
import { attachPointer, attachKeyboard } from "./touch.js";

const RENEW_S = 3600;

function overlayText(s) {
  if (!s) return "connecting…";
  const parts = [`${s.width}×${s.height}`, s.codec || "video", `${Math.round(s.fps)} fps`, `${(s.bitrate / 1e6).toFixed(2)} Mb/s`];
  if (s.rtt != null) parts.push(`rtt ${s.rtt.toFixed(0)} ms`);
  if (s.jitterBufferMs != null) parts.push(`buffer ${s.jitterBufferMs.toFixed(0)} ms`);
  return parts.join(" · ");
}

/** `leaseId` for the holder's view, or `phoneId` for an operator watching. */
export async function phonePage(main, { leaseId, phoneId }) {
  const video = h("video", { autoplay: true, muted: true, playsinline: true, tabindex: "0", class: "screen" });
  const overlay = h("div", { class: "overlay" }, "connecting…");
  const message = h("p", { class: "status" });
  const countdown = h("span", { class: "countdown" });
  const toolbar = h("div", { class: "toolbar" });
  const phone = h("div", { class: "phone" }, h("div", { class: "screen-box" }, video, overlay), toolbar);
  main.append(phone, message);

  let lease = null;
  if (leaseId) {
    try {
      lease = await get(`/leases/${encodeURIComponent(leaseId)}`);
    } catch (e) {
      message.textContent = e.message;
      return;
    }
    if (lease.state !== "active") {
      message.textContent = `This lease is ${lease.state}.`;
      return;
    }
    phoneId = lease.phone_id;
  }

  let tick = null;
  let sessionOver = false;
  // The lease ended (released, here or elsewhere, expired, the phone lost): the phone is
  // someone else's now. No video, countdown or controls are left; say so.
  const sessionEnded = (reason) => {
    sessionOver = true;
    clearInterval(tick);
    unwire.forEach((f) => f());
    video.srcObject = null;
    phone.replaceWith(h("div", { class: "session-ended" },
      h("h2", {}, "Your session ended"),
      h("p", { class: "reason" }, reason),
      h("a", { href: "#/catalogue" }, "Back to the catalogue")));
    message.textContent = "";
  };

  // `?codec=vp8` (or h264) in the page address forces that codec, e.g. where H.264 fails.
  const stream = new PhoneStream(phoneId, video, {
    codec: new URLSearchParams(location.search).get("codec"),
    onEnded: (reason, leaseEnded) => {
      if (leaseEnded) sessionEnded(reason);
      else message.textContent = `Stream ended: ${reason}`;
    },
  });
  const send = (m) => stream.send(m);
  const unwire = [attachPointer(video, send), attachKeyboard(video, send)];
  const press = (key) => { send({ type: "key", key, down: true }); send({ type: "key", key, down: false }); };
  for (const [label, key] of [["◀ Back", "BACK"], ["● Home", "HOME"], ["▮▮ Apps", "APPSWITCH"]]) {
    toolbar.append(h("button", { onclick: () => { press(key); video.focus(); } }, label));
  }
  if (lease) {
    toolbar.append(
      countdown,
      h("button", { onclick: async () => {
        try {
          lease = await (await api("POST", `/leases/${lease.id}/renew`, { duration_s: RENEW_S })).data;
        } catch (e) {
          message.textContent = e.message;
        }
      } }, "Renew"),
      h("button", { class: "danger", onclick: async () => {
        stream.end("released");
        await api("DELETE", `/leases/${lease.id}`).catch((e) => { message.textContent = e.message; });
        location.hash = "#/catalogue";
      } }, "Release"),
    );
  } else {
    toolbar.append(h("span", { class: "muted" }, "watching (input disabled)"));
  }

  try {
    await stream.connect();
  } catch (e) {
    if (!sessionOver) message.textContent = e.message;
  }
  if (sessionOver) return () => {};
  tick = setInterval(async () => {
    overlay.textContent = overlayText(await stream.stats().catch(() => null));
    if (lease) {
      const left = lease.expires_ms - Date.now();
      countdown.textContent = left > 0 ? `${duration(left)} left` : "lease expired";
    }
  }, 1000);
  video.focus();
  return () => {
    clearInterval(tick);
    unwire.forEach((f) => f());
    stream.end("left the page");
  };
}
