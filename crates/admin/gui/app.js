// The shell: navigation by the URL's hash, the token prompt, notices and
// confirmations. Each page module exports render(main, params) and may
// return a function that stops what the page started (polls, streams).

import { h, clear } from "./dom.js";
import { gui, loadGui, call, onUnauthorized, setToken, token } from "./api.js";
import { entityPage, KINDS } from "./entities.js";
import { overview } from "./overview.js";
import { tester, health, sessions } from "./live.js";
import { cluster, configuration } from "./config.js";

const PAGES = [
  ["overview", "Overview", overview],
  ...Object.entries(KINDS).map(([k, d]) => [k, d.title, (main, p) => entityPage(main, k, p)]),
  ["tester", "Route tester", tester],
  ["health", "Health", health],
  ["sessions", "Sessions", sessions],
  ["cluster", "Cluster", cluster],
  ["configuration", "Configuration", configuration],
];

let stop = null;
// Each navigation's number: a page that finishes loading after the next
// navigation began neither draws nor keeps running.
let generation = 0;

// Kong Manager's names for pages whose name here differs.
const ALIASES = { "ca-certificates": "ca_certificates", filter_chains: "filter-chains", "route-tester": "tester", dashboard: "overview" };

// The page is named by the hash (`#/sessions`), or by the path
// (`/sessions`) when there is no hash.
function current() {
  const from = location.hash.startsWith("#/") ? location.hash.slice(2) : location.pathname.replace(/^\//, "") + location.search;
  const [path, query] = from.split("?");
  const [name, ...rest] = path.split("/");
  const n = name || "overview";
  return { name: ALIASES[n] || n, rest, params: new URLSearchParams(query || "") };
}

async function route() {
  if (stop) { try { stop(); } catch { /* already stopped */ } stop = null; }
  const mine = ++generation;
  const { name, rest, params } = current();
  const page = PAGES.find((p) => p[0] === name) || PAGES[0];
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.page === page[0]) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `${page[1]} · Strait`;
  const shown = document.getElementById("main");
  clear(shown);
  document.getElementById("nav").classList.remove("open");
  document.getElementById("nav-toggle").setAttribute("aria-expanded", "false");
  // The page draws into its own element, put in place only if it is still
  // the page asked for when it is done.
  const main = h("div", { class: "page", "data-page": page[0] });
  shown.append(main);
  try {
    const stopper = (await page[2](main, { rest, params })) || null;
    if (mine !== generation) { if (stopper) stopper(); main.remove(); return; }
    stop = stopper;
  } catch (e) {
    console.error(e);
    if (mine === generation) clear(main, h("h1", {}, page[1]), h("p", { class: "error", role: "alert" }, e.message));
  }
}

export function notice(text, kind = "ok") {
  const box = document.getElementById("notice");
  const item = h("p", { class: `notice-${kind}` }, text);
  box.append(item);
  setTimeout(() => item.remove(), 6000);
}

// A confirmation that states what will happen; resolves true on confirm.
export function confirmAction(text, okLabel) {
  const dlg = document.getElementById("confirm-dialog");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel;
  dlg.returnValue = "";
  dlg.showModal();
  return new Promise((res) => dlg.addEventListener("close", () => res(dlg.returnValue === "ok"), { once: true }));
}

// The token prompt: shown when the Admin API answers 401; a wrong token
// keeps it open with the Admin API's message.
let pending = null;
function askToken(body) {
  if (pending) return pending;
  const dlg = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  const err = document.getElementById("token-error");
  err.textContent = token() ? `Refused: ${(body && body.message) || "invalid token"}` : "";
  input.setAttribute("aria-invalid", token() ? "true" : "false");
  input.value = "";
  pending = new Promise((res) => {
    const form = document.getElementById("token-form");
    const submit = (ev) => {
      ev.preventDefault();
      if (!input.value) return;
      setToken(input.value);
      form.removeEventListener("submit", submit);
      pending = null;
      dlg.close();
      document.getElementById("sign-out").hidden = false;
      res(true);
    };
    form.addEventListener("submit", submit);
  });
  // Escape would close the prompt with the call still waiting for it
  // (Chromium does not always honour preventDefault there): it reopens.
  dlg.oncancel = (ev) => ev.preventDefault();
  dlg.onclose = () => { if (pending) { dlg.showModal(); input.focus(); } };
  if (!dlg.open) dlg.showModal();
  input.focus();
  return pending;
}

async function start() {
  await loadGui();
  onUnauthorized(askToken);
  const nav = document.getElementById("nav");
  clear(nav, h("ul", {}, PAGES.map(([k, label]) => h("li", {}, h("a", { href: `#/${k}`, "data-page": k }, label)))));
  const toggle = document.getElementById("nav-toggle");
  toggle.addEventListener("click", () => {
    const open = nav.classList.toggle("open");
    toggle.setAttribute("aria-expanded", String(open));
  });
  const out = document.getElementById("sign-out");
  out.hidden = !token();
  out.addEventListener("click", () => { setToken(null); out.hidden = true; route(); });
  const root = await call("GET", "/");
  if (root.status === 200) {
    document.getElementById("node").textContent =
      `${root.body.hostname || ""} · ${root.body.configuration?.database || ""}${gui.dbless ? " (DB-less: read-only, upload on Configuration)" : ""}`;
  }
  // Only "#/page" hashes are pages ("#main" is the skip link's target).
  window.addEventListener("hashchange", () => { if (location.hash.startsWith("#/") || !location.hash) route(); });
  document.querySelector(".skip").addEventListener("click", (ev) => {
    ev.preventDefault();
    document.getElementById("main").focus();
  });
  await route();
}

start();
