// Small DOM helpers. Every element is built with createElement and text
// nodes: nothing from the Admin API is ever parsed as HTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = !!v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

export function fmtAgo(ms) {
  if (!ms) return "";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export function fmtDate(secs) {
  if (!secs) return "";
  return new Date(secs * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

// A unique id for label/field pairs.
let seq = 0;
export function uid(prefix) {
  seq += 1;
  return `${prefix}-${seq}`;
}

// A labelled control: <div class="field"><label>…</label>control<p error></p></div>.
export function field(label, control, help) {
  const id = control.id || uid("f");
  control.id = id;
  const err = h("p", { class: "field-error", id: `${id}-error`, role: "alert" });
  control.setAttribute("aria-describedby", `${id}-error${help ? ` ${id}-help` : ""}`);
  const box = h("div", { class: "field" },
    h("label", { for: id }, label),
    control,
    help ? h("p", { class: "help", id: `${id}-help` }, help) : null,
    err);
  box.showError = (msg) => {
    err.textContent = msg || "";
    control.setAttribute("aria-invalid", msg ? "true" : "false");
    box.classList.toggle("invalid", !!msg);
  };
  return box;
}

// A "curl" hint: the one Admin API call an action makes.
export function curlHint(text) {
  const code = h("code", {}, text);
  const box = h("details", { class: "curl" }, h("summary", {}, "curl"), h("pre", {}, code));
  box.set = (t) => { code.textContent = t; };
  return box;
}

export function table(columns, rows, opts = {}) {
  const head = h("tr", {}, columns.map((c) => {
    const th = h("th", { scope: "col" }, c.label);
    if (c.sort && opts.onSort) {
      const active = opts.sort === c.sort || opts.sort === `-${c.sort}`;
      const desc = opts.sort === `-${c.sort}`;
      th.setAttribute("aria-sort", active ? (desc ? "descending" : "ascending") : "none");
      clear(th, h("button", { type: "button", class: "sort", onclick: () => opts.onSort(active && !desc ? `-${c.sort}` : c.sort) },
        c.label, active ? (desc ? " ▼" : " ▲") : ""));
    }
    return th;
  }));
  const body = h("tbody", {}, rows.length ? rows.map((r) => h("tr", { "data-id": r.id ?? "" },
    columns.map((c) => h("td", { "data-label": c.label }, c.cell(r))))) :
    h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, opts.empty || "Nothing here yet.")));
  return h("div", { class: "table-wrap" }, h("table", { class: opts.class || "" }, h("thead", {}, head), body));
}

// Redraws `box` only when `data` differs from what it shows: a periodic
// refresh keeps focus, open hints and the elements a person (or a test)
// is about to click.
export function renderIfChanged(box, data, render) {
  const sig = JSON.stringify(data);
  if (box.dataset.sig === sig) return;
  box.dataset.sig = sig;
  // Focus stays on the same control across the redraw: found again by its
  // row, its kind and its position among its row's controls of that kind.
  const focused = box.contains(document.activeElement) ? document.activeElement : null;
  const where = (el) => {
    const row = el.closest("tr");
    const scope = row || box;
    return [row ? row.dataset.id : "", el.tagName, [...scope.querySelectorAll(el.tagName)].indexOf(el)];
  };
  const before = focused && where(focused);
  clear(box, render());
  if (before) {
    const scope = before[0] ? box.querySelector(`tr[data-id="${CSS.escape(before[0])}"]`) : box;
    const again = scope && scope.querySelectorAll(before[1])[before[2]];
    if (again) again.focus();
  }
}

// Forgets what `box` shows, so the next renderIfChanged draws it.
export function forget(box) {
  delete box.dataset.sig;
}

// Runs `f` `ms` from now and again `ms` after each run ends (never two at
// once); returns the function that stops it.
export function every(ms, f) {
  let stopped = false;
  let timer = null;
  const loop = async () => {
    try { await f(); } catch (e) { console.warn(e); }
    if (!stopped) timer = setTimeout(loop, ms);
  };
  timer = setTimeout(loop, ms);
  return () => { stopped = true; clearTimeout(timer); };
}
