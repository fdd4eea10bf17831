// rotation-fsm console: vanilla JS, no build step, no dependency.
// Reads /api/console/*, listens to /api/console/events (Server-Sent Events) and
// refetches on every change. All text goes in with textContent; the only markup
// inserted is the server-generated state diagram (SVG).
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "rotation-fsm-token";
let book = "";
let controls = false;
let clockOffset = 0; // server now − browser now (ms)
let lastState = null;
let refreshTimer = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}

function fmtTime(ms) {
  return ms ? new Date(ms).toISOString().slice(11, 23) : "";
}

function fmtSeconds(ms) {
  return (ms / 1000).toFixed(1) + " s";
}

function pct(x) {
  return x === null || x === undefined ? "–" : (x * 100).toFixed(2) + " %";
}

function num(x, digits) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

function serverNow() {
  return Date.now() + clockOffset;
}

function notice(text, isError) {
  const p = $("notice");
  p.textContent = text;
  p.className = isError ? "notice error" : "notice";
  p.hidden = !text;
}

async function api(path) {
  const sep = path.includes("?") ? "&" : "?";
  const res = await fetch(path + sep + "book=" + encodeURIComponent(book));
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function showAuth() {
  const has = Boolean(token());
  $("auth").hidden = !controls;
  $("token").hidden = has;
  $("token-set").hidden = has;
  $("token-forget").hidden = !has;
}

// ------------------------------------------------------------ overview

function renderRegime(slots) {
  const box = $("regime");
  box.replaceChildren();
  if (!slots) {
    box.append(el("span", { class: "empty" }, "no exchange snapshot yet"));
    return;
  }
  const reading = (slots.readings || []).find((r) => r.symbol === slots.symbol) || {};
  const items = [
    ["regime", slots.regime || "–"],
    ["for", slots.symbol || "–"],
    ["EMA20", num(reading.ema20, 4)],
    ["EMA50", num(reading.ema50, 4)],
    ["trend", pct(reading.trend)],
    ["ATR", pct(reading.atr_pct)],
    ["desired", slots.desired ?? "–"],
    ["occupied", (slots.occupied || []).length],
    ["free", slots.free ?? "–"],
    ["rotations", `${slots.in_flight} / ${slots.max_concurrent_rotations}`],
  ];
  for (const [k, v] of items) {
    box.append(el("div", { "data-field": k }, el("span", { class: "k" }, k), el("span", { class: "v" }, v)));
  }
}

function renderCells(cells) {
  const box = $("cells");
  box.replaceChildren();
  for (const c of cells) {
    const cls = "cell " + c.kind + (c.over ? " over" : "");
    const label = { open: "open", inflight: "entry in flight", closing: "being closed", free: "free" }[c.kind];
    const cell = el("div", { class: cls, "data-kind": c.kind, "data-symbol": c.symbol || "" },
      el("div", { class: "sym" }, c.symbol || "free"), el("div", { class: "sub" }, label));
    if (c.pnl_pct !== undefined && c.pnl_pct !== null) {
      cell.append(el("div", { class: "sub" }, `pnl ${pct(c.pnl_pct)} · weakness ${num(c.weakness, 4)}`));
    }
    box.append(cell);
  }
}

function abortButton(rotationId) {
  const button = el("button", { class: "abort", type: "button", "data-rotation": rotationId }, "abort");
  button.addEventListener("click", () => abortRotation(rotationId, button));
  return button;
}

async function abortRotation(rotationId, button) {
  button.disabled = true;
  const res = await fetch(`/api/rotations/${encodeURIComponent(rotationId)}/abort?book=${encodeURIComponent(book)}`, {
    method: "POST",
    headers: { Authorization: "Bearer " + token(), "Content-Type": "application/json" },
    body: JSON.stringify({ by: "console" }),
  });
  const body = await res.json().catch(() => ({}));
  if (res.ok) notice(`rotation ${rotationId}: ${body.state || "aborted"}`, false);
  else notice(`abort refused (${res.status}): ${body.error || body.reason || res.statusText}`, true);
  button.disabled = false;
  scheduleRefresh();
}

function rotationLink(id) {
  return el("a", { href: "/rotation/" + encodeURIComponent(id) }, id);
}

function renderInFlight(rows) {
  const body = $("inflight").querySelector("tbody");
  body.replaceChildren();
  for (const r of rows) {
    const tr = el("tr", { "data-rotation": r.rotation_id },
      el("td", {}, rotationLink(r.rotation_id)),
      el("td", {}, `${r.close_symbol} → ${r.new_symbol}`),
      el("td", { class: "state" }, r.state),
      el("td", { class: "num age", "data-since": r.created_ms }, ""),
      el("td", { class: "num countdown", "data-deadline": r.deadline_ms }, ""),
      el("td", {}, controls && token() ? abortButton(r.rotation_id) : ""));
    body.append(tr);
  }
  $("inflight-empty").hidden = rows.length > 0;
  tick();
}

function renderFinished(rows) {
  const body = $("finished").querySelector("tbody");
  body.replaceChildren();
  for (const r of rows) {
    body.append(el("tr", { "data-rotation": r.rotation_id },
      el("td", {}, fmtTime(r.ended_ms)),
      el("td", {}, rotationLink(r.rotation_id)),
      el("td", {}, `${r.close_symbol} → ${r.new_symbol}`),
      el("td", { class: "state" }, r.state)));
  }
  $("finished-empty").hidden = rows.length > 0;
}

function renderDecisions(rows) {
  const reasons = $("f-reason");
  const chosen = reasons.value;
  const known = new Set([...reasons.options].map((o) => o.value));
  for (const r of rows) {
    if (!known.has(r.reason)) {
      reasons.append(el("option", { value: r.reason }, r.reason));
      known.add(r.reason);
    }
  }
  reasons.value = chosen;
  const symbol = $("f-symbol").value.trim().toUpperCase();
  const body = $("decisions").querySelector("tbody");
  body.replaceChildren();
  for (const r of rows) {
    if (symbol && !r.symbol.includes(symbol)) continue;
    if (chosen && r.reason !== chosen) continue;
    body.append(el("tr", { "data-plan": r.plan_id, "data-decision": r.decision },
      el("td", {}, fmtTime(r.time_ms)),
      el("td", {}, el("a", { href: "/plan/" + encodeURIComponent(r.plan_id) }, r.plan_id)),
      el("td", {}, r.symbol),
      el("td", { class: r.decision === "ALLOW" ? "allow" : "block" }, r.decision),
      el("td", {}, r.reason),
      el("td", { class: "num" }, r.latency_ms === null ? "–" : r.latency_ms + " ms")));
  }
}

function renderOverview(state) {
  lastState = state;
  document.dispatchEvent(new CustomEvent("console:state", { detail: state })); // the charts
  $("paused").hidden = !state.paused;
  renderRegime(state.slots);
  renderCells(state.cells);
  renderInFlight(state.in_flight);
  renderFinished(state.finished);
  renderDecisions(state.decisions);
}

// Countdown and age tick locally between pushes, on the server's clock.
function tick() {
  const now = serverNow();
  for (const td of document.querySelectorAll("[data-deadline]")) {
    const left = Number(td.dataset.deadline) - now;
    td.textContent = left >= 0 ? fmtSeconds(left) : "due " + fmtSeconds(-left) + " ago";
    td.classList.toggle("late", left < 0);
  }
  for (const td of document.querySelectorAll("[data-since]")) {
    td.textContent = fmtSeconds(now - Number(td.dataset.since));
  }
}

// ------------------------------------------------------------ one plan or rotation

function detailId() {
  const m = location.pathname.match(/^\/(rotation|plan)\/(.+)$/);
  return m ? { kind: m[1], id: decodeURIComponent(m[2]) } : null;
}

function renderDetail(data) {
  $("detail-title").textContent = `${data.kind} ${data.id}`;
  // The SVG is generated by the server from the machine definition; nothing in it
  // comes from user input but state and trigger names.
  $("diagram").innerHTML = data.svg || "";
  $("diagram").hidden = !data.svg;
  $("story").textContent = (data.lines || []).join("\n");
  const actions = $("detail-actions");
  actions.replaceChildren();
  const rotation = data.rotation;
  const inFlight = rotation && (rotation.state === "LOCKED" || rotation.state === "CLOSE_EMITTED");
  if (inFlight && controls && token()) actions.append(abortButton(rotation.rotation_id));
}

// ------------------------------------------------------------ refresh and live

async function refresh() {
  const detail = detailId();
  try {
    if (detail) {
      renderDetail(await api("/api/console/story/" + encodeURIComponent(detail.id)));
    } else {
      const before = Date.now();
      const state = await api("/api/console/state");
      clockOffset = state.now_ms - (before + Date.now()) / 2;
      renderOverview(state);
    }
    if ($("notice").className === "notice error" && $("notice").textContent.startsWith("cannot")) notice("");
  } catch (err) {
    notice("cannot load: " + err.message, true);
  }
}

function scheduleRefresh() {
  if (refreshTimer !== null) return;
  // One refetch per burst of changes (a busy book pushes hundreds a second).
  refreshTimer = setTimeout(() => {
    refreshTimer = null;
    refresh();
  }, 250);
}

let retryMs = 1000;

function listen() {
  const source = new EventSource("/api/console/events");
  const conn = $("conn");
  source.addEventListener("hello", () => {
    retryMs = 1000;
    conn.textContent = "live";
    conn.className = "conn live";
    scheduleRefresh(); // whatever happened while we were away
    document.dispatchEvent(new CustomEvent("console:hello")); // the charts reload history
  });
  source.addEventListener("change", (event) => {
    scheduleRefresh();
    document.dispatchEvent(new CustomEvent("console:change", { detail: event.data }));
  });
  source.addEventListener("error", () => {
    conn.textContent = "disconnected — reconnecting…";
    conn.className = "conn down";
    if (source.readyState === EventSource.CLOSED) {
      // The browser gives up after an answer that is not a stream (a proxy's 502
      // during a restart): start again ourselves, backing off.
      source.close();
      setTimeout(listen, retryMs);
      retryMs = Math.min(15000, retryMs * 2);
    }
  });
}

async function start() {
  const res = await fetch("/api/console/books");
  const meta = await res.json();
  controls = meta.controls;
  const select = $("book");
  for (const b of meta.books) select.append(el("option", { value: b }, b || "(default)"));
  book = new URLSearchParams(location.search).get("book") || meta.books[0] || "";
  select.value = book;
  select.addEventListener("change", () => {
    book = select.value;
    refresh();
  });
  $("token-set").addEventListener("click", () => {
    const value = $("token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    showAuth();
    if (lastState) renderInFlight(lastState.in_flight);
    refresh();
  });
  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showAuth();
    refresh();
  });
  $("f-symbol").addEventListener("input", () => lastState && renderDecisions(lastState.decisions));
  $("f-reason").addEventListener("change", () => lastState && renderDecisions(lastState.decisions));
  showAuth();
  const detail = detailId();
  $("overview").hidden = Boolean(detail);
  $("detail").hidden = !detail;
  await refresh();
  listen();
  setInterval(tick, 200);
}

document.addEventListener("DOMContentLoaded", start);
