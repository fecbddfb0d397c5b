// Console views besides the live incident list: the hotline report form, the daily ledger
// of open cases (日清台账) and the statistics with charts drawn as inline SVG.
// Plain ES module; app.js passes what it shares (api, DOM and i18n helpers) to initViews().

const SVG = "http://www.w3.org/2000/svg";
const VIEWS = ["incidents", "hotline", "ledger", "stats"];
const BY_ROLE = {
  admin: VIEWS, operator: VIEWS, dispatcher: VIEWS,
  department: ["incidents", "ledger", "stats"],
  reviewer: ["incidents", "ledger", "stats"],
};
const MAIN = { incidents: "#console-view", hotline: "#hotline-view", ledger: "#ledger-view", stats: "#stats-view" };

let C = null; // context from app.js
let current = null;
let ledgerTimer = 0;
let ledgerSeq = 0;
let statsSeq = 0;
// Ledger and statistics filters (shared by both views; "" is all). The API narrows to the
// user's scope anyway; these narrow further.
const FILTERS = { grid: "", department: "", type: "" };
let grids = null; // the grid tree as [{id, name, depth}], loaded once

export function viewsForRole(role) {
  return BY_ROLE[role] || ["incidents"];
}

export function initViews(ctx) {
  C = ctx;
  for (const b of document.querySelectorAll("#view-tabs [data-view]")) {
    b.addEventListener("click", () => showView(b.dataset.view));
  }
  C.$("#hotline-form").addEventListener("submit", onHotline);
  C.$("#ledger-refresh").addEventListener("click", loadLedger);
  C.$("#ledger-csv").addEventListener("click", (ev) => download(ev, ledgerURL("csv"), "ledger.csv"));
  C.$("#stats-csv").addEventListener("click", (ev) => download(ev, statsURL("csv"), "stats.csv"));
  C.$("#stats-period").addEventListener("change", () => { C.$("#stats-month").value = ""; loadStats(); });
  C.$("#stats-month").addEventListener("change", loadStats);
  for (const view of ["ledger", "stats"]) buildFilters(view);
}

// --- filters (grid, department, type) -------------------------------------------------
function buildFilters(view) {
  const box = C.$(`#${view}-filters`);
  for (const key of Object.keys(FILTERS)) {
    const sel = C.h("select", { id: `${view}-${key}`, name: key });
    sel.addEventListener("change", () => {
      FILTERS[key] = sel.value;
      if (view === "ledger") loadLedger(); else loadStats();
    });
    box.append(C.h("label", { class: "filter" },
      C.h("span", { dataset: { i18n: `filter.${key}` }, text: C.t(`filter.${key}`) }), sel));
  }
}

/** The grid tree in order, each node with its depth (city 0, district 1, ...). */
async function loadGrids() {
  if (grids) return grids;
  try {
    const fc = await C.api("/api/grids");
    const nodes = (fc.features || []).map((f) => f.properties);
    const kids = new Map();
    for (const n of nodes) {
      const k = nodes.some((m) => m.id === n.parent) ? n.parent : null;
      if (!kids.has(k)) kids.set(k, []);
      kids.get(k).push(n);
    }
    const out = [];
    const walk = (parent, depth) => {
      for (const n of kids.get(parent) || []) { out.push({ ...n, depth }); walk(n.id, depth + 1); }
    };
    walk(null, 0);
    grids = out;
  } catch (err) {
    if (!C.isAbort(err)) grids = null;
    return [];
  }
  return grids;
}

function fillSelect(sel, options, value) {
  const all = C.h("option", { value: "", text: C.t("filter.all") });
  sel.replaceChildren(all, ...options.map(([v, text]) => C.h("option", { value: v, text })));
  sel.value = options.some(([v]) => v === value) ? value : "";
  FILTERS[sel.name] = sel.value;
}

async function fillFilters(view) {
  const tree = await loadGrids();
  fillSelect(C.$(`#${view}-grid`), tree.map((g) => [g.id, "\u3000".repeat(g.depth) + g.name]), FILTERS.grid);
  fillSelect(C.$(`#${view}-department`), (C.state.departments || []).map((d) => [d.id, C.deptName(d.id)]),
    FILTERS.department);
  fillSelect(C.$(`#${view}-type`), C.types().map((ty) => [ty.id, C.label("type", ty.id)]), FILTERS.type);
}

function withFilters(qs) {
  for (const [k, v] of Object.entries(FILTERS)) if (v) qs.set(k, v);
  return qs;
}

/** Show one view (null: none, at sign-in). */
export function showView(name) {
  current = name;
  if (C && C.state) C.state.view = name || C.state.view;
  const role = C ? C.role() : null;
  const allowed = role ? viewsForRole(role) : [];
  const tabs = document.querySelector("#view-tabs");
  tabs.hidden = !name || allowed.length < 2;
  for (const b of tabs.querySelectorAll("[data-view]")) {
    b.hidden = !allowed.includes(b.dataset.view);
    b.setAttribute("aria-selected", b.dataset.view === name ? "true" : "false");
    b.classList.toggle("active", b.dataset.view === name);
  }
  for (const [v, sel] of Object.entries(MAIN)) document.querySelector(sel).hidden = v !== name;
  if (name === "hotline") fillHotline();
  if (name === "ledger") fillFilters("ledger").then(loadLedger);
  if (name === "stats") fillFilters("stats").then(loadStats);
}

/** An incident changed: keep a visible ledger current (coalesced). */
export function onIncidentEvent() {
  if (current !== "ledger") return;
  clearTimeout(ledgerTimer);
  ledgerTimer = setTimeout(loadLedger, 500);
}

async function download(ev, url, name) {
  // The link needs the bearer token: fetch it and hand the browser a blob.
  ev.preventDefault();
  try {
    const res = await C.api(url, { raw: true });
    const blob = await res.blob();
    const a = C.h("a", { href: URL.createObjectURL(blob), download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (err) {
    if (C.isAbort(err)) return;
    C.renderError(C.$(url.startsWith("/api/ledger") ? "#ledger-error" : "#stats-error"), C.errorMessage(err));
  }
}

// --- hotline ---------------------------------------------------------------------------
function typeName(ty) {
  return C.label("type", ty.id);
}

function fillHotline() {
  const sel = C.$("#hotline-type");
  const prev = sel.value;
  const types = [...C.types()].sort((a, b) => (a.source === "manual" ? 0 : 1) - (b.source === "manual" ? 0 : 1));
  sel.replaceChildren(...types.map((ty) => C.h("option", { value: ty.id, text: typeName(ty) })));
  if (prev && types.some((ty) => ty.id === prev)) sel.value = prev;
}

async function onHotline(ev) {
  ev.preventDefault();
  const f = ev.currentTarget;
  const err = C.$("#hotline-error");
  const out = C.$("#hotline-result");
  C.renderError(err, null);
  out.hidden = true;
  const lat = Number(f.elements.lat.value);
  const lon = Number(f.elements.lon.value);
  const description = f.elements.description.value.trim();
  if (!description || f.elements.lat.value === "" || f.elements.lon.value === ""
      || !Number.isFinite(lat) || !Number.isFinite(lon)) {
    C.renderError(err, { key: "hotline.missing" });
    return;
  }
  const submit = C.$("#hotline-submit");
  submit.disabled = true;
  try {
    const res = await C.api("/api/reports", {
      method: "POST",
      json: {
        type: f.elements.type.value, description, position: { lat, lon },
        people: Number(f.elements.people.value) || 0, channel: "hotline",
      },
    });
    const inc = res.incident;
    out.replaceChildren(
      C.t(res.merged ? "hotline.merged" : "hotline.created", { id: inc.id }), " ",
      C.h("a", { href: `#incident=${encodeURIComponent(inc.id)}`, class: "link", text: C.t("hotline.open"),
        onclick: (e) => { e.preventDefault(); C.openIncident(inc.id); } }),
    );
    out.dataset.merged = res.merged ? "true" : "false";
    out.dataset.id = inc.id;
    out.hidden = false;
    f.elements.description.value = "";
    f.elements.people.value = "0";
    C.onReported(inc);
  } catch (e) {
    if (!C.isAbort(e)) C.renderError(err, C.errorMessage(e));
  } finally {
    submit.disabled = false;
  }
}

// --- ledger ------------------------------------------------------------------------------
function ledgerURL(fmt) {
  const qs = withFilters(new URLSearchParams());
  if (fmt === "csv") qs.set("format", "csv");
  const q = qs.toString();
  return `/api/ledger${q ? `?${q}` : ""}`;
}

function fmtAgeS(s) {
  if (s < 3600) return C.t("age.min", { n: Math.floor(s / 60) }).replace(/ ?(ago|前)$/, "");
  if (s < 86400) return C.t("age.hour", { n: Math.floor(s / 3600) }).replace(/ ?(ago|前)$/, "");
  return C.t("age.day", { n: Math.floor(s / 86400) }).replace(/ ?(ago|前)$/, "");
}

async function loadLedger() {
  const seq = ++ledgerSeq;
  let data;
  try {
    data = await C.api(ledgerURL("json"));
  } catch (err) {
    if (C.isAbort(err) || seq !== ledgerSeq) return;
    C.renderError(C.$("#ledger-error"), C.errorMessage(err));
    return;
  }
  if (seq !== ledgerSeq) return;
  C.renderError(C.$("#ledger-error"), null);
  const items = Array.isArray(data.items) ? data.items : [];
  C.$("#ledger-count").textContent = C.t("list.count", { n: items.length });
  const overdue = (it, k) => Array.isArray(it.overdue) && it.overdue.includes(k);
  const due = (iso, late) => C.h("td", { class: late ? "overdue" : null, text: iso ? C.fmtDateTime(iso) : "—" });
  C.$("#ledger-table tbody").replaceChildren(...items.map((it) => C.h("tr", {
    dataset: { id: it.id, state: it.state }, class: `sev-row sev-${it.severity}`,
    onclick: () => C.openIncident(it.id),
  },
  C.h("td", { class: "mono", text: it.id }),
  C.h("td", { text: C.label("type", it.type) }),
  C.h("td", null, C.h("span", { class: `sev-chip sev-${it.severity}`, text: C.label("severity", it.severity) })),
  C.h("td", { text: C.label("state", it.state) }),
  C.h("td", { text: it.queue_grid_name || it.queue_grid || "—" }),
  C.h("td", { text: (it.departments || []).map(C.deptName).join("、") || "—" }),
  C.h("td", { text: fmtAgeS(it.age_s || 0) }),
  due(it.ack_due, overdue(it, "acknowledge")),
  due(it.resolve_due, overdue(it, "resolve")),
  C.h("td", { class: "reason", text: it.reason || "" }),
  )));
}

// --- statistics --------------------------------------------------------------------------
function period() {
  return C.$("#stats-month").value || C.$("#stats-period").value || "30d";
}

function statsURL(fmt) {
  const qs = withFilters(new URLSearchParams({ period: period() }));
  if (fmt === "csv") qs.set("format", "csv");
  return `/api/stats?${qs}`;
}

function pct(x) {
  return x === null || x === undefined ? "—" : `${(x * 100).toFixed(1)}%`;
}

async function loadStats() {
  const seq = ++statsSeq;
  let data;
  try {
    data = await C.api(statsURL("json"));
  } catch (err) {
    if (C.isAbort(err) || seq !== statsSeq) return;
    C.renderError(C.$("#stats-error"), C.errorMessage(err));
    return;
  }
  if (seq !== statsSeq) return;
  C.renderError(C.$("#stats-error"), null);
  const figs = [
    ["received", data.received], ["dispatched", data.dispatched], ["escalated", data.escalated],
    ["resolved", data.resolved], ["closed", data.closed],
    ["closure_rate", pct(data.closure_rate)], ["on_time_rate", pct(data.on_time_rate)],
  ];
  C.$("#stats-figures").replaceChildren(...figs.map(([k, v]) => C.h("div", { class: "figure", dataset: { stat: k } },
    C.h("span", { class: "figure-value", text: String(v ?? 0) }),
    C.h("span", { class: "figure-label muted", text: C.t(`stats.${k}`) }))));
  C.$("#stats-daily").replaceChildren(dailyChart(Array.isArray(data.series) ? data.series : []));
  C.$("#stats-by-type").replaceChildren(typeChart(data.by_type || {}));
}

function svg(tag, attrs = {}, ...kids) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const k of kids) if (k) el.append(typeof k === "string" ? document.createTextNode(k) : k);
  return el;
}

/** Received per day as bars, resolved as a line, on one scale. */
function dailyChart(series) {
  const W = 640, H = 220, L = 36, B = 28, T = 12, R = 10;
  const max = Math.max(1, ...series.map((d) => Math.max(d.received || 0, d.resolved || 0)));
  const n = Math.max(1, series.length);
  const step = (W - L - R) / n;
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img", "data-chart": "daily" });
  for (const v of new Set([0, Math.round(max / 2), max])) {
    root.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid-line" }),
      svg("text", { x: L - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, String(v)));
  }
  const pts = [];
  series.forEach((d, i) => {
    const x = L + i * step;
    const hgt = (H - T - B) * ((d.received || 0) / max);
    root.append(svg("rect", {
      x: x + step * 0.15, y: y(d.received || 0), width: Math.max(1, step * 0.7), height: hgt,
      class: "bar received", "data-day": d.day, "data-value": d.received || 0,
    }, svg("title", {}, `${d.day}: ${C.t("stats.received")} ${d.received || 0}`)));
    pts.push(`${x + step / 2},${y(d.resolved || 0)}`);
    const every = Math.ceil(n / 8);
    if (i % every === 0) root.append(svg("text", { x: x + step / 2, y: H - 8, class: "axis", "text-anchor": "middle" }, String(d.day).slice(5)));
  });
  if (pts.length) root.append(svg("polyline", { points: pts.join(" "), class: "line resolved" }));
  series.forEach((d, i) => root.append(svg("circle", {
    cx: L + i * step + step / 2, cy: y(d.resolved || 0), r: 2.5, class: "dot resolved", "data-day": d.day, "data-value": d.resolved || 0,
  })));
  const legend = svg("g", { class: "legend" },
    svg("rect", { x: W - 200, y: 2, width: 10, height: 10, class: "bar received" }),
    svg("text", { x: W - 186, y: 11, class: "axis" }, C.t("stats.received")),
    svg("line", { x1: W - 110, x2: W - 96, y1: 7, y2: 7, class: "line resolved" }),
    svg("text", { x: W - 92, y: 11, class: "axis" }, C.t("stats.resolved")));
  root.append(legend);
  return root;
}

function typeChart(byType) {
  const rows = Object.entries(byType).sort((a, b) => b[1] - a[1]);
  const W = 640, rowH = 24, L = 140, R = 40;
  const H = Math.max(rowH, rows.length * rowH) + 8;
  const max = Math.max(1, ...rows.map(([, v]) => v));
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img", "data-chart": "by_type" });
  if (!rows.length) root.append(svg("text", { x: 8, y: 18, class: "axis" }, C.t("stats.none")));
  rows.forEach(([ty, v], i) => {
    const yy = 4 + i * rowH;
    const w = (W - L - R) * (v / max);
    root.append(
      svg("text", { x: L - 8, y: yy + 16, class: "axis", "text-anchor": "end" }, C.label("type", ty)),
      svg("rect", { x: L, y: yy + 4, width: Math.max(1, w), height: rowH - 8, class: "bar by-type", "data-type": ty, "data-value": v }),
      svg("text", { x: L + w + 6, y: yy + 16, class: "axis" }, String(v)));
  });
  return root;
}
