// The Admin API client: where it is (from /gui.json), the token (kept in
// sessionStorage, for this tab only), JSON calls, the event stream, and the
// curl line that makes the same call.

const TOKEN_KEY = "strait-admin-token";
export const gui = { api: "/api", admin_urls: [], dbless: false, wasm: false, version: "" };

export async function loadGui() {
  const r = await fetch("/gui.json", { cache: "no-store" });
  Object.assign(gui, await r.json());
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(t) {
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
}

// Asked for a token when the Admin API answers 401; app.js sets it.
let askToken = async () => false;
export function onUnauthorized(f) { askToken = f; }

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const t = token();
  if (t) h["Kong-Admin-Token"] = t;
  return h;
}

// One Admin API call: { status, body } (body parsed when it is JSON).
export async function call(method, path, body) {
  for (let attempt = 0; ; attempt++) {
    const init = { method, headers: headers(body !== undefined && typeof body !== "string"), cache: "no-store" };
    if (body !== undefined) init.body = typeof body === "string" ? body : JSON.stringify(body);
    let r;
    try {
      r = await fetch(gui.api + path, init);
    } catch (e) {
      return { status: 0, body: { message: `the Admin API cannot be reached: ${e.message}` } };
    }
    const text = await r.text();
    let parsed = text;
    if ((r.headers.get("content-type") || "").includes("json") && text) {
      try { parsed = JSON.parse(text); } catch { parsed = text; }
    }
    if (r.status === 401 && attempt < 3 && await askToken(parsed)) continue;
    return { status: r.status, body: parsed };
  }
}

export async function get(path) {
  const r = await call("GET", path);
  if (r.status !== 200) throw new ApiFailure(r);
  return r.body;
}

// Every page of a Kong list.
export async function all(path) {
  const out = [];
  let next = path + (path.includes("?") ? "&" : "?") + "size=1000";
  for (let i = 0; next && i < 100; i++) {
    const page = await get(next);
    out.push(...(page.data || []));
    next = page.next ? page.next.replace(/^https?:\/\/[^/]+/, "") : null;
    if (next && next.startsWith(gui.api)) next = next.slice(gui.api.length);
  }
  return out;
}

export class ApiFailure extends Error {
  constructor(r) {
    super((r.body && r.body.message) || `HTTP ${r.status}`);
    this.status = r.status;
    this.body = r.body;
  }
}

// The Admin API's own address, for hints a person can paste in a shell.
export function adminBase() {
  if (!gui.api.startsWith("/")) return gui.api;
  const u = gui.admin_urls[0] || `${location.protocol}//${location.hostname}:8001`;
  return u.replace("//0.0.0.0:", `//${location.hostname}:`).replace("//[::]:", `//${location.hostname}:`);
}

function quote(s) {
  return `'${String(s).replace(/'/g, "'\\''")}'`;
}

// Private keys never appear in a hint: the shell reads them from a file.
function redacted(body) {
  if (!body || typeof body !== "object") return body;
  const out = { ...body };
  for (const k of ["key", "key_alt"]) if (typeof out[k] === "string") out[k] = `<contents of ${k}.pem>`;
  return out;
}

export function curl(method, path, body) {
  body = redacted(body);
  const parts = ["curl"];
  if (method !== "GET") parts.push("-X", method);
  parts.push(quote(adminBase() + path));
  if (token()) parts.push("-H", quote("Kong-Admin-Token: $ADMIN_TOKEN"));
  if (body !== undefined) {
    parts.push("-H", quote("Content-Type: application/json"));
    parts.push("-d", quote(typeof body === "string" ? body : JSON.stringify(body)));
  }
  return parts.join(" ");
}

// Server-sent events over fetch (EventSource cannot send the token).
// Calls onEvent(object) per event; returns a function that stops it.
export function events(path, onEvent, onState) {
  const ctl = new AbortController();
  (async () => {
    while (!ctl.signal.aborted) {
      try {
        const r = await fetch(gui.api + path, { headers: headers(false), signal: ctl.signal, cache: "no-store" });
        if (!r.ok || !r.body) throw new Error(`HTTP ${r.status}`);
        onState && onState(true);
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const chunk = buf.slice(0, i);
            buf = buf.slice(i + 2);
            const data = chunk.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
            if (data) { try { onEvent(JSON.parse(data)); } catch { /* not JSON: a comment */ } }
          }
        }
      } catch (e) {
        if (ctl.signal.aborted) return;
      }
      onState && onState(false);
      await new Promise((res) => setTimeout(res, 1000));
    }
  })();
  return () => ctl.abort();
}

// Prometheus text → { "name{labels}": value }.
export function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    out[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return out;
}
