// Lineup's status page. The admin token is typed in here and kept in sessionStorage
// (this tab only, gone when it closes); it is sent as a bearer header, never in a URL.
// The page redraws when the event stream (read with fetch, since EventSource cannot send
// headers) reports a change, and every few seconds regardless.
"use strict";

const KEY = "lineup.token";
const REFRESH_MS = 5000;
let token = sessionStorage.getItem(KEY);
let pending = null;
let streamAbort = null;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") e.addEventListener("click", v);
    else if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

async function api(method, path, body) {
  const resp = await fetch(path, {
    method,
    headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(`${resp.status} ${data.code || ""}: ${data.message || ""}`);
  return data;
}

function showError(msg) {
  $("error").hidden = !msg;
  $("error").textContent = msg || "";
}

function bar(label, value, total, cls) {
  const pct = total > 0 ? Math.min(100, Math.round((100 * value) / total)) : 0;
  const fill = el("div", {});
  fill.style.width = `${pct}%`; // through the CSSOM: the page's CSP allows no inline styles
  return [
    el("span", {}, label),
    el("div", { class: "bar " + cls, role: "meter", "aria-label": label, "aria-valuenow": value, "aria-valuemax": total },
      fill),
    el("span", { class: "muted" }, `${value} / ${total}`),
  ];
}

function status(s) {
  return el("span", { class: "st st-" + s, "data-status": s }, s);
}

function expiresIn(iso) {
  const s = Math.round((Date.parse(iso) - Date.now()) / 1000);
  return s >= 0 ? `${s} s` : `expired ${-s} s ago`;
}

async function redrive(pool, ids) {
  try {
    const r = await api("POST", `/v1/pools/${pool}/dead-letters/redrive`, ids ? { eval_ids: ids } : {});
    showError(r.skipped.length ? `skipped: ${r.skipped.map((s) => `${s.eval_id} (${s.reason})`).join(", ")}` : "");
  } catch (e) {
    showError(e.message);
  }
  schedule(0);
}

function poolCard(p, workers, evals, dead, pipelines) {
  const running = p.running ?? p.allocs;
  const limit = p.limit === null || p.limit === undefined ? "" : ` · limit ${p.limit}`;
  return el("article", { class: "pool", "data-pool": p.pool_id },
    el("h2", {}, p.pool_id, " ", status(p.status)),
    el("p", { class: "muted" }, `${p.strategy} · health ${p.health.level} (${p.health.source})${limit} · ${p.queued} queued`),
    el("div", { class: "bars" },
      bar("capacity", p.capacity, p.capacity, "capacity"),
      bar("free", p.free, p.capacity, "free"),
      bar("running", running, p.max_running || Math.max(running, p.capacity), "running")),
    el("h3", {}, `Workers (${workers.length})`),
    el("table", {},
      el("tr", {}, ["worker", "capacity", "free", "live", "TTL"].map((h) => el("th", {}, h))),
      workers.map((w) => el("tr", { "data-worker": w.worker_id },
        el("td", { class: "id" }, w.worker_id), el("td", {}, w.capacity), el("td", {}, w.free),
        el("td", {}, w.live ? "yes" : "no"), el("td", {}, expiresIn(w.expires_at))))),
    el("h3", {}, "Evals"),
    el("table", {},
      el("tr", {}, ["eval", "status", "attempts", "worker", "reason"].map((h) => el("th", {}, h))),
      evals.map((e) => el("tr", { "data-eval": e.eval_id },
        el("td", { class: "id" }, e.eval_id), el("td", {}, status(e.status)), el("td", {}, e.attempts),
        el("td", { class: "id" }, e.worker_id || ""), el("td", {}, e.reason || "")))),
    el("h3", {}, `Dead letters (${dead.length}) `,
      dead.length ? el("button", { onclick: () => redrive(p.pool_id, null) }, "Redrive all") : null),
    el("table", {},
      dead.map((e) => el("tr", { "data-dead": e.eval_id },
        el("td", { class: "id" }, e.eval_id), el("td", {}, e.reason || ""),
        el("td", {}, el("button", { onclick: () => redrive(p.pool_id, [e.eval_id]) }, "Redrive"))))),
    pipelines.length ? el("h3", {}, "Pipelines") : null,
    pipelines.map((pl) => el("p", { "data-pipeline": pl.pipeline_id },
      el("span", { class: "id" }, pl.pipeline_id), " ", status(pl.status), " ",
      pl.steps.map((s) => [status(s.status), ` ${s.name} `]))));
}

async function refresh() {
  pending = null;
  if (!token) return;
  try {
    const { pools } = await api("GET", "/v1/pools");
    const cards = await Promise.all(pools.filter((p) => p.status === "active").map(async (p) => {
      const base = `/v1/pools/${p.pool_id}`;
      const [w, e, d, pl] = await Promise.all([
        api("GET", base + "/workers"), api("GET", base + "/evals?limit=50"),
        api("GET", base + "/dead-letters?limit=50"), api("GET", base + "/pipelines?limit=20"),
      ]);
      return poolCard(p, w.workers, e.evals, d.evals, pl.pipelines);
    }));
    $("pools").replaceChildren(...(cards.length ? cards : [el("p", { class: "muted" }, "No active pools.")]));
    $("status").textContent = `${pools.length} pools · updated ${new Date().toLocaleTimeString()}`;
    showError("");
  } catch (e) {
    showError(e.message);
  }
}

function schedule(ms) {
  if (pending === null) pending = setTimeout(refresh, ms);
}

// Server-Sent Events over fetch: any change redraws within 200 ms.
async function follow() {
  streamAbort?.abort();
  streamAbort = new AbortController();
  try {
    const resp = await fetch("/v1/events", { headers: { Authorization: "Bearer " + token }, signal: streamAbort.signal });
    if (!resp.ok || !resp.body) return;
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      if (value.includes("data:")) schedule(200);
    }
  } catch (_) {
    // Aborted or the server went away: the periodic refresh carries on.
  }
  if (token) setTimeout(follow, 2000);
}

function signedIn() {
  $("signin").hidden = true;
  $("signout").hidden = false;
  schedule(0);
  follow();
}

$("signin").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token").value.trim();
  $("token").value = "";
  if (!token) return;
  sessionStorage.setItem(KEY, token);
  signedIn();
});

$("signout").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  token = null;
  streamAbort?.abort();
  location.reload();
});

setInterval(() => schedule(0), REFRESH_MS);
if (token) signedIn();
