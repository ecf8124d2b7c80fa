// The switchyard console: plain script, no build step. Everything shown is
// put in with textContent, never as HTML: names and upstream messages are
// data, not markup.
"use strict";

const REFRESH_MS = 5000;
const PAGE_SIZE = 50;

const state = {
  token: null,          // the session's token, in memory only
  view: "overview",
  paging: { credentials: 0, models: 0, keys: 0 },
  timer: null,
};

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const num = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const usd = (n) => "$" + Number(n || 0).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 6 });

function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.round(s / 60) + " min";
  if (s < 86400) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}

// --- talking to the gateway ---

class SignedOut extends Error {}

async function api(method, path) {
  const headers = {};
  if (method !== "GET" && state.token) headers["x-switchyard-token"] = state.token;
  const r = await fetch(path, { method, headers, credentials: "same-origin", cache: "no-store" });
  if (r.status === 401) throw new SignedOut();
  if (!r.ok && r.status !== 202) {
    let message = r.status + " " + r.statusText;
    try { message = (await r.json()).error.message || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return r.status === 204 ? null : r.json();
}

function notice(text) {
  $("#notice").textContent = text || "";
  $("#notice").hidden = !text;
}

// --- sign-in and sign-out ---

function showSignIn(message) {
  state.token = null;
  clearTimeout(state.timer);
  $("#app").hidden = true;
  $("#signout").hidden = true;
  $("#summary").textContent = "";
  $("#updated").textContent = "";
  $("#signin-view").hidden = false;
  $("#signin-error").textContent = message || "";
  $("#key").focus();
}

function showApp() {
  $("#signin-view").hidden = true;
  $("#app").hidden = false;
  $("#signout").hidden = false;
  show(state.view);
}

async function signIn(event) {
  event.preventDefault();
  const input = $("#key");
  const button = $("#signin-button");
  button.disabled = true;
  $("#signin-error").textContent = "";
  try {
    const r = await fetch("/admin/ui/session", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ key: input.value }),
      credentials: "same-origin",
    });
    // The key is not kept: the session cookie stands for it from now on.
    input.value = "";
    if (r.ok) {
      state.token = (await r.json()).token;
      showApp();
    } else {
      let message = "Sign-in failed (" + r.status + ")";
      try { message = (await r.json()).error.message; } catch (_) { /* not JSON */ }
      showSignIn(message.charAt(0).toUpperCase() + message.slice(1) + ".");
    }
  } catch (e) {
    showSignIn("The gateway does not answer: " + e.message);
  } finally {
    button.disabled = false;
  }
}

async function signOut() {
  try { await api("DELETE", "/admin/ui/session"); } catch (_) { /* signed out either way */ }
  showSignIn("Signed out.");
}

// --- views ---

function show(view) {
  state.view = view;
  for (const b of document.querySelectorAll(".tabs button")) {
    b.classList.toggle("active", b.dataset.view === view);
  }
  for (const s of document.querySelectorAll(".view")) {
    s.hidden = s.id !== "view-" + view;
  }
  refresh();
}

async function refresh() {
  clearTimeout(state.timer);
  try {
    await Promise.all([summary(), VIEWS[state.view]()]);
    notice("");
    $("#updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    if (e instanceof SignedOut) return showSignIn("Your session has ended: sign in again.");
    notice("Could not refresh: " + e.message);
  }
  state.timer = setTimeout(refresh, REFRESH_MS);
}

async function summary() {
  const r = await api("GET", "/admin/replicas");
  const all = r.replicas;
  const degraded = all.filter((x) => x.degraded).length;
  $("#summary").textContent = all.length + (all.length === 1 ? " replica" : " replicas") +
    (degraded ? ", " + degraded + " degraded" : ", all healthy");
  $("#summary").classList.toggle("bad", degraded > 0);
}

function pager(list, total) {
  const box = document.querySelector('.pager[data-list="' + list + '"]');
  const offset = state.paging[list];
  const last = Math.min(offset + PAGE_SIZE, total);
  const prev = el("button", { type: "button", disabled: offset === 0, className: "prev" }, "‹ Previous");
  const next = el("button", { type: "button", disabled: last >= total, className: "next" }, "Next ›");
  prev.addEventListener("click", () => { state.paging[list] = Math.max(0, offset - PAGE_SIZE); refresh(); });
  next.addEventListener("click", () => { state.paging[list] = offset + PAGE_SIZE; refresh(); });
  const said = total === 0 ? "none" : (offset + 1) + "–" + last + " of " + num(total);
  box.replaceChildren(prev, el("span", { className: "count" }, said), next);
}

function query(list) {
  const q = $("#" + list + "-search").value.trim();
  return "?offset=" + state.paging[list] + "&limit=" + PAGE_SIZE + (q ? "&q=" + encodeURIComponent(q) : "");
}

function fill(table, rows) {
  $(table + " tbody").replaceChildren(...rows);
}

function blockLine(b) {
  const what = b.scope === "credential" ? "whole credential" : b.upstream_model;
  const path = "/admin/blocks/" + encodeURIComponent(b.credential_id) +
    (b.scope === "credential" ? "" : "/" + encodeURIComponent(b.upstream_model));
  const lift = el("button", { type: "button", className: "lift", "data-scope": b.scope + ":" + b.credential_id + (b.upstream_model ? ":" + b.upstream_model : "") }, "Lift");
  lift.addEventListener("click", async () => {
    lift.disabled = true;
    try {
      await api("DELETE", path);
      refresh();
    } catch (e) {
      if (e instanceof SignedOut) return showSignIn("Your session has ended: sign in again.");
      notice("Could not lift the block: " + e.message);
      lift.disabled = false;
    }
  });
  const reason = b.reason === "exhausted" ? "no headroom until its reset" : b.reason.replaceAll("_", " ");
  return el("div", { className: "block" },
    el("strong", {}, what), " ",
    el("span", { className: "tag bad" }, reason), " ",
    b.status ? el("span", { className: "muted" }, "HTTP " + b.status + " ") : null,
    el("span", { className: "muted" }, ago(b.remaining_ms) + " left, by " + b.replica), " ",
    lift,
    b.message ? el("div", { className: "message" }, b.message) : null);
}

async function credentials() {
  const r = await api("GET", "/admin/credentials" + query("credentials"));
  $("#credentials-note").textContent = r.note;
  pager("credentials", r.total);
  fill("#credentials-table", r.credentials.map((c) => el("tr", { "data-credential": c.id },
    el("td", {}, el("strong", {}, c.id), el("div", { className: "muted" }, c.base_url)),
    el("td", {}, c.provider),
    el("td", {}, c.priority),
    el("td", {}, c.weight),
    el("td", {}, el("span", { className: "tag " + (c.enabled ? "good" : "bad") }, c.enabled ? "yes" : "no")),
    el("td", {}, el("code", {}, c.api_key)),
    el("td", {}, c.models.map((m) => el("div", {}, m.model === m.upstream_model || m.upstream_model === "*" ? m.model : m.model + " → " + m.upstream_model))),
    el("td", { className: "blocks" },
      c.blocks.length ? c.blocks.map(blockLine) : el("span", { className: "tag good" }, "serving"),
      probeLines(c)))));
}

// Probes and quota ladders: what comes after a block, and what a 429 left.
function probeLines(c) {
  const lines = [];
  const say = (what, state) => {
    if (state.probe_held) lines.push(el("div", { className: "probe" }, what + ": being probed by a request now"));
    else if (state.awaiting_probe) lines.push(el("div", { className: "probe" }, what + ": out of a long block, its next request probes it"));
    if (state.quota_level > 0) lines.push(el("div", { className: "probe" }, what + ": rate-limit backoff, step " + state.quota_level));
  };
  say("whole credential", { ...c, quota_level: 0 });
  for (const p of c.pairs || []) say(p.upstream_model, p);
  return lines;
}

async function models() {
  const r = await api("GET", "/admin/models" + query("models"));
  pager("models", r.total);
  fill("#models-table", r.models.map((m) => el("tr", { "data-model": m.model },
    el("td", {}, el("strong", {}, m.model), m.pattern ? el("span", { className: "tag" }, "pattern") : null),
    el("td", {}, m.candidates.map((c) => el("div", {},
      c.credential_id + " (" + c.provider + ", priority " + c.priority + ", weight " + c.weight + ") → " + c.upstream_model,
      c.enabled ? null : el("span", { className: "tag bad" }, "disabled")))))));
}

function budgetCell(k) {
  if (k.budget_usd === null) return el("td", {}, "–");
  const share = k.budget_usd > 0 ? Math.min(1, k.spent_usd / k.budget_usd) : 1;
  const meter = el("div", { className: "meter" }, el("div", { className: share >= 1 ? "fill bad" : share > 0.8 ? "fill warn" : "fill" }));
  meter.firstChild.style.width = (share * 100).toFixed(1) + "%";
  return el("td", {}, usd(k.budget_usd) + " a " + k.budget_period, meter, el("div", { className: "muted" }, (share * 100).toFixed(1) + "% spent"));
}

// This minute's use against a per-minute limit (counted only for keys
// with a limit).
function limitCell(used, limit) {
  if (limit === null) return "–";
  return el("span", {}, num(used) + " / " + num(limit), el("div", { className: "muted" }, "this minute"));
}

async function keys() {
  const r = await api("GET", "/admin/keys" + query("keys"));
  pager("keys", r.total);
  fill("#keys-table", r.keys.map((k) => el("tr", { "data-key": k.name },
    el("td", {}, el("strong", {}, k.name)),
    el("td", {}, el("span", { className: "tag " + (k.enabled ? "good" : "bad") }, k.enabled ? "yes" : "no")),
    el("td", { className: "rpm" }, limitCell(k.requests_this_minute, k.rpm_limit)),
    el("td", { className: "tpm" }, limitCell(k.tokens_this_minute, k.tpm_limit)),
    el("td", {}, k.models ? k.models.join(", ") : "all"),
    el("td", { className: "spent" }, usd(k.spent_usd)),
    budgetCell(k))));
}

async function replicas() {
  const r = await api("GET", "/admin/replicas");
  $("#replicas-note").textContent = r.note;
  const tag = (text, good) => el("span", { className: "tag " + (good ? "good" : "bad") }, text);
  fill("#replicas-table", r.replicas.map((x) => el("tr", { "data-replica": x.id },
    el("td", {}, el("strong", {}, x.id), x.this ? el("span", { className: "muted" }, " (this page's)") : null),
    el("td", {}, x.mode),
    el("td", {}, tag(x.redis, x.redis !== "down")),
    el("td", {}, tag(x.postgres, x.postgres !== "down")),
    el("td", {}, x.view + (x.unsynced ? ", " + x.unsynced + " unsynced" : "")),
    el("td", {}, x.draining ? tag("draining", false) : x.degraded ? tag("degraded", false) : tag("healthy", true)),
    el("td", {}, x.version),
    el("td", {}, new Date(x.started_ms).toLocaleString()),
    el("td", {}, ago(x.seen_ms_ago) + " ago"))));
}

// --- usage charts, drawn as SVG ---

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function label(step, span) {
  return (t) => {
    const d = new Date(t);
    if (step >= 86400000) return d.toLocaleDateString([], { month: "short", day: "numeric" });
    if (span > 3600000) return d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  };
}

// Bars of `series` (each [value, color] per bucket stacked), with the
// highest value and the first and last times as labels.
function bars(target, buckets, stacks, format, timeLabel) {
  const node = $(target);
  const W = 600, H = 180, pad = 22;
  node.setAttribute("viewBox", "0 0 " + W + " " + H);
  node.replaceChildren();
  const totals = buckets.map((b) => stacks.reduce((s, st) => s + st.value(b), 0));
  const max = Math.max(...totals, 0);
  const bw = (W - pad) / Math.max(buckets.length, 1);
  buckets.forEach((b, i) => {
    let y = H - pad;
    for (const st of stacks) {
      const v = st.value(b);
      if (v <= 0 || max === 0) continue;
      const h = (v / max) * (H - 2 * pad);
      y -= h;
      const r = svg("rect", { x: pad + i * bw + 0.5, y, width: Math.max(bw - 1, 0.5), height: h, class: st.cls });
      const tip = svg("title", {});
      tip.textContent = timeLabel(b.t) + ": " + format(v);
      r.append(tip);
      node.append(r);
    }
  });
  node.append(svg("line", { x1: pad, y1: H - pad, x2: W, y2: H - pad, class: "axis" }));
  const text = (x, y, s, anchor) => {
    const t = svg("text", { x, y, "text-anchor": anchor || "start", class: "label" });
    t.textContent = s;
    node.append(t);
  };
  text(pad, 12, "max " + format(max));
  if (buckets.length) {
    text(pad, H - 6, timeLabel(buckets[0].t));
    text(W, H - 6, timeLabel(buckets[buckets.length - 1].t), "end");
  }
  node.dataset.total = String(totals.reduce((a, b) => a + b, 0));
}

async function overview() {
  const range = $("#range").value, by = $("#by").value;
  const r = await api("GET", "/admin/usage/series?range=" + range + "&by=" + by);
  const timeLabel = label(r.step_ms, r.step_ms * r.buckets.length);
  bars("#chart-requests", r.buckets, [
    { value: (b) => b.requests - b.errors, cls: "ok" },
    { value: (b) => b.errors, cls: "err" },
  ], num, timeLabel);
  bars("#chart-tokens", r.buckets, [{ value: (b) => b.tokens, cls: "tok" }], num, timeLabel);
  bars("#chart-cost", r.buckets, [{ value: (b) => b.cost_usd, cls: "cost" }], usd, timeLabel);
  const sum = (f) => r.buckets.reduce((s, b) => s + f(b), 0);
  const requests = sum((b) => b.requests);
  $("#totals").replaceChildren(
    el("div", { className: "card stat" }, el("span", { className: "muted" }, "Requests"), el("strong", { id: "total-requests" }, num(requests))),
    el("div", { className: "card stat" }, el("span", { className: "muted" }, "Errors"), el("strong", { id: "total-errors" }, num(sum((b) => b.errors)))),
    el("div", { className: "card stat" }, el("span", { className: "muted" }, "Tokens"), el("strong", { id: "total-tokens" }, num(sum((b) => b.tokens)))),
    el("div", { className: "card stat" }, el("span", { className: "muted" }, "Cost"), el("strong", { id: "total-cost" }, usd(sum((b) => b.cost_usd)))));
  $("#usage-group").textContent = { key: "Key", model: "Model", credential: "Credential" }[by];
  fill("#usage-table", r.groups.map((g) => el("tr", { "data-group": g.group },
    el("td", {}, el("strong", {}, g.group === "" ? "(no upstream answered)" : g.group)),
    el("td", { className: "requests" }, num(g.requests)),
    el("td", {}, num(g.errors)),
    el("td", {}, num(g.input_tokens)),
    el("td", {}, num(g.output_tokens)),
    el("td", {}, num(g.cached_tokens)),
    el("td", {}, usd(g.cost_usd)),
    el("td", {}, requests ? (100 * g.requests / requests).toFixed(1) + "%" : "–"))));
}

const VIEWS = { overview, credentials, models, keys, replicas };

// --- start ---

document.addEventListener("DOMContentLoaded", async () => {
  $("#signin").addEventListener("submit", signIn);
  $("#signout").addEventListener("click", signOut);
  for (const b of document.querySelectorAll(".tabs button")) {
    b.addEventListener("click", () => show(b.dataset.view));
  }
  $("#range").addEventListener("change", refresh);
  $("#by").addEventListener("change", refresh);
  for (const list of ["credentials", "models", "keys"]) {
    let typing = null;
    $("#" + list + "-search").addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(() => { state.paging[list] = 0; refresh(); }, 250);
    });
  }
  // A reloaded page asks for its session's token; without one, sign in.
  try {
    const r = await fetch("/admin/ui/session", { credentials: "same-origin", cache: "no-store" });
    if (r.ok) {
      state.token = (await r.json()).token;
      showApp();
    } else {
      showSignIn("");
    }
  } catch (e) {
    showSignIn("The gateway does not answer: " + e.message);
  }
});
