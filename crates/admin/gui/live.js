// The pages about what runs now: the route tester, upstream health (mark,
// drain) and the sessions list (filter, sort, kill).

import { h, clear, field, curlHint, table, fmtBytes, fmtAgo, renderIfChanged, every, forget } from "./dom.js";
import { call, all, curl } from "./api.js";
import { notice, confirmAction } from "./app.js";

function message(r) {
  return (r.body && r.body.message) || (typeof r.body === "string" && r.body) || `HTTP ${r.status}`;
}

// Route tester: GET /router/match.
export async function tester(main) {
  const protocol = h("select", { id: "t-protocol" }, ["tcp", "tls", "tls_passthrough", "udp"].map((p) => h("option", { value: p }, p)));
  const source = h("input", { id: "t-source", type: "text", value: "127.0.0.1:40000", required: true });
  const destination = h("input", { id: "t-destination", type: "text", required: true, placeholder: "127.0.0.1:9000" });
  const sni = h("input", { id: "t-sni", type: "text" });
  const out = h("section", { class: "result", "aria-live": "polite", "aria-label": "Route tester result" });
  const hint = curlHint("");
  const path = () => {
    const q = new URLSearchParams({ protocol: protocol.value, source: source.value.trim(), destination: destination.value.trim() });
    if (sni.value.trim()) q.set("sni", sni.value.trim());
    return `/router/match?${q}`;
  };
  const form = h("form", { class: "inline-form", "aria-label": "Route tester" },
    field("protocol", protocol), field("source", source, "client ip:port"), field("destination", destination, "ip:port the client reaches"),
    field("sni", sni, "tls and tls_passthrough"),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Test route"), hint));
  for (const c of [protocol, source, destination, sni]) c.addEventListener("input", () => hint.set(curl("GET", path())));
  hint.set(curl("GET", path()));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await call("GET", path());
    if (r.status !== 200) { clear(out, h("p", { class: "error", role: "alert" }, message(r))); return; }
    const m = r.body;
    clear(out,
      h("h2", {}, m.route ? `Route: ${m.route.name || m.route.id}` : "No route"),
      h("dl", { class: "facts" },
        h("dt", {}, "route"), h("dd", { "data-result": "route" }, m.route ? (m.route.name || m.route.id) : "none"),
        h("dt", {}, "service"), h("dd", {}, m.service ? (m.service.name || m.service.id) : "none"),
        h("dt", {}, "listener"), h("dd", {}, m.listener ? m.listener.address : "no listener at this destination"),
        m.reason ? [h("dt", {}, "reason"), h("dd", {}, m.reason)] : null),
      (m.notes || []).length ? h("ul", { class: "notes" }, m.notes.map((n) => h("li", {}, n))) : null,
      h("h3", {}, "Candidates considered"),
      table([
        { label: "route", cell: (c) => c.route.name || c.route.id },
        { label: "priority", cell: (c) => String(c.priority) },
        { label: "matched", cell: (c) => (c.matched ? "yes" : "no") },
        { label: "why not", cell: (c) => (c.mismatched || []).join("; ") },
      ], m.candidates || [], { empty: "No route of this protocol." }));
  });
  clear(main, h("h1", {}, "Route tester"), h("p", {}, "Which route would serve a connection: the Admin API's route tester."), form, out);
}

// Health: per upstream, each target's addresses; mark and drain.
export async function health(main) {
  const box = h("div");
  clear(main, h("h1", {}, "Health"), box);
  let seq = 0;
  async function load() {
    const mine = ++seq;
    let ups;
    try { ups = await all("/upstreams"); } catch (e) {
      if (mine === seq) { forget(box); clear(box, h("p", { class: "error", role: "alert" }, e.message)); }
      return;
    }
    const model = [];
    for (const u of ups) {
      const [hr, targets] = await Promise.all([call("GET", `/upstreams/${u.id}/health`), call("GET", `/upstreams/${u.id}/targets?size=1000`)]);
      const rows = [];
      for (const t of (hr.status === 200 ? hr.body.data : [])) {
        const drain = await call("GET", `/upstreams/${u.id}/targets/${encodeURIComponent(t.target)}/drain`);
        const d = drain.status === 200 ? drain.body : null;
        const addrs = (t.data && t.data.addresses) || [];
        for (const a of addrs.length ? addrs : [null]) rows.push({ id: `${t.target}/${a ? `${a.ip}:${a.port}` : ""}`, t, a, d });
      }
      model.push({ u, rows, count: (targets.body?.data || []).length });
    }
    if (mine !== seq) return;
    renderIfChanged(box, model, () => (model.length ? model.map(upstream) : h("p", {}, "No upstreams yet.")));
  }
  function upstream({ u, rows, count }) {
    const name = u.name || u.id;
    const act = (label, method, path, body) => h("span", { class: "act" },
      h("button", { type: "button", onclick: async () => {
        const r = await call(method, path, body);
        if (r.status >= 200 && r.status < 300) { notice(`${label}: done`); load(); } else notice(message(r), "error");
      } }, label), curlHint(curl(method, path, body)));
    return h("section", { class: "upstream", "aria-label": `Upstream ${name}` },
      h("h2", {}, `Upstream ${name}`, h("span", { class: "muted" }, ` ${u.algorithm || ""} · ${count} targets`)),
      table([
        { label: "target", cell: (x) => x.t.target },
        { label: "address", cell: (x) => (x.a ? `${x.a.ip}:${x.a.port}` : (x.t.data?.dns_error || "")) },
        { label: "state", cell: (x) => h("span", { class: `state state-${(x.a?.health || x.t.health || "").toLowerCase()}` }, x.a?.health || x.t.health) },
        { label: "reason", cell: (x) => x.a?.reason || "" },
        { label: "since", cell: (x) => (x.a?.since ? fmtAgo(x.a.since * 1000) : "") },
        { label: "sessions", cell: (x) => h("span", { "data-sessions": x.t.target }, String(x.a?.active_sessions ?? 0)) },
        { label: "connect time", cell: (x) => (x.a && x.a.connect_time_ewma_ms ? `${x.a.connect_time_ewma_ms.toFixed(1)} ms` : "") },
        { label: "drain", cell: (x) => (x.d && x.d.draining ? h("span", { class: "draining", "data-draining": x.t.target }, `draining: ${x.d.sessions} left`) : "") },
        { label: "actions", cell: (x) => {
          const tp = `/upstreams/${u.id}/targets/${encodeURIComponent(x.t.target)}`;
          const ap = x.a ? `${tp}/${x.a.ip.includes(":") ? `[${x.a.ip}]` : x.a.ip}:${x.a.port}` : tp;
          return h("div", { class: "row-actions", "aria-label": `Actions for ${x.t.target}` },
            act(`Mark ${x.a ? `${x.a.ip}:${x.a.port}` : x.t.target} healthy`, "PUT", `${ap}/healthy`),
            act(`Mark ${x.a ? `${x.a.ip}:${x.a.port}` : x.t.target} unhealthy`, "PUT", `${ap}/unhealthy`),
            x.d && x.d.draining
              ? act(`Stop draining ${x.t.target}`, "DELETE", `${tp}/drain`)
              : act(`Drain ${x.t.target}`, "POST", `${tp}/drain`, { timeout: 300, then: "close" }));
        } },
      ], rows, { empty: "No targets." }));
  }
  await load();
  return every(2000, load);
}

const FILTERS = [
  ["route", "route id or name"], ["service", "service id or name"], ["upstream", "upstream id, name or address"],
  ["target", "ip:port or host:port"], ["client", "client IP or CIDR"], ["sni", ""],
  ["protocol", "", ["", "tcp", "tls", "tls_passthrough", "udp"]], ["state", "", ["", "setup", "relaying", "draining"]],
  ["older_than", "seconds"], ["idle_for", "seconds"],
];

// Sessions: GET /sessions with the filters; DELETE one, or the filtered set.
export async function sessions(main, { params }) {
  const inputs = {};
  const fields = FILTERS.map(([name, help, opts]) => {
    const c = opts
      ? h("select", { id: `s-${name}` }, opts.map((o) => h("option", { value: o }, o || "(any)")))
      : h("input", { id: `s-${name}`, type: name.endsWith("_than") || name === "idle_for" ? "number" : "text", min: 0 });
    c.value = params.get(name) || "";
    inputs[name] = c;
    return field(name, c, help);
  });
  let sort = params.get("sort") || "-started_at";
  const live = h("input", { type: "checkbox", id: "s-live", checked: true });
  const killAll = h("button", { type: "button", class: "danger" }, "Kill matching sessions");
  const killHint = curlHint("");
  const count = h("p", { class: "count", "aria-live": "polite" });
  const listHint = curlHint("");
  const list = h("div");
  const query = () => {
    const q = new URLSearchParams();
    for (const [k, c] of Object.entries(inputs)) if (c.value.trim()) q.set(k, c.value.trim());
    return q;
  };
  const form = h("form", { class: "inline-form", "aria-label": "Session filters" }, fields,
    h("div", { class: "actions" },
      h("button", { type: "submit", class: "primary" }, "Apply filters"),
      h("label", { class: "check" }, live, " Live (refresh every 2 s)"),
      killAll, killHint));
  clear(main, h("h1", {}, "Sessions"), form, h("div", { class: "actions" }, count, listHint), list);

  // Answers to an earlier load (a sort changed meanwhile) are dropped.
  let seq = 0;
  async function load() {
    const mine = ++seq;
    const q = query();
    q.set("sort", sort);
    q.set("size", "1000");
    const r = await call("GET", `/sessions?${q}`);
    if (mine !== seq) return;
    const fq = query().toString();
    killHint.set(curl("DELETE", `/sessions?${fq || "all=true"}`));
    listHint.set(curl("GET", `/sessions?${q}`));
    if (r.status !== 200) { forget(list); clear(list, h("p", { class: "error", role: "alert" }, message(r))); return; }
    const data = r.body.data || [];
    count.textContent = `${data.length}${r.body.next ? "+" : ""} session${data.length === 1 ? "" : "s"}`;
    // Redrawn when a session changes, and every 10 s for the "ago" columns.
    renderIfChanged(list, { data, sort, tick: Math.floor(Date.now() / 10000) }, () => table([
      { label: "actions", cell: (s) => h("div", { class: "row-actions" },
        h("button", { type: "button", class: "danger", "aria-label": `Kill session ${s.id}`, onclick: async () => {
          const r2 = await call("DELETE", `/sessions/${s.id}`);
          if (r2.status === 204 || r2.status === 200) { notice(`Killed session ${s.id}`); load(); } else notice(message(r2), "error");
        } }, "Kill"),
        curlHint(curl("DELETE", `/sessions/${s.id}`))) },
      { label: "id", cell: (s) => h("code", {}, String(s.id)) },
      { label: "client", cell: (s) => `${s.client.ip}:${s.client.port}` },
      { label: "listener", cell: (s) => s.listener },
      { label: "protocol", cell: (s) => s.protocol },
      { label: "state", cell: (s) => s.state },
      { label: "route", cell: (s) => (s.route ? s.route.name || s.route.id : "") },
      { label: "service", cell: (s) => (s.service ? s.service.name || s.service.id : "") },
      { label: "upstream", cell: (s) => (s.upstream ? `${s.upstream.name || ""} ${s.upstream.address || ""}`.trim() : "") },
      { label: "sni", cell: (s) => s.sni || "" },
      { label: "bytes", sort: "bytes", cell: (s) => `${fmtBytes(s.bytes.received)} in / ${fmtBytes(s.bytes.sent)} out` },
      { label: "started", sort: "started_at", cell: (s) => fmtAgo(s.started_at) },
      { label: "last activity", sort: "last_activity_at", cell: (s) => fmtAgo(s.last_activity_at) },
    ], data, { sort, onSort: (s) => { sort = s; load(); }, empty: "No session matches." }));
  }
  form.addEventListener("submit", (ev) => { ev.preventDefault(); load(); });
  killAll.addEventListener("click", async () => {
    const q = query();
    const filtered = q.toString() !== "";
    if (!filtered) q.set("all", "true");
    const dry = new URLSearchParams(q);
    dry.set("dry_run", "true");
    const d = await call("DELETE", `/sessions?${dry}`);
    if (d.status !== 200) { notice(message(d), "error"); return; }
    const n = d.body.count;
    const what = filtered ? "matching these filters" : "(no filter: every session)";
    if (!await confirmAction(`Close ${n} session${n === 1 ? "" : "s"} ${what}?`, `Close ${n} session${n === 1 ? "" : "s"}`)) return;
    const r = await call("DELETE", `/sessions?${q}`);
    if (r.status === 200) { notice(`Closed ${r.body.count ?? n} sessions`); load(); } else notice(message(r), "error");
  });
  await load();
  return every(2000, () => (live.checked ? load() : null));
}
