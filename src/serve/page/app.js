// The live results page of `runner serve`: plain JavaScript and SVG, no network beyond the
// server it came from. The server pushes the names of changed sweeps (server-sent events);
// the page then re-reads what it shows of them, keeping the reader's sorting, filter and
// selection.
"use strict";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                 "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  sweeps: [],
  current: null,      // name of the sweep shown
  data: null,         // its JSON: params, metrics, step_keys, trials, plot
  sort: { col: null, dir: 1 },
  filter: "",
  selected: new Set(),
  autoSelect: true,   // until the reader picks curves, every trial's curve is shown
  known: new Set(),   // trial ids already seen, to mark new ones
  stepKey: null,
  pivotTouched: false,
  shape: null,  // the sweep's parameters, metrics and step keys the controls were made for
};

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------
// Fetching

async function getJson(url) {
  const r = await fetch(url, { cache: "no-store" });
  let body = null;
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) {
    throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
  }
  return body;
}

function showError(message) {
  const e = $("error");
  e.hidden = !message;
  e.textContent = message || "";
}

// ---------------------------------------------------------------------------------------
// URL state: #sweep=NAME&trials=a,b&key=loss (a view can be shared or bookmarked)

function readHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  return { sweep: h.get("sweep"), trials: h.get("trials"), key: h.get("key") };
}

function writeHash() {
  const h = new URLSearchParams();
  if (state.current) h.set("sweep", state.current);
  if (!state.autoSelect) h.set("trials", [...state.selected].join(","));
  if (state.stepKey) h.set("key", state.stepKey);
  history.replaceState(null, "", "#" + h.toString());
}

// ---------------------------------------------------------------------------------------
// The sweep list

async function loadSweeps(changed) {
  const list = await getJson("/api/sweeps");
  state.sweeps = list.sweeps;
  $("root").textContent = list.root;
  const ul = $("sweeps");
  ul.textContent = "";
  for (const s of list.sweeps) {
    const li = document.createElement("li");
    li.dataset.sweep = s.name;
    const name = document.createElement("span");
    name.textContent = s.name;
    const count = document.createElement("span");
    count.className = "count";
    if (s.error) {
      li.classList.add("broken");
      count.textContent = "unreadable";
      li.title = s.error;
    } else {
      count.textContent = s.failed ? `${s.ok} ok · ${s.failed} failed`
        : `${s.trials} trial${s.trials === 1 ? "" : "s"}`;
    }
    li.append(name, count);
    if (s.name === state.current) li.classList.add("current");
    if (changed && changed.includes(s.name)) li.classList.add("flash");
    li.onclick = () => selectSweep(s.name);
    ul.append(li);
  }
  $("no-sweeps").hidden = list.sweeps.length > 0;
  if (!state.current && list.sweeps.length) {
    const wanted = readHash().sweep;
    const first = list.sweeps.find((s) => s.name === wanted) || list.sweeps[0];
    await selectSweep(first.name, true);
  }
}

async function selectSweep(name, fromHash) {
  if (name !== state.current) {
    state.current = name;
    state.data = null;
    state.sort = { col: null, dir: 1 };
    state.selected = new Set();
    state.autoSelect = true;
    state.known = new Set();
    state.stepKey = null;
    state.pivotTouched = false;
    state.shape = null;
    const h = readHash();
    if (fromHash && h.sweep === name) {
      if (h.trials !== null) {
        state.autoSelect = false;
        state.selected = new Set(h.trials.split(",").filter(Boolean));
      }
      state.stepKey = h.key;
    }
  }
  for (const li of $("sweeps").children) {
    li.classList.toggle("current", li.dataset.sweep === name);
  }
  await loadSweep();
}

// ---------------------------------------------------------------------------------------
// One sweep

async function loadSweep() {
  const name = state.current;
  let data;
  try {
    data = await getJson(`/api/sweeps/${encodeURIComponent(name)}`);
  } catch (e) {
    if (name !== state.current) return;
    $("sweep").hidden = true;
    showError(`${name}: ${e.message}`);
    return;
  }
  if (name !== state.current) return;  // the reader moved on meanwhile
  showError(null);
  const fresh = state.data === null;
  state.data = data;
  const ids = data.trials.map((t) => t.trial_id);
  const added = ids.filter((id) => !state.known.has(id));
  // Until the reader picks, the latest trials' curves are drawn (all of a small sweep).
  if (state.autoSelect) state.selected = new Set(ids.slice(-MAX_AUTO_CURVES));
  if (!state.stepKey || !data.step_keys.includes(state.stepKey)) {
    state.stepKey = data.step_keys.includes("loss") ? "loss" : (data.step_keys[0] || null);
  }
  $("sweep").hidden = false;
  $("sweep-name").textContent = data.name;
  const ok = data.trials.filter((t) => t.status === "ok").length;
  $("sweep-summary").textContent =
    `${data.trials.length} trials (${ok} ok) · parameters: ${data.params.join(", ") || "none"}` +
    ` · metrics: ${data.metrics.join(", ") || "none"}`;
  const shape = JSON.stringify([data.params, data.metrics, data.step_keys]);
  if (fresh || shape !== state.shape) setupControls(data, fresh);
  state.shape = shape;
  renderTable(fresh ? new Set() : new Set(added));
  ids.forEach((id) => state.known.add(id));
  writeHash();
  await Promise.all([renderCurves(), renderPivot()]);
  renderMetricPlot();
  renderParallel();
  window.runnerPage.updates += 1;
}

function fillSelect(sel, options, value) {
  sel.textContent = "";
  for (const o of options) {
    const opt = document.createElement("option");
    if (Array.isArray(o)) { opt.value = o[0]; opt.textContent = o[1]; } else { opt.value = o; opt.textContent = o; }
    sel.append(opt);
  }
  if (value !== undefined && value !== null) sel.value = value;
}

// The controls' choices follow the sweep's parameters and metrics: a running sweep may show
// its first trials before trials.csv names them. A choice the reader made and that still
// exists is kept; the pivot table's, once touched, are left alone.
function setupControls(d, fresh) {
  // Refills a select, keeping the reader's choice where it is still offered.
  const refill = (id, options, fallback) => {
    const now = $(id).value;
    const offered = options.some((o) => (Array.isArray(o) ? o[0] : o) === now);
    fillSelect($(id), options, !fresh && offered ? now : fallback);
  };
  fillSelect($("step-key"), d.step_keys, state.stepKey);
  const x = d.plot.x || d.params[0] || d.metrics[0];
  const y = d.plot.y || d.metrics[0];
  refill("mp-x", [...d.params, ...d.metrics], x);
  refill("mp-y", d.metrics, y);
  refill("mp-series", [["", "(other parameters)"], ["-", "(none)"], ...d.params], "");
  refill("pc-metric", d.metrics, y);
  if (state.pivotTouched) return;
  fillSelect($("pv-rows"), d.params.length ? d.params : ["trial_id"]);
  const rows = d.params.includes(x) ? x : (d.params[0] || "trial_id");
  for (const o of $("pv-rows").options) o.selected = o.value === rows;
  const cols = d.params.find((p) => p !== rows) || "";
  fillSelect($("pv-cols"), [["", "(none)"], ...d.params], cols);
  fillSelect($("pv-value"), [...d.metrics, "seconds"], y);
}

// ---------------------------------------------------------------------------------------
// The trial table

function columns(d) {
  return [
    { key: "trial_id", label: "trial", get: (t) => t.trial_id, text: true },
    { key: "status", label: "status", get: (t) => t.status, text: true },
    ...d.params.map((p) => ({ key: p, label: p, get: (t) => t.params[p] ?? "", param: true })),
    ...d.metrics.map((m) => ({ key: m, label: m, get: (t) => t.metrics[m] ?? "" })),
    { key: "seconds", label: "seconds", get: (t) => String(t.seconds) },
  ];
}

const num = (s) => (s === "" || s === null || s === undefined ? NaN : Number(s));

// "rank>=8 status=ok qv": comparisons on columns, other words matched anywhere in the row.
function matcher(filter, cols) {
  const tests = filter.trim().split(/\s+/).filter(Boolean).map((tok) => {
    const m = tok.match(/^([^<>=!]+)(<=|>=|!=|=|<|>)(.*)$/);
    const col = m && cols.find((c) => c.key === m[1]);
    if (!col) {
      const needle = tok.toLowerCase();
      return (t) => cols.some((c) => c.get(t).toLowerCase().includes(needle));
    }
    const [, , op, want] = m;
    return (t) => {
      const have = col.get(t);
      const a = num(have), b = num(want);
      const numeric = !isNaN(a) && !isNaN(b);
      const cmp = numeric ? a - b : have.localeCompare(want);
      switch (op) {
        case "=": return numeric ? a === b : have === want;
        case "!=": return numeric ? a !== b : have !== want;
        case "<": return cmp < 0;
        case ">": return cmp > 0;
        case "<=": return cmp <= 0;
        default: return cmp >= 0;
      }
    };
  });
  return (t) => tests.every((f) => f(t));
}

// A trial's colour follows its position in trials.csv, so it stays put as rows are sorted.
let colorIndex = { data: null, map: new Map() };
function colorOf(id) {
  if (colorIndex.data !== state.data) {
    colorIndex = { data: state.data, map: new Map(state.data.trials.map((t, i) => [t.trial_id, i])) };
  }
  const i = colorIndex.map.get(id) ?? 0;
  return PALETTE[i % PALETTE.length];
}

// More rows than this are not put in the page at once (a 10,000-trial sweep would take
// seconds per redraw); the filter and sorting reach the others.
const MAX_ROWS = 2000;
// Curves drawn without the reader choosing, and at most at once.
const MAX_AUTO_CURVES = 50;
const MAX_CURVES = 200;

function visibleTrials() {
  const d = state.data;
  const cols = columns(d);
  let rows = d.trials.filter(matcher(state.filter, cols));
  const c = cols.find((c) => c.key === state.sort.col);
  if (c) {
    rows = rows.slice().sort((a, b) => {
      const x = c.get(a), y = c.get(b);
      if (x === "" || y === "") return (x === "") - (y === "");
      const nx = num(x), ny = num(y);
      const r = !isNaN(nx) && !isNaN(ny) ? nx - ny : x.localeCompare(y, undefined, { numeric: true });
      return r * state.sort.dir;
    });
  }
  return rows;
}

function renderTable(added) {
  const d = state.data;
  const cols = columns(d);
  const table = $("trials");
  const head = document.createElement("tr");
  head.append(document.createElement("th"));
  for (const c of cols) {
    const th = document.createElement("th");
    th.textContent = c.label;
    th.dataset.col = c.key;
    if (c.text) th.className = "text";
    if (state.sort.col === c.key) th.classList.add(state.sort.dir > 0 ? "sorted-asc" : "sorted-desc");
    th.onclick = () => {
      state.sort = { col: c.key, dir: state.sort.col === c.key ? -state.sort.dir : 1 };
      renderTable(new Set());
    };
    head.append(th);
  }
  table.tHead.replaceChildren(head);
  const rows = visibleTrials();
  const body = document.createElement("tbody");
  for (const t of rows.slice(0, MAX_ROWS)) {
    const tr = document.createElement("tr");
    tr.dataset.trial = t.trial_id;
    tr.className = t.status + (added.has(t.trial_id) ? " new" : "");
    if (t.error) tr.title = t.error;
    const pick = document.createElement("td");
    pick.className = "swatch";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = state.selected.has(t.trial_id);
    box.title = "show this trial's curve";
    box.onchange = () => {
      state.autoSelect = false;
      if (box.checked) state.selected.add(t.trial_id); else state.selected.delete(t.trial_id);
      writeHash();
      renderCurves();
    };
    const sw = document.createElement("span");
    sw.style.background = colorOf(t.trial_id);
    pick.append(box, " ", sw);
    tr.append(pick);
    for (const c of cols) {
      const td = document.createElement("td");
      td.dataset.col = c.key;
      const text = c.get(t);
      // Numbers shown to 5 significant digits; the file's exact text stays in data-value.
      td.dataset.value = text;
      if (c.text || isNaN(num(text))) {
        td.className = "text";
        td.textContent = text;
      } else {
        td.textContent = short(text);
        if (td.textContent !== text) td.title = text;
      }
      tr.append(td);
    }
    body.append(tr);
  }
  table.tBodies[0].replaceWith(body);
  const shown = Math.min(rows.length, MAX_ROWS);
  $("shown").textContent = shown === d.trials.length ? ""
    : shown < rows.length ? `first ${shown} of ${rows.length}${rows.length < d.trials.length ? ` matching (of ${d.trials.length})` : ""}; filter or sort to see others`
    : `${rows.length} of ${d.trials.length} shown`;
}

// ---------------------------------------------------------------------------------------
// Charts: small SVG helpers

function el(name, attrs, parent) {
  const e = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.append(e);
  return e;
}

function short(text) {
  const x = num(text);
  if (Number.isInteger(x) || text.length <= 8) return text;
  const a = Math.abs(x);
  return a !== 0 && (a >= 1e6 || a < 1e-4) ? x.toExponential(3) : String(Number(x.toPrecision(5)));
}

function fmt(x) {
  if (!isFinite(x)) return String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return x.toExponential(1);
  return String(Number(x.toPrecision(4)));
}

// Linear or log10 scale from a data range onto pixels, with readable ticks.
function scale(lo, hi, p0, p1, log) {
  if (log) { lo = Math.log10(lo); hi = Math.log10(hi); }
  if (!(hi > lo)) { const pad = Math.abs(lo) * 0.1 || 1; lo -= pad; hi += pad; }
  const f = (v) => p0 + ((log ? Math.log10(v) : v) - lo) / (hi - lo) * (p1 - p0);
  f.ticks = () => {
    if (log) {
      const out = [];
      for (let e = Math.floor(lo); e <= Math.ceil(hi); e++) {
        for (const m of (hi - lo < 1.5 ? [1, 2, 5] : [1])) {
          const v = m * 10 ** e;
          if (Math.log10(v) >= lo - 1e-9 && Math.log10(v) <= hi + 1e-9) out.push(v);
        }
      }
      return out.length >= 2 ? out : [10 ** lo, 10 ** hi];
    }
    const step0 = (hi - lo) / 5;
    const mag = 10 ** Math.floor(Math.log10(step0));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
    return out;
  };
  return f;
}

const W = 640, H = 330, M = { l: 58, r: 16, t: 12, b: 40 };

function frame(container, xs, ys, xLabel, yLabel) {
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  for (const v of ys.ticks()) {
    const y = ys(v);
    el("line", { class: "gridline", x1: M.l, x2: W - M.r, y1: y, y2: y }, svg);
    el("text", { x: M.l - 6, y: y + 4, "text-anchor": "end" }, svg).textContent = fmt(v);
  }
  if (xs.ticks) {
    for (const v of xs.ticks()) {
      el("text", { x: xs(v), y: H - M.b + 16, "text-anchor": "middle" }, svg).textContent = fmt(v);
    }
  }
  const axis = el("g", { class: "axis" }, svg);
  el("line", { x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b }, axis);
  el("line", { x1: M.l, x2: M.l, y1: M.t, y2: H - M.b }, axis);
  el("text", { x: (M.l + W - M.r) / 2, y: H - 6, "text-anchor": "middle", class: "label" }, svg).textContent = xLabel;
  el("text", { x: 12, y: (M.t + H - M.b) / 2, "text-anchor": "middle", class: "label",
               transform: `rotate(-90 12 ${(M.t + H - M.b) / 2})` }, svg).textContent = yLabel;
  container.replaceChildren(svg);
  return svg;
}

function empty(container, text) {
  const p = document.createElement("p");
  p.className = "empty";
  p.textContent = text;
  container.replaceChildren(p);
}

function pathOf(points) {
  return points.map(([x, y], i) => `${i ? "L" : "M"}${x.toFixed(2)},${y.toFixed(2)}`).join("");
}

// "rank=4 targets=qv", as `runner plot` names a trial.
function labelOf(t) {
  const d = state.data;
  return d.params.length ? d.params.map((p) => `${p}=${t.params[p] ?? ""}`).join(" ") : t.trial_id;
}

// ---------------------------------------------------------------------------------------
// Training curves (steps.csv)

// TensorBoard's smoothing: an exponential moving average, debiased at the start.
function smooth(values, w) {
  if (!w) return values;
  let last = 0, n = 0;
  return values.map((v) => { last = last * w + (1 - w) * v; n++; return last / (1 - w ** n); });
}

async function renderCurves() {
  const box = $("curves");
  const d = state.data;
  if (!d) return;
  $("step-key").value = state.stepKey || "";
  if (!state.stepKey) return empty(box, "This sweep logged no steps (steps.csv).");
  const ids = d.trials.map((t) => t.trial_id).filter((id) => state.selected.has(id)).slice(-MAX_CURVES);
  if (!ids.length) return empty(box, "Tick trials in the table to draw their curves.");
  let curves;
  try {
    curves = await getJson(`/api/sweeps/${encodeURIComponent(d.name)}/steps?key=${encodeURIComponent(state.stepKey)}&trials=${ids.map(encodeURIComponent).join(",")}`);
  } catch (e) {
    return empty(box, e.message);
  }
  const logY = $("log-y").checked;
  const w = Number($("smooth").value);
  const series = curves.series
    .map((s) => ({ ...s, pts: s.steps.map((x, i) => [x, s.values[i]]).filter(([, y]) => !logY || y > 0) }))
    .filter((s) => s.pts.length);
  if (!series.length) return empty(box, `No ${state.stepKey} logged yet for the ticked trials.`);
  const all = series.flatMap((s) => s.pts);
  const xs = scale(Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0])), M.l, W - M.r, false);
  const ys = scale(Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1])), H - M.b, M.t, logY);
  const svg = frame(box, xs, ys, "step", state.stepKey + (logY ? " (log)" : ""));
  const byId = new Map(d.trials.map((t) => [t.trial_id, t]));
  for (const s of series) {
    const color = colorOf(s.trial_id);
    const ysm = smooth(s.pts.map((p) => p[1]), w);
    if (w) el("path", { class: "raw", stroke: color, d: pathOf(s.pts.map(([x, y]) => [xs(x), ys(y)])) }, svg);
    // The raw points ride along as data attributes: what the curve was drawn from.
    const p = el("path", {
      class: "curve", stroke: color, "data-trial": s.trial_id,
      "data-steps": s.pts.map((q) => q[0]).join(","), "data-values": s.pts.map((q) => q[1]).join(","),
      d: pathOf(s.pts.map(([x], i) => [xs(x), ys(ysm[i])])),
    }, svg);
    el("title", {}, p).textContent = `${labelOf(byId.get(s.trial_id) || { params: {}, trial_id: s.trial_id })} (${s.trial_id}): last ${fmt(s.pts[s.pts.length - 1][1])}`;
  }
}

// ---------------------------------------------------------------------------------------
// A metric against a parameter (runner plot's second figure)

function renderMetricPlot() {
  const box = $("metric-plot");
  const d = state.data;
  const x = $("mp-x").value, y = $("mp-y").value, seriesBy = $("mp-series").value;
  if (!x || !y) return empty(box, "This sweep has no parameter or metric to plot.");
  const cell = (t, k) => t.params[k] ?? t.metrics[k] ?? "";
  const trials = d.trials.filter((t) => t.status === "ok" && !isNaN(num(cell(t, y))) && cell(t, x) !== "");
  if (!trials.length) return empty(box, `No finished trial has ${y} yet.`);
  const numericX = trials.every((t) => !isNaN(num(cell(t, x))));
  const logX = $("mp-logx").checked && numericX && trials.every((t) => num(cell(t, x)) > 0);
  const cats = numericX ? null : [...new Set(trials.map((t) => cell(t, x)))];
  const xv = (t) => (numericX ? num(cell(t, x)) : cats.indexOf(cell(t, x)));
  const others = d.params.filter((p) => p !== x);
  const key = (t) => seriesBy === "-" ? "" : seriesBy ? `${seriesBy}=${t.params[seriesBy] ?? ""}`
    : others.map((p) => `${p}=${t.params[p] ?? ""}`).join(" ");
  const xsAll = trials.map(xv), ysAll = trials.map((t) => num(cell(t, y)));
  const xs = numericX
    ? scale(Math.min(...xsAll), Math.max(...xsAll), M.l + 10, W - M.r - 10, logX)
    : Object.assign((i) => M.l + (i + 0.5) * (W - M.l - M.r) / cats.length, { ticks: null });
  const ys = scale(Math.min(...ysAll), Math.max(...ysAll), H - M.b, M.t, false);
  const svg = frame(box, xs, ys, x + (logX ? " (log)" : ""), y);
  if (cats) {
    cats.forEach((c, i) => { el("text", { x: xs(i), y: H - M.b + 16, "text-anchor": "middle" }, svg).textContent = c; });
  }
  const groups = new Map();
  trials.forEach((t) => { const k = key(t); if (!groups.has(k)) groups.set(k, []); groups.get(k).push(t); });
  let gi = 0;
  for (const [k, ts] of groups) {
    const color = PALETTE[gi % PALETTE.length];
    const byX = new Map();
    for (const t of ts) {
      const px = xv(t), py = num(cell(t, y));
      if (!byX.has(px)) byX.set(px, []);
      byX.get(px).push(py);
      const c = el("circle", { cx: xs(px), cy: ys(py), r: 3.5, fill: color, opacity: 0.6, "data-trial": t.trial_id }, svg);
      el("title", {}, c).textContent = `${labelOf(t)}: ${y} ${cell(t, y)}`;
    }
    const means = [...byX.entries()].sort((a, b) => a[0] - b[0])
      .map(([px, v]) => [xs(px), ys(v.reduce((a, b) => a + b, 0) / v.length)]);
    el("path", { class: "curve", stroke: color, d: pathOf(means) }, svg);
    if (k) {
      el("text", { x: W - M.r - 4, y: M.t + 12 + 14 * gi, "text-anchor": "end", fill: color, style: `fill:${color}` }, svg).textContent = k;
    }
    gi++;
  }
}

// ---------------------------------------------------------------------------------------
// Parallel coordinates: every parameter, then the metric; lines coloured by the metric

function renderParallel() {
  const box = $("parallel");
  const d = state.data;
  const metric = $("pc-metric").value;
  const trials = d.trials.filter((t) => t.status === "ok" && !isNaN(num(t.metrics[metric] ?? "")));
  if (!metric || !trials.length || !d.params.length) {
    return empty(box, "Needs parameters and a finished trial with a numeric metric.");
  }
  const Wp = 1000, Hp = 300, top = 30, bottom = 24;
  const axes = [...d.params.map((p) => ({ name: p, get: (t) => t.params[p] ?? "" })),
                { name: metric, get: (t) => t.metrics[metric] }];
  const gap = (Wp - 120) / Math.max(axes.length - 1, 1);
  for (const [i, a] of axes.entries()) {
    a.x = 60 + i * gap;
    const vals = trials.map(a.get);
    a.numeric = vals.every((v) => !isNaN(num(v)));
    if (a.numeric) {
      const ns = vals.map(num);
      const s = scale(Math.min(...ns), Math.max(...ns), Hp - bottom, top, false);
      a.y = (v) => s(num(v));
      a.ticks = s.ticks().map((v) => [fmt(v), s(v)]);
    } else {
      const cats = [...new Set(vals)];
      const step = (Hp - top - bottom) / Math.max(cats.length - 1, 1);
      a.y = (v) => (cats.length === 1 ? (Hp - bottom + top) / 2 : Hp - bottom - cats.indexOf(v) * step);
      a.ticks = cats.map((c) => [c || "–", a.y(c)]);
    }
  }
  const svg = el("svg", { viewBox: `0 0 ${Wp} ${Hp}` });
  const ms = trials.map((t) => num(t.metrics[metric]));
  const lo = Math.min(...ms), hi = Math.max(...ms);
  for (const t of trials) {
    const f = hi > lo ? (num(t.metrics[metric]) - lo) / (hi - lo) : 0.5;
    const color = `hsl(${(1 - f) * 230}, 70%, 45%)`;
    const line = el("path", { class: "pc-line", stroke: color, "data-trial": t.trial_id,
                              d: pathOf(axes.map((a) => [a.x, a.y(a.get(t))])) }, svg);
    el("title", {}, line).textContent = `${labelOf(t)}: ${metric} ${t.metrics[metric]}`;
  }
  for (const a of axes) {
    const g = el("g", { class: "axis" }, svg);
    el("line", { x1: a.x, x2: a.x, y1: top, y2: Hp - bottom }, g);
    el("text", { x: a.x, y: 16, "text-anchor": "middle", class: "label" }, svg).textContent = a.name;
    for (const [label, y] of a.ticks) {
      el("text", { x: a.x - 5, y: y + 4, "text-anchor": "end" }, svg).textContent = label;
    }
  }
  box.replaceChildren(svg);
}

// ---------------------------------------------------------------------------------------
// The pivot table (runner table), computed by the server

async function renderPivot() {
  const d = state.data;
  const box = $("pivot");
  const rows = [...$("pv-rows").selectedOptions].map((o) => o.value);
  const q = new URLSearchParams({
    rows: rows.join(","), cols: $("pv-cols").value, value: $("pv-value").value,
    agg: $("pv-agg").value, precision: $("pv-precision").value,
    failed: $("pv-failed").checked ? "1" : "0",
  });
  let p;
  try {
    p = await getJson(`/api/sweeps/${encodeURIComponent(d.name)}/table?${q}`);
  } catch (e) {
    return empty(box, e.message);
  }
  const table = document.createElement("table");
  const head = document.createElement("tr");
  for (const h of p.header) { const th = document.createElement("th"); th.textContent = h; head.append(th); }
  table.createTHead().append(head);
  const body = table.createTBody();
  for (const r of p.rows) {
    const tr = document.createElement("tr");
    r.forEach((c, i) => {
      const td = document.createElement("td");
      td.textContent = c ?? "–";
      if (i < p.label_columns) td.className = "text";
      tr.append(td);
    });
    body.append(tr);
  }
  const note = document.createElement("p");
  note.className = "note";
  note.textContent = p.note || "";
  const md = document.createElement("details");
  const sum = document.createElement("summary");
  sum.textContent = "Markdown";
  const pre = document.createElement("pre");
  pre.textContent = p.markdown;
  md.append(sum, pre);
  box.replaceChildren(table, note, md);
}

// ---------------------------------------------------------------------------------------
// Wiring

function wire() {
  $("filter").addEventListener("input", (e) => { state.filter = e.target.value; renderTable(new Set()); });
  $("select-all").onclick = () => {
    state.autoSelect = false;
    visibleTrials().slice(0, MAX_CURVES).forEach((t) => state.selected.add(t.trial_id));
    writeHash(); renderTable(new Set()); renderCurves();
  };
  $("select-none").onclick = () => {
    state.autoSelect = false;
    state.selected.clear();
    writeHash(); renderTable(new Set()); renderCurves();
  };
  $("step-key").onchange = (e) => { state.stepKey = e.target.value; writeHash(); renderCurves(); };
  $("log-y").onchange = renderCurves;
  $("smooth").oninput = (e) => { $("smooth-value").textContent = e.target.value; renderCurves(); };
  for (const id of ["mp-x", "mp-y", "mp-series", "mp-logx"]) $(id).onchange = renderMetricPlot;
  $("pc-metric").onchange = renderParallel;
  for (const id of ["pv-rows", "pv-cols", "pv-value", "pv-agg", "pv-precision", "pv-failed"]) {
    $(id).onchange = () => { state.pivotTouched = true; renderPivot(); };
  }
}

// One refresh at a time; changes arriving meanwhile are merged into the next one.
let busy = false, pending;  // pending: undefined (none), "all", or a list of sweep names
async function refresh(changed) {
  if (busy) {
    pending = changed === null || pending === "all" ? "all" : [...(pending || []), ...changed];
    return;
  }
  busy = true;
  try {
    await loadSweeps(changed);
    if (state.current && !state.sweeps.some((s) => s.name === state.current)) {
      $("sweep").hidden = true;
      showError(`The sweep ${state.current} is no longer in the results folder.`);
    } else if (state.current && (changed === null || changed.includes(state.current))) {
      await loadSweep();
    }
  } catch (e) {
    showError(e.message);
  } finally {
    busy = false;
  }
  if (pending !== undefined) {
    const next = pending === "all" ? null : pending;
    pending = undefined;
    await refresh(next);
  }
}

function listen() {
  const live = $("live");
  const source = new EventSource("/api/events");
  source.addEventListener("hello", () => {
    live.textContent = "live";
    live.classList.remove("off");
    refresh(null);
  });
  source.addEventListener("change", (e) => refresh(JSON.parse(e.data)));
  source.onerror = () => {
    // EventSource reconnects by itself; the next hello reloads everything.
    live.textContent = "reconnecting…";
    live.classList.add("off");
  };
}

window.runnerPage = { updates: 0 };
wire();
listen();
