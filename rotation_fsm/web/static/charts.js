// rotation-fsm console charts: the last 15 minutes of the book, drawn with uPlot
// (uplot/uPlot.iife.min.js, shipped with the package). History comes from
// /api/console/series once (and after a reconnect or a book change); from then on
// every decision and event the console's live stream pushes (console.js forwards them
// as "console:change") is counted into the same 5-second buckets, and the window
// slides every second. Slots: the history as each decision saw them (desired, and
// desired − free), live as each refetch of the book's state ("console:state", driven by
// the same stream) shows them — occupied then counts every symbol taken, so a book over
// its cap shows it; the regime in force shades them.
"use strict";

(() => {
  const WINDOW_S = 900;
  const STEP_S = 5;
  const REGIME_SHADE = {
    TREND_STRONG: "rgba(22, 163, 74, 0.13)",
    BASE: "rgba(37, 99, 235, 0.10)",
    CHOP: "rgba(217, 119, 6, 0.16)",
    UNKNOWN: "rgba(100, 116, 139, 0.12)",
  };
  const ROTATION_SERIES = {
    ROTATION_LOCK_CREATED: "started",
    ROTATION_COMPLETE: "confirmed",
    ROTATION_TIMEOUT: "timed_out",
  };

  let buckets = new Map(); // bucket start (s) → bucket
  let offsetMs = 0; // server clock − browser clock
  let charts = {};

  const $ = (id) => document.getElementById(id);
  const book = () => ($("book") ? $("book").value : "");
  const nowS = () => (Date.now() + offsetMs) / 1000;
  const startOf = (s) => Math.floor(s / STEP_S) * STEP_S;
  const entryMs = (id) => Number(String(id || "").split("-")[0]) || 0;

  function emptyBucket() {
    return {
      allow: 0, block: 0, latencies: [], p50_ms: null, p99_ms: null,
      started: 0, confirmed: 0, timed_out: 0, desired: null, occupied: null, regime: null,
    };
  }

  function bucketAt(ms) {
    const t = startOf(ms / 1000);
    if (!buckets.has(t)) buckets.set(t, emptyBucket());
    return buckets.get(t);
  }

  // Nearest-rank quantile, as rotation_fsm/web/series.py computes it.
  function quantile(values, q) {
    if (!values.length) return null;
    const ordered = [...values].sort((a, b) => a - b);
    return ordered[Math.max(0, Math.ceil(q * ordered.length) - 1)];
  }

  function addDecision(ms, f) {
    const b = bucketAt(ms);
    if (f.decision === "ALLOW") b.allow += 1;
    else b.block += 1;
    const planMs = entryMs(f.entry_id);
    if (planMs && ms >= planMs) {
      b.latencies.push(ms - planMs);
      b.p50_ms = quantile(b.latencies, 0.5);
      b.p99_ms = quantile(b.latencies, 0.99);
    }
  }

  function addState(state) {
    const slots = state.slots;
    if (!slots || slots.desired === null || slots.desired === undefined) return;
    const b = bucketAt(state.now_ms);
    b.desired = slots.desired;
    b.occupied = slots.occupied.length;
    b.regime = slots.regime;
  }

  function addEvent(ms, f) {
    const series = ROTATION_SERIES[f.event];
    if (series) bucketAt(ms)[series] += 1;
  }

  // The columns uPlot draws: one row per bucket of the window, gaps as zero counts,
  // slots carried forward from the last decision that had them.
  function columns() {
    const end = startOf(nowS());
    const cols = {
      t: [], allow: [], block: [], p50: [], p99: [], desired: [], occupied: [], regime: [],
      started: [], confirmed: [], timed_out: [],
    };
    let slots = { desired: null, occupied: null, regime: null };
    for (const [t, b] of buckets) if (t < end - WINDOW_S && b.desired !== null) slots = b;
    for (let t = end - WINDOW_S; t <= end; t += STEP_S) {
      const b = buckets.get(t) || emptyBucket();
      if (b.desired !== null) slots = b;
      cols.t.push(t);
      cols.allow.push(b.allow / STEP_S);
      cols.block.push(b.block / STEP_S);
      cols.p50.push(b.p50_ms);
      cols.p99.push(b.p99_ms);
      cols.desired.push(slots.desired);
      cols.occupied.push(slots.occupied);
      cols.regime.push(slots.regime);
      cols.started.push(b.started);
      cols.confirmed.push(b.confirmed);
      cols.timed_out.push(b.timed_out);
    }
    // The last bucket is still filling: hold its values up to now, so it has a width.
    for (const col of Object.values(cols)) col.push(col[col.length - 1]);
    cols.t[cols.t.length - 1] = nowS();
    return cols;
  }

  // Shade the plot behind the slot lines by the regime in force in each bucket.
  function shadeRegimes(u) {
    const regimes = u._regimes || [];
    const xs = u.data[0];
    const { ctx } = u;
    const { top, height } = u.bbox;
    ctx.save();
    for (let i = 0; i < xs.length; i++) {
      const colour = REGIME_SHADE[regimes[i]];
      if (!colour) continue;
      const left = u.valToPos(xs[i], "x", true);
      const right = u.valToPos(xs[i] + STEP_S, "x", true);
      ctx.fillStyle = colour;
      ctx.fillRect(left, top, Math.max(1, right - left), height);
    }
    ctx.restore();
  }

  function series(label, stroke, extra) {
    return { label, stroke, width: 2, spanGaps: false, ...extra };
  }

  const STEPPED = { paths: uPlot.paths.stepped({ align: 1 }) };
  const DOTTED = { spanGaps: true, points: { show: true, size: 5 } };
  const CHARTS = {
    decisions: {
      title: "Decisions/s by verdict",
      series: [series("ALLOW", "#15803d"), series("BLOCK", "#b91c1c")],
      cols: (c) => [c.allow, c.block],
      unit: "/s",
    },
    latency: {
      title: "Decision latency (ms)",
      // Buckets without decisions have no latency: join the points across them.
      series: [series("p50", "#2563eb", DOTTED), series("p99", "#9333ea", DOTTED)],
      cols: (c) => [c.p50, c.p99],
      unit: " ms",
    },
    slots: {
      title: "Slots: desired vs occupied (shaded by regime)",
      series: [series("desired", "#0f172a", STEPPED), series("occupied", "#d97706", STEPPED)],
      cols: (c) => [c.desired, c.occupied],
      hooks: { drawClear: [shadeRegimes] },
      unit: "",
    },
    rotations: {
      title: "Rotations per 5 s",
      series: [
        // Wider, underneath: a rotation started and confirmed in one bucket shows both.
        series("started", "#2563eb", { ...STEPPED, width: 4 }),
        series("confirmed", "#15803d", STEPPED),
        series("timed out", "#b91c1c", STEPPED),
      ],
      cols: (c) => [c.started, c.confirmed, c.timed_out],
      unit: "",
    },
  };

  function size(box) {
    return { width: Math.max(240, box.clientWidth - 4), height: 170 };
  }

  function makeChart(name, spec) {
    const box = $("chart-" + name);
    const fmt = (u, v) => (v === null || v === undefined ? "–" : (+v.toFixed(2)) + spec.unit);
    const opts = {
      ...size(box),
      title: spec.title,
      scales: { x: { time: true }, y: { range: (u, lo, hi) => [0, Math.max(1, hi * 1.15)] } },
      series: [{}, ...spec.series.map((s) => ({ ...s, value: fmt }))],
      axes: [{}, { size: 44 }],
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
      hooks: spec.hooks || {},
    };
    return new uPlot(opts, [[], ...spec.series.map(() => [])], box);
  }

  function draw() {
    const c = columns();
    for (const [name, spec] of Object.entries(CHARTS)) {
      const chart = charts[name];
      if (name === "slots") chart._regimes = c.regime;
      const data = [c.t, ...spec.cols(c)];
      chart.setData(data);
      // For people and tests: how much the chart holds and up to when.
      const box = $("chart-" + name);
      box.dataset.end = String(c.t[c.t.length - 2]); // the newest bucket's start
      box.dataset.total = String(
        spec.cols(c).reduce((sum, col) => sum + col.slice(0, -1).reduce((s, v) => s + (v || 0), 0), 0),
      );
    }
    const regime = c.regime[c.regime.length - 1];
    $("charts-regime").textContent = regime ? "regime now: " + regime : "";
  }

  // Pushes that arrive while the history is on its way: the history replaces the
  // buckets, so those written after it was read are applied again on top of it.
  let arriving = null;

  async function backfill() {
    const before = Date.now();
    arriving = [];
    const res = await fetch("/api/console/series?book=" + encodeURIComponent(book()));
    if (!res.ok) {
      arriving = null;
      return;
    }
    const body = await res.json();
    offsetMs = body.now_ms - (before + Date.now()) / 2;
    const fresh = new Map();
    for (const b of body.buckets) fresh.set(b.t, { ...emptyBucket(), ...b, latencies: [] });
    buckets = fresh;
    const later = (arriving || []).filter((m) => entryMs(m.id) > body.now_ms);
    arriving = null;
    for (const message of later) apply(message);
    draw();
  }

  function onChange(event) {
    const message = JSON.parse(event.detail);
    if (message.book !== book() || !message.fields) return;
    if (arriving) arriving.push(message);
    apply(message);
  }

  function apply(message) {
    const ms = entryMs(message.id);
    if (message.kind === "decisions") addDecision(ms, message.fields);
    else if (message.kind === "events") addEvent(ms, message.fields);
  }

  function forget() {
    const oldest = startOf(nowS()) - WINDOW_S - STEP_S;
    for (const t of buckets.keys()) if (t < oldest) buckets.delete(t);
  }

  function start() {
    if (!$("charts")) return;
    for (const [name, spec] of Object.entries(CHARTS)) charts[name] = makeChart(name, spec);
    document.addEventListener("console:change", onChange);
    document.addEventListener("console:state", (event) => addState(event.detail));
    document.addEventListener("console:hello", backfill); // first connect and reconnects
    $("book").addEventListener("change", backfill);
    // A chart is made while its section may still be hidden: size it whenever its box
    // gets (or changes) a width.
    const resized = new ResizeObserver(() => {
      for (const name of Object.keys(CHARTS)) charts[name].setSize(size($("chart-" + name)));
    });
    for (const name of Object.keys(CHARTS)) resized.observe($("chart-" + name));
    setInterval(() => {
      forget();
      draw();
    }, 1000);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
