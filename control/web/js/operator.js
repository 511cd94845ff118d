// Operator view: hosts, phones and fleet utilisation (assigned phones / phone slots on online
// hosts) over the last hour, from the samples the control service keeps, drawn on a canvas.

import { get, h } from "./api.js";

const REFRESH_MS = 5000;
const WINDOW_MIN = 60;

function table(columns, rows) {
  return h("table", {},
    h("tr", {}, columns.map((c) => h("th", {}, c))),
    rows.map((r) => h("tr", {}, r.map((v) => h("td", {}, v)))),
  );
}

/** Draw utilisation samples (`{at_ms, capacity, assigned}`, oldest first) as a line. */
function drawChart(canvas, samples) {
  const history = samples.map((x) => ({ t: x.at_ms, u: x.capacity ? Math.min(1, x.assigned / x.capacity) : 0 }));
  canvas.dataset.samples = String(history.length);
  const ctx = canvas.getContext("2d");
  const { width: w, height: ht } = canvas;
  ctx.clearRect(0, 0, w, ht);
  ctx.strokeStyle = "#ccd";
  ctx.fillStyle = "#667";
  ctx.font = "12px sans-serif";
  for (const pct of [0, 50, 100]) {
    const y = ht - 20 - (ht - 30) * (pct / 100);
    ctx.beginPath(); ctx.moveTo(40, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText(`${pct}%`, 4, y + 4);
  }
  if (history.length < 2) return;
  const t0 = history[0].t;
  const span = Math.max(1, history[history.length - 1].t - t0);
  ctx.strokeStyle = "#2a6df4";
  ctx.lineWidth = 2;
  ctx.beginPath();
  history.forEach((p, i) => {
    const x = 40 + ((p.t - t0) / span) * (w - 45);
    const y = ht - 20 - (ht - 30) * p.u;
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
  ctx.fillText(`${Math.round(span / 60000)} min`, w - 50, ht - 4);
}

export async function operatorPage(main) {
  const hostsBox = h("div");
  const phonesBox = h("div");
  const canvas = h("canvas", { width: 720, height: 200, class: "chart" });
  const now = h("p", { class: "muted" });
  main.append(h("h2", {}, "Utilisation"), canvas, now, h("h2", {}, "Hosts"), hostsBox, h("h2", {}, "Phones"), phonesBox);

  const refresh = async () => {
    try {
      const [hosts, phones, samples] = await Promise.all([
        get("/hosts"), get("/phones"), get(`/utilisation?minutes=${WINDOW_MIN}`)]);
      const last = samples[samples.length - 1];
      now.textContent = last
        ? `${last.assigned} of ${last.capacity} phone slots in use, ${last.queued} waiting (sampled ${new Date(last.at_ms).toLocaleTimeString()})`
        : "no utilisation samples yet";
      // Committed: what the host's phones are promised; used: what they measurably take.
      hostsBox.replaceChildren(table(["Host", "State", "Phones", "vCPUs committed", "Memory committed",
        "Memory used", "Available", "CPU busy", "Last heartbeat"],
        hosts.map((x) => [x.name, x.state, `${x.load.phones} / ${x.max_phones}`,
          `${x.load.committed_vcpus} / ${x.vcpus} (max ${x.policy.vcpu_pct} %)`,
          `${x.load.committed_memory_mib} / ${x.memory_mib} MiB (max ${x.policy.memory_pct} %)`,
          `${x.load.used_memory_mib} MiB`,
          x.mem_available_mib == null ? "-" : `${x.mem_available_mib} MiB`,
          x.cpu_busy_pct == null ? "-" : `${x.cpu_busy_pct} % (max ${x.policy.cpu_busy_limit_pct} %)`,
          `${Math.round((Date.now() - x.last_heartbeat_ms) / 1000)} s ago`])));
      phonesBox.replaceChildren(table(["Phone", "Profile", "Host", "State", ""],
        phones.map((p) => [p.id, p.profile_id, p.host_id, p.state,
          p.state === "assigned" ? h("a", { href: `#/watch/${p.id}` }, "watch") : ""])));
      drawChart(canvas, samples);
    } catch (e) {
      now.textContent = e.message;
    }
  };
  await refresh();
  const timer = setInterval(refresh, REFRESH_MS);
  return () => clearInterval(timer);
}
