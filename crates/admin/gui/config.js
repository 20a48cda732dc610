// The cluster's nodes, and the whole configuration: download it as a
// kong.yml, upload one (validated by the Admin API; nothing is applied on
// an error, and each entity's errors are listed).

import { h, clear, field, curlHint, table, fmtAgo, every, renderIfChanged, forget } from "./dom.js";
import { gui, call, curl } from "./api.js";
import { notice, confirmAction } from "./app.js";
import { errorText } from "./entities.js";

export async function cluster(main) {
  const box = h("div");
  clear(main, h("h1", {}, "Cluster"), box);
  async function load() {
    const [root, st] = await Promise.all([call("GET", "/"), call("GET", "/clustering/status")]);
    if (st.status !== 200) { forget(box); clear(box, h("p", { class: "error", role: "alert" }, st.body?.message || `HTTP ${st.status}`)); return; }
    const mine = root.status === 200 ? root.body.configuration_hash : null;
    const db = root.status === 200 ? root.body.configuration?.database : "";
    const nodes = Object.entries(st.body).map(([id, n]) => ({ id, ...n }));
    renderIfChanged(box, { nodes, mine, db, minute: Math.floor(Date.now() / 60000) }, () => [
      db !== "postgres" ? h("p", { class: "note" }, `This node keeps its configuration in ${db === "off" ? "memory (DB-less)" : db}: it is a cluster of one. Nodes that share a PostgreSQL database are listed here.`) : null,
      table([
        { label: "node", cell: (n) => h("code", {}, n.id) },
        { label: "hostname", cell: (n) => n.hostname || "" },
        { label: "version", cell: (n) => n.version || "" },
        { label: "configuration hash", cell: (n) => h("span", { class: mine && n.config_hash !== mine ? "warn" : "" }, n.config_hash || "", mine && n.config_hash !== mine ? " (differs from this node's)" : "") },
        { label: "configuration version", cell: (n) => String(n.config_version ?? "") },
        { label: "last sync", cell: (n) => (n.last_seen ? fmtAgo(n.last_seen * 1000) : "") },
      ], nodes, { empty: "No nodes." }),
      curlHint(curl("GET", "/clustering/status"))]);
  }
  await load();
  return every(5000, load);
}

// YAML for a JSON document (block style; strings quoted as JSON, which
// YAML reads as they are).
export function yaml(doc) {
  return block(doc, "").replace(/^\n/, "") + "\n";
}

function block(v, indent) {
  const scalar = (x) => (x === null ? "null" : typeof x === "string" ? JSON.stringify(x) : String(x));
  if (Array.isArray(v)) {
    if (!v.length) return " []";
    return v.map((x) => {
      if (x !== null && typeof x === "object" && !Array.isArray(x) && Object.keys(x).length) {
        const body = block(x, `${indent}  `).replace(/^\n\s*/, "");
        return `\n${indent}- ${body}`;
      }
      return `\n${indent}-${block(x, `${indent}  `)}`;
    }).join("");
  }
  if (v !== null && typeof v === "object") {
    const keys = Object.keys(v);
    if (!keys.length) return " {}";
    return keys.map((k) => `\n${indent}${/^[A-Za-z_][A-Za-z0-9_-]*$/.test(k) ? k : JSON.stringify(k)}:${block(v[k], `${indent}  `)}`).join("");
  }
  return ` ${scalar(v)}`;
}

export async function configuration(main) {
  const download = h("button", { type: "button", class: "primary" }, "Download kong.yml");
  const file = h("input", { type: "file", id: "config-file", accept: ".yml,.yaml,.json,application/json,text/yaml" });
  const text = h("textarea", { id: "config-text", rows: 14, spellcheck: "false" });
  const upload = h("button", { type: "submit", class: "danger" }, "Validate and apply");
  const result = h("section", { class: "result", "aria-live": "polite", "aria-label": "Upload result" });
  file.addEventListener("change", async () => { if (file.files[0]) text.value = await file.files[0].text(); });
  download.addEventListener("click", async () => {
    const r = await call("GET", "/config");
    if (r.status !== 200) { notice(r.body?.message || `HTTP ${r.status}`, "error"); return; }
    let doc;
    try { doc = JSON.parse(r.body.config); } catch { doc = null; }
    const body = doc ? `# Strait configuration, ${new Date().toISOString()}\n${yaml(doc)}` : r.body.config;
    const a = h("a", { href: URL.createObjectURL(new Blob([body], { type: "text/yaml" })), download: "kong.yml" });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  });
  const form = h("form", { class: "upload", "aria-label": "Upload a configuration" },
    h("h2", {}, "Upload"),
    h("p", {}, "Replaces the whole configuration with the document (Kong's declarative format, YAML or JSON). It is validated first: on any error nothing changes."),
    field("kong.yml to upload", file),
    field("Configuration document", text, "or paste it here"),
    h("div", { class: "actions" }, upload, curlHint(curl("POST", "/config", { config: "<kong.yml text>" }))));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!text.value.trim()) { clear(result, h("p", { class: "error", role: "alert" }, "Choose a file or paste a document first.")); return; }
    if (!await confirmAction("Replace the whole configuration with this document?", "Replace configuration")) return;
    const r = await call("POST", "/config", { config: text.value });
    if (r.status === 200 || r.status === 201) {
      // The answer holds the entities (private keys included): only counts are shown.
      const counts = Object.entries(r.body || {}).filter(([, v]) => Array.isArray(v) && v.length).map(([k, v]) => `${v.length} ${k}`);
      clear(result, h("p", { class: "ok" }, `Applied: ${counts.join(", ") || "an empty configuration"}.`));
      notice("Configuration applied");
      return;
    }
    const fields = r.body?.fields;
    let items = [];
    if (Array.isArray(fields)) items = fields.map(errorText);
    else if (fields && typeof fields === "object") items = Object.entries(fields).map(([k, v]) => `${k}: ${errorText(v)}`);
    // "service services[2] (name 'a'): host: required field missing" and
    // "target targets[1]: target: …" → grouped by entity, "field: message".
    const groups = new Map();
    for (const it of items) {
      const m = it.match(/^(\S+ \S+\[\d+\](?: \(name '.*?'\))?): (.*)$/) || [null, "configuration", it];
      if (!groups.has(m[1])) groups.set(m[1], []);
      groups.get(m[1]).push(m[2]);
    }
    clear(result,
      h("p", { class: "error", role: "alert" }, `Not applied: ${r.body?.name || "error"}.`),
      h("p", {}, groups.size ? "Nothing was changed. The errors, by entity:" : r.body?.message || `HTTP ${r.status}`),
      h("ul", { class: "errors" }, [...groups].map(([entity, errs]) => h("li", {}, h("strong", {}, entity), h("ul", {}, errs.map((e) => h("li", {}, e)))))));
  });
  clear(main, h("h1", {}, "Configuration"),
    gui.dbless ? h("p", { class: "note" }, "DB-less: uploading a document is how this gateway's configuration changes.") : null,
    h("section", { "aria-label": "Download" }, h("h2", {}, "Download"),
      h("p", {}, "The current configuration, as a declarative kong.yml (it includes private keys: keep it safe)."),
      h("div", { class: "actions" }, download, curlHint(curl("GET", "/config")))),
    form, result);
}
