// Overview: what the gateway does now, from /metrics (polled each second)
// and the session event stream, as numbers and small charts.

import { h, clear, fmtBytes, table, renderIfChanged, every } from "./dom.js";
import { call, events, parseMetrics } from "./api.js";
import { sparkline } from "./chart.js";

const NORMAL = new Set(["client closed", "upstream closed"]);

function card(key, title, unit) {
  const value = h("p", { class: "value", "data-metric": key }, "–");
  const chart = sparkline(`${title} over the last minute`);
  const el = h("section", { class: "card", "aria-label": title }, h("h2", {}, title), value, chart, unit ? h("p", { class: "unit" }, unit) : null);
  return { el, set: (text, n) => { value.textContent = text; chart.push(n); } };
}

export async function overview(main) {
  const cards = {
    open: card("open", "Sessions open"),
    rate: card("rate", "New sessions per second"),
    received: card("received", "Received from clients per second"),
    sent: card("sent", "Sent to clients per second"),
  };
  const reasons = h("div");
  const listeners = h("div");
  const feed = h("ol", { class: "feed", "aria-label": "Recent sessions" });
  const stream = h("span", { class: "badge" }, "connecting");
  const error = h("p", { class: "error", role: "alert" });
  clear(main,
    h("h1", {}, "Overview"), error,
    h("div", { class: "cards" }, Object.values(cards).map((c) => c.el)),
    h("div", { class: "columns" },
      h("section", { "aria-label": "Closes by reason" }, h("h2", {}, "Closes by reason"), reasons),
      h("section", { "aria-label": "Sessions open by listener" }, h("h2", {}, "Sessions open by listener"), listeners)),
    h("section", { "aria-label": "Session events" }, h("h2", {}, "Session events ", stream), feed));

  let last = null;
  async function poll() {
    const r = await call("GET", "/metrics");
    if (r.status !== 200) { error.textContent = (r.body && r.body.message) || `metrics: HTTP ${r.status}`; return; }
    error.textContent = "";
    const m = parseMetrics(r.body);
    const now = performance.now();
    const sample = {
      t: now,
      accepted: m.strait_sessions_accepted_total || 0,
      received: m['strait_session_bytes_total{direction="received"}'] || 0,
      sent: m['strait_session_bytes_total{direction="sent"}'] || 0,
      closes: Object.fromEntries(Object.entries(m).filter(([k]) => k.startsWith("strait_sessions_closed_total{"))
        .map(([k, v]) => [k.match(/reason="([^"]*)"/)[1], v])),
    };
    const open = m.strait_sessions_active || 0;
    cards.open.set(String(open), open);
    if (last) {
      const dt = Math.max(0.001, (now - last.t) / 1000);
      const per = (k) => Math.max(0, (sample[k] - last[k]) / dt);
      cards.rate.set(per("accepted").toFixed(1), per("accepted"));
      cards.received.set(`${fmtBytes(Math.round(per("received")))}/s`, per("received"));
      cards.sent.set(`${fmtBytes(Math.round(per("sent")))}/s`, per("sent"));
    }
    const rows = Object.entries(sample.closes).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1])
      .map(([reason, n]) => ({ id: reason, reason, n, recent: last ? n - (last.closes[reason] || 0) : 0 }));
    renderIfChanged(reasons, rows, () => table([
      { label: "reason", cell: (x) => h("span", { class: NORMAL.has(x.reason) ? "" : "bad" }, x.reason) },
      { label: "sessions", cell: (x) => String(x.n) },
      { label: "last second", cell: (x) => String(x.recent) },
    ], rows, { empty: "No session has closed yet." }));
    const ls = Object.entries(m).filter(([k]) => k.startsWith("strait_sessions_open_by_listener{"))
      .map(([k, v]) => ({ id: k, listener: k.match(/listener="([^"]*)"/)[1], n: v }));
    renderIfChanged(listeners, ls, () => table([
      { label: "listener", cell: (x) => x.listener },
      { label: "open", cell: (x) => String(x.n) },
    ], ls, { empty: "No session is open." }));
    last = sample;
  }
  await poll();
  const stopPoll = every(1000, poll);
  const stopEvents = events("/sessions/events", (ev) => {
    const s = ev.session || {};
    const who = `${s.client?.ip ?? ""}:${s.client?.port ?? ""}`;
    const what = ev.event === "close"
      ? `closed ${s.id} ${who} (${ev.record?.reason ?? ""}, ${fmtBytes(ev.record?.bytes_received ?? 0)} in, ${fmtBytes(ev.record?.bytes_sent ?? 0)} out)`
      : `opened ${s.id} ${who} → ${s.route?.name ?? s.route?.id ?? "?"} on ${s.listener ?? ""}`;
    feed.prepend(h("li", { class: `ev-${ev.event}` }, new Date().toLocaleTimeString(), " ", what));
    while (feed.children.length > 20) feed.lastChild.remove();
  }, (up) => { stream.textContent = up ? "live" : "reconnecting"; });
  return () => { stopPoll(); stopEvents(); };
}
