// GridHub map: the grid polygons and the patrol units moving on them, live.
// Plain ES module, no build step, no tiles, nothing fetched but this hub's own API.
//
// Drawing: a local equirectangular projection around the grids' centre
// (x = lon * cos(lat0), y = lat), scaled to pixels and fitted to the viewport; wheel or
// buttons zoom, dragging pans. Units are <g class="unit" data-unit=ID data-lon data-lat
// data-heading data-online> markers with a heading arrow and a bounded trail.

const TOKEN_KEY = "gridhub.token"; // the key app.js keeps the login under
const LANG_KEY = "gridhub.lang"; // the key i18n.js keeps the language under
const LANGS = ["zh-CN", "en"];
const LEVELS = ["city", "district", "street", "community", "cell"];
const TRAIL_MAX = 600; // points per unit, as the hub keeps
const WS_BACKOFF_MS = [1000, 2000, 4000, 8000, 15000, 30000];
const FIT_PAD = 0.08; // fraction of the viewport left around a fitted area
const LABEL_MIN_PX = 70; // grids narrower than this on screen get no label
const SVG_NS = "http://www.w3.org/2000/svg";

// ---------------------------------------------------------------------------
// Strings
// ---------------------------------------------------------------------------
const STRINGS = {
  "zh-CN": {
    "map.title": "网格地图",
    "map.back": "返回控制台",
    "map.zoom_in": "放大",
    "map.zoom_out": "缩小",
    "map.fit_units": "巡逻区",
    "map.fit_units.title": "缩放到巡逻单位所在区域",
    "map.fit_all": "全部",
    "map.fit_all.title": "显示全部网格",
    "map.loading": "正在加载网格与巡逻单位…",
    "map.load_failed": "加载失败：{msg}",
    "map.status": "网格 {grids} 个 · 单位 {units} 个 · 比例 1 像素 ≈ {m} 米",
    "lang.toggle": "English",
    "login.title": "需要登录",
    "login.needed": "请先在控制台登录，再打开地图。",
    "login.expired": "登录已过期，请重新登录。",
    "login.link": "前往控制台登录",
    "conn.live": "实时",
    "conn.connecting": "连接中",
    "conn.reconnecting": "重新连接中",
    "units.title": "巡逻单位",
    "units.count": "{online}/{total} 在线",
    "units.forbidden": "当前账号无权查看巡逻单位。",
    "units.empty": "未配置巡逻单位。",
    "unit.online": "在线",
    "unit.offline": "离线",
    "unit.none": "无定位",
    "unit.crew": "人员：{crew}",
    "unit.grid": "所在网格：{grid}",
    "unit.outside": "不在任何网格内",
    "unit.speed": "速度 {kmh} 公里/时",
    "unit.last": "最后定位 {time}",
    "unit.waiting": "等待首个定位",
    "level.city": "市",
    "level.district": "区",
    "level.street": "街道",
    "level.community": "社区",
    "level.cell": "网格",
    "role.admin": "管理员",
    "role.operator": "值班员",
    "role.dispatcher": "调度员",
    "role.department": "部门",
    "role.reviewer": "审核员",
    "role.patrol": "巡逻",
  },
  en: {
    "map.title": "Grid map",
    "map.back": "Back to console",
    "map.zoom_in": "Zoom in",
    "map.zoom_out": "Zoom out",
    "map.fit_units": "Patrol area",
    "map.fit_units.title": "Zoom to where the patrol units are",
    "map.fit_all": "All",
    "map.fit_all.title": "Show every grid",
    "map.loading": "Loading grids and patrol units…",
    "map.load_failed": "Loading failed: {msg}",
    "map.status": "{grids} grids · {units} units · 1 px ≈ {m} m",
    "lang.toggle": "中文",
    "login.title": "Sign-in needed",
    "login.needed": "Sign in on the console first, then open the map.",
    "login.expired": "Your session has expired; please sign in again.",
    "login.link": "Go to the console sign-in",
    "conn.live": "Live",
    "conn.connecting": "Connecting",
    "conn.reconnecting": "Reconnecting",
    "units.title": "Patrol units",
    "units.count": "{online}/{total} online",
    "units.forbidden": "This account may not see patrol units.",
    "units.empty": "No patrol units are configured.",
    "unit.online": "Online",
    "unit.offline": "Offline",
    "unit.none": "No fix",
    "unit.crew": "Crew: {crew}",
    "unit.grid": "Grid: {grid}",
    "unit.outside": "Outside every grid",
    "unit.speed": "Speed {kmh} km/h",
    "unit.last": "Last fix {time}",
    "unit.waiting": "Waiting for the first fix",
    "level.city": "City",
    "level.district": "District",
    "level.street": "Street",
    "level.community": "Community",
    "level.cell": "Cell",
    "role.admin": "Admin",
    "role.operator": "Operator",
    "role.dispatcher": "Dispatcher",
    "role.department": "Department",
    "role.reviewer": "Reviewer",
    "role.patrol": "Patrol",
  },
};

let lang = (() => {
  try {
    const saved = localStorage.getItem(LANG_KEY);
    if (LANGS.includes(saved)) return saved;
  } catch { /* storage unavailable */ }
  return "zh-CN";
})();

function t(key, vars = null) {
  let s = (STRINGS[lang] && STRINGS[lang][key]) ?? STRINGS["zh-CN"][key] ?? key;
  if (vars) for (const [k, v] of Object.entries(vars)) s = s.replaceAll(`{${k}}`, String(v));
  return s;
}

function applyI18n() {
  document.documentElement.lang = lang;
  document.title = `GridHub ${t("map.title")}`;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
}

function toggleLang() {
  lang = lang === "zh-CN" ? "en" : "zh-CN";
  try { localStorage.setItem(LANG_KEY, lang); } catch { /* ignore */ }
  applyI18n();
  renderLegend();
  renderConn();
  renderUser();
  renderUnitList();
  scheduleRender();
}

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------
const M = {
  token: readToken(),
  user: null,
  grids: [], // {id, name, level, parent, rings: [[[x, y], ...], ...], bbox: [x0, y0, x1, y1], els}
  gridById: new Map(),
  units: new Map(), // id -> {info (UnitOut), trail: [{lon, lat, t}], els}
  unitsAllowed: true,
  selected: null,
  proj: { lon0: 0, lat0: 0, k: 1 },
  view: { cx: 0, cy: 0, scale: 1 }, // projected centre and pixels per projected unit
  size: { w: 0, h: 0 },
  ws: null,
  wsGen: 0,
  wsRetry: 0,
  wsTimer: 0,
  wsEverOpen: false,
  conn: "reconnecting",
  loadSeq: 0,
  frame: 0,
};

function readToken() {
  for (const store of [() => sessionStorage, () => localStorage]) {
    try {
      const v = store().getItem(TOKEN_KEY);
      if (v) return v;
    } catch { /* storage unavailable */ }
  }
  return null;
}

// ---------------------------------------------------------------------------
// DOM helpers
// ---------------------------------------------------------------------------
const $ = (sel) => document.querySelector(sel);

function svg(tag, attrs = {}) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

function h(tag, cls, text) {
  const el = document.createElement(tag);
  if (cls) el.className = cls;
  if (text !== undefined && text !== null) el.textContent = text;
  return el;
}

// ---------------------------------------------------------------------------
// API
// ---------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
  }
}

async function api(path) {
  let res;
  try {
    res = await fetch(path, {
      headers: { Accept: "application/json", Authorization: `Bearer ${M.token}` },
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, "network error");
  }
  if (!res.ok) {
    let detail = null;
    try { detail = (await res.json()).detail; } catch { /* not JSON */ }
    if (res.status === 401) needLogin("login.expired");
    throw new ApiError(res.status, detail);
  }
  return res.json();
}

function needLogin(reasonKey = "login.needed") {
  M.token = null;
  stopWS();
  $("#map-view").hidden = true;
  $("#conn-status").hidden = true;
  $("#current-user").hidden = true;
  const reason = $("#map-login-reason");
  reason.dataset.i18n = reasonKey;
  reason.textContent = t(reasonKey);
  $("#map-login").hidden = false;
}

// ---------------------------------------------------------------------------
// Projection and view
// ---------------------------------------------------------------------------
function project(lon, lat) {
  return [(lon - M.proj.lon0) * M.proj.k, lat - M.proj.lat0];
}

function toScreen([x, y]) {
  const { cx, cy, scale } = M.view;
  return [M.size.w / 2 + (x - cx) * scale, M.size.h / 2 - (y - cy) * scale];
}

function setProjection(features) {
  let lon0 = Infinity, lon1 = -Infinity, lat0 = Infinity, lat1 = -Infinity;
  for (const f of features) {
    for (const ring of outerRings(f.geometry)) {
      for (const [lon, lat] of ring) {
        lon0 = Math.min(lon0, lon); lon1 = Math.max(lon1, lon);
        lat0 = Math.min(lat0, lat); lat1 = Math.max(lat1, lat);
      }
    }
  }
  if (!Number.isFinite(lon0)) { lon0 = lon1 = 0; lat0 = lat1 = 0; }
  const latC = (lat0 + lat1) / 2;
  M.proj = { lon0: (lon0 + lon1) / 2, lat0: latC, k: Math.cos((latC * Math.PI) / 180) };
}

/** Every ring (outer and holes) of a Polygon or MultiPolygon, as [[lon, lat], ...]. */
function allRings(geom) {
  if (!geom) return [];
  if (geom.type === "Polygon") return geom.coordinates || [];
  if (geom.type === "MultiPolygon") return (geom.coordinates || []).flat();
  return [];
}
function outerRings(geom) {
  if (!geom) return [];
  if (geom.type === "Polygon") return (geom.coordinates || []).slice(0, 1);
  if (geom.type === "MultiPolygon") return (geom.coordinates || []).map((p) => p[0]).filter(Boolean);
  return [];
}

function bboxUnion(boxes) {
  const out = [Infinity, Infinity, -Infinity, -Infinity];
  for (const b of boxes) {
    if (!b) continue;
    out[0] = Math.min(out[0], b[0]); out[1] = Math.min(out[1], b[1]);
    out[2] = Math.max(out[2], b[2]); out[3] = Math.max(out[3], b[3]);
  }
  return Number.isFinite(out[0]) ? out : null;
}

function fit(box) {
  if (!box || !M.size.w || !M.size.h) return;
  const bw = Math.max(box[2] - box[0], 1e-6);
  const bh = Math.max(box[3] - box[1], 1e-6);
  M.view.cx = (box[0] + box[2]) / 2;
  M.view.cy = (box[1] + box[3]) / 2;
  M.view.scale = Math.min((M.size.w * (1 - 2 * FIT_PAD)) / bw, (M.size.h * (1 - 2 * FIT_PAD)) / bh);
  scheduleRender();
}

function fitAll() {
  fit(bboxUnion(M.grids.map((g) => g.bbox)));
}

/** The user's own grid if set, else the units' home grids and positions, else everything. */
function fitUnits() {
  const boxes = [];
  if (M.user && M.user.grid && M.gridById.has(M.user.grid)) boxes.push(M.gridById.get(M.user.grid).bbox);
  else {
    for (const u of M.units.values()) {
      const home = u.info.home_grid && M.gridById.get(u.info.home_grid);
      if (home) boxes.push(home.bbox);
      const tm = u.info.telemetry;
      if (tm) {
        const [x, y] = project(tm.lon, tm.lat);
        boxes.push([x, y, x, y]);
      }
    }
  }
  const box = bboxUnion(boxes);
  if (box) fit(box); else fitAll();
}

function zoomAt(factor, sx, sy) {
  const { cx, cy, scale } = M.view;
  const next = Math.min(Math.max(scale * factor, 1e-3), 1e9);
  // Keep the point under (sx, sy) where it is.
  const px = cx + (sx - M.size.w / 2) / scale;
  const py = cy - (sy - M.size.h / 2) / scale;
  M.view.scale = next;
  M.view.cx = px - (sx - M.size.w / 2) / next;
  M.view.cy = py + (sy - M.size.h / 2) / next;
  scheduleRender();
}

function metresPerPixel() {
  // One projected unit is one degree of latitude: ~111 320 m.
  return 111320 / M.view.scale;
}

// ---------------------------------------------------------------------------
// Grids
// ---------------------------------------------------------------------------
function setGrids(collection) {
  const features = (collection && Array.isArray(collection.features)) ? collection.features : [];
  setProjection(features);
  const layer = $("#grid-layer");
  const labels = $("#label-layer");
  layer.replaceChildren();
  labels.replaceChildren();
  M.grids = [];
  M.gridById.clear();
  const level = (f) => LEVELS.indexOf((f.properties || {}).level);
  const sorted = [...features].sort((a, b) => level(a) - level(b)); // cells on top
  for (const f of sorted) {
    const p = f.properties || {};
    const rings = allRings(f.geometry).map((ring) => ring.map(([lon, lat]) => project(lon, lat)));
    const outer = outerRings(f.geometry).map((ring) => ring.map(([lon, lat]) => project(lon, lat)));
    const bbox = bboxUnion(outer.flat().map(([x, y]) => [x, y, x, y]));
    const path = svg("path", { class: "grid", "fill-rule": "evenodd" });
    path.dataset.grid = p.id;
    path.dataset.level = p.level;
    const title = svg("title");
    path.append(title);
    const label = svg("text", { class: "grid-label", "text-anchor": "middle" });
    label.dataset.grid = p.id;
    label.dataset.level = p.level;
    label.textContent = p.name || p.id;
    layer.append(path);
    labels.append(label);
    const g = { id: p.id, name: p.name || p.id, level: p.level, parent: p.parent, contact: p.contact,
      rings, bbox, els: { path, label, title } };
    M.grids.push(g);
    M.gridById.set(g.id, g);
  }
  $("#map").dataset.grids = String(M.grids.length);
}

function gridTitle(g) {
  const lvl = t(`level.${g.level}`);
  return `${g.name} (${lvl})${g.contact ? `\n${g.contact}` : ""}`;
}

function renderGrids() {
  const occupied = new Set();
  for (const u of M.units.values()) if (u.info.grid) occupied.add(u.info.grid.id);
  for (const g of M.grids) {
    const d = g.rings.map((ring) => {
      const pts = ring.map((p) => toScreen(p).map((v) => v.toFixed(1)).join(","));
      return `M${pts.join("L")}Z`;
    }).join("");
    g.els.path.setAttribute("d", d);
    g.els.path.classList.toggle("has-unit", occupied.has(g.id));
    g.els.title.textContent = gridTitle(g);
    const label = g.els.label;
    if (!g.bbox) { label.setAttribute("visibility", "hidden"); continue; }
    const [x0, y0] = toScreen([g.bbox[0], g.bbox[3]]);
    const [x1, y1] = toScreen([g.bbox[2], g.bbox[1]]);
    const wide = x1 - x0 >= LABEL_MIN_PX && y1 - y0 >= 24;
    // Label at the top of the visible part of the grid, so nested grids do not overlap.
    const vx0 = Math.max(x0, 0), vx1 = Math.min(x1, M.size.w);
    const vy0 = Math.max(y0, 0), vy1 = Math.min(y1, M.size.h);
    const visible = vx1 - vx0 > LABEL_MIN_PX && vy1 - vy0 > 20;
    label.setAttribute("visibility", wide && visible ? "visible" : "hidden");
    label.setAttribute("x", ((vx0 + vx1) / 2).toFixed(1));
    label.setAttribute("y", (vy0 + 16).toFixed(1));
  }
}

// ---------------------------------------------------------------------------
// Units
// ---------------------------------------------------------------------------
function timeMs(iso) {
  const v = Date.parse(iso);
  return Number.isNaN(v) ? 0 : v;
}

function mergeTrail(trail, points) {
  const byTime = new Map(trail.map((p) => [p.t, p]));
  for (const p of points) byTime.set(p.t, p);
  const out = [...byTime.values()].sort((a, b) => a.t - b.t);
  return out.length > TRAIL_MAX ? out.slice(out.length - TRAIL_MAX) : out;
}

function pointOf(tm) {
  return { lon: Number(tm.lon), lat: Number(tm.lat), t: timeMs(tm.time) };
}

/** Apply a UnitOut (from the API or an event). Ordered by the hub's arrival time, so an
 * API answer overtaken by a live event never moves a unit back. */
function upsertUnit(info, trailPoints = null) {
  if (!info || typeof info.id !== "string") return;
  let u = M.units.get(info.id);
  if (!u) {
    u = { info, trail: [], els: null };
    M.units.set(info.id, u);
  } else {
    if (timeMs(info.received_at) < timeMs(u.info.received_at)) {
      if (trailPoints) u.trail = mergeTrail(u.trail, trailPoints);
      return;
    }
    const oldT = u.info.telemetry ? timeMs(u.info.telemetry.time) : -1;
    const newT = info.telemetry ? timeMs(info.telemetry.time) : -1;
    // The device's clock went back and the hub started a new trail: so does the map.
    if (info.telemetry && newT < oldT) u.trail = [];
    u.info = info;
  }
  if (trailPoints) u.trail = mergeTrail(u.trail, trailPoints);
  if (info.telemetry) u.trail = mergeTrail(u.trail, [pointOf(info.telemetry)]);
}

function ensureUnitEls(id, u) {
  if (u.els) return u.els;
  const trail = svg("polyline", { class: "trail" });
  trail.dataset.unit = id;
  const g = svg("g", { class: "unit", tabindex: "0", role: "button" });
  g.dataset.unit = id;
  const halo = svg("circle", { class: "halo", r: 16 });
  const heading = svg("path", { class: "heading", d: "M0,-25 L8,-9 L0,-12 L-8,-9 Z" });
  const dot = svg("circle", { class: "dot", r: 7 });
  const label = svg("text", { class: "unit-label", x: 12, y: -10 });
  const title = svg("title");
  g.append(halo, heading, dot, label, title);
  g.addEventListener("click", (ev) => { ev.stopPropagation(); select(id, false); });
  $("#trail-layer").append(trail);
  $("#unit-layer").append(g);
  u.els = { g, trail, heading, label, title };
  return u.els;
}

function renderUnits() {
  for (const [id, u] of M.units) {
    const tm = u.info.telemetry;
    if (!tm) {
      if (u.els) { u.els.g.remove(); u.els.trail.remove(); u.els = null; }
      continue;
    }
    const els = ensureUnitEls(id, u);
    const [sx, sy] = toScreen(project(tm.lon, tm.lat));
    els.g.setAttribute("transform", `translate(${sx.toFixed(1)},${sy.toFixed(1)})`);
    els.g.dataset.lon = String(tm.lon);
    els.g.dataset.lat = String(tm.lat);
    els.g.dataset.online = String(Boolean(u.info.online));
    els.g.dataset.grid = u.info.grid ? u.info.grid.id : "";
    const hasHeading = typeof tm.heading === "number";
    els.g.dataset.heading = hasHeading ? String(tm.heading) : "";
    els.heading.setAttribute("visibility", hasHeading ? "visible" : "hidden");
    if (hasHeading) els.heading.setAttribute("transform", `rotate(${tm.heading})`);
    els.g.classList.toggle("selected", M.selected === id);
    els.label.textContent = u.info.name || id;
    els.title.textContent = unitSummary(u.info).join("\n");
    els.trail.setAttribute("points", u.trail
      .map((p) => toScreen(project(p.lon, p.lat)).map((v) => v.toFixed(1)).join(",")).join(" "));
    els.trail.dataset.points = String(u.trail.length);
  }
}

function unitState(info) {
  if (!info.telemetry) return "none";
  return info.online ? "online" : "offline";
}

function fmtTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "—";
  const pad = (n) => String(n).padStart(2, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function gridName(ref) {
  if (!ref) return t("unit.outside");
  return `${ref.name} (${t(`level.${ref.level}`)})`;
}

function unitSummary(info) {
  const lines = [info.name || info.id];
  if (info.crew) lines.push(t("unit.crew", { crew: info.crew }));
  const tm = info.telemetry;
  if (!tm) {
    lines.push(t("unit.waiting"));
    return lines;
  }
  lines.push(t("unit.grid", { grid: gridName(info.grid) }));
  if (typeof tm.speed === "number") lines.push(t("unit.speed", { kmh: (tm.speed * 3.6).toFixed(1) }));
  lines.push(t("unit.last", { time: fmtTime(tm.time) }));
  return lines;
}

function renderUnitList() {
  const ul = $("#unit-list");
  const note = $("#units-note");
  if (!M.unitsAllowed) {
    ul.replaceChildren();
    note.textContent = t("units.forbidden");
    note.hidden = false;
    $("#units-count").textContent = "";
    return;
  }
  note.hidden = M.units.size > 0;
  note.textContent = t("units.empty");
  const rows = [];
  let online = 0;
  for (const [id, u] of M.units) {
    const state = unitState(u.info);
    if (state === "online") online++;
    const li = h("li", "unit-row");
    li.dataset.unit = id;
    li.dataset.state = state;
    li.tabIndex = 0;
    li.classList.toggle("selected", M.selected === id);
    const top = h("div", "unit-row-top");
    top.append(h("span", "unit-row-name", u.info.name || id));
    const badge = h("span", "unit-row-state", t(`unit.${state}`));
    badge.dataset.state = state;
    top.append(badge);
    li.append(top);
    for (const line of unitSummary(u.info).slice(1)) li.append(h("div", "unit-row-meta", line));
    li.addEventListener("click", () => select(id, true));
    li.addEventListener("keydown", (ev) => { if (ev.key === "Enter") select(id, true); });
    rows.push(li);
  }
  ul.replaceChildren(...rows);
  $("#units-count").textContent = M.units.size ? t("units.count", { online, total: M.units.size }) : "";
}

function select(id, center) {
  M.selected = M.selected === id && !center ? null : id;
  const u = M.units.get(id);
  if (center && u && u.info.telemetry) {
    const [x, y] = project(u.info.telemetry.lon, u.info.telemetry.lat);
    M.view.cx = x;
    M.view.cy = y;
  }
  scheduleRender();
  renderUnitList();
}

// ---------------------------------------------------------------------------
// Render loop
// ---------------------------------------------------------------------------
function scheduleRender() {
  if (M.frame) return;
  M.frame = requestAnimationFrame(() => {
    M.frame = 0;
    renderGrids();
    renderUnits();
    renderStatus();
  });
}

function renderStatus() {
  const m = metresPerPixel();
  $("#map-status").textContent = t("map.status", {
    grids: M.grids.length, units: M.units.size, m: m >= 10 ? Math.round(m) : m.toFixed(1),
  });
}

function renderLegend() {
  const legend = $("#legend");
  legend.replaceChildren(...LEVELS.map((lvl) => {
    const item = h("span", "legend-item");
    const sw = h("span", "legend-swatch");
    sw.dataset.level = lvl;
    item.append(sw, t(`level.${lvl}`));
    return item;
  }));
}

function renderConn() {
  const el = $("#conn-status");
  el.dataset.state = M.conn;
  el.querySelector(".conn-label").textContent = M.conn === "live" ? t("conn.live")
    : M.wsEverOpen ? t("conn.reconnecting") : t("conn.connecting");
}

function renderUser() {
  const el = $("#current-user");
  if (!M.user) { el.hidden = true; return; }
  el.replaceChildren(h("span", "user-name", M.user.name), h("span", "role-badge", t(`role.${M.user.role}`)));
  el.hidden = false;
}

function measure() {
  const r = $("#map-wrap").getBoundingClientRect();
  const changed = r.width !== M.size.w || r.height !== M.size.h;
  M.size = { w: r.width, h: r.height };
  return changed;
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------
async function loadUnits() {
  const seq = ++M.loadSeq;
  let list;
  try {
    list = await api("/api/units");
  } catch (err) {
    if (err.status === 403) {
      M.unitsAllowed = false;
      renderUnitList();
      return;
    }
    throw err;
  }
  if (seq !== M.loadSeq) return;
  M.unitsAllowed = true;
  const details = await Promise.all(list.map((u) => (u.telemetry && u.trail_length > 1
    ? api(`/api/units/${encodeURIComponent(u.id)}`).catch(() => null) : Promise.resolve(null))));
  if (seq !== M.loadSeq) return;
  const ids = new Set(list.map((u) => u.id));
  for (const [id, u] of M.units) {
    if (!ids.has(id)) {
      if (u.els) { u.els.g.remove(); u.els.trail.remove(); }
      M.units.delete(id);
    }
  }
  list.forEach((info, i) => {
    const d = details[i];
    upsertUnit(info, d && Array.isArray(d.trail) ? d.trail.map(pointOf) : null);
  });
  renderUnitList();
  scheduleRender();
}

async function start() {
  applyI18n();
  renderLegend();
  $("#lang-toggle").addEventListener("click", toggleLang);
  if (!M.token) { needLogin(); return; }
  $("#map-view").hidden = false;
  $("#conn-status").hidden = false;
  renderConn();
  measure();
  $("#map-status").textContent = t("map.loading");
  try {
    M.user = await api("/api/me");
    renderUser();
    setGrids(await api("/api/grids"));
    await loadUnits();
  } catch (err) {
    if (err.status === 401) return; // needLogin already shown
    const box = $("#map-error");
    box.textContent = t("map.load_failed", { msg: err.message });
    box.hidden = false;
  }
  fitUnits();
  $("#map").dataset.ready = "true";
  setupInteraction();
  connectWS();
}

// ---------------------------------------------------------------------------
// Interaction
// ---------------------------------------------------------------------------
function setupInteraction() {
  const map = $("#map");
  new ResizeObserver(() => { if (measure()) scheduleRender(); }).observe($("#map-wrap"));
  map.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const r = map.getBoundingClientRect();
    zoomAt(Math.exp(-ev.deltaY * 0.0015), ev.clientX - r.left, ev.clientY - r.top);
  }, { passive: false });
  let drag = null;
  map.addEventListener("pointerdown", (ev) => {
    if (ev.button !== 0) return;
    drag = { x: ev.clientX, y: ev.clientY, cx: M.view.cx, cy: M.view.cy, id: ev.pointerId };
  });
  map.addEventListener("pointermove", (ev) => {
    if (!drag || ev.pointerId !== drag.id) return;
    const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    if (!map.classList.contains("dragging") && Math.hypot(dx, dy) < 3) return;
    if (!map.classList.contains("dragging")) {
      map.classList.add("dragging");
      try { map.setPointerCapture(ev.pointerId); } catch { /* pointer gone */ }
    }
    M.view.cx = drag.cx - dx / M.view.scale;
    M.view.cy = drag.cy + dy / M.view.scale;
    scheduleRender();
  });
  const end = () => { drag = null; map.classList.remove("dragging"); };
  map.addEventListener("pointerup", end);
  map.addEventListener("pointercancel", end);
  $("#zoom-in").addEventListener("click", () => zoomAt(1.6, M.size.w / 2, M.size.h / 2));
  $("#zoom-out").addEventListener("click", () => zoomAt(1 / 1.6, M.size.w / 2, M.size.h / 2));
  $("#fit-all").addEventListener("click", fitAll);
  $("#fit-units").addEventListener("click", fitUnits);
}

// ---------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------
function connectWS() {
  if (!M.token) return;
  clearTimeout(M.wsTimer);
  const gen = ++M.wsGen;
  if (M.ws) { try { M.ws.close(); } catch { /* ignore */ } }
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  let ws;
  try {
    ws = new WebSocket(`${proto}//${location.host}/ws?token=${encodeURIComponent(M.token)}`);
  } catch {
    scheduleReconnect(gen);
    return;
  }
  M.ws = ws;
  ws.addEventListener("open", () => {
    if (gen !== M.wsGen) return;
    M.wsRetry = 0;
    M.wsEverOpen = true;
    setConn("live");
    // Fixes may have been missed while disconnected.
    loadUnits().catch(() => {});
  });
  ws.addEventListener("message", (ev) => {
    if (gen !== M.wsGen) return;
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    if (!msg || typeof msg !== "object") return;
    if (msg.type === "unit.telemetry" || msg.type === "unit.status") {
      upsertUnit(msg.data);
      renderUnitList();
      scheduleRender();
    }
  });
  ws.addEventListener("close", (ev) => {
    if (gen !== M.wsGen || !M.token) return;
    M.ws = null;
    if (ev.code === 4401) api("/api/me").catch(() => {});
    scheduleReconnect(gen);
  });
}

function scheduleReconnect(gen) {
  if (gen !== M.wsGen || !M.token) return;
  const base = WS_BACKOFF_MS[Math.min(M.wsRetry, WS_BACKOFF_MS.length - 1)];
  M.wsRetry++;
  setConn("reconnecting");
  clearTimeout(M.wsTimer);
  M.wsTimer = setTimeout(() => { if (gen === M.wsGen) connectWS(); },
    Math.round(base * (0.75 + Math.random() * 0.5)));
}

function stopWS() {
  M.wsGen++;
  clearTimeout(M.wsTimer);
  if (M.ws) { try { M.ws.close(1000); } catch { /* ignore */ } }
  M.ws = null;
}

function setConn(state) {
  M.conn = state;
  renderConn();
}

start();
