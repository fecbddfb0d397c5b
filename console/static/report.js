// GridHub grid staff's phone page: report a problem (type, description, photo, position)
// and follow my recent reports. Plain ES module, no build step, no external resources.
// Labels in zh-CN (default) and English; the language choice is shared with the console.

import { $, el, errorText, readStore, submitLogin, translate, writeStore } from "./pagekit.js";

const LANG_KEY = "gridhub.lang";
const TOKEN_KEY = "gridhub.report.token";
const MINE_KEY = "gridhub.report.mine"; // + ":" + username: ids reported from this phone

const DICT = {
  "zh-CN": {
    "app.subtitle": "网格员上报",
    "lang.toggle": "English",
    "logout": "退出登录",
    "login.title": "网格员登录",
    "login.hint": "使用网格员账号登录（如 staff-01）。",
    "login.username": "用户名",
    "login.password": "密码",
    "login.submit": "登录",
    "login.failed": "用户名或密码错误",
    "login.error": "登录失败：{msg}",
    "form.title": "上报问题",
    "form.type": "问题类型",
    "form.description": "情况描述",
    "form.photo": "现场照片",
    "form.position": "位置",
    "form.lat": "纬度",
    "form.lon": "经度",
    "form.locate": "重新定位",
    "form.people": "涉及人数",
    "form.submit": "提交上报",
    "form.submitting": "正在提交…",
    "gps.wait": "正在获取定位…",
    "gps.ok": "已定位（±{m} 米）",
    "gps.error": "无法定位（{msg}），请手动填写经纬度",
    "gps.none": "此设备不支持定位，请手动填写经纬度",
    "error.type": "请选择问题类型",
    "error.description": "请填写情况描述",
    "error.position": "请填写有效的位置（纬度、经度）",
    "error.http": "提交失败（{status}）：{msg}",
    "error.photo": "案件已上报，但照片上传失败：{msg}",
    "result.created": "已立案，案件编号 {id}",
    "result.merged": "附近已有同类未结案件，已合并到 {id}",
    "result.photo": "照片已上传",
    "mine.title": "我的上报",
    "mine.empty": "暂无上报记录",
    "state.new": "新建", "state.confirmed": "已确认", "state.dispatched": "已派遣",
    "state.accepted": "已受理", "state.on_scene": "已到场", "state.resolved": "已处置",
    "state.closed": "已办结", "state.dismissed": "已排除", "state.escalated": "已上报",
    "state.reopened": "已重开",
  },
  en: {
    "app.subtitle": "Grid staff report",
    "lang.toggle": "中文",
    "logout": "Log out",
    "login.title": "Grid staff sign-in",
    "login.hint": "Sign in with your grid staff account (e.g. staff-01).",
    "login.username": "Username",
    "login.password": "Password",
    "login.submit": "Sign in",
    "login.failed": "Wrong username or password",
    "login.error": "Sign-in failed: {msg}",
    "form.title": "Report a problem",
    "form.type": "Type",
    "form.description": "Description",
    "form.photo": "Photo",
    "form.position": "Position",
    "form.lat": "Latitude",
    "form.lon": "Longitude",
    "form.locate": "Locate again",
    "form.people": "People involved",
    "form.submit": "Submit report",
    "form.submitting": "Submitting…",
    "gps.wait": "Getting position…",
    "gps.ok": "Located (±{m} m)",
    "gps.error": "No position ({msg}); enter latitude and longitude",
    "gps.none": "No positioning on this device; enter latitude and longitude",
    "error.type": "Choose a type",
    "error.description": "Describe the problem",
    "error.position": "Enter a valid position (latitude, longitude)",
    "error.http": "Failed ({status}): {msg}",
    "error.photo": "Reported, but the photo upload failed: {msg}",
    "result.created": "New case {id}",
    "result.merged": "An open case of this type nearby already exists: merged into {id}",
    "result.photo": "Photo uploaded",
    "mine.title": "My reports",
    "mine.empty": "No reports yet",
    "state.new": "New", "state.confirmed": "Confirmed", "state.dispatched": "Dispatched",
    "state.accepted": "Accepted", "state.on_scene": "On scene", "state.resolved": "Resolved",
    "state.closed": "Closed", "state.dismissed": "Dismissed", "state.escalated": "Escalated",
    "state.reopened": "Reopened",
  },
};

const S = {
  lang: readStore(localStorage, LANG_KEY) === "en" ? "en" : "zh-CN",
  token: readStore(sessionStorage, TOKEN_KEY),
  user: null,
  types: [],
  mine: [], // incidents, newest first
  result: null, // {key, id, merged, photo, photoError}
  gps: { state: "none", accuracy: null, msg: "" },
  ws: null,
  wsTimer: 0,
};

function t(key, vars = null) {
  return translate(DICT, S.lang, key, vars);
}

function applyLang() {
  document.documentElement.lang = S.lang;
  for (const e of document.querySelectorAll("[data-t]")) e.textContent = t(e.dataset.t);
  document.title = `GridHub · ${t("app.subtitle")}`;
  renderTypes();
  renderGps();
  renderResult();
  renderMine();
}

// --- API -----------------------------------------------------------------------------
async function api(path, opts = {}) {
  const headers = { ...(opts.headers || {}) };
  if (S.token) headers.Authorization = `Bearer ${S.token}`;
  const resp = await fetch(path, { ...opts, headers });
  if (resp.status === 401 && S.token) {
    showLogin(t("login.failed"));
    throw new Error(t("login.failed"));
  }
  return resp;
}

// --- login -----------------------------------------------------------------------------
function onLogin(ev) {
  return submitLogin(ev, t, async (token) => {
    S.token = token;
    writeStore(sessionStorage, TOKEN_KEY, S.token);
    await enter();
  });
}

async function enter() {
  const resp = await api("/api/me");
  if (!resp.ok) throw new Error(await errorText(resp));
  S.user = await resp.json();
  $("#login-view").hidden = true;
  $("#report-view").hidden = false;
  $("#logout-btn").hidden = false;
  const cu = $("#current-user");
  cu.hidden = false;
  cu.textContent = S.user.name || S.user.username;
  await loadTypes();
  locate();
  loadMine();
  connectWs();
}

function showLogin(message = "") {
  closeWs();
  S.token = null;
  S.user = null;
  S.mine = [];
  S.result = null;
  writeStore(sessionStorage, TOKEN_KEY, null);
  $("#report-view").hidden = true;
  $("#logout-btn").hidden = true;
  $("#current-user").hidden = true;
  $("#login-view").hidden = false;
  const err = $("#login-error");
  err.textContent = message;
  err.hidden = !message;
}

// --- types -------------------------------------------------------------------------------
async function loadTypes() {
  const resp = await api("/api/types");
  if (!resp.ok) return;
  const types = await resp.json();
  // What people report (manual types) first, then what cameras also detect.
  S.types = [...types.filter((x) => x.source === "manual"), ...types.filter((x) => x.source !== "manual")];
  renderTypes();
}

function typeName(id) {
  const ty = S.types.find((x) => x.id === id);
  if (!ty) return id;
  return S.lang === "en" ? ty.name_en || ty.name || id : ty.name || id;
}

function renderTypes() {
  const box = $("#types");
  const chosen = box.querySelector("input:checked")?.value;
  box.replaceChildren(...S.types.map((ty) => el("label", { dataset: { source: ty.source || "" } },
    el("input", { type: "radio", name: "type", value: ty.id, checked: ty.id === chosen }),
    el("span", { text: typeName(ty.id) }))));
}

// --- position ----------------------------------------------------------------------------
function locate() {
  if (!navigator.geolocation) {
    S.gps = { state: "none", msg: "" };
    renderGps();
    return;
  }
  S.gps = { state: "wait" };
  renderGps();
  navigator.geolocation.getCurrentPosition((pos) => {
    $("#lat").value = pos.coords.latitude.toFixed(6);
    $("#lon").value = pos.coords.longitude.toFixed(6);
    S.gps = { state: "ok", accuracy: Math.round(pos.coords.accuracy || 0) };
    renderGps();
  }, (err) => {
    S.gps = { state: "error", msg: err.message || String(err.code) };
    renderGps();
  }, { enableHighAccuracy: true, timeout: 15000, maximumAge: 30000 });
}

function renderGps() {
  const e = $("#gps-status");
  e.dataset.state = S.gps.state;
  e.textContent = S.gps.state === "wait" ? t("gps.wait")
    : S.gps.state === "ok" ? t("gps.ok", { m: S.gps.accuracy })
    : S.gps.state === "error" ? t("gps.error", { msg: S.gps.msg })
    : navigator.geolocation ? "" : t("gps.none");
}

// --- submit ------------------------------------------------------------------------------
function showError(key, vars) {
  const e = $("#report-error");
  e.textContent = t(key, vars);
  e.hidden = false;
}

async function onSubmit(ev) {
  ev.preventDefault();
  $("#report-error").hidden = true;
  const type = $("#types input:checked")?.value;
  const description = $("#description").value.trim();
  const lat = Number($("#lat").value);
  const lon = Number($("#lon").value);
  if (!type) return showError("error.type");
  if (!description) return showError("error.description");
  if ($("#lat").value === "" || $("#lon").value === "" || !Number.isFinite(lat) || !Number.isFinite(lon)
      || Math.abs(lat) > 90 || Math.abs(lon) > 180) return showError("error.position");
  const submit = $("#report-submit");
  submit.disabled = true;
  submit.textContent = t("form.submitting");
  try {
    const resp = await api("/api/reports", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        type, description, position: { lat, lon },
        people: Number($("#people").value) || 0, channel: "staff",
      }),
    });
    if (!resp.ok) return showError("error.http", { status: resp.status, msg: await errorText(resp) });
    const { merged, incident } = await resp.json();
    S.result = { id: incident.id, merged, photo: false, photoError: null };
    remember(incident.id);
    const file = $("#photo").files[0];
    if (file) {
      const fd = new FormData();
      fd.append("photo", file, file.name || "photo.jpg");
      const up = await api(`/api/incidents/${encodeURIComponent(incident.id)}/photos`, { method: "POST", body: fd });
      if (up.ok) S.result.photo = true;
      else S.result.photoError = await errorText(up);
    }
    $("#description").value = "";
    $("#people").value = "0";
    $("#photo").value = "";
    $("#photo-preview").hidden = true;
    renderResult();
    loadMine();
  } catch (e) {
    showError("error.http", { status: 0, msg: e.message || String(e) });
  } finally {
    submit.disabled = false;
    submit.textContent = t("form.submit");
  }
}

function renderResult() {
  const box = $("#report-result");
  const r = S.result;
  box.hidden = !r;
  if (!r) return;
  box.dataset.merged = r.merged ? "true" : "false";
  box.dataset.id = r.id;
  box.replaceChildren(
    el("div", { class: "result-main", text: t(r.merged ? "result.merged" : "result.created", { id: r.id }) }),
    r.photo ? el("div", { class: "muted", text: t("result.photo") }) : null,
    r.photoError ? el("div", { class: "error", text: t("error.photo", { msg: r.photoError }) }) : null,
  );
}

function onPhoto() {
  const file = $("#photo").files[0];
  const img = $("#photo-preview");
  if (img.src) URL.revokeObjectURL(img.src);
  if (!file) { img.hidden = true; return; }
  img.src = URL.createObjectURL(file);
  img.hidden = false;
}

// --- my reports --------------------------------------------------------------------------
function mineKey() {
  return `${MINE_KEY}:${S.user ? S.user.username : ""}`;
}

function remembered() {
  try { return JSON.parse(readStore(localStorage, mineKey()) || "[]"); } catch { return []; }
}

function remember(id) {
  const ids = [id, ...remembered().filter((x) => x !== id)].slice(0, 50);
  writeStore(localStorage, mineKey(), JSON.stringify(ids));
}

async function loadMine() {
  if (!S.user) return;
  try {
    const resp = await api("/api/incidents?limit=200");
    if (!resp.ok) return;
    const ids = new Set(remembered());
    S.mine = ((await resp.json()).items || [])
      .filter((i) => i.reporter === S.user.username || ids.has(i.id));
  } catch { /* keep what is shown */ }
  renderMine();
}

function renderMine() {
  const ul = $("#mine");
  ul.replaceChildren(...S.mine.slice(0, 20).map((i) => el("li", { dataset: { id: i.id, state: i.state } },
    el("span", { class: `badge state-${i.state}`, text: t(`state.${i.state}`) }),
    el("span", { text: typeName(i.type) }),
    el("span", { class: "muted", text: i.description || "" }),
    el("span", { class: "mono", text: i.id }))));
  $("#mine-empty").hidden = S.mine.length > 0;
}

// Live state of my reports (the WebSocket sends what this account may see).
function connectWs() {
  closeWs();
  if (!S.token) return;
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/ws?token=${encodeURIComponent(S.token)}`);
  S.ws = ws;
  ws.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    const inc = msg && msg.data;
    if (!inc || !inc.id || !String(msg.type).startsWith("incident.")) return;
    const i = S.mine.findIndex((x) => x.id === inc.id);
    if (i >= 0) { S.mine[i] = inc; renderMine(); }
  };
  ws.onclose = () => {
    if (S.ws !== ws) return;
    S.ws = null;
    S.wsTimer = setTimeout(connectWs, 5000);
  };
}

function closeWs() {
  clearTimeout(S.wsTimer);
  const ws = S.ws;
  S.ws = null;
  if (ws) ws.close();
}

// --- start-up ------------------------------------------------------------------------------
function init() {
  $("#login-form").addEventListener("submit", onLogin);
  $("#report-form").addEventListener("submit", onSubmit);
  $("#photo").addEventListener("change", onPhoto);
  $("#locate-btn").addEventListener("click", locate);
  $("#logout-btn").addEventListener("click", () => showLogin());
  $("#lang-toggle").addEventListener("click", () => {
    S.lang = S.lang === "zh-CN" ? "en" : "zh-CN";
    writeStore(localStorage, LANG_KEY, S.lang);
    applyLang();
  });
  applyLang();
  if (S.token) enter().catch(() => showLogin());
  else showLogin();
}

init();
