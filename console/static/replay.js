// GridHub replay: the recorded video of 1-4 cameras around one moment, played in sync by
// wall-clock time, with a timeline per camera (coverage, gaps, incidents) and one playhead.
// Plain ES module, no build step, no external resources; zh-CN (default) and English.
//
//   /replay?incident=ID[&cams=a,b][&before=60][&after=90]   an incident's moment
//   /replay?camera=ID&at=ISO[&cams=...][&before=][&after=]  a camera's moment
//
// Each camera's window comes from GET /api/replay/{camera}/window: one MP4 (seeked by the
// browser with HTTP Range) and its map from media time to wall time ("pieces"). One master
// clock: the wall time of the first camera that has video at that moment (else a plain
// clock); the others follow it and are re-seeked when they drift more than DRIFT_S.

import { $, el, errorText, readStore, submitLogin, translate, writeStore } from "./pagekit.js";

const LANG_KEY = "gridhub.lang";
const TOKEN_KEY = "gridhub.token"; // shared with the console (app.js), the wall and the map
const MAX_CAMS = 4;
const BEFORE_S = 60;
const AFTER_S = 90;
const DRIFT_S = 0.1; // a follower further than this from the master clock is re-seeked
const JUMP_S = 0.5; // the master's wall time jumping further ahead: it crossed a gap
const NEAR_M = 1500; // other cameras offered first: same grid, or this close
const EPS = 1e-3;
const HOLE_S = 0.25; // less missing time than this between two pieces is not a gap
const SPEEDS = [0.25, 0.5, 1, 1.5, 2, 4];

const DICT = {
  "zh-CN": {
    "app.subtitle": "录像回放",
    "lang.toggle": "English",
    "logout": "退出登录",
    "login.title": "录像回放登录",
    "login.hint": "请使用指挥中心账号登录。",
    "login.username": "用户名",
    "login.password": "密码",
    "login.submit": "登录",
    "login.failed": "用户名或密码错误",
    "login.error": "登录失败：{msg}",
    "back": "返回指挥台",
    "reload": "刷新",
    "camera.add": "添加摄像头",
    "camera.choose": "选择…",
    "camera.full": "最多 {n} 路",
    "camera.remove": "移除",
    "camera.focus": "事件摄像头",
    "camera.none": "附近没有摄像头：请在“添加摄像头”中选择",
    "title.incident": "事件回放 · {type} · {id}",
    "title.camera": "摄像头回放 · {camera}",
    "window": "{from} 至 {to}",
    "play": "播放",
    "pause": "暂停",
    "step.back": "上一帧（←）",
    "step.fwd": "下一帧（→）",
    "speed": "倍速",
    "keys": "空格 播放/暂停 · ←/→ 逐帧 · Shift+←/→ ±5 秒 · ↑/↓ 倍速",
    "offset": "事件时刻 {sign}{s} 秒",
    "offset.at": "指定时刻 {sign}{s} 秒",
    "loading": "正在加载…",
    "nodata": "此时刻无录像",
    "nodata.window": "该时段内无录像",
    "video.error": "视频无法播放：{msg}",
    "legend.cov": "有录像",
    "legend.gap": "录像中断",
    "legend.none": "无录像",
    "legend.incident": "事件",
    "legend.playhead": "播放位置",
    "marker": "{type} · {time}",
    "error.params": "请在地址中给出 ?incident=事件编号 或 ?camera=摄像头编号&at=时间",
    "error.http": "加载失败（{status}）：{msg}",
    "error.at": "无法识别的时间：{at}",
  },
  en: {
    "app.subtitle": "Recording replay",
    "lang.toggle": "中文",
    "logout": "Log out",
    "login.title": "Replay sign-in",
    "login.hint": "Sign in with your command-center account.",
    "login.username": "Username",
    "login.password": "Password",
    "login.submit": "Sign in",
    "login.failed": "Wrong username or password",
    "login.error": "Sign-in failed: {msg}",
    "back": "Back to the console",
    "reload": "Refresh",
    "camera.add": "Add camera",
    "camera.choose": "Choose…",
    "camera.full": "{n} at most",
    "camera.remove": "Remove",
    "camera.focus": "incident camera",
    "camera.none": "No camera near here: choose one under Add camera",
    "title.incident": "Incident replay · {type} · {id}",
    "title.camera": "Camera replay · {camera}",
    "window": "{from} to {to}",
    "play": "Play",
    "pause": "Pause",
    "step.back": "Previous frame (←)",
    "step.fwd": "Next frame (→)",
    "speed": "Speed",
    "keys": "Space play/pause · ←/→ frame · Shift+←/→ ±5 s · ↑/↓ speed",
    "offset": "incident {sign}{s} s",
    "offset.at": "moment {sign}{s} s",
    "loading": "Loading…",
    "nodata": "No recording at this time",
    "nodata.window": "Nothing recorded in this window",
    "video.error": "The video cannot be played: {msg}",
    "legend.cov": "recorded",
    "legend.gap": "gap",
    "legend.none": "no recording",
    "legend.incident": "incident",
    "legend.playhead": "playhead",
    "marker": "{type} · {time}",
    "error.params": "Give ?incident=ID or ?camera=ID&at=time in the address",
    "error.http": "Loading failed ({status}): {msg}",
    "error.at": "Not a time: {at}",
  },
};

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------
const S = {
  lang: readStore(localStorage, LANG_KEY) === "en" ? "en" : "zh-CN",
  token: readStore(sessionStorage, TOKEN_KEY) || readStore(localStorage, TOKEN_KEY),
  user: null,
  gen: 0, // bumps on every (re)load; stale responses check it
  incident: null, // the incident in focus (?incident=)
  t0: null, // the moment in focus, Unix s
  from: 0, // the window, Unix s
  to: 0,
  cameras: [], // GET /api/cameras
  types: new Map(), // type id -> {name, name_en}
  cams: [], // the cameras shown: see addCam()
  markers: [], // incidents in the window: {id, at, camera, type, focus}
  wall: 0, // the playhead, Unix s
  playing: false,
  rate: 1,
  master: null, // the camera whose video drives the clock
  lastTick: 0,
  scrub: null, // {bar, wasPlaying} while dragging on a timeline
  lastHead: null,
};

// ---------------------------------------------------------------------------
// i18n, formatting
// ---------------------------------------------------------------------------
function t(key, vars = null) {
  return translate(DICT, S.lang, key, vars);
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

function fmtClock(unix, ms = true) {
  const d = new Date(unix * 1000);
  const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return ms ? `${hms}.${pad(d.getMilliseconds(), 3)}` : hms;
}

function fmtDate(unix) {
  const d = new Date(unix * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${fmtClock(unix, false)}`;
}

function typeName(id) {
  const ty = S.types.get(id);
  if (!ty) return id || "";
  return S.lang === "en" ? ty.name_en || ty.name : ty.name;
}

function camName(cam) {
  return cam.info?.name ? `${cam.info.name} (${cam.id})` : cam.id;
}

const unixOf = (iso) => Date.parse(iso) / 1000;
const isoOf = (unix) => new Date(unix * 1000).toISOString();

// ---------------------------------------------------------------------------
// Hub API
// ---------------------------------------------------------------------------
class HttpError extends Error {
  constructor(status, msg) { super(msg); this.status = status; }
}

async function api(path) {
  const headers = {};
  if (S.token) headers.Authorization = `Bearer ${S.token}`;
  const resp = await fetch(path, { headers });
  if (resp.status === 401) { // no token, or it expired: sign in again
    showLogin();
    throw new HttpError(401, t("login.failed"));
  }
  if (!resp.ok) throw new HttpError(resp.status, await errorText(resp));
  return resp.json();
}

function showError(err) {
  const box = $("#replay-error");
  if (!err) { box.hidden = true; return; }
  box.textContent = err instanceof HttpError ? t("error.http", { status: err.status, msg: err.message })
    : String(err.message || err);
  box.hidden = false;
}

// ---------------------------------------------------------------------------
// Login (the console's token, or this page's own form)
// ---------------------------------------------------------------------------
function onLogin(ev) {
  return submitLogin(ev, t, async (token) => {
    S.token = token;
    writeStore(sessionStorage, TOKEN_KEY, S.token);
    await enter();
  });
}

function showLogin(message = "") {
  stopAll();
  S.token = null;
  S.user = null;
  writeStore(sessionStorage, TOKEN_KEY, null);
  $("#replay-view").hidden = true;
  $("#logout-btn").hidden = true;
  $("#current-user").hidden = true;
  $("#login-view").hidden = false;
  const err = $("#login-error");
  err.textContent = message;
  err.hidden = !message;
}

async function enter() {
  let user;
  try {
    user = await api("/api/me");
  } catch (e) {
    if (e.status !== 401) { showLogin(t("login.error", { msg: e.message })); }
    return;
  }
  S.user = user;
  $("#login-view").hidden = true;
  $("#replay-view").hidden = false;
  $("#logout-btn").hidden = false;
  const who = $("#current-user");
  who.hidden = false;
  who.textContent = user.name || user.username;
  await load();
}

// ---------------------------------------------------------------------------
// Loading: the moment, the cameras, their windows, the incidents
// ---------------------------------------------------------------------------
function params() {
  const q = new URLSearchParams(location.search);
  const num = (k, d) => {
    const v = Number(q.get(k));
    return q.has(k) && Number.isFinite(v) && v >= 0 ? v : d;
  };
  return {
    incident: q.get("incident"),
    camera: q.get("camera"),
    at: q.get("at"),
    cams: (q.get("cams") || "").split(",").map((s) => s.trim()).filter(Boolean),
    before: num("before", BEFORE_S),
    after: num("after", AFTER_S),
  };
}

// Metres between two [lon, lat] points (equirectangular; fine at city scale).
function distance(a, b) {
  const k = Math.PI / 180;
  const x = (b[0] - a[0]) * k * Math.cos(((a[1] + b[1]) / 2) * k);
  const y = (b[1] - a[1]) * k;
  return Math.hypot(x, y) * 6371000;
}

// Where the moment is: the incident's position ([lat, lon] in the API) or its camera's.
function focusPoint() {
  const inc = S.incident;
  if (inc && Array.isArray(inc.position)) return [inc.position[1], inc.position[0]];
  const own = S.cameras.find((c) => c.id === (inc?.camera_id || params().camera));
  return own?.position || null;
}

// Other cameras, best first: same grid, then nearest.
function rankedCameras() {
  const p = focusPoint();
  const grid = S.incident?.grid_id || S.cameras.find((c) => c.id === params().camera)?.grid;
  const score = (c) => (c.grid === grid ? 0 : 1e9) + (p && c.position ? distance(p, c.position) : 1e8);
  return [...S.cameras].sort((a, b) => score(a) - score(b));
}

function defaultCams(p) {
  const ids = [];
  const own = S.incident ? S.incident.camera_id : p.camera;
  if (own) ids.push(own);
  const point = focusPoint();
  const grid = S.incident?.grid_id || S.cameras.find((c) => c.id === own)?.grid;
  for (const c of rankedCameras()) {
    if (ids.length >= MAX_CAMS) break;
    if (ids.includes(c.id)) continue;
    const near = c.grid === grid || (point && c.position && distance(point, c.position) <= NEAR_M);
    if (near) ids.push(c.id);
  }
  return ids;
}

async function load() {
  const gen = ++S.gen;
  stopAll();
  showError(null);
  $("#replay-view").dataset.state = "loading";
  const p = params();
  try {
    const [cameras, types] = await Promise.all([api("/api/cameras"), api("/api/types").catch(() => [])]);
    if (gen !== S.gen) return;
    S.cameras = cameras;
    S.types = new Map(types.map((ty) => [ty.id, ty]));
    S.incident = null;
    if (p.incident) {
      S.incident = await api(`/api/incidents/${encodeURIComponent(p.incident)}`);
      if (gen !== S.gen) return;
      S.t0 = unixOf(S.incident.started_at);
    } else if (p.camera && p.at) {
      S.t0 = unixOf(p.at.replace(" ", "+")); // a "+hh:mm" offset typed unencoded
      if (!Number.isFinite(S.t0)) throw new Error(t("error.at", { at: p.at }));
    } else {
      throw new Error(t("error.params"));
    }
    S.from = S.t0 - p.before;
    S.to = S.t0 + p.after;
    S.wall = S.t0;
    const ids = (p.cams.length ? p.cams : defaultCams(p)).slice(0, MAX_CAMS);
    S.cams = [];
    $("#tiles").replaceChildren();
    $("#rows").replaceChildren();
    renderHead();
    renderAxis();
    await Promise.all([loadMarkers(gen), ...ids.map((id) => addCam(id, gen))]);
    if (gen !== S.gen) return;
    renderCamPicker();
    if (!S.cams.length) showError(new Error(t("camera.none")));
    seekAll(S.wall);
    $("#replay-view").dataset.state = "ready";
  } catch (e) {
    if (gen !== S.gen || e.status === 401) return;
    showError(e);
    $("#replay-view").dataset.state = "error";
  }
}

async function loadMarkers(gen) {
  // Listed by creation, which comes a little after the start (a detector waits for its
  // evidence; a report after the event): the window with margins on both sides.
  const qs = new URLSearchParams({ since: isoOf(S.from - 3600), until: isoOf(S.to + 600), limit: "1000" });
  let items = [];
  try {
    items = (await api(`/api/incidents?${qs}`)).items;
  } catch (e) {
    if (e.status === 401) throw e;
  }
  if (gen !== S.gen) return;
  const byId = new Map(items.map((i) => [i.id, i]));
  if (S.incident) byId.set(S.incident.id, S.incident);
  S.markers = [...byId.values()]
    .map((i) => ({ id: i.id, at: unixOf(i.started_at), camera: i.camera_id, type: i.type,
      focus: i.id === S.incident?.id }))
    .filter((m) => m.at >= S.from && m.at <= S.to);
  for (const cam of S.cams) renderBar(cam);
}

async function addCam(id, gen = S.gen) {
  if (S.cams.some((c) => c.id === id) || S.cams.length >= MAX_CAMS) return;
  const cam = {
    id, info: S.cameras.find((c) => c.id === id) || null, win: null, rec: null,
    pieces: [], state: "loading", error: null, video: null, tile: null, bar: null,
    seekStarted: 0, seekLatency: 0.05, playPending: false, pendingSeek: null, covered: null,
  };
  S.cams.push(cam);
  buildTile(cam);
  buildRow(cam);
  updateTiles();
  const q = `from=${encodeURIComponent(isoOf(S.from))}&to=${encodeURIComponent(isoOf(S.to))}`;
  try {
    const [rec, win] = await Promise.all([
      api(`/api/recordings?camera=${encodeURIComponent(id)}&${q}`),
      api(`/api/replay/${encodeURIComponent(id)}/window?${q}`),
    ]);
    if (gen !== S.gen || !S.cams.includes(cam)) return;
    cam.rec = rec;
    cam.win = win;
    cam.pieces = win.pieces || [];
    if (win.recorded && win.url) {
      cam.state = "loading";
      cam.video.src = win.url;
    } else {
      cam.state = "nodata";
    }
  } catch (e) {
    if (e.status === 401) throw e;
    cam.state = "error";
    cam.error = e.message;
  }
  renderTile(cam);
  renderBar(cam);
}

function removeCam(id) {
  const cam = S.cams.find((c) => c.id === id);
  if (!cam || S.cams.length <= 1) return;
  cam.video.removeAttribute("src");
  cam.video.load();
  cam.tile.remove();
  cam.row.remove();
  S.cams = S.cams.filter((c) => c !== cam);
  if (S.master === cam) S.master = null;
  updateTiles();
  renderCamPicker();
  rememberCams();
}

function rememberCams() {
  const q = new URLSearchParams(location.search);
  q.set("cams", S.cams.map((c) => c.id).join(","));
  history.replaceState(null, "", `${location.pathname}?${q}`);
}

function stopAll() {
  S.playing = false;
  for (const cam of S.cams) {
    if (cam.video) { cam.video.pause(); cam.video.removeAttribute("src"); cam.video.load(); }
  }
  renderPlay();
}

// ---------------------------------------------------------------------------
// Media time <-> wall time (the window's pieces: [media_s, wall, duration_s])
// ---------------------------------------------------------------------------
// The pieces follow the arrival times of the recording, so two of them may overlap or
// leave a hole of some milliseconds (network jitter): a hole shorter than HOLE_S shows the
// last frame before it rather than "no recording".
function mediaAt(cam, wall) {
  let hole = null;
  for (const [m, w, d] of cam.pieces) {
    if (wall >= w - EPS && wall < w + d) return m + Math.max(0, wall - w);
    if (wall >= w + d && wall < w + d + HOLE_S) hole = m + Math.max(0, d - EPS);
  }
  return hole;
}

function wallAt(cam, media) {
  let hit = null;
  for (const piece of cam.pieces) {
    if (media + EPS >= piece[0]) hit = piece;
    else break;
  }
  return hit ? hit[1] + (media - hit[0]) : null;
}

function ready(cam) {
  return cam.state === "ready" && cam.video.readyState >= 1;
}

// The camera whose video drives the clock: the current one while it has video at the
// playhead, else the first that has.
function pickMaster() {
  const ok = (c) => ready(c) && mediaAt(c, S.wall) !== null;
  if (S.master && S.cams.includes(S.master) && ok(S.master)) return S.master;
  S.master = S.cams.find(ok) || null;
  return S.master;
}

// ---------------------------------------------------------------------------
// Playback
// ---------------------------------------------------------------------------
function setCovered(cam, covered) {
  if (cam.covered === covered) return;
  cam.covered = covered;
  cam.tile.dataset.covered = covered ? "true" : "false";
  renderTile(cam);
}

// Put one camera at wall time `wall` (exactly; `lead` s further when playing, for the time
// the seek itself takes).
function place(cam, wall, lead = 0) {
  if (cam.state !== "ready") { setCovered(cam, false); return; }
  const m = mediaAt(cam, wall);
  if (m === null) {
    setCovered(cam, false);
    if (!cam.video.paused) cam.video.pause();
    return;
  }
  setCovered(cam, true);
  placeMedia(cam, m + lead);
}

function placeMedia(cam, media) {
  const target = Math.min(Math.max(media, 0), cam.win.duration_s);
  if (cam.video.readyState < 1) { cam.pendingSeek = target; return; }
  if (Math.abs(cam.video.currentTime - target) > EPS) {
    cam.seekStarted = performance.now();
    cam.video.currentTime = target;
  }
}

// Every camera to wall time `wall`; `exact`: {cam, media} puts that camera at that media
// time (a frame step), the others at the wall time it shows.
function seekAll(wall, exact = null) {
  S.wall = Math.min(Math.max(wall, S.from), S.to);
  for (const cam of S.cams) {
    if (exact && exact.cam === cam) placeMedia(cam, exact.media);
    else place(cam, S.wall);
    if (S.playing && !S.scrub) follow(cam);
  }
  renderClock();
}

// While playing: keep one camera at the clock, playing at the chosen speed.
function follow(cam) {
  if (cam.state !== "ready") { setCovered(cam, false); return; }
  const v = cam.video;
  const m = mediaAt(cam, S.wall);
  if (m === null) {
    setCovered(cam, false);
    if (!v.paused) v.pause();
    return;
  }
  setCovered(cam, true);
  if (v.playbackRate !== S.rate) v.playbackRate = S.rate;
  if (v.readyState < 1) return;
  const master = S.master;
  if (cam !== master && master && (master.video.seeking || master.video.readyState < 3)) {
    if (!v.paused) v.pause(); // the master is loading: wait for it, do not run ahead
    return;
  }
  if (!v.seeking) {
    const at = wallAt(cam, v.currentTime);
    if (at === null || Math.abs(at - S.wall) > DRIFT_S) {
      place(cam, S.wall, Math.min(cam.seekLatency * S.rate, 1));
      return;
    }
  }
  if (v.paused && !cam.playPending && !v.ended) {
    cam.playPending = true;
    v.play().catch(() => {}).finally(() => { cam.playPending = false; });
  }
}

function advance(dt) {
  const expected = S.wall + dt * S.rate;
  let wall = expected;
  const master = pickMaster();
  if (master) {
    const v = master.video;
    if (v.ended) {
      wall = expected; // its last frame is shown: the clock goes on by itself
    } else if (v.seeking || v.paused || v.readyState < 3) {
      wall = S.wall; // hold the clock while the master loads or starts
    } else {
      const at = wallAt(master, v.currentTime);
      // Further ahead than a jump: the master's video crossed a gap in its recording;
      // the clock goes on through the gap (the master waits at the other side).
      if (at !== null && at - expected <= JUMP_S) wall = at;
    }
  }
  if (wall >= S.to) {
    S.wall = S.to;
    pause();
    return;
  }
  S.wall = wall;
}

function tick(now) {
  requestAnimationFrame(tick);
  const dt = S.lastTick ? Math.min((now - S.lastTick) / 1000, 0.25) : 0;
  S.lastTick = now;
  if (S.playing && !S.scrub) {
    advance(dt);
    if (S.playing) for (const cam of S.cams) follow(cam);
  }
  renderPlayhead();
}

function play() {
  if (!S.cams.length) return;
  if (S.wall >= S.to - 0.05) S.wall = S.from;
  S.playing = true;
  S.master = null;
  pickMaster();
  for (const cam of S.cams) follow(cam);
  renderPlay();
}

function pause() {
  S.playing = false;
  const master = S.master;
  for (const cam of S.cams) if (cam.video && !cam.video.paused) cam.video.pause();
  if (master && ready(master)) {
    const at = wallAt(master, master.video.currentTime);
    if (at !== null) S.wall = at;
  }
  seekAll(S.wall); // line the others up exactly with the master
  renderPlay();
}

function togglePlay() {
  if (S.playing) pause(); else play();
}

// One frame forward or back (paused): the frame duration of the camera at the playhead.
function step(dir) {
  if (S.playing) pause();
  const cam = pickMaster() || S.cams.find(ready);
  if (cam) {
    const f = cam.win.frame_s || 0.04;
    const m = cam.video.currentTime; // where it is (exactly, after a seek or a step)
    const next = Math.min(Math.max(m + dir * f, 0), Math.max(cam.win.duration_s - f / 2, 0));
    const at = wallAt(cam, next);
    seekAll(at ?? S.wall + dir * f, { cam, media: next });
  } else {
    seekAll(S.wall + dir * 0.04);
  }
}

function jump(seconds) {
  seekAll(S.wall + seconds);
}

function setRate(rate) {
  S.rate = rate;
  $("#speed").value = String(rate);
  for (const cam of S.cams) if (cam.video) cam.video.playbackRate = rate;
}

// ---------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------
function renderHead() {
  const inc = S.incident;
  const p = params();
  $("#replay-title").textContent = inc ? t("title.incident", { type: typeName(inc.type), id: inc.id })
    : t("title.camera", { camera: p.camera || "" });
  $("#replay-window").textContent = S.to ? t("window", { from: fmtDate(S.from), to: fmtDate(S.to) }) : "";
  $("#back-link").href = inc ? `/#incident=${encodeURIComponent(inc.id)}` : "/";
}

function renderPlay() {
  const b = $("#play-btn");
  $("#play-label").textContent = S.playing ? t("pause") : t("play");
  $("#play-icon").setAttribute("d", S.playing ? "M4 3h3v10H4zM9 3h3v10H9z" : "M4 2.5v11l9-5.5z");
  b.dataset.state = S.playing ? "playing" : "paused";
  $("#replay-view").dataset.playing = S.playing ? "true" : "false";
}

function renderClock() {
  if (!S.to) return;
  $("#clock").textContent = fmtClock(S.wall);
  $("#clock").dataset.wall = S.wall.toFixed(3);
  if (S.t0 !== null) {
    const d = S.wall - S.t0;
    $("#offset").textContent = t(S.incident ? "offset" : "offset.at", {
      sign: d < 0 ? "−" : "+", s: Math.abs(d).toFixed(1) });
  }
}

const pct = (unix) => `${(((unix - S.from) / (S.to - S.from)) * 100).toFixed(3)}%`;

function renderAxis() {
  const axis = $("#axis");
  const span = S.to - S.from;
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600];
  const step = steps.find((s) => span / s <= 10) || 600;
  const first = Math.ceil(S.from / step) * step;
  const ticks = [];
  for (let u = first; u <= S.to; u += step) {
    ticks.push(el("span", { style: `left:${pct(u)}`, text: fmtClock(u, false) }));
  }
  axis.replaceChildren(...ticks);
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) e.setAttribute(k, String(v));
  return e;
}

function buildTile(cam) {
  const video = el("video", { muted: true, playsinline: true, preload: "auto", disablepictureinpicture: true });
  video.muted = true;
  const nodata = el("div", { class: "replay-nodata", text: t("loading") });
  const remove = el("button", { type: "button", class: "btn btn-ghost btn-small", text: "×",
    title: t("camera.remove"), "aria-label": t("camera.remove"), onclick: () => removeCam(cam.id) });
  const tile = el("figure", { class: "replay-tile", dataset: { camera: cam.id, state: "loading", covered: "false" } },
    el("figcaption", {}, el("span", { class: "name" }), el("span", { class: "muted status" }), remove),
    el("div", { class: "replay-screen" }, video, nodata));
  cam.video = video;
  cam.tile = tile;
  video.addEventListener("loadedmetadata", () => {
    cam.state = "ready";
    renderTile(cam);
    if (cam.pendingSeek !== null) { video.currentTime = cam.pendingSeek; cam.pendingSeek = null; }
    place(cam, S.wall);
    if (S.playing) follow(cam);
  });
  video.addEventListener("seeked", () => {
    if (cam.seekStarted) {
      const took = (performance.now() - cam.seekStarted) / 1000;
      cam.seekLatency = cam.seekLatency * 0.7 + Math.min(took, 2) * 0.3;
      cam.seekStarted = 0;
    }
  });
  video.addEventListener("error", () => {
    cam.state = "error";
    cam.error = video.error ? `${video.error.code} ${video.error.message || ""}`.trim() : "?";
    renderTile(cam);
  });
  $("#tiles").append(tile);
  renderTile(cam);
}

function renderTile(cam) {
  const tile = cam.tile;
  tile.dataset.state = cam.state;
  tile.dataset.focus = S.incident && S.incident.camera_id === cam.id ? "true" : "false";
  tile.querySelector(".name").textContent = camName(cam);
  tile.querySelector(".status").textContent = tile.dataset.focus === "true" ? t("camera.focus") : "";
  tile.querySelector("button").hidden = S.cams.length <= 1;
  const nodata = tile.querySelector(".replay-nodata");
  nodata.textContent = cam.state === "loading" ? t("loading")
    : cam.state === "error" ? t("video.error", { msg: cam.error || "" })
    : cam.state === "nodata" ? t("nodata.window") : t("nodata");
}

function updateTiles() {
  $("#tiles").dataset.count = String(S.cams.length);
  for (const cam of S.cams) renderTile(cam);
}

function buildRow(cam) {
  const bar = svg("svg", { class: "replay-bar", role: "slider", tabindex: "-1",
    "aria-valuemin": S.from, "aria-valuemax": S.to, "data-camera": cam.id,
    "data-from": S.from.toFixed(3), "data-to": S.to.toFixed(3) });
  bar.addEventListener("pointerdown", onBarDown);
  bar.addEventListener("pointermove", onBarMove);
  bar.addEventListener("pointerup", onBarUp);
  bar.addEventListener("pointercancel", onBarUp);
  cam.bar = bar;
  cam.row = el("div", { class: "replay-row", dataset: { camera: cam.id } },
    el("span", { class: "replay-row-label", title: cam.id, text: camName(cam) }), bar);
  $("#rows").append(cam.row);
  renderBar(cam);
}

function clipRect(cls, start, end, extra = {}) {
  const a = Math.max(start, S.from);
  const b = Math.min(end, S.to);
  if (b <= a) return null;
  return svg("rect", { class: cls, x: pct(a), width: `${(((b - a) / (S.to - S.from)) * 100).toFixed(3)}%`,
    "data-start": a.toFixed(3), "data-end": b.toFixed(3), ...extra });
}

function renderBar(cam) {
  const bar = cam.bar;
  if (!bar) return;
  const kids = [svg("rect", { class: "tl-bg", x: 0, y: 0, width: "100%", height: "100%" })];
  for (const it of cam.rec?.items || []) {
    const r = clipRect("tl-cov", unixOf(it.start), unixOf(it.end), { y: 0, height: "78%", "data-state": it.state });
    if (r) kids.push(r);
  }
  for (const g of cam.rec?.gaps || []) {
    const r = clipRect("tl-gap", unixOf(g.start), unixOf(g.end), { y: 0, height: "78%" });
    if (r) kids.push(r);
  }
  for (const [, w, d] of cam.pieces) { // what the MP4 plays
    const r = clipRect("tl-piece", w, w + d, { y: "84%", height: "16%" });
    if (r) kids.push(r);
  }
  for (const m of S.markers) {
    if (m.camera && m.camera !== cam.id && !m.focus) continue;
    const title = svg("title");
    title.textContent = t("marker", { type: typeName(m.type), time: fmtClock(m.at, false) });
    const line = svg("line", { class: `tl-marker${m.focus ? " focus" : ""}`, x1: pct(m.at), x2: pct(m.at),
      y1: 0, y2: "100%", "data-incident": m.id, "data-at": m.at.toFixed(3) });
    const hit = svg("line", { class: "tl-marker-hit", x1: pct(m.at), x2: pct(m.at), y1: 0, y2: "100%",
      "data-incident": m.id, "data-at": m.at.toFixed(3) });
    hit.append(title);
    kids.push(line, hit);
  }
  kids.push(svg("line", { class: "tl-head", x1: pct(S.wall), x2: pct(S.wall), y1: 0, y2: "100%" }));
  bar.replaceChildren(...kids);
  S.lastHead = null;
}

function renderPlayhead() {
  if (!S.to || S.lastHead === S.wall) return;
  S.lastHead = S.wall;
  const x = pct(S.wall);
  for (const cam of S.cams) {
    const head = cam.bar?.querySelector(".tl-head");
    if (head) { head.setAttribute("x1", x); head.setAttribute("x2", x); }
    cam.bar?.setAttribute("aria-valuenow", S.wall.toFixed(3));
  }
  renderClock();
}

function renderCamPicker() {
  const select = $("#add-camera");
  const shown = new Set(S.cams.map((c) => c.id));
  const full = S.cams.length >= MAX_CAMS;
  const first = el("option", { value: "", text: full ? t("camera.full", { n: MAX_CAMS }) : t("camera.choose") });
  const opts = rankedCameras().filter((c) => !shown.has(c.id))
    .map((c) => el("option", { value: c.id, text: `${c.name} (${c.id})` }));
  select.replaceChildren(first, ...opts);
  select.value = "";
  select.disabled = full || !opts.length;
}

function applyLang() {
  document.documentElement.lang = S.lang;
  for (const e of document.querySelectorAll("[data-t]")) e.textContent = t(e.dataset.t);
  for (const e of document.querySelectorAll("[data-t-title]")) {
    e.title = t(e.dataset.tTitle);
    e.setAttribute("aria-label", t(e.dataset.tTitle));
  }
  document.title = `GridHub · ${t("app.subtitle")}`;
  renderPlay();
  if (S.to) {
    renderHead();
    renderClock();
    renderCamPicker();
    for (const cam of S.cams) { renderTile(cam); renderBar(cam); }
  }
}

// ---------------------------------------------------------------------------
// Timeline input: click or drag to scrub, click an incident to go to it
// ---------------------------------------------------------------------------
function wallAtX(bar, clientX) {
  const r = bar.getBoundingClientRect();
  const f = Math.min(Math.max((clientX - r.left) / r.width, 0), 1);
  return S.from + f * (S.to - S.from);
}

function onBarDown(ev) {
  if (ev.button !== 0) return;
  ev.preventDefault();
  const bar = ev.currentTarget;
  const marker = ev.target.closest?.("[data-incident]");
  if (marker) {
    seekAll(Number(marker.dataset.at));
    return;
  }
  bar.setPointerCapture(ev.pointerId);
  const wasPlaying = S.playing;
  if (wasPlaying) for (const cam of S.cams) if (cam.video && !cam.video.paused) cam.video.pause();
  S.scrub = { bar, wasPlaying, last: 0 };
  seekAll(wallAtX(bar, ev.clientX));
}

function onBarMove(ev) {
  if (!S.scrub || S.scrub.bar !== ev.currentTarget) return;
  const now = performance.now();
  const w = wallAtX(S.scrub.bar, ev.clientX);
  S.wall = Math.min(Math.max(w, S.from), S.to);
  renderPlayhead();
  // Seek at most every 80 ms and not while a video is still seeking: scrubbing stays smooth.
  if (now - S.scrub.last > 80 && !S.cams.some((c) => c.video?.seeking)) {
    S.scrub.last = now;
    for (const cam of S.cams) place(cam, S.wall);
  }
}

function onBarUp(ev) {
  if (!S.scrub || S.scrub.bar !== ev.currentTarget) return;
  const { wasPlaying } = S.scrub;
  S.scrub = null;
  if (ev.type === "pointerup") S.wall = Math.min(Math.max(wallAtX(ev.currentTarget, ev.clientX), S.from), S.to);
  S.master = null;
  for (const cam of S.cams) place(cam, S.wall);
  renderClock();
  if (wasPlaying) { S.lastTick = 0; for (const cam of S.cams) follow(cam); }
}

function onKey(ev) {
  if (ev.target.closest?.("input, select, textarea") || $("#replay-view").hidden) return;
  if (ev.altKey || ev.ctrlKey || ev.metaKey) return;
  const i = SPEEDS.indexOf(S.rate);
  switch (ev.key) {
    case " ": togglePlay(); break;
    case "ArrowLeft": if (ev.shiftKey) jump(-5); else step(-1); break;
    case "ArrowRight": if (ev.shiftKey) jump(5); else step(1); break;
    case "ArrowUp": setRate(SPEEDS[Math.min(i + 1, SPEEDS.length - 1)]); break;
    case "ArrowDown": setRate(SPEEDS[Math.max(i - 1, 0)]); break;
    default: return;
  }
  ev.preventDefault();
}

// For tests and the benchmark: what each video shows, on the wall clock.
window.gridhubReplay = {
  state: () => ({
    wall: S.wall, playing: S.playing, rate: S.rate, from: S.from, to: S.to,
    master: S.master?.id ?? null,
    cams: S.cams.map((c) => ({
      id: c.id, state: c.state, covered: c.covered, currentTime: c.video?.currentTime ?? null,
      wall: c.video && c.pieces.length ? wallAt(c, c.video.currentTime) : null,
      paused: c.video?.paused ?? true, seeking: c.video?.seeking ?? false,
      playbackRate: c.video?.playbackRate ?? null, frame_s: c.win?.frame_s ?? null,
    })),
  }),
  seek: (wall) => seekAll(wall),
};

// ---------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------
function init() {
  $("#login-form").addEventListener("submit", onLogin);
  $("#logout-btn").addEventListener("click", () => showLogin());
  $("#lang-toggle").addEventListener("click", () => {
    S.lang = S.lang === "en" ? "zh-CN" : "en";
    writeStore(localStorage, LANG_KEY, S.lang);
    applyLang();
  });
  $("#play-btn").addEventListener("click", togglePlay);
  $("#step-back").addEventListener("click", () => step(-1));
  $("#step-fwd").addEventListener("click", () => step(1));
  $("#speed").addEventListener("change", (ev) => setRate(Number(ev.target.value)));
  $("#reload-btn").addEventListener("click", () => load());
  $("#add-camera").addEventListener("change", async (ev) => {
    const id = ev.target.value;
    if (!id) return;
    await addCam(id);
    showError(null);
    renderCamPicker();
    rememberCams();
    place(S.cams[S.cams.length - 1], S.wall);
  });
  document.addEventListener("keydown", onKey);
  applyLang();
  requestAnimationFrame(tick);
  if (S.token) enter(); else showLogin();
}

init();
