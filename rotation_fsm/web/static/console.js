// rotation-fsm console: vanilla JS, no build step, no dependency.
// Reads /api/console/*, listens to /api/console/events (Server-Sent Events) and
// refetches on every change. All text goes in with textContent; the only markup
// inserted is the server-generated state diagram (SVG).
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "rotation-fsm-token";
const TZ_KEY = "rotation-fsm-tz";
// What each final state means for a trader: done as asked, or not.
const STATE_MEANING = {
  CONFIRMED: "good",
  TIMED_OUT: "bad",
  CLOSE_REJECTED: "bad",
  ABORTED: "warn",
  LOCKED: "busy",
  CLOSE_EMITTED: "busy",
};
let book = "";
let controls = false;
let clockOffset = 0; // server now − browser now (ms)
let lastState = null;
let refreshTimer = null;
// The history tables: on their newest page they follow the live book; paged back or
// given a time range they hold still until "newest".
const finishedView = { offset: 0, next: null, total: 0 };
const decisionsView = { before: "", next: null, pages: [] };

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

// ------------------------------------------------------------ time zone

function zone() {
  return localStorage.getItem(TZ_KEY) === "local" ? "local" : "UTC";
}

function zoneLabel() {
  if (zone() === "UTC") return "UTC";
  const minutes = -new Date().getTimezoneOffset();
  const sign = minutes >= 0 ? "+" : "−";
  const hh = String(Math.floor(Math.abs(minutes) / 60)).padStart(2, "0");
  const mm = String(Math.abs(minutes) % 60).padStart(2, "0");
  return `local, UTC${sign}${hh}:${mm}`;
}

function parts(ms) {
  const d = new Date(ms);
  const utc = zone() === "UTC";
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  const y = utc ? d.getUTCFullYear() : d.getFullYear();
  const mo = pad((utc ? d.getUTCMonth() : d.getMonth()) + 1);
  const da = pad(utc ? d.getUTCDate() : d.getDate());
  const h = pad(utc ? d.getUTCHours() : d.getHours());
  const mi = pad(utc ? d.getUTCMinutes() : d.getMinutes());
  const s = pad(utc ? d.getUTCSeconds() : d.getSeconds());
  return { date: `${y}-${mo}-${da}`, time: `${h}:${mi}:${s}`, ms: pad(d.getUTCMilliseconds(), 3) };
}

function fmtTime(ms) {
  if (!ms) return "";
  const p = parts(ms);
  return `${p.time}.${p.ms}`;
}

function fmtDateTime(ms) {
  if (!ms) return "";
  const p = parts(ms);
  return `${p.date} ${p.time}`;
}

// A datetime-local input's value, read in the zone the page shows.
function inputMs(input) {
  if (!input.value) return null;
  const text = input.value.length === 16 ? input.value + ":00" : input.value;
  const ms = zone() === "UTC" ? Date.parse(text + "Z") : new Date(text).getTime();
  return Number.isNaN(ms) ? null : ms;
}

function showZone() {
  $("tz").textContent = `times: ${zoneLabel()}`;
  for (const th of document.querySelectorAll(".time-head")) {
    th.dataset.base = th.dataset.base || th.textContent;
    th.textContent = `${th.dataset.base} (${zoneLabel()})`;
  }
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

async function api(path, params) {
  const query = new URLSearchParams({ ...(params || {}), book });
  const sep = path.includes("?") ? "&" : "?";
  const res = await fetch(path + sep + query.toString());
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function canAct() {
  return controls && Boolean(token());
}

function showAuth() {
  const has = Boolean(token());
  $("auth").hidden = !controls;
  $("token").hidden = has;
  $("token-set").hidden = has;
  $("token-forget").hidden = !has;
  $("entry-controls").hidden = !canAct();
}

async function post(path, what) {
  const res = await fetch(`${path}?book=${encodeURIComponent(book)}`, {
    method: "POST",
    headers: { Authorization: "Bearer " + token(), "Content-Type": "application/json" },
    body: JSON.stringify({ by: "console" }),
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) notice(`${what} refused (${res.status}): ${body.error || res.statusText}`, true);
  return res.ok ? body : null;
}

function stateCell(state) {
  return el("td", { class: `state st-${STATE_MEANING[state] || "other"}`, "data-state": state }, state);
}

// ------------------------------------------------------------ overview

function renderRegime(slots) {
  const box = $("regime");
  box.replaceChildren();
  const body = $("regimes").querySelector("tbody");
  body.replaceChildren();
  $("regimes-empty").hidden = Boolean(slots);
  $("regimes").hidden = !slots;
  if (!slots) {
    box.append(el("span", { class: "empty" }, "no exchange snapshot yet"));
    return;
  }
  // The book's own numbers; the regime is per symbol (table below), never a headline.
  const items = [
    ["occupied", (slots.occupied || []).length],
    ["open", (slots.open || []).length],
    ["entries in flight", (slots.reserved || []).length],
    ["being closed", (slots.rotation_targets || []).length],
    ["rotations", `${slots.in_flight} / ${slots.max_concurrent_rotations}`],
    ["snapshot", fmtTime(Date.parse(slots.as_of))],
  ];
  for (const [k, v] of items) {
    box.append(el("div", { "data-field": k }, el("span", { class: "k" }, k), el("span", { class: "v" }, v)));
  }
  $("legend-regime").textContent = slots.symbol ? `${slots.symbol} (latest plan)` : "latest plan's";
  for (const r of slots.readings || []) {
    const tr = el("tr", { "data-symbol": r.symbol, "data-regime": r.regime },
      el("td", {}, r.symbol),
      el("td", { class: `regime-${r.regime}` }, r.regime),
      el("td", { class: "num" }, num(r.ema20, 4)),
      el("td", { class: "num" }, num(r.ema50, 4)),
      el("td", { class: "num" }, pct(r.trend)),
      el("td", { class: "num" }, pct(r.atr_pct)),
      el("td", { class: "num desired" }, r.desired_slots));
    if (r.symbol === slots.symbol) tr.classList.add("latest");
    body.append(tr);
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
    if (c.over) cell.title = "beyond the slots desired for the latest plan's regime";
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
  const body = await post(`/api/rotations/${encodeURIComponent(rotationId)}/abort`, "abort");
  if (body) notice(`rotation ${rotationId}: ${body.state || "aborted"}`, false);
  button.disabled = false;
  scheduleRefresh();
}

async function setEntries(action) {
  const body = await post(`/api/${action}`, action);
  if (body) notice(action === "pause" ? "entries paused" : "entries resumed", false);
  scheduleRefresh();
}

function rotationLink(id) {
  return el("a", { href: "/rotation/" + encodeURIComponent(id) }, id);
}

function planLink(id) {
  return el("a", { href: "/plan/" + encodeURIComponent(id) }, id);
}

function renderInFlight(rows) {
  const body = $("inflight").querySelector("tbody");
  body.replaceChildren();
  for (const r of rows) {
    const waiting = el("td", { class: "waiting" }, planLink(r.new_plan_id),
      ` ${r.new_action || "OPEN"} ${r.new_symbol}`,
      r.trigger_entry_id ? el("span", { class: "hint" }, ` entry ${r.trigger_entry_id}`) : "");
    const tr = el("tr", { "data-rotation": r.rotation_id },
      el("td", {}, rotationLink(r.rotation_id)),
      el("td", {}, `${r.close_symbol} → ${r.new_symbol}`),
      stateCell(r.state),
      waiting,
      el("td", { class: "num age", "data-since": r.created_ms }, ""),
      el("td", { class: "num countdown", "data-deadline": r.deadline_ms }, ""),
      el("td", {}, canAct() ? abortButton(r.rotation_id) : ""));
    body.append(tr);
  }
  $("inflight-empty").hidden = rows.length > 0;
  tick();
}

function renderFinished(page) {
  const body = $("finished").querySelector("tbody");
  body.replaceChildren();
  for (const r of page.rows) {
    body.append(el("tr", { "data-rotation": r.rotation_id },
      el("td", {}, fmtDateTime(r.ended_ms)),
      el("td", {}, rotationLink(r.rotation_id)),
      el("td", {}, `${r.close_symbol} → ${r.new_symbol}`),
      stateCell(r.state)));
  }
  $("finished-empty").hidden = page.rows.length > 0;
  finishedView.next = page.next;
  finishedView.total = page.total;
  const first = page.rows.length ? finishedView.offset + 1 : 0;
  $("r-page").textContent = `${first}–${finishedView.offset + page.rows.length} of ${page.total} ended in the range`;
  $("r-older").disabled = page.next === null;
  $("r-newest").disabled = finishedView.offset === 0;
}

function renderDecisions(page) {
  const reasons = $("f-reason");
  const known = new Set([...reasons.options].map((o) => o.value));
  for (const r of (lastState && lastState.decisions) || []) {
    if (!known.has(r.reason)) {
      reasons.append(el("option", { value: r.reason }, r.reason));
      known.add(r.reason);
    }
  }
  const symbol = $("f-symbol").value.trim().toUpperCase();
  const body = $("decisions").querySelector("tbody");
  body.replaceChildren();
  for (const r of page.rows) {
    if (symbol && !r.symbol.includes(symbol)) continue;
    const plan = el("td", {}, planLink(r.plan_id));
    if (r.resend) plan.append(" ", el("span", { class: "tag resend", title: "the same plan id again" }, "resend"));
    body.append(el("tr", { "data-plan": r.plan_id, "data-decision": r.decision, class: r.resend ? "resend" : "" },
      el("td", {}, fmtTime(r.time_ms)),
      plan,
      el("td", {}, r.symbol),
      el("td", { class: r.decision === "ALLOW" ? "allow" : "block" }, r.decision),
      el("td", {}, r.reason),
      el("td", { class: "num" }, r.latency_ms === null ? "–" : r.latency_ms + " ms")));
  }
  decisionsView.next = page.next;
  $("d-older").disabled = page.next === null;
  $("d-newest").disabled = decisionsView.pages.length === 0;
  $("d-page").textContent = decisionsView.pages.length ? `page ${decisionsView.pages.length + 1}` : "newest";
}

function finishedQuery() {
  const q = { offset: finishedView.offset, state: $("r-state").value };
  const from = inputMs($("r-from"));
  const to = inputMs($("r-to"));
  if (from !== null) q.from = from;
  if (to !== null) q.to = to;
  return q;
}

function decisionsQuery() {
  const q = { reason: $("f-reason").value };
  if (decisionsView.before) q.before = decisionsView.before;
  const from = inputMs($("d-from"));
  const to = inputMs($("d-to"));
  if (from !== null) q.from = from;
  if (to !== null) q.to = to;
  return q;
}

async function loadFinished() {
  renderFinished(await api("/api/console/finished", finishedQuery()));
}

async function loadDecisions() {
  renderDecisions(await api("/api/console/decisions", decisionsQuery()));
}

// The exchange view: where its numbers come from and the request weight used.
function renderExchange(x) {
  const badge = $("exchange");
  badge.hidden = !x;
  if (!x) return;
  const w = x.weight || {};
  badge.textContent = "exchange: " + x.source + " · weight " + w.used_1m + "/" + w.budget_1m + "/min";
  badge.classList.toggle("warn", x.source === "stale" || !!x.error);
  badge.title = x.error ? "last exchange error: " + x.error : "exchange view healthy";
}

function renderOverview(state) {
  lastState = state;
  document.dispatchEvent(new CustomEvent("console:state", { detail: state })); // the charts
  $("paused").hidden = !state.paused;
  $("pause").hidden = state.paused;
  $("resume").hidden = !state.paused;
  renderExchange(state.exchange);
  renderRegime(state.slots);
  renderCells(state.cells);
  renderInFlight(state.in_flight);
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

function renderFacts(pairs) {
  const dl = $("facts");
  dl.replaceChildren();
  for (const [k, v] of pairs) {
    dl.append(el("div", { "data-fact": k }, el("dt", {}, k), el("dd", {}, v instanceof Node ? v : String(v ?? "–"))));
  }
}

function renderSteps(title, headers, rows) {
  $("steps-title").textContent = title;
  const table = $("steps");
  table.querySelector("thead").replaceChildren(el("tr", {}, ...headers.map((h) => el("th", {}, h))));
  const body = table.querySelector("tbody");
  body.replaceChildren();
  for (const cells of rows) body.append(el("tr", {}, ...cells));
  $("steps-section").hidden = rows.length === 0;
}

function rotationFacts(r) {
  return [
    ["state", el("span", { class: `state st-${STATE_MEANING[r.state] || "other"}` }, r.state)],
    ["close → open", `${r.close_symbol} → ${r.new_symbol}`],
    ["waiting plan", planLink(r.new_plan_id)],
    ["close plan", planLink(r.close_plan_id)],
    ["regime", `${r.regime} (${r.desired_slots} slots desired)`],
    ["started", fmtDateTime(r.created_ms)],
    ["deadline", fmtDateTime(r.deadline_ms)],
    ["ended", r.ended_ms ? fmtDateTime(r.ended_ms) : "–"],
  ];
}

function renderRotation(data) {
  const r = data.rotation;
  renderFacts(rotationFacts(r));
  let previous = "IDLE";
  const rows = (r.history || []).map(([ms, trigger, state]) => {
    const row = [el("td", {}, fmtDateTime(ms) + "." + parts(ms).ms), el("td", {}, `${previous} → ${state}`), el("td", {}, trigger)];
    previous = state;
    return row;
  });
  renderSteps(`Transitions (${zoneLabel()})`, ["time", "transition", "trigger"], rows);
}

function renderPlan(data) {
  const rec = data.record || {};
  const first = (data.decisions || [])[0] || {};
  const rotations = data.rotations || [];
  renderFacts([
    ["symbol", rec.symbol || (first.facts && first.facts.symbol) || "–"],
    ["action", rec.action || "–"],
    ["decision", rec.decision ? `${rec.decision} ${rec.reason}` : "–"],
    ["final", rec.decision ? (rec.final ? "yes" : "no, waits on its rotation") : "–"],
    ["decided", rec.decided_ms ? fmtDateTime(rec.decided_ms) : "–"],
    ["rotation", rotations.length ? rotationLink(rotations[rotations.length - 1].rotation_id) : "–"],
  ]);
  const rows = (data.decisions || []).map((m) => [
    el("td", {}, m.time),
    el("td", { class: m.decision === "ALLOW" ? "allow" : "block" }, m.decision),
    el("td", {}, m.reason),
    el("td", {}, m.entry_id || "–"),
    el("td", {}, (m.sentences || []).join(" ")),
  ]);
  renderSteps("Decisions (UTC, as recorded)", ["time", "decision", "reason", "entry", "because"], rows);
}

function renderDetail(data) {
  $("detail-title").textContent = `${data.kind} ${data.id}`;
  // The SVG is generated by the server from the machine definition; nothing in it
  // comes from user input but state and trigger names.
  $("diagram").innerHTML = data.svg || "";
  $("diagram").hidden = !data.svg;
  $("story").textContent = (data.lines || []).join("\n");
  if (data.kind === "rotation" && data.rotation) renderRotation(data);
  else if (data.kind === "plan") renderPlan(data);
  else renderSteps("", [], []);
  const actions = $("detail-actions");
  actions.replaceChildren();
  const rotation = data.rotation;
  const inFlight = rotation && (rotation.state === "LOCKED" || rotation.state === "CLOSE_EMITTED");
  if (inFlight && canAct()) actions.append(abortButton(rotation.rotation_id));
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
      await Promise.all([loadFinished(), loadDecisions()]);
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

function wireHistory() {
  const reloadFinished = () => {
    finishedView.offset = 0;
    loadFinished().catch((err) => notice("cannot load: " + err.message, true));
  };
  for (const id of ["r-from", "r-to", "r-state"]) $(id).addEventListener("change", reloadFinished);
  $("r-newest").addEventListener("click", reloadFinished);
  $("r-older").addEventListener("click", () => {
    if (finishedView.next === null) return;
    finishedView.offset = finishedView.next;
    loadFinished();
  });
  const reloadDecisions = () => {
    decisionsView.before = "";
    decisionsView.pages = [];
    loadDecisions().catch((err) => notice("cannot load: " + err.message, true));
  };
  for (const id of ["d-from", "d-to", "f-reason"]) $(id).addEventListener("change", reloadDecisions);
  $("d-newest").addEventListener("click", reloadDecisions);
  $("d-older").addEventListener("click", () => {
    if (decisionsView.next === null) return;
    decisionsView.pages.push(decisionsView.before);
    decisionsView.before = decisionsView.next;
    loadDecisions();
  });
  $("f-symbol").addEventListener("input", () => loadDecisions());
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
  $("pause").addEventListener("click", () => setEntries("pause"));
  $("resume").addEventListener("click", () => setEntries("resume"));
  $("tz").addEventListener("click", () => {
    localStorage.setItem(TZ_KEY, zone() === "UTC" ? "local" : "UTC");
    showZone();
    refresh();
  });
  wireHistory();
  showAuth();
  showZone();
  const detail = detailId();
  $("overview").hidden = Boolean(detail);
  $("detail").hidden = !detail;
  await refresh();
  listen();
  setInterval(tick, 200);
}

document.addEventListener("DOMContentLoaded", start);
