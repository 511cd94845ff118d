// Device profiles and "get a phone": granted at once, or queued with live position and ETA.

import { api, get, h, duration } from "./api.js";

export async function cataloguePage(main) {
  const status = h("div", { class: "status" });
  const mine = h("div");
  const grid = h("div", { class: "grid" });
  main.append(h("h2", {}, "Your phones"), mine, h("h2", {}, "Get a phone"), status, grid);
  let timer = null;

  const leases = await get("/leases").catch(() => []);
  mine.append(
    leases.length
      ? h("ul", {}, leases.map((l) => h("li", {}, h("a", { href: `#/phone/${l.id}` }, `${l.profile_id} · ${l.phone_id}`),
          ` · ${duration(l.expires_ms - Date.now())} left`)))
      : h("p", { class: "muted" }, "None yet."),
  );

  const waitInQueue = (entry) => {
    const cancel = h("button", { onclick: async () => {
      clearTimeout(timer);
      await api("DELETE", `/queue/${entry.id}`).catch(() => {});
      status.replaceChildren(h("p", {}, "Left the queue."));
    } }, "Leave queue");
    const poll = async () => {
      try {
        const q = await get(`/queue/${entry.id}`);
        if (q.lease_id) {
          location.hash = `#/phone/${q.lease_id}`;
          return;
        }
        if (q.state !== "waiting") {
          status.replaceChildren(h("p", { class: "error" }, `Queue entry ${q.state}.`));
          return;
        }
        const eta = q.eta_ms == null ? "unknown" : duration(q.eta_ms);
        status.replaceChildren(h("p", {}, `Waiting for a phone: position ${q.position ?? "?"}, ETA ${eta}. `, cancel));
        timer = setTimeout(poll, 2000);
      } catch (e) {
        status.replaceChildren(h("p", { class: "error" }, e.message));
      }
    };
    poll();
  };

  const acquire = async (profile) => {
    status.replaceChildren(h("p", {}, `Asking for a ${profile.name}…`));
    try {
      const { data } = await api("POST", "/leases", { profile: profile.id });
      if (data.status === "granted") location.hash = `#/phone/${data.lease.id}`;
      else waitInQueue(data.queue);
    } catch (e) {
      status.replaceChildren(h("p", { class: "error" }, e.message));
    }
  };

  const profiles = await get("/profiles");
  for (const p of profiles) {
    grid.append(h("div", { class: "card" },
      h("h3", {}, p.name),
      h("p", {}, `${p.width}×${p.height} @ ${p.dpi} dpi`),
      h("p", { class: "muted" }, `${p.vcpus} vCPU · ${p.memory_mib} MiB · ${p.image}`),
      h("button", { onclick: () => acquire(p) }, "Get a phone"),
    ));
  }
  if (!profiles.length) grid.append(h("p", { class: "muted" }, "No device profiles yet (an operator creates them)."));
  return () => clearTimeout(timer);
}
