// GridHub operator / department console. Plain ES module, no build step, no external resources.
import {
  t, label, getLang, toggleLang, onLangChange, applyI18n, setTypeNames,
  INCIDENT_TYPES, STATES, SEVERITIES,
} from "/static/i18n.js";
import * as sound from "/static/sound.js";
import { initViews, showView, viewsForRole, onIncidentEvent } from "/static/views.js";

// ---------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------
const TOKEN_KEY = "gridhub.token";
const JUDGES = new Set(["admin", "operator", "dispatcher"]);
const JUDGEABLE_STATES = new Set(["new", "reopened"]);
// Mirrors hub/states.py (the server is the authority; this only decides what to show).
const OPEN = ["new", "confirmed", "dispatched", "accepted", "on_scene", "reopened", "escalated"];
const WORKING = ["dispatched", "accepted", "on_scene"];
const FROM = {
  confirm: ["new", "reopened"],
  dispatch: ["new", "confirmed", "reopened", "escalated", "dispatched"],
  accept: ["dispatched"],
  en_route: ["accepted"],
  on_scene: ["dispatched", "accepted"],
  feedback: WORKING,
  resolve: ["accepted", "on_scene"],
  close: ["resolved"],
  dismiss: ["new", "confirmed", "reopened"],
  reopen: ["resolved", "closed", "dismissed"],
  escalate: OPEN,
  challenge: ["escalated"],
  severity: OPEN,
  comment: STATES,
};
const ASSIGNEE_ACTIONS = new Set(["accept", "en_route", "on_scene", "feedback", "resolve"]);
const ROLE_ACTIONS = {
  department: new Set([...ASSIGNEE_ACTIONS, "escalate", "comment"]),
  patrol: new Set([...ASSIGNEE_ACTIONS, "comment"]),
  operator: new Set(["confirm", "dismiss", "dispatch", "close", "reopen", "escalate", "severity",
    "challenge", "comment"]),
  reviewer: new Set(["comment"]),
  staff: new Set(["comment"]),
};
ROLE_ACTIONS.dispatcher = ROLE_ACTIONS.operator;
const NEEDS_TEXT = new Set(["reopen", "escalate", "challenge", "severity", "comment", "feedback",
  "resolve"]);
const DISMISS_LABELS = ["not_person", "person_ok", "other"];
const LIST_LIMIT = 200;
const MAX_ROWS = 500;
const WS_BACKOFF_MS = [1000, 2000, 4000, 8000, 15000, 30000];

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------
const S = {
  token: readToken(),
  user: null,
  departments: [],
  deptById: new Map(),
  units: [], // patrol units (for dispatching), loaded for the command center's roles
  unitById: new Map(),
  pick: null, // the "dispatch to others" choices for the selected incident
  severityPick: null,
  photos: new Map(), // "incident/photo" -> object URL (photos need the bearer token)
  view: "incidents",
  knownTypes: new Set(INCIDENT_TYPES),
  incidents: new Map(), // id -> incident (without timeline); only those matching the filters
  filters: { state: "", type: "", severity: "" },
  dismissLabel: "not_person",
  listSeq: 0,
  listLoaded: false,
  listError: null,
  selectedId: null,
  detail: null, // incident with timeline for the selected id
  detailSeq: 0,
  detailError: null,
  detailTimer: 0,
  snapshot: { key: null, url: null, seq: 0, status: "none" },
  action: { busy: null, error: null, info: null },
  evidence: null, // the evidence card of the selected incident (see evidenceState)
  session: null, // AbortController of the current login session
  ws: null,
  wsGen: 0,
  wsRetry: 0,
  wsTimer: 0,
  wsEverOpen: false,
  conn: "reconnecting",
  connRetryAt: 0,
  loginError: null,
};

function readToken() {
  try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; }
}
function writeToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch { /* storage unavailable: token lives in memory only */ }
}

// ---------------------------------------------------------------------------
// Small DOM helpers
// ---------------------------------------------------------------------------
const $ = (sel, root = document) => root.querySelector(sel);

/** h("div", {class: "x", dataset: {id: 1}, onclick: fn}, child, "text", [more]) */
function h(tag, attrs = null, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
      else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else if (k === "text") el.textContent = v;
      else if (v === true) el.setAttribute(k, "");
      else el.setAttribute(k, String(v));
    }
  }
  appendChildren(el, children);
  return el;
}
function appendChildren(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) appendChildren(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}
function show(el, on = true) { el.hidden = !on; }

// ---------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------
const pad = (n, w = 2) => String(n).padStart(w, "0");

function parseTime(iso) {
  if (!iso) return null;
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? null : d;
}
function fmtDateTime(iso) {
  const d = parseTime(iso);
  if (!d) return "—";
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function fmtShort(iso) {
  const d = parseTime(iso);
  if (!d) return "—";
  const now = new Date();
  const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (d.toDateString() === now.toDateString()) return hms;
  return `${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${hms}`;
}
function fmtAge(iso) {
  const d = parseTime(iso);
  if (!d) return "";
  const s = Math.max(0, Math.round((Date.now() - d.getTime()) / 1000));
  if (s < 60) return t("age.now");
  if (s < 3600) return t("age.min", { n: Math.floor(s / 60) });
  if (s < 86400) return t("age.hour", { n: Math.floor(s / 3600) });
  return t("age.day", { n: Math.floor(s / 86400) });
}
function fmtConfidence(c) {
  if (typeof c !== "number" || Number.isNaN(c)) return "—";
  return `${Math.round(c * 100)}%`;
}
function deptName(id) {
  if (!id) return "";
  const d = S.deptById.get(id);
  if (!d) return String(id);
  return getLang() === "en" ? (d.name_en || d.name || id) : (d.name || d.name_en || id);
}
function deptList(ids) {
  if (!Array.isArray(ids) || ids.length === 0) return t("detail.none");
  return ids.map(deptName).join(getLang() === "en" ? ", " : "、");
}
function timeOf(iso) {
  const d = parseTime(iso);
  return d ? d.getTime() : 0;
}

// ---------------------------------------------------------------------------
// API
// ---------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

async function api(path, { method = "GET", json, form, multipart, raw = false, auth = true } = {}) {
  const headers = { Accept: raw ? "*/*" : "application/json" };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    headers["Content-Type"] = "application/x-www-form-urlencoded";
    body = new URLSearchParams(form).toString();
  } else if (multipart !== undefined) {
    body = multipart; // FormData: the browser sets the multipart boundary
  }
  if (auth && S.token) headers.Authorization = `Bearer ${S.token}`;
  const signal = auth && S.session ? S.session.signal : undefined;
  let res;
  try {
    res = await fetch(path, { method, headers, body, signal, cache: "no-store" });
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiError(0, null);
  }
  if (res.status === 401 && auth) {
    sessionExpired();
    throw new ApiError(401, await readDetail(res));
  }
  if (!res.ok) throw new ApiError(res.status, await readDetail(res));
  if (raw) return res;
  if (res.status === 204) return null;
  return res.json();
}

async function readDetail(res) {
  try {
    const data = await res.json();
    return data && "detail" in data ? data.detail : null;
  } catch {
    return null;
  }
}

/** {main, detail}: a translated generic message plus the server's own detail when it adds something. */
function errorMessage(err, fallbackKey = "error.generic") {
  if (!(err instanceof ApiError)) {
    return { main: t(fallbackKey), key: fallbackKey, detail: err && err.message ? err.message : null };
  }
  const byStatus = {
    0: "error.network", 401: "error.session", 403: "error.forbidden", 404: "error.not_found",
    409: "error.conflict", 400: "error.bad_request", 422: "error.bad_request",
  };
  let key = byStatus[err.status];
  if (!key) key = err.status >= 500 ? "error.server" : fallbackKey;
  let detail = null;
  if (typeof err.detail === "string") detail = err.detail;
  else if (Array.isArray(err.detail)) {
    detail = err.detail.map((d) => (d && d.msg ? d.msg : JSON.stringify(d))).join("; ");
  } else if (err.detail && typeof err.detail === "object" && err.detail.message) {
    // 409 {message, allowed}: say what the server refused and what it would allow.
    const allowed = Array.isArray(err.detail.allowed) && err.detail.allowed.length
      ? ` ${t("error.allowed", { actions: err.detail.allowed.map((a) => label("tl.action", a)).join(", ") })}` : "";
    detail = `${err.detail.message}${allowed}`;
  }
  return { main: t(key), key, detail };
}

/** Like errorMessage() but keeps the i18n key so the text can be re-translated later. */
function errorKey(err, fallbackKey = "error.generic") {
  const m = errorMessage(err, fallbackKey);
  return { key: m.key, detail: m.detail };
}

function renderError(el, msg) {
  el.replaceChildren();
  if (!msg) { show(el, false); return; }
  const main = msg.key ? t(msg.key) : msg.main; // by key so a language switch re-translates it
  el.append(main);
  if (msg.detail && msg.detail !== main) el.append(h("span", { class: "error-detail", text: msg.detail }));
  show(el, true);
}

const isAbort = (err) => err && err.name === "AbortError";

// ---------------------------------------------------------------------------
// Login / session
// ---------------------------------------------------------------------------
/** msg: null | {key, detail?} (re-translated on language change) */
function setLoginError(msg) {
  S.loginError = msg;
  renderError($("#login-error"), msg);
}

function showLogin(message = null) {
  showView(null);
  show($("#login-view"), true);
  for (const id of ["#logout-btn", "#current-user", "#conn-status"]) show($(id), false);
  setLoginError(message);
  const submit = $("#login-submit");
  submit.disabled = false;
  submit.textContent = t("login.submit");
  const form = $("#login-form");
  form.elements.password.value = "";
  (form.elements.username.value ? form.elements.password : form.elements.username).focus();
}

async function onLoginSubmit(ev) {
  ev.preventDefault();
  const form = ev.currentTarget;
  const username = form.elements.username.value.trim();
  const password = form.elements.password.value;
  const submit = $("#login-submit");
  if (!username || !password) {
    setLoginError({ key: "error.login" });
    return;
  }
  submit.disabled = true;
  submit.textContent = t("login.submitting");
  setLoginError(null);
  try {
    const res = await api("/api/auth/token", { method: "POST", form: { username, password }, auth: false });
    if (!res || !res.access_token) throw new ApiError(500, null);
    S.token = res.access_token;
    writeToken(S.token);
    form.elements.password.value = "";
    await boot();
  } catch (err) {
    if (isAbort(err)) return;
    setLoginError(err instanceof ApiError && err.status === 401 ? { key: "error.login" } : errorKey(err));
  } finally {
    submit.disabled = false;
    submit.textContent = t("login.submit");
  }
}

function endSession() {
  if (S.session) S.session.abort();
  S.session = null;
  S.token = null;
  writeToken(null);
  S.user = null;
  S.evidence = null;
  stopWS();
  S.incidents.clear();
  S.listLoaded = false;
  closeDetail({ keepHash: false });
  $("#incident-list").replaceChildren();
}

function logout() {
  endSession();
  showLogin();
}

function sessionExpired() {
  if (!S.token) return;
  endSession();
  showLogin({ key: "error.session" });
}

async function boot() {
  if (S.session) S.session.abort();
  S.session = new AbortController();
  let me;
  try {
    me = await api("/api/me");
  } catch (err) {
    if (isAbort(err) || (err instanceof ApiError && err.status === 401)) return;
    // Server unreachable or broken: keep the token, show the error on the login card.
    showLogin(errorKey(err));
    return;
  }
  S.user = me;
  try {
    const deps = await api("/api/departments");
    S.departments = Array.isArray(deps) ? deps : [];
  } catch (err) {
    if (isAbort(err) || (err instanceof ApiError && err.status === 401)) return;
    S.departments = [];
  }
  S.deptById = new Map(S.departments.map((d) => [d.id, d]));
  for (const d of S.departments) for (const ty of d.handles || []) S.knownTypes.add(ty);
  await loadTypes();
  await loadUnits();
  await loadRecordingAlerts();

  show($("#login-view"), false);
  showView(viewsForRole(me.role).includes(S.view) ? S.view : "incidents");
  show($("#logout-btn"), true);
  show($("#current-user"), true);
  show($("#conn-status"), true);
  renderUser();
  buildFilters();
  renderList();
  loadList();
  connectWS();
  const fromHash = hashIncident();
  if (fromHash) selectIncident(fromHash, { updateHash: false });
  else renderDetail();
}

async function loadTypes() {
  try {
    const types = await api("/api/types");
    S.types = Array.isArray(types) ? types : [];
  } catch (err) {
    if (isAbort(err)) return;
    S.types = [];
  }
  setTypeNames(S.types);
  for (const ty of S.types) S.knownTypes.add(ty.id);
}

/** Patrol units for the dispatch picker (the command center's roles); the other roles
 * get their names only, to name the units on a case. */
async function loadUnits() {
  if (!S.user) return;
  if (!JUDGES.has(S.user.role)) {
    try {
      const names = await api("/api/units/names");
      S.unitById = new Map((Array.isArray(names) ? names : []).map((u) => [u.id, u]));
      rerenderActions();
    } catch (err) {
      if (!isAbort(err)) S.unitById = new Map();
    }
    return;
  }
  try {
    const units = await api("/api/units");
    S.units = Array.isArray(units) ? units : [];
  } catch (err) {
    if (isAbort(err)) return;
    S.units = []; // unit tracking off on this hub: dispatch to departments only
  }
  S.unitById = new Map(S.units.map((u) => [u.id, u]));
  rerenderActions();
}

function renderUser() {
  const el = $("#current-user");
  el.replaceChildren();
  const u = S.user;
  if (!u) return;
  el.dataset.role = u.role || "";
  appendChildren(el, [
    h("span", { class: "user-name", text: u.name || u.username }),
    u.name && u.name !== u.username ? h("span", { class: "user-login muted", text: u.username }) : null,
    h("span", { class: "role-badge", text: label("role", u.role) }),
    u.department ? h("span", { class: "user-dept", text: deptName(u.department) }) : null,
  ]);
  el.title = `${u.username} · ${label("role", u.role)}`;
}

// ---------------------------------------------------------------------------
// Filters
// ---------------------------------------------------------------------------
function fillSelect(sel, values, group, current) {
  sel.replaceChildren(h("option", { value: "", text: t("filter.all") }));
  for (const v of values) sel.append(h("option", { value: v, text: label(group, v) }));
  sel.value = values.includes(current) ? current : "";
}

function buildFilters() {
  fillSelect($("#filter-state"), STATES, "state", S.filters.state);
  fillSelect($("#filter-type"), [...S.knownTypes], "type", S.filters.type);
  fillSelect($("#filter-severity"), SEVERITIES, "severity", S.filters.severity);
}

function onFilterChange() {
  S.filters = {
    state: $("#filter-state").value,
    type: $("#filter-type").value,
    severity: $("#filter-severity").value,
  };
  // Drop what no longer matches right away, then ask the server.
  for (const [id, inc] of S.incidents) if (!matches(inc)) S.incidents.delete(id);
  renderList();
  loadList();
}

function matches(inc) {
  const f = S.filters;
  if (f.state && inc.state !== f.state) return false;
  if (f.type && inc.type !== f.type) return false;
  if (f.severity && inc.severity !== f.severity) return false;
  // A department user only sees incidents dispatched to their department, even if a push says otherwise.
  if (S.user && S.user.role === "department") {
    const deps = Array.isArray(inc.departments) ? inc.departments : [];
    if (!deps.includes(S.user.department)) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------
// Incident list
// ---------------------------------------------------------------------------
function stripIncident(inc) {
  const { timeline, ...rest } = inc;
  return rest;
}

/** true if a is strictly newer than b */
function isNewer(a, b) {
  return timeOf(a.updated_at) > timeOf(b.updated_at);
}

async function loadList() {
  if (!S.token) return;
  const seq = ++S.listSeq;
  const started = Date.now();
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(S.filters)) if (v) qs.set(k, v);
  qs.set("limit", String(LIST_LIMIT));
  let res;
  try {
    res = await api(`/api/incidents?${qs}`);
  } catch (err) {
    if (isAbort(err) || seq !== S.listSeq) return;
    S.listError = errorMessage(err, "error.load_list");
    if (err instanceof ApiError && err.status !== 401) S.listError.key = "error.load_list";
    renderList();
    return;
  }
  if (seq !== S.listSeq) return;
  const items = res && Array.isArray(res.items) ? res.items : [];
  const next = new Map();
  for (const raw of items) {
    if (!raw || !raw.id || !matches(raw)) continue;
    if (raw.type) S.knownTypes.add(raw.type);
    const old = S.incidents.get(raw.id);
    next.set(raw.id, old && isNewer(old, raw) ? old : { ...stripIncident(raw), _rx: started });
  }
  // Keep pushes that arrived while the request was in flight.
  for (const [id, old] of S.incidents) {
    if (!next.has(id) && old._rx > started && matches(old)) next.set(id, old);
  }
  S.incidents = next;
  S.listLoaded = true;
  S.listError = null;
  renderList();
}

function sortedIncidents() {
  return [...S.incidents.values()].sort(
    (a, b) => timeOf(b.created_at) - timeOf(a.created_at) || String(b.id).localeCompare(String(a.id)),
  );
}

function renderList() {
  const ul = $("#incident-list");
  const focusedId = document.activeElement && document.activeElement.closest
    ? document.activeElement.closest("li.incident")?.dataset.id : null;
  const rows = sortedIncidents().slice(0, MAX_ROWS).map(renderRow);
  ul.replaceChildren(...rows);
  if (focusedId) ul.querySelector(`li.incident[data-id="${CSS.escape(focusedId)}"]`)?.focus();
  renderListMeta();
}

function renderListMeta() {
  const n = S.incidents.size;
  $("#list-count").textContent = t("list.count", { n });
  const empty = $("#list-empty");
  empty.textContent = S.listLoaded ? t("list.empty") : t("list.loading");
  show(empty, n === 0);
  renderError($("#list-error"), S.listError);
}

function renderRow(inc) {
  const sev = inc.severity || "blue";
  const where = [inc.camera_name || inc.camera_id, inc.grid_name || inc.grid_id].filter(Boolean);
  const assigned = Array.isArray(inc.departments) && inc.departments.length
    ? inc.departments.map(deptName).join(getLang() === "en" ? ", " : "、") : null;
  const li = h("li", {
    class: `incident sev-${sev}${inc.id === S.selectedId ? " selected" : ""}`,
    dataset: { id: inc.id, state: inc.state || "", severity: sev, type: inc.type || "" },
    tabindex: "0",
    role: "button",
    "aria-pressed": inc.id === S.selectedId ? "true" : "false",
  },
  h("span", { class: "sev-stripe", "aria-hidden": "true" }),
  h("div", { class: "row-main" },
    h("div", { class: "row-top" },
      h("span", { class: "row-type", text: label("type", inc.type) }),
      stateBadge(inc.state),
    ),
    h("div", { class: "row-meta" },
      where.map((w, i) => [i ? h("span", { class: "sep", text: "·" }) : null, h("span", { text: w })]),
    ),
    assigned ? h("div", { class: "row-dept", text: `→ ${assigned}` }) : null,
  ),
  h("div", { class: "row-side" },
    h("time", { class: "row-time", datetime: inc.created_at || "", text: fmtShort(inc.created_at) }),
    h("span", { class: "row-age", dataset: { at: inc.created_at || "" }, text: fmtAge(inc.created_at) }),
    h("span", { class: `sev-chip sev-${sev}`, text: label("severity", sev) }),
  ));
  return li;
}

function stateBadge(state) {
  return h("span", { class: `badge state-${state || "unknown"}`, dataset: { state: state || "" }, text: label("state", state) });
}

/** Apply a pushed (or returned) incident to the list, re-rendering only its row. */
function upsertIncident(raw, { isNew = false } = {}) {
  if (!raw || !raw.id) return;
  if (raw.type && !S.knownTypes.has(raw.type)) {
    S.knownTypes.add(raw.type);
    buildFilters();
  }
  const old = S.incidents.get(raw.id);
  if (old && isNewer(old, raw)) return;
  const inc = { ...stripIncident(raw), _rx: Date.now() };
  const ul = $("#incident-list");
  const row = ul.querySelector(`li.incident[data-id="${CSS.escape(inc.id)}"]`);
  if (!matches(inc)) {
    S.incidents.delete(inc.id);
    row?.remove();
    renderListMeta();
    return;
  }
  S.incidents.set(inc.id, inc);
  const fresh = renderRow(inc);
  if (row) {
    const hadFocus = document.activeElement === row;
    row.replaceWith(fresh);
    if (old && old.state !== inc.state) flash(fresh, "bump");
    if (hadFocus) fresh.focus();
  } else {
    // Insert by created_at (newest first): normally the top.
    const created = timeOf(inc.created_at);
    let before = null;
    for (const li of ul.children) {
      const other = S.incidents.get(li.dataset.id);
      if (!other || timeOf(other.created_at) <= created) { before = li; break; }
    }
    ul.insertBefore(fresh, before);
    if (isNew || !old) flash(fresh, "flash");
    while (ul.children.length > MAX_ROWS) ul.lastElementChild.remove();
  }
  renderListMeta();
}

function flash(el, cls) {
  el.classList.add(cls);
  el.addEventListener("animationend", () => el.classList.remove(cls), { once: true });
  // Safety net if animations are disabled (prefers-reduced-motion).
  setTimeout(() => el.classList.remove(cls), 4000);
}

function onListClick(ev) {
  const li = ev.target.closest("li.incident");
  if (li) selectIncident(li.dataset.id);
}
function onListKey(ev) {
  const li = ev.target.closest("li.incident");
  if (!li) return;
  if (ev.key === "Enter" || ev.key === " ") {
    ev.preventDefault();
    selectIncident(li.dataset.id);
  } else if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
    ev.preventDefault();
    const next = ev.key === "ArrowDown" ? li.nextElementSibling : li.previousElementSibling;
    if (next) { next.focus(); selectIncident(next.dataset.id); }
  }
}

// ---------------------------------------------------------------------------
// Detail panel
// ---------------------------------------------------------------------------
function hashIncident() {
  const m = /^#incident=(.+)$/.exec(location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

function selectIncident(id, { updateHash = true } = {}) {
  if (!id) return;
  if (id !== S.selectedId) {
    S.selectedId = id;
    S.detail = null;
    S.detailError = null;
    S.action = { busy: null, error: null, info: null };
    resetSnapshot();
    S.pick = null;
    S.severityPick = null;
    const note = $("#action-note");
    if (note) note.value = "";
    const photo = $("#action-photo");
    if (photo) photo.value = "";
  }
  for (const li of $("#incident-list").querySelectorAll("li.incident")) {
    const on = li.dataset.id === id;
    li.classList.toggle("selected", on);
    li.setAttribute("aria-pressed", on ? "true" : "false");
  }
  if (updateHash) history.replaceState(null, "", `#incident=${encodeURIComponent(id)}`);
  renderDetail();
  refreshDetail();
}

function closeDetail({ keepHash = false } = {}) {
  S.selectedId = null;
  S.detail = null;
  S.detailError = null;
  S.action = { busy: null, error: null, info: null };
  resetSnapshot();
  for (const li of document.querySelectorAll("#incident-list li.incident.selected")) {
    li.classList.remove("selected");
    li.setAttribute("aria-pressed", "false");
  }
  if (!keepHash && location.hash) history.replaceState(null, "", location.pathname + location.search);
  renderDetail();
}

function scheduleDetailRefresh() {
  clearTimeout(S.detailTimer);
  S.detailTimer = setTimeout(refreshDetail, 150);
}

async function refreshDetail() {
  const id = S.selectedId;
  if (!id || !S.token) return;
  const seq = ++S.detailSeq;
  try {
    const inc = await api(`/api/incidents/${encodeURIComponent(id)}`);
    if (seq !== S.detailSeq || id !== S.selectedId) return;
    S.detail = inc;
    S.detailError = null;
    if (S.incidents.has(id) || matches(inc)) upsertIncident(inc);
  } catch (err) {
    if (isAbort(err) || seq !== S.detailSeq || id !== S.selectedId) return;
    S.detailError = errorMessage(err, "error.load_detail");
  }
  renderDetail();
}

/** The incident to display: full detail if loaded, else what the list knows. */
function currentIncident() {
  if (!S.selectedId) return null;
  const listed = S.incidents.get(S.selectedId);
  if (S.detail && S.detail.id === S.selectedId) {
    // A push may be newer than the last detail fetch; show its fields, keep the fetched timeline.
    if (listed && isNewer(listed, S.detail)) return { ...listed, timeline: S.detail.timeline };
    return S.detail;
  }
  return listed || null;
}

function renderDetail() {
  const pane = $("#incident-detail");
  const body = $("#detail-body");
  const inc = currentIncident();
  if (!S.selectedId) {
    delete pane.dataset.id;
    delete pane.dataset.state;
    pane.classList.remove("open");
    delete body.dataset.for;
    body.replaceChildren();
    show(body, false);
    show($("#detail-placeholder"), true);
    return;
  }
  pane.dataset.id = S.selectedId;
  pane.classList.add("open");
  if (inc && inc.state) pane.dataset.state = inc.state;
  show($("#detail-placeholder"), false);
  show(body, true);

  if (body.dataset.for !== S.selectedId) buildDetailSkeleton(body);

  const head = $("#detail-head-info", body);
  head.replaceChildren();
  if (inc) {
    head.append(
      h("span", { class: `sev-chip sev-${inc.severity || "blue"}`, text: label("severity", inc.severity) }),
      h("h2", { class: "detail-title", text: label("type", inc.type) }),
      stateBadge(inc.state),
      h("span", { class: "detail-id muted", text: inc.id }),
    );
  } else {
    head.append(h("h2", { class: "detail-title", text: S.detailError ? "" : t("detail.loading") }));
  }
  renderError($("#detail-error", body), S.detailError);

  const grid = $(".detail-grid", body);
  show(grid, !!inc);
  if (!inc) return;
  show($(".snapshot-card"), !!inc.snapshot_url || inc.source !== "manual");
  renderSnapshot(inc);
  renderFields(inc);
  renderActions(inc);
  renderEvidence(inc);
  renderTimeline(inc);
}

function buildDetailSkeleton(body) {
  body.dataset.for = S.selectedId;
  body.replaceChildren(
    h("div", { class: "detail-head" },
      h("div", { id: "detail-head-info", class: "detail-head-info" }),
      h("button", {
        id: "detail-close", type: "button", class: "btn btn-ghost btn-small",
        text: t("detail.close"), "data-i18n": "detail.close", onclick: () => closeDetail(),
      }),
    ),
    h("p", { id: "detail-error", class: "error", role: "alert", hidden: true }),
    h("div", { class: "detail-grid" },
      h("div", { class: "detail-col detail-col-main" },
        h("section", { class: "card snapshot-card" },
          h("h3", { "data-i18n": "detail.snapshot", text: t("detail.snapshot") }),
          h("div", { id: "snapshot", class: "snap-wrap" },
            h("img", { id: "snapshot-img", alt: "", hidden: true, draggable: "false" }),
            h("div", { class: "snap-boxes" }),
            h("div", { class: "snap-status muted" }),
          ),
        ),
        evidenceCard(),
        h("section", { class: "card" },
          h("h3", { "data-i18n": "detail.fields", text: t("detail.fields") }),
          h("dl", { id: "detail-fields", class: "fields" }),
        ),
        h("section", { id: "escalations-card", class: "card", hidden: true },
          h("h3", { "data-i18n": "detail.escalations", text: t("detail.escalations") }),
          h("ol", { id: "escalations", class: "escalations" }),
        ),
        h("section", { id: "photos-card", class: "card", hidden: true },
          h("h3", { "data-i18n": "detail.photos", text: t("detail.photos") }),
          h("div", { id: "photos", class: "photos" }),
        ),
      ),
      h("div", { class: "detail-col detail-col-side" },
        h("section", { class: "card actions-card" },
          h("h3", { "data-i18n": "detail.actions", text: t("detail.actions") }),
          h("div", { id: "detail-actions", class: "actions" }),
          h("label", { class: "field note-field" },
            h("span", { "data-i18n": "detail.note", text: t("detail.note") }),
            h("textarea", {
              id: "action-note", rows: "2", maxlength: "500",
              "data-i18n-placeholder": "detail.note.placeholder", placeholder: t("detail.note.placeholder"),
            }),
          ),
          h("label", { class: "field photo-field", hidden: true },
            h("span", { "data-i18n": "detail.photo", text: t("detail.photo") }),
            h("input", { id: "action-photo", type: "file", accept: "image/jpeg,image/png,image/webp", multiple: true }),
          ),
          h("p", { id: "action-error", class: "error", role: "alert", hidden: true }),
          h("p", { id: "action-info", class: "info", role: "status", hidden: true }),
        ),
        h("section", { class: "card timeline-card" },
          h("h3", { "data-i18n": "detail.timeline", text: t("detail.timeline") }),
          h("ol", { id: "timeline", class: "timeline" }),
        ),
      ),
    ),
  );
  $("#snapshot-img", body).addEventListener("load", () => {
    const inc = currentIncident();
    if (inc) renderBoxes(inc);
  });
}

function countdown(iso) {
  if (!iso) return null;
  const el = h("span", { class: "countdown", dataset: { due: iso }, title: fmtDateTime(iso) });
  updateCountdown(el);
  return el;
}

function updateCountdown(el) {
  const due = timeOf(el.dataset.due);
  const left = Math.round((due - Date.now()) / 1000);
  const a = Math.abs(left);
  const hms = a >= 86400 ? t("age.day", { n: Math.floor(a / 86400) }).replace(/ ?(ago|前)$/, "")
    : `${a >= 3600 ? `${Math.floor(a / 3600)}:` : ""}${pad(Math.floor((a % 3600) / 60))}:${pad(a % 60)}`;
  el.textContent = left >= 0 ? t("due.left", { t: hms }) : t("due.over", { t: hms });
  el.classList.toggle("overdue", left < 0);
  el.dataset.overdue = left < 0 ? "true" : "false";
}

function renderFields(inc) {
  const dl = $("#detail-fields");
  const manual = inc.source === "manual";
  const pos = Array.isArray(inc.position) ? `${Number(inc.position[0]).toFixed(6)}, ${Number(inc.position[1]).toFixed(6)}` : null;
  const rows = [
    ["detail.id", inc.id],
    ["detail.type", label("type", inc.type)],
    ["detail.state", stateBadge(inc.state)],
    ["detail.severity", [h("span", { class: `sev-chip sev-${inc.severity || "blue"}`, text: label("severity", inc.severity) }),
      inc.severity_reason ? h("span", { class: "muted", text: ` ${inc.severity_reason}` }) : null]],
    ["detail.source", label("source", inc.source || "detector")],
    manual ? ["detail.reporter", inc.reporter] : null,
    manual || inc.description ? ["detail.description", inc.description] : null,
    inc.reports > 1 ? ["detail.reports", String(inc.reports)] : null,
    inc.people ? ["detail.people", String(inc.people)] : null,
    manual ? null : ["detail.camera", [inc.camera_name, inc.camera_id && inc.camera_name ? `(${inc.camera_id})` : inc.camera_id].filter(Boolean).join(" ")],
    ["detail.grid", [inc.grid_name, inc.grid_id && inc.grid_name ? `(${inc.grid_id})` : inc.grid_id].filter(Boolean).join(" ")],
    ["detail.queue", inc.queue_grid_name || inc.queue_grid],
    pos ? ["detail.position", pos] : null,
    manual ? null : ["detail.confidence", fmtConfidence(inc.confidence)],
    manual ? null : ["detail.track", inc.track_id ?? "—"],
    ["detail.started_at", fmtDateTime(inc.started_at)],
    manual ? null : ["detail.last_seen_at", fmtDateTime(inc.last_seen_at)],
    ["detail.created_at", fmtDateTime(inc.created_at)],
    ["detail.updated_at", fmtDateTime(inc.updated_at)],
    ["detail.suggested", [deptList(inc.suggested_departments),
      inc.suggested_unit ? ` + ${unitName(inc.suggested_unit)}` : ""]],
    ["detail.assigned", deptList(inc.departments)],
    ["detail.lead", inc.lead_department ? deptName(inc.lead_department) : t("detail.none")],
    ["detail.units", Array.isArray(inc.units) && inc.units.length ? inc.units.map(unitName).join(getLang() === "en" ? ", " : "、") : t("detail.none")],
    inc.ack_due ? ["detail.ack_due", countdown(inc.ack_due)] : null,
    inc.resolve_due ? ["detail.resolve_due", countdown(inc.resolve_due)] : null,
    inc.open_challenges ? ["detail.challenges", h("span", { class: "challenge-count", text: String(inc.open_challenges) })] : null,
    inc.last_note ? ["detail.last_note", inc.last_note] : null,
  ].filter(Boolean);
  dl.replaceChildren(...rows.map(([k, v]) => h("div", { class: "field-row", dataset: { field: k.slice(7) } },
    h("dt", { text: t(k) }),
    h("dd", null, v === null || v === undefined || v === "" ? "—" : v),
  )));
  renderEscalations(inc);
  renderPhotos(inc);
}

function renderEscalations(inc) {
  const list = Array.isArray(inc.escalations) ? inc.escalations : [];
  show($("#escalations-card"), list.length > 0);
  $("#escalations").replaceChildren(...list.map((e) => h("li", { class: "escalation" },
    h("span", { text: `${e.from_name || e.from || "—"} → ${e.to_name || e.to || "—"}` }),
    h("span", { class: "muted", text: ` ${fmtShort(e.at)} ${e.by || ""}` }),
    e.reason ? h("div", { class: "muted small", text: e.reason }) : null,
  )));
}

function renderPhotos(inc) {
  const ids = Array.isArray(inc.photos) ? inc.photos : [];
  show($("#photos-card"), ids.length > 0);
  const box = $("#photos");
  const have = [...box.children].map((a) => a.dataset.photo).join(",");
  if (have === ids.join(",")) return;
  box.replaceChildren(...ids.map((pid) => {
    const a = h("a", { class: "thumb", dataset: { photo: pid }, target: "_blank", rel: "noopener" },
      h("img", { alt: t("detail.photo"), loading: "lazy" }));
    loadPhoto(inc.id, pid, a);
    return a;
  }));
}

async function loadPhoto(incId, pid, a) {
  const key = `${incId}/${pid}`;
  let url = S.photos.get(key);
  if (!url) {
    try {
      const res = await api(`/api/incidents/${encodeURIComponent(incId)}/photos/${encodeURIComponent(pid)}`, { raw: true });
      url = URL.createObjectURL(await res.blob());
      S.photos.set(key, url);
    } catch (err) {
      a.classList.add("broken");
      return;
    }
  }
  a.href = url;
  a.querySelector("img").src = url;
  a.dataset.loaded = "true";
}

// --- snapshot ---------------------------------------------------------------
function resetSnapshot() {
  S.snapshot.seq++;
  if (S.snapshot.url) URL.revokeObjectURL(S.snapshot.url);
  S.snapshot = { key: null, url: null, seq: S.snapshot.seq, status: "none" };
}

function frameSize(inc) {
  const fs = inc.frame_size;
  if (Array.isArray(fs) && fs[0] > 0 && fs[1] > 0) return [fs[0], fs[1]];
  const img = $("#snapshot-img");
  if (img && img.naturalWidth > 0) return [img.naturalWidth, img.naturalHeight];
  return null;
}

function renderSnapshot(inc) {
  const wrap = $("#snapshot");
  const img = $("#snapshot-img");
  const fs = frameSize(inc) || [16, 9];
  wrap.style.aspectRatio = `${fs[0]} / ${fs[1]}`;
  wrap.style.setProperty("--snap-ar", String(fs[0] / fs[1]));

  const key = inc.snapshot_url ? `${inc.snapshot_url}|${inc.last_seen_at || inc.updated_at || ""}` : null;
  if (key !== S.snapshot.key) loadSnapshot(inc, key);

  const status = $(".snap-status", wrap);
  const st = S.snapshot.status;
  status.textContent = st === "loading" && !S.snapshot.url ? t("detail.snapshot.loading")
    : st === "error" ? t("error.snapshot")
    : st === "none" || !S.snapshot.url ? t("detail.snapshot.none") : "";
  show(status, !!status.textContent);
  if (S.snapshot.url) {
    if (img.getAttribute("src") !== S.snapshot.url) img.src = S.snapshot.url;
    show(img, true);
  } else {
    img.removeAttribute("src");
    show(img, false);
  }
  renderBoxes(inc);
}

async function loadSnapshot(inc, key) {
  S.snapshot.key = key;
  const seq = ++S.snapshot.seq;
  if (!key) { S.snapshot.status = "none"; return; }
  S.snapshot.status = "loading";
  const id = inc.id;
  try {
    const res = await api(inc.snapshot_url, { raw: true });
    const blob = await res.blob();
    if (seq !== S.snapshot.seq || id !== S.selectedId) return;
    const old = S.snapshot.url;
    S.snapshot.url = URL.createObjectURL(blob);
    S.snapshot.status = "ok";
    // Revoke the previous image once the new one is displayed (avoids a blank flash).
    if (old) setTimeout(() => URL.revokeObjectURL(old), 2000);
  } catch (err) {
    if (isAbort(err) || seq !== S.snapshot.seq) return;
    S.snapshot.status = err instanceof ApiError && err.status === 404 ? "none" : "error";
  }
  if (id === S.selectedId) {
    const cur = currentIncident();
    if (cur) renderSnapshot(cur);
  }
}

function renderBoxes(inc) {
  const layer = $("#snapshot .snap-boxes");
  if (!layer) return;
  layer.replaceChildren();
  const fs = frameSize(inc);
  if (!fs || !S.snapshot.url || !Array.isArray(inc.boxes)) return;
  const [w, hgt] = fs;
  const sev = inc.severity || "blue";
  inc.boxes.forEach((b, i) => {
    if (!Array.isArray(b) || b.length < 4) return;
    const [x1, y1, x2, y2] = b.map(Number);
    const left = Math.max(0, Math.min(x1, x2)) / w * 100;
    const top = Math.max(0, Math.min(y1, y2)) / hgt * 100;
    const right = Math.min(w, Math.max(x1, x2)) / w * 100;
    const bottom = Math.min(hgt, Math.max(y1, y2)) / hgt * 100;
    if (!(right > left && bottom > top)) return;
    layer.append(h("div", {
      class: `snap-box sev-${sev}${top < 6 ? " label-inside" : ""}`,
      dataset: { index: String(i) },
      style: { left: `${left}%`, top: `${top}%`, width: `${right - left}%`, height: `${bottom - top}%` },
    }, i === 0 ? h("span", {
      class: "snap-box-label",
      text: `${label("type", inc.type)} ${fmtConfidence(inc.confidence)}`,
    }) : null));
  });
}

// --- actions ----------------------------------------------------------------
function isMine(inc) {
  const u = S.user;
  if (!u) return false;
  if (u.role === "department") return !!u.department && (inc.departments || []).includes(u.department);
  if (u.role === "patrol") return !!u.unit && (inc.units || []).includes(u.unit);
  return false;
}

/** Whether the user's role and the incident's state allow `action` (the server decides). */
function may(action, inc) {
  if (!S.user || !inc || !(FROM[action] || []).includes(inc.state)) return false;
  const role = S.user.role;
  if (role === "admin") return true;
  if (!ROLE_ACTIONS[role]?.has(action)) return false;
  if (ASSIGNEE_ACTIONS.has(action) || (role === "department" && action === "escalate")) return isMine(inc);
  return true;
}

function canJudge(inc) {
  return !!S.user && JUDGES.has(S.user.role) && JUDGEABLE_STATES.has(inc.state)
    && inc.source !== "manual";
}

function unitName(id) {
  const u = S.unitById.get(id);
  return u ? `${u.name}` : String(id);
}

/** "民政局（牵头）、急救中心 + 巡逻一号车" */
function whoText(deps, lead, units) {
  const sep = getLang() === "en" ? ", " : "、";
  const parts = (deps || []).map((d) => (d === lead ? `${deptName(d)}${t("dispatch.lead_mark")}` : deptName(d)));
  const us = (units || []).map(unitName);
  return [parts.join(sep), us.join(sep)].filter(Boolean).join(" + ");
}

function suggestion(inc) {
  const deps = (Array.isArray(inc.suggested_departments) ? inc.suggested_departments : []).filter(Boolean);
  const lead = inc.lead_department && deps.includes(inc.lead_department) ? inc.lead_department : deps[0] || null;
  const units = inc.suggested_unit ? [inc.suggested_unit] : [];
  return { deps, lead, units };
}

/** The "dispatch to others" picker keeps its choices in S (the panel is re-rendered on pushes). */
function pickFor(inc) {
  if (!S.pick || S.pick.id !== inc.id) {
    const sug = suggestion(inc);
    S.pick = { id: inc.id, open: false, deps: new Set(sug.deps), lead: sug.lead, units: new Set(sug.units) };
  }
  return S.pick;
}

function btn(id, kind, text, opts = {}) {
  const busy = S.action.busy;
  return h("button", {
    id, type: "button", class: `btn ${opts.cls || "btn-secondary"}`,
    dataset: { action: kind }, disabled: !!busy,
    text: busy === kind ? t("action.working") : text,
    onclick: opts.onclick || (() => runAction(kind)),
  });
}

function renderJudge(box, busy) {
  // Confirm (a real event) or dismiss (a false alarm, saying what it really was): both keep
  // the frame as a labelled example for training.
  // The choice lives in S (the panel is rebuilt on every change, the element with it).
  const sel = h("select", {
    id: "dismiss-label", name: "label", disabled: !!busy,
    onchange: (e) => { S.dismissLabel = e.target.value; },
  }, DISMISS_LABELS.map((l) => h("option", { value: l, text: t(`dismiss.${l}`) })));
  sel.value = DISMISS_LABELS.includes(S.dismissLabel) ? S.dismissLabel : "not_person";
  box.append(h("div", { class: "action-row action-judge" },
    btn("confirm-btn", "confirm", t("action.confirm")),
    h("label", { class: "inline-label", for: "dismiss-label", text: t("action.dismiss.label") }),
    sel,
    btn("dismiss-btn", "dismiss", t("action.dismiss")),
  ));
}

function renderDispatch(box, inc, busy) {
  const sug = suggestion(inc);
  if (sug.deps.length || sug.units.length) {
    box.append(h("div", { class: "action-row action-dispatch" },
      h("button", {
        id: "dispatch-btn", type: "button", class: "btn btn-primary btn-large",
        dataset: { action: "dispatch" }, disabled: !!busy,
        text: busy === "dispatch" ? t("action.working")
          : t("action.dispatch_suggested", { who: whoText(sug.deps, sug.lead, sug.units) }),
        onclick: () => runAction("dispatch"),
      }),
    ));
    if (!sug.units.length) box.append(h("p", { id: "dispatch-no-unit", class: "muted small", text: t("dispatch.no_unit") }));
  } else {
    box.append(h("p", { class: "muted small", text: t("dispatch.no_suggestion") }));
  }

  // Several departments (one leading) and patrol units.
  const pick = pickFor(inc);
  const handles = (id) => !!S.deptById.get(id)?.handles?.includes(inc.type);
  let deps = S.departments.map((d) => d.id);
  for (const s of sug.deps) if (!deps.includes(s)) deps.push(s);
  deps = [...deps.filter(handles), ...deps.filter((d) => !handles(d))];
  const chosen = deps.filter((d) => pick.deps.has(d));
  if (!chosen.includes(pick.lead)) pick.lead = chosen[0] || null;
  const details = h("details", {
    id: "dispatch-other", class: "dispatch-other", open: pick.open,
    ontoggle: (e) => { const was = pick.open; pick.open = e.target.open; if (pick.open && !was) loadUnits(); },
  },
  h("summary", { text: t("action.dispatch_other.label") }),
  h("fieldset", { class: "pick pick-deps" },
    h("legend", { text: t("dispatch.departments") }),
    deps.map((d) => h("label", { class: "check" },
      h("input", {
        type: "checkbox", name: "dispatch-dept", value: d, checked: pick.deps.has(d), disabled: !!busy,
        onchange: (e) => { if (e.target.checked) pick.deps.add(d); else pick.deps.delete(d); rerenderActions(); },
      }),
      h("span", { text: deptName(d) + (handles(d) ? t("dept.handles") : "") }),
    )),
  ),
  h("label", { class: "filter" },
    h("span", { text: t("dispatch.lead") }),
    (() => {
      const sel = h("select", {
        id: "dispatch-lead", name: "lead", disabled: !!busy || !chosen.length,
        onchange: (e) => { pick.lead = e.target.value || null; },
      }, chosen.map((d) => h("option", { value: d, text: deptName(d) })));
      if (pick.lead) sel.value = pick.lead;
      return sel;
    })(),
  ),
  h("fieldset", { class: "pick pick-units" },
    h("legend", { text: t("dispatch.units") }),
    S.units.length ? S.units.map((u) => h("label", { class: "check" },
      h("input", {
        type: "checkbox", name: "dispatch-unit", value: u.id, checked: pick.units.has(u.id), disabled: !!busy,
        onchange: (e) => { if (e.target.checked) pick.units.add(u.id); else pick.units.delete(u.id); },
      }),
      h("span", { text: `${u.name}${u.online ? "" : t("dispatch.unit_offline")}` }),
      (u.cases || []).filter((c) => c !== inc.id).length
        ? h("span", { class: "unit-busy", dataset: { busy: u.id },
          text: t("dispatch.unit_busy", { n: u.cases.filter((c) => c !== inc.id).length }) })
        : null,
    )) : h("span", { class: "muted small", text: t("dispatch.no_units") }),
  ),
  h("div", { class: "action-row" },
    h("button", {
      id: "dispatch-other-btn", type: "button", class: "btn btn-secondary",
      disabled: !!busy || (!pick.deps.size && !pick.units.size),
      text: busy === "dispatch-other" ? t("action.working") : t("action.dispatch_other"),
      onclick: () => runAction("dispatch-other"),
    }),
  ));
  box.append(details);
}

function renderActions(inc) {
  const box = $("#detail-actions");
  const busy = S.action.busy;
  box.replaceChildren();

  if (may("dispatch", inc)) renderDispatch(box, inc, busy);
  if (canJudge(inc)) renderJudge(box, busy);

  // The assigned department or patrol unit works the case.
  const work = h("div", { class: "action-row action-work" });
  if (may("accept", inc)) work.append(btn("accept-btn", "accept", t("action.accept"), { cls: "btn-primary btn-large" }));
  if (may("en_route", inc)) work.append(btn("en-route-btn", "en_route", t("action.en_route")));
  if (may("on_scene", inc)) work.append(btn("on-scene-btn", "on_scene", t("action.on_scene")));
  if (may("feedback", inc)) work.append(btn("feedback-btn", "feedback", t("action.feedback")));
  if (may("resolve", inc)) work.append(btn("resolve-btn", "resolve", t("action.resolve"), { cls: "btn-primary" }));
  if (work.children.length) box.append(work);

  // Follow-up by the command center.
  const more = h("div", { class: "action-row action-more" });
  if (may("close", inc)) more.append(btn("close-btn", "close", t("action.close"), { cls: "btn-primary" }));
  if (may("reopen", inc)) more.append(btn("reopen-btn", "reopen", t("action.reopen")));
  if (may("escalate", inc)) more.append(btn("escalate-btn", "escalate", t("action.escalate")));
  if (may("challenge", inc)) more.append(btn("challenge-btn", "challenge", t("action.challenge")));
  if (more.children.length) box.append(more);

  if (may("severity", inc)) {
    const sel = h("select", {
      id: "severity-select", name: "severity", disabled: !!busy,
      onchange: (e) => { S.severityPick = e.target.value; },
    }, SEVERITIES.map((s) => h("option", { value: s, text: label("severity", s) })));
    sel.value = SEVERITIES.includes(S.severityPick) ? S.severityPick : inc.severity || "blue";
    box.append(h("div", { class: "action-row action-severity" },
      h("label", { class: "inline-label", for: "severity-select", text: t("action.severity.label") }),
      sel,
      btn("severity-btn", "severity", t("action.severity")),
    ));
  }
  if (may("comment", inc)) {
    box.append(h("div", { class: "action-row" }, btn("comment-btn", "comment", t("action.comment"), { cls: "btn-ghost" })));
  }

  const any = box.children.length > 0;
  if (!any) box.append(h("p", { class: "muted", text: t("detail.no_actions") }));
  show($(".note-field"), any);
  show($(".photo-field"), may("feedback", inc) || may("resolve", inc));
  const note = $("#action-note");
  if (note) {
    note.disabled = !!busy;
    const hintKey = may("resolve", inc) || may("feedback", inc) ? "detail.note.placeholder.work"
      : JUDGES.has(S.user?.role) ? "detail.note.placeholder.judge" : "detail.note.placeholder";
    note.dataset.i18nPlaceholder = hintKey;
    note.placeholder = t(hintKey);
  }
  renderError($("#action-error"), S.action.error);
  const info = $("#action-info");
  info.textContent = S.action.info || "";
  show(info, !!S.action.info);
}

async function uploadPhotos(id, files) {
  const ids = [];
  for (const f of files) {
    const fd = new FormData();
    fd.append("photo", f, f.name || "photo.jpg");
    const res = await api(`/api/incidents/${encodeURIComponent(id)}/photos`, { method: "POST", multipart: fd });
    ids.push(res.id);
  }
  return ids;
}

async function runAction(kind) {
  const id = S.selectedId;
  if (!id || S.action.busy) return;
  const note = ($("#action-note")?.value || "").trim();
  const action = kind === "dispatch-other" ? "dispatch" : kind;
  if (NEEDS_TEXT.has(action) && !note) {
    S.action = { busy: null, error: { key: `error.need_text.${action}` }, info: null };
    rerenderActions();
    $("#action-note")?.focus();
    return;
  }
  const lab = DISMISS_LABELS.includes(S.dismissLabel) ? S.dismissLabel : "not_person";
  const photoInput = $("#action-photo");
  S.action = { busy: kind, error: null, info: null };
  rerenderActions();
  try {
    let body = note ? { note } : {};
    if (kind === "dispatch-other") {
      const p = S.pick;
      body = { departments: [...p.deps], units: [...p.units] };
      if (p.lead && p.deps.has(p.lead)) body.lead = p.lead;
      if (note) body.note = note;
    } else if (kind === "dismiss") {
      body = { reason: note || t(`dismiss.${lab}`), label: lab };
    } else if (kind === "reopen" || kind === "escalate" || kind === "challenge") {
      body = { reason: note };
    } else if (kind === "severity") {
      const cur = currentIncident();
      body = { severity: $("#severity-select")?.value || S.severityPick || cur?.severity, reason: note };
    } else if (kind === "comment") {
      body = { text: note };
    } else if (kind === "feedback" || kind === "resolve") {
      const files = photoInput && photoInput.files ? [...photoInput.files] : [];
      const photos = files.length ? await uploadPhotos(id, files) : [];
      body = kind === "feedback" ? { text: note, photos } : { result: note, photos };
    }
    const updated = await api(`/api/incidents/${encodeURIComponent(id)}/${action}`, { method: "POST", json: body });
    if (id !== S.selectedId) return;
    const who = action === "dispatch" && updated
      ? whoText(updated.departments, updated.lead_department, updated.units) : "";
    S.action = {
      busy: null, error: null,
      info: action === "dispatch" ? t("action.done.dispatch", { dept: who }) : t(`action.done.${action}`),
    };
    const n = $("#action-note");
    if (n) n.value = "";
    if (photoInput) photoInput.value = "";
    if (kind === "severity") S.severityPick = null;
    if (kind === "dispatch-other") S.pick = null;
    if (updated && updated.id) {
      if (S.detail && S.detail.id === id) S.detail = { ...updated, timeline: S.detail.timeline };
      upsertIncident(updated);
    }
    renderDetail();
    refreshDetail();
  } catch (err) {
    if (isAbort(err) || id !== S.selectedId) return;
    S.action = { busy: null, error: errorMessage(err), info: null };
    rerenderActions();
    // The conflict may mean someone else acted: show the current truth.
    if (err instanceof ApiError && (err.status === 409 || err.status === 404)) refreshDetail();
  } finally {
    if (S.action.busy && id === S.selectedId) {
      S.action.busy = null;
      rerenderActions();
    }
  }
}

function rerenderActions() {
  const inc = currentIncident();
  if (inc && $("#detail-actions")) renderActions(inc);
}

// --- timeline ----------------------------------------------------------------
function renderTimeline(inc) {
  const ol = $("#timeline");
  if (!Array.isArray(inc.timeline)) {
    ol.replaceChildren(h("li", { class: "muted timeline-empty", text: t("detail.loading") }));
    return;
  }
  const entries = [...inc.timeline].sort((a, b) => (a.seq ?? 0) - (b.seq ?? 0) || timeOf(a.at) - timeOf(b.at));
  if (!entries.length) {
    ol.replaceChildren(h("li", { class: "muted timeline-empty", text: t("detail.timeline.empty") }));
    return;
  }
  ol.replaceChildren(...entries.map((e) => {
    const actor = e.actor === "detector" || e.actor === "system" ? t(`tl.actor.${e.actor}`) : (e.actor || "—");
    const change = e.to_state && e.from_state && e.from_state !== e.to_state
      ? [stateBadge(e.from_state), h("span", { class: "tl-arrow", text: "→" }), stateBadge(e.to_state)]
      : e.to_state && !e.from_state ? [stateBadge(e.to_state)] : null;
    return h("li", {
      class: "timeline-entry",
      dataset: { action: e.action || "", seq: String(e.seq ?? "") },
    },
    h("span", { class: "tl-dot", "aria-hidden": "true" }),
    h("div", { class: "tl-body" },
      h("div", { class: "tl-head" },
        h("span", { class: "tl-action", text: label("tl.action", e.action) }),
        h("span", { class: "tl-actor", text: actor }),
        h("time", { class: "tl-time", datetime: e.at || "", title: fmtDateTime(e.at), text: fmtShort(e.at) }),
      ),
      change ? h("div", { class: "tl-states" }, change) : null,
      timelineDetail(e.detail),
    ));
  }));
}

function timelineDetail(detail) {
  if (!detail || typeof detail !== "object") return null;
  const parts = [];
  for (const [k, v] of Object.entries(detail)) {
    if (v === null || v === undefined || v === "") continue;
    let text;
    if (k === "department" || k === "lead_department" || k === "lead") text = deptName(v);
    else if (k === "departments" && Array.isArray(v)) text = deptList(v);
    else if (k === "units" && Array.isArray(v)) text = v.map(unitName).join(", ");
    else if (k === "photos" && Array.isArray(v)) text = String(v.length);
    else if (k === "unit") text = unitName(v);
    else if (k === "by" && typeof v === "string" && v.startsWith("unit:")) text = unitName(v.slice(5));
    else if (k === "by" && typeof v === "string" && S.deptById.has(v)) text = deptName(v);
    else if (k === "from" || k === "sha256" || k === "photo") continue; // origin address, hashes
    else if (k === "severity") text = label("severity", v);
    else if (k === "confidence" && typeof v === "number") text = fmtConfidence(v);
    else if (k === "type") text = label("type", v);
    else if (k === "state") text = label("state", v);
    else if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") text = String(v);
    else continue; // boxes and other structures are not useful as text
    parts.push(h("span", { class: "tl-kv" },
      h("span", { class: "tl-k", text: `${t(`tl.detail.${k}`, null, k)}: ` }),
      h("span", { class: "tl-v", text })));
  }
  return parts.length ? h("div", { class: "tl-detail" }, parts) : null;
}

// --- evidence: clip, locks, export and unlock ----------------------------------
// Everyone who sees a case sees its clip (a department its own case's, as the API allows);
// the recordings around it (replay) and the evidence locks are for the command center, as
// GET /api/recordings: not for department and patrol accounts. Export and unlock: reviewer
// and admin.
const NO_RECORDINGS = new Set(["department", "patrol"]);
const EVIDENCE_ROLES = new Set(["reviewer", "admin"]);
const CLIP_RELINK_MS = 5 * 60 * 1000; // a failed clip whose link is older than this gets a new link

const mayWatch = () => !!S.user && !NO_RECORDINGS.has(S.user.role);
const mayHandleEvidence = () => !!S.user && EVIDENCE_ROLES.has(S.user.role);

/** The card's state, for the selected incident only (reset when the selection changes). */
function evidenceState(id) {
  if (!S.evidence || S.evidence.id !== id) {
    S.evidence = {
      id, clipKey: null, clipUrl: null, clipAt: 0, clipStatus: "none", clipSeq: 0,
      locksKey: null, locks: null, locksError: null, locksSeq: 0,
      busy: null, error: null, info: null, result: null,
    };
  }
  return S.evidence;
}

function evidenceCard() {
  const reasonField = (id, key) => h("label", { class: "field evidence-reason" },
    h("span", { "data-i18n": key, text: t(key) }),
    h("textarea", { id, rows: "2", maxlength: "2000", required: true }));
  return h("section", { id: "evidence-card", class: "card evidence-card", hidden: true },
    h("h3", { "data-i18n": "evidence.title", text: t("evidence.title") }),
    h("div", { id: "evidence-clip", class: "evidence-clip", dataset: { state: "none" } },
      h("video", { id: "evidence-video", controls: true, preload: "metadata", playsinline: true, hidden: true,
        onerror: onClipError }),
      h("p", { class: "evidence-clip-status muted small" })),
    h("p", { class: "evidence-replay" }, h("a", {
      id: "replay-link", class: "replay-link", target: "_blank", rel: "opener",
      "data-i18n": "detail.replay.open", text: t("detail.replay.open") })),
    h("h4", { class: "evidence-locks-title", "data-i18n": "evidence.locks", text: t("evidence.locks") }),
    h("ul", { id: "evidence-locks", class: "evidence-locks" }),
    mayHandleEvidence() ? h("div", { id: "evidence-admin", class: "evidence-admin" },
      reasonField("export-reason", "evidence.export.reason"),
      h("div", { class: "action-row" }, h("button", {
        id: "export-btn", type: "button", class: "btn btn-primary", onclick: () => runEvidence("export") })),
      reasonField("unlock-reason", "evidence.unlock.reason"),
      h("div", { class: "action-row" }, h("button", {
        id: "unlock-btn", type: "button", class: "btn btn-secondary", onclick: () => runEvidence("unlock") })),
    ) : null,
    h("p", { id: "evidence-error", class: "error", role: "alert", hidden: true }),
    h("p", { id: "evidence-info", class: "info", role: "status", hidden: true }),
    h("div", { id: "evidence-result", class: "info evidence-result", role: "status", hidden: true }),
  );
}

function renderEvidence(inc) {
  const card = $("#evidence-card");
  if (!card) return;
  show(card, true);
  const ev = evidenceState(inc.id);
  renderClip(inc, ev);
  const watch = mayWatch();
  for (const el of [$(".evidence-replay", card), $(".evidence-locks-title", card), $("#evidence-locks", card)]) {
    if (el) show(el, watch);
  }
  if (!watch) return;
  $("#replay-link").href = `/replay?incident=${encodeURIComponent(inc.id)}`;
  renderLocks(inc, ev);

  const busy = ev.busy;
  const exportBtn = $("#export-btn");
  if (exportBtn) {
    exportBtn.disabled = !!busy;
    exportBtn.textContent = busy === "export" ? t("action.working") : t("evidence.export");
    const unlockBtn = $("#unlock-btn");
    unlockBtn.disabled = !!busy;
    unlockBtn.textContent = busy === "unlock" ? t("action.working") : t("evidence.unlock");
  }
  renderError($("#evidence-error"), ev.error);
  const info = $("#evidence-info");
  info.textContent = ev.info ? t(ev.info) : "";
  show(info, !!ev.info);
  const res = $("#evidence-result");
  res.replaceChildren();
  if (ev.result) {
    const r = ev.result;
    res.dataset.bundle = r.bundle || "";
    res.dataset.fingerprint = r.fingerprint || "";
    res.dataset.file = r.file;
    res.append(
      h("div", { text: t("evidence.exported", { file: r.file }) }),
      h("div", null, t("evidence.bundle"), h("code", { class: "evidence-bundle", text: r.bundle || "—" })),
      h("div", null, t("evidence.fingerprint"), h("code", { class: "evidence-fingerprint", text: r.fingerprint || "—" })),
      h("div", null, t("evidence.verify"), h("code", { class: "evidence-verify", text: `gridhub verify ${r.file}` })),
      h("div", { class: "small", text: t("evidence.verify.hint") }),
    );
  }
  show(res, !!ev.result);
}

// The clip: a <video> cannot send the bearer token, so it plays a URL the hub signs for
// this user (GET .../clip/link); Range requests (seeking) work on it.
function renderClip(inc, ev) {
  const key = inc.clip_url ? `${inc.id}|${inc.clip_url}` : null;
  if (key !== ev.clipKey) loadClipLink(inc, ev, key);
  const box = $("#evidence-clip");
  const video = $("#evidence-video");
  const status = $(".evidence-clip-status", box);
  const st = ev.clipStatus;
  box.dataset.state = st;
  if (ev.clipUrl && video.getAttribute("src") !== ev.clipUrl) video.src = ev.clipUrl;
  if (!ev.clipUrl && video.hasAttribute("src")) { video.removeAttribute("src"); video.load(); }
  show(video, !!ev.clipUrl && st !== "error");
  status.textContent = st === "loading" ? t("evidence.clip.loading")
    : st === "error" ? t("evidence.clip.error")
    : st === "none" ? t(inc.source === "manual" || !inc.camera_id ? "evidence.clip.no_camera" : "evidence.clip.none")
    : "";
  show(status, !!status.textContent);
}

async function loadClipLink(inc, ev, key) {
  ev.clipKey = key;
  const seq = ++ev.clipSeq;
  ev.clipUrl = null;
  if (!key) { ev.clipStatus = "none"; return; }
  ev.clipStatus = "loading";
  try {
    const link = await api(`/api/incidents/${encodeURIComponent(inc.id)}/clip/link`);
    if (seq !== ev.clipSeq || ev !== S.evidence) return;
    ev.clipUrl = link.url;
    ev.clipAt = Date.now();
    ev.clipStatus = "ready";
  } catch (err) {
    if (isAbort(err) || seq !== ev.clipSeq || ev !== S.evidence) return;
    ev.clipStatus = err instanceof ApiError && err.status === 404 ? "none" : "error";
  }
  const cur = currentIncident();
  if (cur && cur.id === ev.id) renderEvidence(cur);
}

function onClipError() {
  const ev = S.evidence;
  const video = $("#evidence-video");
  if (!ev || !ev.clipUrl || !video || !video.getAttribute("src")) return;
  if (Date.now() - ev.clipAt > CLIP_RELINK_MS) {
    ev.clipKey = null; // the signature may have expired: ask for a new link
  } else {
    ev.clipStatus = "error";
  }
  const cur = currentIncident();
  if (cur && cur.id === ev.id) renderEvidence(cur);
}

// The locks: re-read whenever the incident changes (a lock comes with the detection, a
// release with an unlock; both bump the version).
function renderLocks(inc, ev) {
  const key = `${inc.id}|${inc.version ?? inc.updated_at}|${inc.clip_url || ""}`;
  if (key !== ev.locksKey) loadLocks(inc, ev, key);
  const ul = $("#evidence-locks");
  if (ev.locksError) {
    ul.replaceChildren(h("li", { class: "error", text: ev.locksError.main }));
    return;
  }
  if (!ev.locks) {
    ul.replaceChildren(h("li", { class: "muted", text: t("detail.loading") }));
    return;
  }
  if (!ev.locks.length) {
    ul.replaceChildren(h("li", { class: "muted evidence-locks-empty", text: t("evidence.locks.none") }));
    return;
  }
  ul.replaceChildren(...ev.locks.map((lk) => {
    const released = !!lk.released_at;
    const cam = lk.camera === inc.camera_id && inc.camera_name ? `${inc.camera_name} (${lk.camera})` : lk.camera;
    return h("li", {
      class: `evidence-lock ${released ? "released" : "locked"}`,
      dataset: { camera: lk.camera || "", state: released ? "released" : "locked" },
    },
    h("div", { class: "evidence-lock-head" },
      h("span", { class: `badge lock-${released ? "released" : "locked"}`,
        text: t(released ? "evidence.lock.released" : "evidence.lock.locked") }),
      h("span", { class: "evidence-lock-camera", text: cam })),
    h("div", { class: "muted small evidence-lock-window",
      text: `${fmtDateTime(lk.start_at)} – ${fmtDateTime(lk.end_at)}` }),
    released ? h("div", { class: "small evidence-lock-release",
      text: t("evidence.lock.released_by", { by: lk.released_by || "—", at: fmtDateTime(lk.released_at), reason: lk.release_reason || "—" }) }) : null);
  }));
}

async function loadLocks(inc, ev, key) {
  ev.locksKey = key;
  const seq = ++ev.locksSeq;
  try {
    const locks = await api(`/api/incidents/${encodeURIComponent(inc.id)}/evidence/locks`);
    if (seq !== ev.locksSeq || ev !== S.evidence) return;
    ev.locks = Array.isArray(locks) ? locks : [];
    ev.locksError = null;
  } catch (err) {
    if (isAbort(err) || seq !== ev.locksSeq || ev !== S.evidence) return;
    // 503: this hub does not record; nothing is locked here.
    if (err instanceof ApiError && err.status === 503) { ev.locks = []; ev.locksError = null; }
    else ev.locksError = errorMessage(err);
  }
  const cur = currentIncident();
  if (cur && cur.id === ev.id) renderEvidence(cur);
}

/** The file name the server gave (Content-Disposition), else a sensible one. */
function downloadName(res, id) {
  const cd = res.headers.get("Content-Disposition") || "";
  const star = /filename\*\s*=\s*UTF-8''([^;]+)/i.exec(cd);
  if (star) { try { return decodeURIComponent(star[1].trim()); } catch { /* fall through */ } }
  const plain = /filename\s*=\s*"?([^";]+)"?/i.exec(cd);
  return plain ? plain[1].trim() : `evidence-${id}.zip`;
}

function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

async function runEvidence(kind) {
  const id = S.selectedId;
  const ev = id ? evidenceState(id) : null;
  if (!ev || ev.busy) return;
  const field = $(kind === "export" ? "#export-reason" : "#unlock-reason");
  const reason = (field?.value || "").trim();
  ev.info = null;
  if (!reason) {
    ev.error = { key: `evidence.${kind}.need_reason` };
    rerenderEvidence();
    field?.focus();
    return;
  }
  ev.busy = kind;
  ev.error = null;
  rerenderEvidence();
  try {
    const path = `/api/incidents/${encodeURIComponent(id)}/${kind === "export" ? "export" : "evidence/unlock"}`;
    if (kind === "export") {
      const res = await api(path, { method: "POST", json: { reason }, raw: true });
      const blob = await res.blob();
      if (ev !== S.evidence) return;
      const file = downloadName(res, id);
      saveBlob(blob, file);
      ev.result = {
        file, bundle: res.headers.get("X-GridHub-Bundle"),
        fingerprint: res.headers.get("X-GridHub-Key-Fingerprint"),
      };
    } else {
      const updated = await api(path, { method: "POST", json: { reason } });
      if (ev !== S.evidence) return;
      ev.info = "evidence.unlock.done";
      if (updated && updated.id) {
        if (S.detail && S.detail.id === id) S.detail = { ...updated, timeline: S.detail.timeline };
        upsertIncident(updated);
      }
    }
    if (field) field.value = "";
    ev.busy = null;
    renderDetail();
    refreshDetail(); // the timeline's new entry (the pushed incident.updated does it too)
  } catch (err) {
    if (isAbort(err) || ev !== S.evidence) return;
    const msg = errorMessage(err);
    if (kind === "unlock" && err instanceof ApiError && err.status === 409) msg.key = "evidence.unlock.none";
    ev.error = msg;
  } finally {
    if (ev === S.evidence && ev.busy) ev.busy = null;
    rerenderEvidence();
  }
}

function rerenderEvidence() {
  const inc = currentIncident();
  if (inc && $("#evidence-card")) renderEvidence(inc);
}

// ---------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------
function wsURL() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  // batch=1: under load, events that queue up during a send arrive as one frame.
  return `${proto}//${location.host}/ws?token=${encodeURIComponent(S.token)}&batch=1`;
}

function connectWS() {
  if (!S.token) return;
  clearTimeout(S.wsTimer);
  const gen = ++S.wsGen;
  if (S.ws) { try { S.ws.close(); } catch { /* ignore */ } }
  setConn("reconnecting");
  let ws;
  try {
    ws = new WebSocket(wsURL());
  } catch {
    scheduleReconnect(gen);
    return;
  }
  S.ws = ws;
  ws.addEventListener("open", () => {
    if (gen !== S.wsGen) return;
    S.wsRetry = 0;
    S.wsEverOpen = true;
    setConn("live");
    // Events may have been missed while disconnected (or before the socket existed).
    loadList();
    if (S.selectedId) scheduleDetailRefresh();
  });
  ws.addEventListener("message", (ev) => {
    if (gen !== S.wsGen) return;
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    if (msg && msg.type === "batch" && Array.isArray(msg.data)) msg.data.forEach(onWSMessage);
    else onWSMessage(msg);
  });
  ws.addEventListener("close", (ev) => {
    if (gen !== S.wsGen || !S.token) return;
    S.ws = null;
    // Policy-violation / auth-style close codes: check whether the token is still good.
    if (ev.code === 1008 || (ev.code >= 4000 && ev.code < 5000)) api("/api/me").catch(() => {});
    scheduleReconnect(gen);
  });
}

function scheduleReconnect(gen) {
  if (gen !== S.wsGen || !S.token) return;
  const base = WS_BACKOFF_MS[Math.min(S.wsRetry, WS_BACKOFF_MS.length - 1)];
  const delay = Math.round(base * (0.75 + Math.random() * 0.5));
  S.wsRetry++;
  S.connRetryAt = Date.now() + delay;
  setConn("reconnecting");
  clearTimeout(S.wsTimer);
  S.wsTimer = setTimeout(() => { if (gen === S.wsGen) connectWS(); }, delay);
}

function stopWS() {
  S.wsGen++;
  clearTimeout(S.wsTimer);
  if (S.ws) { try { S.ws.close(1000); } catch { /* ignore */ } }
  S.ws = null;
  S.wsRetry = 0;
  S.wsEverOpen = false;
  setConn("reconnecting");
}

function setConn(state) {
  S.conn = state;
  renderConn();
}

function renderConn() {
  const el = $("#conn-status");
  el.dataset.state = S.conn;
  const never = !S.wsEverOpen;
  $(".conn-label", el).textContent = S.conn === "live" ? t("conn.live")
    : never ? t("conn.connecting") : t("conn.reconnecting");
  const secs = Math.max(0, Math.ceil((S.connRetryAt - Date.now()) / 1000));
  el.title = S.conn === "live" ? t("conn.title.live")
    : never && !S.connRetryAt ? t("conn.title.connecting") : t("conn.title.reconnecting", { s: secs });
}

/** Orange and red call for attention: new, escalated, or a deadline breached. */
function alertFor(msg, old) {
  const inc = msg.data;
  if (!inc || !["orange", "red"].includes(inc.severity)) return;
  let why = null;
  if (msg.type === "incident.created") why = "new";
  else if (msg.notice === "escalated" || msg.notice === "deadline.breached") why = msg.notice;
  else if (msg.notice === undefined && old) {
    // The hub may not forward `notice`: infer it from what changed.
    const esc = (a) => (Array.isArray(a.escalations) ? a.escalations.length : 0);
    const breaches = (a) => (Array.isArray(a.warned) ? a.warned.filter((w) => w.includes("breach")).length : 0);
    if (esc(inc) > esc(old)) why = "escalated";
    else if (breaches(inc) > breaches(old)) why = "deadline.breached";
  }
  if (!why) return;
  const played = sound.alert(inc.severity);
  const b = document.body;
  b.dataset.alerts = String(Number(b.dataset.alerts || 0) + 1);
  b.dataset.lastAlert = `${inc.id}:${why}:${played ? "played" : "silent"}`;
}

// ---------------------------------------------------------------------------
// Recording alerts: a camera whose recording paused (disk full or low) is named in a
// banner until it resumes (command-center roles; the hub sends them no one else).
// ---------------------------------------------------------------------------
async function loadRecordingAlerts() {
  S.recPaused = new Map();
  if (!S.user || ["department", "patrol"].includes(S.user.role)) return renderRecordingAlerts();
  try {
    const st = await api("/api/recordings/status");
    for (const c of (st && st.cameras) || []) {
      if (c.state === "paused") S.recPaused.set(c.camera, c.reason || "");
    }
  } catch (err) {
    if (isAbort(err)) return;  // recording off on this hub (503): nothing to show
  }
  renderRecordingAlerts();
}

function onRecordingStatus(ev) {
  if (!ev || !ev.camera_id) return;
  if (!S.recPaused) S.recPaused = new Map();
  if (ev.kind === "recording.paused") {
    const isNew = !S.recPaused.has(ev.camera_id);
    S.recPaused.set(ev.camera_id, ev.reason || "");
    if (isNew) sound.alert("orange");
  } else {
    S.recPaused.delete(ev.camera_id);
  }
  renderRecordingAlerts();
}

function renderRecordingAlerts() {
  const box = $("#rec-alerts");
  if (!box) return;
  const paused = S.recPaused || new Map();
  box.replaceChildren(...[...paused].map(([cam, reason]) => h("div", {
    class: "rec-alert", dataset: { camera: cam },
    text: t("rec.paused", { camera: cam, reason: reason || "—" }),
  })));
  show(box, paused.size > 0);
}

function onWSMessage(msg) {
  if (!msg || typeof msg !== "object") return;
  if (msg.type === "incident.created" || msg.type === "incident.updated") {
    alertFor(msg, msg.data && msg.data.id ? S.incidents.get(msg.data.id) : null);
    onIncidentEvent();
  }
  switch (msg.type) {
    case "incident.created":
      upsertIncident(msg.data, { isNew: true });
      if (msg.data && msg.data.id === S.selectedId) scheduleDetailRefresh();
      break;
    case "incident.updated":
      upsertIncident(msg.data);
      if (msg.data && msg.data.id === S.selectedId) {
        renderDetail(); // fields right away, timeline after the re-fetch
        scheduleDetailRefresh();
      }
      break;
    case "recording.paused":
    case "recording.resumed":
      onRecordingStatus(msg.data);
      break;
    default:
      // hello, camera.health and unknown types: nothing to show yet.
      break;
  }
}

// ---------------------------------------------------------------------------
// Clock, ages, language
// ---------------------------------------------------------------------------
function tick() {
  const now = new Date();
  const clock = $("#clock");
  clock.textContent = fmtDateTime(now.toISOString());
  clock.dateTime = now.toISOString();
  for (const el of document.querySelectorAll(".countdown[data-due]")) updateCountdown(el);
  if (now.getSeconds() % 15 === 0) {
    for (const el of document.querySelectorAll(".row-age[data-at]")) el.textContent = fmtAge(el.dataset.at);
  }
  if (S.conn !== "live" && S.token) renderConn();
}

function rerenderAll() {
  applyI18n(document);
  if (!$("#login-view").hidden) {
    const submit = $("#login-submit");
    if (!submit.disabled) submit.textContent = t("login.submit");
    setLoginError(S.loginError);
  }
  renderMute();
  if (S.user) {
    renderUser();
    buildFilters();
    renderList();
    renderDetail();
  }
  renderConn();
}

// ---------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------
function renderMute() {
  const b = $("#mute-toggle");
  const muted = sound.isMuted();
  b.textContent = muted ? t("sound.off") : t("sound.on");
  b.setAttribute("aria-pressed", muted ? "true" : "false");
  b.dataset.muted = muted ? "true" : "false";
}

function init() {
  applyI18n(document);
  renderMute();
  $("#mute-toggle").addEventListener("click", () => {
    sound.setMuted(!sound.isMuted());
    sound.unlock();
    renderMute();
  });
  // Audio may start only after a user gesture: prepare it on the first one.
  for (const ev of ["pointerdown", "keydown"]) document.addEventListener(ev, sound.unlock, { passive: true });
  initViews({
    api, h, $, t, label, errorMessage, renderError, deptName, fmtDateTime, fmtAge, isAbort,
    state: S,
    types: () => S.types || [],
    role: () => (S.user ? S.user.role : null),
    onReported: (inc) => { upsertIncident(inc); },
    openIncident: (id) => { showView("incidents"); selectIncident(id); },
  });
  $("#login-form").addEventListener("submit", onLoginSubmit);
  $("#logout-btn").addEventListener("click", logout);
  $("#lang-toggle").addEventListener("click", toggleLang);
  $("#refresh-btn").addEventListener("click", () => { loadList(); if (S.selectedId) refreshDetail(); });
  for (const id of ["#filter-state", "#filter-type", "#filter-severity"]) {
    $(id).addEventListener("change", onFilterChange);
  }
  const list = $("#incident-list");
  list.addEventListener("click", onListClick);
  list.addEventListener("keydown", onListKey);
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && S.selectedId && !ev.target.closest("input, textarea, select")) closeDetail();
  });
  window.addEventListener("hashchange", () => {
    const id = hashIncident();
    if (S.user && id && id !== S.selectedId) selectIncident(id, { updateHash: false });
  });
  // Come back quickly after the network or the tab returns.
  const kick = () => { if (S.token && S.conn !== "live") connectWS(); };
  window.addEventListener("online", kick);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) kick(); });
  onLangChange(rerenderAll);

  tick();
  setInterval(tick, 1000);
  renderConn();

  if (S.token) boot();
  else showLogin();
}

init();
