// Kong's entities as pages: a list with search and tags, a form to create
// or edit one (the Admin API's field errors shown by the field they name),
// delete, and the JSON of each. DB-less: read-only.

import { h, clear, field, curlHint, table, fmtDate, uid } from "./dom.js";
import { gui, call, get, all, curl } from "./api.js";
import { notice, confirmAction } from "./app.js";

const SECRET = "(not shown: private keys are never rendered back)";

// Field kinds: text, number, bool, select, list (comma-separated), addrs
// (ip[/cidr][:port], comma-separated), json, pem, secret (a key: never
// filled in), fk (a reference to another kind).
const tags = { name: "tags", kind: "list", help: "comma-separated" };
export const KINDS = {
  services: {
    title: "Services", one: "service", path: "/services",
    columns: ["name", "protocol", "host", "port", "tags"],
    fields: [
      { name: "name", kind: "text" },
      { name: "url", kind: "text", create: true, help: "tcp://host:port, tls://host:port or udp://host:port (or the fields below)" },
      { name: "protocol", kind: "select", options: ["", "tcp", "tls", "udp"] },
      { name: "host", kind: "text" },
      { name: "port", kind: "number" },
      { name: "connect_timeout", kind: "number", help: "milliseconds" },
      { name: "read_timeout", kind: "number", help: "milliseconds" },
      { name: "write_timeout", kind: "number", help: "milliseconds" },
      { name: "retries", kind: "number" },
      { name: "tls_verify", kind: "select", options: ["", "true", "false"] },
      { name: "tls_verify_depth", kind: "number" },
      { name: "client_certificate", kind: "fk", ref: "certificates" },
      { name: "ca_certificates", kind: "list", help: "CA certificate ids, comma-separated" },
      { name: "enabled", kind: "bool", default: true },
      tags,
    ],
  },
  routes: {
    title: "Routes", one: "route", path: "/routes",
    columns: ["name", "protocols", "sources", "destinations", "snis", "service", "tags"],
    fields: [
      { name: "name", kind: "text" },
      { name: "protocols", kind: "list", default: "tcp", help: "tcp, tls, tls_passthrough, udp" },
      { name: "sources", kind: "addrs", help: "client ip or CIDR, optionally :port; comma-separated" },
      { name: "destinations", kind: "addrs", help: "ip or CIDR the client reaches, optionally :port (or just the port)" },
      { name: "snis", kind: "list" },
      { name: "service", kind: "fk", ref: "services" },
      tags,
    ],
  },
  upstreams: {
    title: "Upstreams", one: "upstream", path: "/upstreams",
    columns: ["name", "algorithm", "slots", "tags"],
    fields: [
      { name: "name", kind: "text" },
      { name: "algorithm", kind: "select", options: ["", "round-robin", "consistent-hashing", "least-connections", "latency"] },
      { name: "hash_on", kind: "select", options: ["", "none", "ip", "header", "cookie"] },
      { name: "hash_fallback", kind: "select", options: ["", "none", "ip", "header", "cookie"] },
      { name: "slots", kind: "number" },
      { name: "host_header", kind: "text" },
      { name: "use_srv_name", kind: "bool", default: false },
      { name: "client_certificate", kind: "fk", ref: "certificates" },
      { name: "on_target_down", kind: "select", options: ["", "keep", "close"] },
      { name: "on_target_removed", kind: "json", help: "\"keep\", \"close\" or a drain, as JSON" },
      { name: "healthchecks", kind: "json" },
      tags,
    ],
  },
  targets: {
    title: "Targets", one: "target", parent: "upstreams",
    columns: ["target", "weight", "tags"],
    fields: [
      { name: "target", kind: "text", help: "host:port" },
      { name: "weight", kind: "number" },
      tags,
    ],
  },
  certificates: {
    title: "Certificates", one: "certificate", path: "/certificates",
    columns: ["id", "snis", "tags"],
    fields: [
      { name: "cert", kind: "pem" },
      { name: "key", kind: "secret" },
      { name: "cert_alt", kind: "pem" },
      { name: "key_alt", kind: "secret" },
      { name: "snis", kind: "list" },
      tags,
    ],
  },
  snis: {
    title: "SNIs", one: "SNI", path: "/snis",
    columns: ["name", "certificate", "tags"],
    fields: [
      { name: "name", kind: "text" },
      { name: "certificate", kind: "fk", ref: "certificates" },
      tags,
    ],
  },
  ca_certificates: {
    title: "CA certificates", one: "CA certificate", path: "/ca_certificates",
    columns: ["id", "cert_digest", "tags"],
    fields: [{ name: "cert", kind: "pem" }, tags],
  },
  plugins: {
    title: "Plugins", one: "plugin", path: "/plugins",
    columns: ["name", "instance_name", "service", "route", "enabled", "tags"],
    fields: [
      { name: "name", kind: "plugin" },
      { name: "instance_name", kind: "text" },
      { name: "service", kind: "fk", ref: "services" },
      { name: "route", kind: "fk", ref: "routes" },
      { name: "config", kind: "json" },
      { name: "protocols", kind: "list" },
      { name: "enabled", kind: "bool", default: true },
      tags,
    ],
  },
  "filter-chains": {
    title: "Filter chains", one: "filter chain", path: "/filter-chains",
    columns: ["name", "route", "service", "enabled", "tags"],
    fields: [
      { name: "name", kind: "text" },
      { name: "route", kind: "fk", ref: "routes" },
      { name: "service", kind: "fk", ref: "services" },
      { name: "filters", kind: "json", help: "[{\"name\": \"...\", \"config\": ...}]" },
      { name: "enabled", kind: "bool", default: true },
      tags,
    ],
  },
};

// The entity as shown (JSON view, lists): private keys left out.
export function shown(e) {
  const out = { ...e };
  for (const k of ["key", "key_alt"]) if (out[k]) out[k] = SECRET;
  return out;
}

function label(e) {
  return e.name || e.instance_name || e.target || e.id;
}

function cellText(v) {
  if (v === null || v === undefined) return "";
  if (Array.isArray(v)) return v.map((x) => (typeof x === "object" && x ? addrText(x) : x)).join(", ");
  if (typeof v === "object") return v.name || v.id || JSON.stringify(v);
  return String(v);
}

function addrText(a) {
  const ip = a.ip || "";
  if (a.port === undefined || a.port === null) return ip;
  return `${ip.includes(":") && !ip.includes("/") ? `[${ip}]` : ip}:${a.port}`;
}

// "10.0.0.0/8, 10.1.2.3:80, :443, 443, [::1]:53, fd00::/8" → [{ip, port}].
function parseAddrs(text) {
  return text.split(",").map((s) => s.trim()).filter(Boolean).map((s) => {
    let ip = s, port;
    const v6 = s.match(/^\[(.*)\]:(\d+)$/);
    if (/^\d+$/.test(s)) { ip = ""; port = s; }
    else if (v6) { ip = v6[1]; port = v6[2]; }
    else if ((s.match(/:/g) || []).length === 1) { [ip, port] = s.split(":"); }
    const out = {};
    if (ip) out.ip = ip;
    if (port !== undefined && port !== "") out.port = /^\d+$/.test(port) ? Number(port) : port;
    return out;
  });
}

// Kong's field errors as one line of text.
export function errorText(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "string") return v;
  if (Array.isArray(v)) {
    return v.map((x, i) => (x === null || x === undefined ? "" : (v.length > 1 ? `[${i + 1}] ` : "") + errorText(x)))
      .filter(Boolean).join("; ");
  }
  if (typeof v === "object") return Object.entries(v).map(([k, x]) => `${k}: ${errorText(x)}`).join("; ");
  return String(v);
}

async function options(ref) {
  try {
    return (await all(KINDS[ref].path)).map((e) => [e.id, label(e)]);
  } catch { return []; }
}

function control(f, value, extra) {
  const id = uid(`f-${f.name}`);
  const attrs = { id, name: f.name };
  switch (f.kind) {
    case "bool": return h("input", { ...attrs, type: "checkbox", checked: value ?? f.default ?? false });
    case "number": return h("input", { ...attrs, type: "number", value: value ?? "" });
    case "select": {
      const s = h("select", attrs, f.options.map((o) => h("option", { value: o }, o || "(default)")));
      s.value = value === null || value === undefined ? "" : String(value);
      return s;
    }
    case "fk": {
      const s = h("select", attrs, h("option", { value: "" }, "(none)"), extra.map(([v, l]) => h("option", { value: v }, l)));
      s.value = value && value.id ? value.id : "";
      return s;
    }
    case "plugin": {
      const s = h("select", attrs, extra.map((p) => h("option", { value: p }, p)));
      if (value) s.value = value;
      return s;
    }
    case "list": return h("input", { ...attrs, type: "text", value: Array.isArray(value) ? value.join(", ") : (value ?? f.default ?? "") });
    case "addrs": return h("input", { ...attrs, type: "text", value: Array.isArray(value) ? value.map(addrText).join(", ") : "" });
    case "json": return h("textarea", { ...attrs, rows: 6, spellcheck: "false" }, value === null || value === undefined ? "" : JSON.stringify(value, null, 2));
    case "pem": return h("textarea", { ...attrs, rows: 6, spellcheck: "false" }, value || "");
    case "secret": return h("textarea", { ...attrs, rows: 4, spellcheck: "false", autocomplete: "off", placeholder: value ? "unchanged (leave empty to keep the stored key)" : "" });
    default: return h("input", { ...attrs, type: "text", value: value ?? "" });
  }
}

// The form's value for a field; undefined: leave it out.
function read(f, el) {
  switch (f.kind) {
    case "bool": return el.checked;
    case "number": return el.value === "" ? null : Number(el.value);
    case "select": return el.value === "" ? null : (el.value === "true" ? true : el.value === "false" ? false : el.value);
    case "fk": return el.value ? { id: el.value } : null;
    case "list": { const v = el.value.split(",").map((s) => s.trim()).filter(Boolean); return v.length ? v : null; }
    case "addrs": { const v = parseAddrs(el.value); return v.length ? v : null; }
    case "json": {
      if (!el.value.trim()) return null;
      try { return JSON.parse(el.value); } catch (e) { throw new FieldError(f.name, `not valid JSON: ${e.message}`); }
    }
    case "secret": return el.value.trim() ? el.value : undefined;
    case "plugin": return el.value || null;
    default: return el.value === "" ? null : el.value;
  }
}

class FieldError extends Error {
  constructor(name, message) { super(message); this.field = name; }
}

function same(a, b) {
  return JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
}

// The form for creating (entity null) or editing an entity.
async function form(kind, def, base, entity, done) {
  const editing = !!entity;
  const extras = {};
  for (const f of def.fields) {
    if (f.kind === "fk") extras[f.name] = await options(f.ref);
    if (f.kind === "plugin") {
      try { extras[f.name] = (await get("/plugins/enabled")).enabled_plugins || []; } catch { extras[f.name] = []; }
    }
  }
  const boxes = {};
  const controls = {};
  const shownFields = def.fields.filter((f) => !(editing && f.create));
  const formError = h("div", { class: "form-error", role: "alert" });
  const method = editing ? "PATCH" : "POST";
  const target = editing ? `${base}/${entity.id}` : base;
  const hint = curlHint("");
  const body = () => {
    const out = {};
    for (const f of shownFields) {
      const v = read(f, controls[f.name]);
      if (v === undefined) continue;
      // A key typed in is sent as it is (the stored one is never compared in the page).
      if (editing) { if (f.kind === "secret" || !same(v, entity[f.name])) out[f.name] = v; }
      else if (v !== null && !(f.kind === "bool" && v === (f.default ?? false))) out[f.name] = v;
    }
    return out;
  };
  const refreshHint = () => { try { hint.set(curl(method, target, body())); } catch { /* invalid JSON: shown on submit */ } };
  const el = h("form", { class: "entity-form", "aria-label": `${editing ? "Edit" : "New"} ${def.one}`, novalidate: true },
    h("h2", {}, editing ? `Edit ${def.one} ${label(entity)}` : `New ${def.one}`),
    formError,
    shownFields.map((f) => {
      const c = control(f, editing ? entity[f.name] : undefined, extras[f.name] || []);
      controls[f.name] = c;
      c.addEventListener("input", refreshHint);
      c.addEventListener("change", refreshHint);
      boxes[f.name] = field(f.name, c, f.help);
      return boxes[f.name];
    }),
    h("div", { class: "actions" },
      h("button", { type: "submit", class: "primary" }, editing ? `Save ${def.one}` : `Create ${def.one}`),
      h("button", { type: "button", onclick: () => done(false) }, "Cancel"),
      hint));
  el.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    for (const b of Object.values(boxes)) b.showError("");
    clear(formError);
    let payload;
    try { payload = body(); } catch (e) {
      if (e instanceof FieldError) { boxes[e.field].showError(e.message); controls[e.field].focus(); return; }
      throw e;
    }
    const r = await call(method, target, payload);
    if (r.status === 200 || r.status === 201) {
      notice(`${editing ? "Saved" : "Created"} ${def.one} ${label(r.body)}`);
      done(true);
      return;
    }
    showErrors(r, boxes, controls, formError);
  });
  refreshHint();
  return el;
}

// The Admin API's answer to a bad write: each field's message by its field,
// the rest (and the summary) above the form.
export function showErrors(r, boxes, controls, formError) {
  const fields = (r.body && r.body.fields) || {};
  const rest = [];
  let first = null;
  if (fields && typeof fields === "object" && !Array.isArray(fields)) {
    for (const [k, v] of Object.entries(fields)) {
      if (boxes[k]) {
        // A schema violation's fields hold messages; the other kinds
        // (foreign key, uniqueness) hold the value given, and the message says why.
        boxes[k].showError(r.body.code === 2 ? errorText(v) : r.body.message || errorText(v));
        first = first || controls[k];
      } else {
        rest.push(k === "@entity" ? errorText(v) : `${k}: ${errorText(v)}`);
      }
    }
  } else if (Array.isArray(fields)) {
    rest.push(...fields.map(errorText));
  }
  clear(formError,
    h("p", {}, (r.body && r.body.message) || (typeof r.body === "string" ? r.body : `HTTP ${r.status}`)),
    rest.length ? h("ul", {}, rest.map((x) => h("li", {}, x))) : null);
  (first || formError).focus?.();
}

export async function entityPage(main, kind, { params }) {
  const def = KINDS[kind];
  if (kind === "filter-chains" && !gui.wasm) {
    clear(main, h("h1", {}, def.title), h("p", { class: "note" }, "Wasm is off on this gateway (wasm = off): filter chains are not available. Turn wasm on and list filters in wasm_filters to use them."));
    return;
  }
  const heading = h("h1", {}, def.title);
  const panel = h("section", { class: "panel", "aria-live": "polite" });
  const listBox = h("div");
  const search = h("input", { type: "search", id: `${kind}-search`, value: params.get("q") || "" });
  const tagInput = h("input", { type: "text", id: `${kind}-tags`, value: params.get("tags") || "" });
  let parents = [];
  let parentSel = null;
  if (def.parent) {
    parents = await options(def.parent);
    parentSel = h("select", { id: `${kind}-parent` }, parents.map(([v, l]) => h("option", { value: v }, l)));
    if (params.get("upstream")) parentSel.value = params.get("upstream");
  }
  const base = () => (def.parent ? `${KINDS[def.parent].path}/${parentSel.value}/targets` : def.path);
  const readOnly = gui.dbless;
  const newBtn = readOnly ? null : h("button", { type: "button", class: "primary", onclick: async () => {
    if (def.parent && !parentSel.value) { notice("Create an upstream first", "error"); return; }
    clear(panel, await form(kind, def, base(), null, (changed) => { clear(panel); if (changed) load(); }));
    panel.querySelector("input, select, textarea")?.focus();
  } }, `New ${def.one}`);
  const listHint = curlHint("");
  clear(main, heading,
    readOnly ? h("p", { class: "note" }, "DB-less: this page is read-only. Change the configuration by uploading it on the Configuration page.") : null,
    h("div", { class: "toolbar" },
      parentSel ? field("Upstream", parentSel) : null,
      // Not "Tags": that is the form's field; a label names one control.
      field(`Search ${def.title.toLowerCase()}`, search),
      field("Filter by tag", tagInput, "all of a,b; any of a/b"),
      newBtn, listHint),
    panel, listBox);
  if (parentSel) parentSel.addEventListener("change", () => load());

  let rows = [];
  async function load() {
    if (def.parent && !parentSel.value) { clear(listBox, h("p", {}, "No upstreams yet.")); return; }
    const t = tagInput.value.trim();
    const listPath = `${base()}?size=1000${t ? `&tags=${encodeURIComponent(t)}` : ""}`;
    listHint.set(curl("GET", listPath));
    const r = await call("GET", listPath);
    if (r.status !== 200) { clear(listBox, h("p", { class: "error", role: "alert" }, (r.body && r.body.message) || `HTTP ${r.status}`)); return; }
    // Private keys are dropped as they arrive: the page never holds them.
    rows = (r.body.data || []).map(shown);
    draw();
  }
  function draw() {
    const q = search.value.trim().toLowerCase();
    const visible = q ? rows.filter((e) => JSON.stringify(shown(e)).toLowerCase().includes(q)) : rows;
    const cols = def.columns.map((c) => ({ label: c, cell: (e) => (c === "id" ? h("code", {}, e.id) : cellText(e[c])) }));
    if (kind === "certificates" || kind === "ca_certificates") cols.push(...certColumns(kind));
    cols.push({ label: "actions", cell: (e) => actions(e) });
    clear(listBox, table(cols, visible, { empty: q || tagInput.value ? "Nothing matches." : `No ${def.title.toLowerCase()} yet.` }));
    if (kind === "certificates" || kind === "ca_certificates") fillCertDetails(listBox, visible, kind);
  }
  function actions(e) {
    const name = label(e);
    const path = `${base()}/${e.id}`;
    return h("div", { class: "row-actions" },
      h("button", { type: "button", "aria-label": `JSON of ${def.one} ${name}`, onclick: () => {
        clear(panel, h("section", { class: "json", "aria-label": `JSON of ${def.one} ${name}` },
          h("h2", {}, `${def.one} ${name}`), h("pre", {}, JSON.stringify(shown(e), null, 2)),
          h("div", { class: "actions" }, h("button", { type: "button", onclick: () => clear(panel) }, "Close"), curlHint(curl("GET", path)))));
      } }, "JSON"),
      readOnly ? null : h("button", { type: "button", "aria-label": `Edit ${def.one} ${name}`, onclick: async () => {
        clear(panel, await form(kind, def, base(), e, (changed) => { clear(panel); if (changed) load(); }));
        panel.querySelector("input, select, textarea")?.focus();
      } }, "Edit"),
      readOnly ? null : h("button", { type: "button", class: "danger", "aria-label": `Delete ${def.one} ${name}`, onclick: async () => {
        if (!await confirmAction(`Delete ${def.one} ${name}? This cannot be undone.`, `Delete ${def.one}`)) return;
        const r = await call("DELETE", path);
        if (r.status === 204) { notice(`Deleted ${def.one} ${name}`); load(); }
        else notice((r.body && r.body.message) || `HTTP ${r.status}`, "error");
      } }, "Delete"),
      readOnly ? null : curlHint(curl("DELETE", path)));
  }
  search.addEventListener("input", draw);
  tagInput.addEventListener("change", load);
  await load();
}

// Certificates: what the leaf says (`/certificates/{id}/x509`) and who uses
// it; fetched once per certificate and page.
function certColumns(kind) {
  const cols = [
    { label: "SANs", cell: (e) => h("span", { "data-x509": "sans", "data-cert": e.id }, "…") },
    { label: "expires", cell: (e) => h("span", { "data-x509": "expires", "data-cert": e.id }, "…") },
  ];
  if (kind === "certificates") cols.push({ label: "services", cell: (e) => h("span", { "data-x509": "services", "data-cert": e.id }, "…") });
  return cols;
}

const details = new Map();

async function fillCertDetails(box, certs, kind) {
  for (const c of certs) {
    const cell = (what) => box.querySelector(`[data-x509="${what}"][data-cert="${c.id}"]`);
    const key = `${c.id}/${c.updated_at ?? ""}`;
    if (!details.has(key)) {
      details.set(key, Promise.all([
        call("GET", `/${kind}/${c.id}/x509`),
        kind === "certificates" ? call("GET", `/certificates/${c.id}/services`) : Promise.resolve(null),
      ]));
    }
    const [x, used] = await details.get(key);
    if (x.status === 200) {
      cell("sans")?.replaceChildren(x.body.sans.join(", ") || x.body.subject);
      const days = Math.floor((x.body.not_after * 1000 - Date.now()) / 86400000);
      const soon = days < 30;
      cell("expires")?.replaceChildren(h("span", { class: soon ? "warn" : "", "data-expiring": soon ? "true" : "false" },
        `${fmtDate(x.body.not_after)} (${days < 0 ? "expired" : `in ${days} days`})${soon ? " — expires within 30 days" : ""}`));
    }
    if (used && used.status === 200) cell("services")?.replaceChildren((used.body.data || []).map(label).join(", ") || "none");
  }
}
