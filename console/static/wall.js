// GridHub video wall: live feeds as fragmented MP4 over WebSocket, played with Media Source
// Extensions (no transcoding per viewer). Plain ES module, no build step, no external resources.
//
// Per tile: WS /live/{source}?token=... sends {"type":"status"} and {"type":"init"} text
// frames, the init segment and then one moof+mdat per frame as binary frames. The player
// keeps the video near the live edge (playbackRate, or a seek when far behind).
// Tiles expose data-source and data-state (empty, connecting, playing, offline, unsupported,
// unauthorized, forbidden, unknown, reconnecting, error) for tests; window.gridhubWall.tiles()
// returns each tile's state, currentTime and decoded frame count.

const TOKEN_KEY = "gridhub.token"; // shared with the console (app.js)
const LANG_KEY = "gridhub.lang"; // shared with the console (i18n.js)
const SIZES = [1, 4, 9, 16];
const BACKOFF_MS = [1000, 2000, 4000, 8000, 15000];
const LIVE = {
  target: 0.15, // seconds behind the newest buffered frame we aim for
  fast: 0.4, // above this lag play a little faster
  seek: 1.2, // above this lag jump to the live edge
  keep: 8, // seconds of played video kept in the SourceBuffer
  maxPending: 150, // appends waiting for the SourceBuffer before we reconnect instead
};

const STRINGS = {
  "zh-CN": {
    brand: "GridHub", title: "视频墙", layout: "画面", lang: "English",
    "login.title": "登录视频墙", "login.username": "用户名", "login.password": "密码",
    "login.submit": "登录", "login.failed": "用户名或密码错误", "error.network": "无法连接服务器",
    "events.live": "实时", "events.connecting": "连接中", "events.reconnecting": "重连中",
    "saved.saving": "保存中…", "saved.saved": "布局已保存", "saved.error": "布局保存失败",
    "pick.none": "— 空 —", "pick.cameras": "摄像头", "pick.units": "巡逻单元", "pick.other": "其他",
    "state.empty": "未选择画面", "state.connecting": "连接中…", "state.playing": "直播",
    "state.offline": "离线", "state.unsupported": "暂不支持的编码", "state.unauthorized": "未登录或登录已过期",
    "state.forbidden": "无权查看", "state.unknown": "未知或未运行的视频源",
    "state.reconnecting": "重连中…", "state.error": "播放出错", "state.degraded": "信号不稳定",
    "state.nomse": "此浏览器不能播放 H.264 直播", "alert.new": "新事件",
    "sev.blue": "蓝色", "sev.yellow": "黄色", "sev.orange": "橙色", "sev.red": "红色",
  },
  en: {
    brand: "GridHub", title: "Video wall", layout: "Tiles", lang: "中文",
    "login.title": "Sign in to the video wall", "login.username": "Username", "login.password": "Password",
    "login.submit": "Sign in", "login.failed": "Wrong username or password", "error.network": "Cannot reach the server",
    "events.live": "Live", "events.connecting": "Connecting", "events.reconnecting": "Reconnecting",
    "saved.saving": "Saving…", "saved.saved": "Layout saved", "saved.error": "Could not save the layout",
    "pick.none": "— empty —", "pick.cameras": "Cameras", "pick.units": "Patrol units", "pick.other": "Other",
    "state.empty": "No source chosen", "state.connecting": "Connecting…", "state.playing": "Live",
    "state.offline": "Offline", "state.unsupported": "Codec not supported yet", "state.unauthorized": "Not signed in or session expired",
    "state.forbidden": "Not allowed to watch", "state.unknown": "Unknown or stopped source",
    "state.reconnecting": "Reconnecting…", "state.error": "Playback error", "state.degraded": "Signal unstable",
    "state.nomse": "This browser cannot play live H.264", "alert.new": "New incident",
    "sev.blue": "Blue", "sev.yellow": "Yellow", "sev.orange": "Orange", "sev.red": "Red",
  },
};

const W = {
  token: read(sessionStorage, TOKEN_KEY) || read(localStorage, TOKEN_KEY),
  lang: read(localStorage, LANG_KEY) === "en" ? "en" : "zh-CN",
  user: null,
  cameras: [], // [{id, name}]
  units: [],
  live: [], // ids the hub can stream now
  layout: { tiles: 4, sources: [] },
  tiles: [],
  saveTimer: 0,
  saveSeq: 0,
  events: null,
  eventsRetry: 0,
  eventsTimer: 0,
  health: new Map(), // source id -> {status, reason} from camera.health events
};

function read(store, key) {
  try { return store.getItem(key); } catch { return null; }
}
function write(store, key, value) {
  try { if (value) store.setItem(key, value); else store.removeItem(key); } catch { /* no storage */ }
}
function s(key) {
  return (STRINGS[W.lang] && STRINGS[W.lang][key]) || STRINGS.en[key] || key;
}
const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c) node.append(c);
  return node;
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------
class HttpError extends Error {
  constructor(status, detail) { super(`HTTP ${status}`); this.status = status; this.detail = detail; }
}

async function api(path, { method = "GET", json, form } = {}) {
  const headers = { Accept: "application/json" };
  let body;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  if (form !== undefined) {
    headers["Content-Type"] = "application/x-www-form-urlencoded";
    body = new URLSearchParams(form).toString();
  }
  if (W.token && form === undefined) headers.Authorization = `Bearer ${W.token}`;
  let res;
  try {
    res = await fetch(path, { method, headers, body, cache: "no-store" });
  } catch {
    throw new HttpError(0, null);
  }
  if (!res.ok) {
    let detail = null;
    try { detail = (await res.json()).detail; } catch { /* not JSON */ }
    throw new HttpError(res.status, detail);
  }
  return res.status === 204 ? null : res.json();
}

async function optional(path) {
  try { return await api(path); } catch (err) {
    if (err instanceof HttpError && (err.status === 404 || err.status === 403)) return [];
    throw err;
  }
}

// ---------------------------------------------------------------------------
// Player: one live socket + MediaSource per tile
// ---------------------------------------------------------------------------
function liveURL(id) {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}/live/${encodeURIComponent(id)}?token=${encodeURIComponent(W.token || "")}`;
}

class Player {
  constructor(tile, sourceId) {
    this.tile = tile;
    this.video = tile.video;
    this.id = sourceId;
    this.ws = null;
    this.ms = null;
    this.sb = null;
    this.url = null;
    this.mime = null;
    this.pending = [];
    this.expectInit = false;
    this.closed = false;
    this.retry = 0;
    this.timer = 0;
    this.lastTrim = 0;
    this.onVideoError = () => this.fail("video error");
    this.video.addEventListener("error", this.onVideoError);
    this.connect();
  }

  connect() {
    if (this.closed) return;
    this.tile.setState(this.retry ? "reconnecting" : "connecting");
    const ws = new WebSocket(liveURL(this.id));
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      if (typeof ev.data === "string") this.onControl(ev.data);
      else this.onData(ev.data);
    };
    ws.onclose = (ev) => {
      if (ws !== this.ws || this.closed) return;
      this.ws = null;
      const final = { 4401: "unauthorized", 4403: "forbidden" }[ev.code];
      if (final) { this.tile.setState(final, ev.reason || null); return; }
      if (ev.code === 4404) this.tile.setState("unknown", ev.reason || null);
      else if (this.tile.state !== "offline") this.tile.setState("reconnecting", ev.reason || null);
      const delay = ev.code === 1012 ? 100
        : BACKOFF_MS[Math.min(this.retry, BACKOFF_MS.length - 1)] * (0.75 + Math.random() * 0.5);
      this.retry++;
      this.timer = setTimeout(() => this.connect(), ev.code === 4404 ? Math.max(delay, 10000) : delay);
    };
  }

  onControl(text) {
    let msg;
    try { msg = JSON.parse(text); } catch { return; }
    if (msg.type === "init") {
      this.retry = 0;
      if (this.tile.sourceStatus === "unsupported") this.tile.setSourceStatus("online", null);
      this.expectInit = true;
      this.reset(`video/mp4; codecs="${msg.codec}"`);
      this.tile.setInfo(msg);
    } else if (msg.type === "status") {
      this.tile.setSourceStatus(msg.status, msg.reason);
    }
  }

  onData(buf) {
    if (!this.ms) return; // fragments before an init: ignore
    if (this.expectInit) this.expectInit = false;
    if (this.pending.length >= LIVE.maxPending) { this.fail("browser too slow"); return; }
    this.pending.push(buf);
    this.pump();
  }

  reset(mime) {
    this.teardownMedia();
    if (!window.MediaSource || !MediaSource.isTypeSupported(mime)) {
      this.tile.setState("unsupported", `${s("state.nomse")} (${mime})`);
      return;
    }
    this.mime = mime;
    const ms = new MediaSource();
    this.ms = ms;
    this.url = URL.createObjectURL(ms);
    this.video.src = this.url;
    ms.addEventListener("sourceopen", () => {
      if (ms !== this.ms) return;
      URL.revokeObjectURL(this.url);
      try {
        this.sb = ms.addSourceBuffer(mime);
      } catch (err) {
        this.tile.setState("unsupported", String(err && err.message));
        return;
      }
      this.sb.mode = "segments";
      this.sb.addEventListener("updateend", () => { this.keepLive(); this.pump(); });
      this.sb.addEventListener("error", () => this.fail("append error"));
      this.pump();
    }, { once: true });
  }

  pump() {
    const sb = this.sb;
    if (!sb || sb.updating || !this.pending.length || this.ms.readyState !== "open") return;
    try {
      sb.appendBuffer(this.pending.shift());
    } catch (err) {
      if (err && err.name === "QuotaExceededError") this.trim(true);
      else this.fail(`append: ${err && err.message}`);
    }
  }

  keepLive() {
    const v = this.video;
    const b = v.buffered;
    if (!b.length) return;
    const end = b.end(b.length - 1);
    const start = b.start(b.length - 1);
    const lag = end - v.currentTime;
    if (v.currentTime < start || lag > LIVE.seek) {
      v.currentTime = Math.max(start, end - LIVE.target);
    } else {
      const rate = lag > LIVE.fast ? 1.25 : lag > LIVE.target * 2 ? 1.08 : 1.0;
      if (v.playbackRate !== rate) v.playbackRate = rate;
    }
    if (v.paused) v.play().catch(() => { /* autoplay refused: muted video should not be */ });
    this.trim(false);
  }

  trim(force) {
    const sb = this.sb;
    const now = performance.now();
    if (!sb || sb.updating || (!force && now - this.lastTrim < 5000)) return;
    this.lastTrim = now;
    const b = this.video.buffered;
    if (!b.length) return;
    const cut = this.video.currentTime - LIVE.keep;
    if (cut > b.start(0) + 1) {
      try { sb.remove(b.start(0), cut); } catch { /* removal while closing: ignore */ }
    }
  }

  fail(why) {
    if (this.closed) return;
    console.warn(`wall: ${this.id}: ${why}; reconnecting`);
    this.teardownMedia();
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000);
    }
    this.tile.setState("reconnecting", why);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), 500);
  }

  teardownMedia() {
    this.pending = [];
    this.sb = null;
    if (this.ms) {
      const ms = this.ms;
      this.ms = null;
      try { if (ms.readyState === "open") ms.endOfStream(); } catch { /* ignore */ }
      this.video.removeAttribute("src");
      this.video.load();
    }
  }

  catchUp() {
    const v = this.video;
    const b = v.buffered;
    if (b.length) v.currentTime = Math.max(b.start(b.length - 1), b.end(b.length - 1) - LIVE.target);
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.video.removeEventListener("error", this.onVideoError);
    if (this.ws) { const ws = this.ws; this.ws = null; ws.close(1000); }
    this.teardownMedia();
  }
}

// ---------------------------------------------------------------------------
// Tiles
// ---------------------------------------------------------------------------
class Tile {
  constructor(index) {
    this.index = index;
    this.source = null;
    this.player = null;
    this.state = "empty";
    this.reason = null;
    this.sourceStatus = null; // last status of the source: online, offline...
    this.lastTime = -1;
    this.flashTimer = 0;
    this.video = el("video", { muted: true, autoplay: true, playsinline: true, disablepictureinpicture: true });
    this.video.muted = true;
    this.pick = el("select", { class: "tile-pick", "aria-label": `tile ${index + 1}` });
    this.badge = el("span", { class: "tile-badge" });
    this.msg = el("span", { class: "tile-msg" });
    this.why = el("span", { class: "tile-reason" });
    this.alert = el("span", { class: "tile-alert", hidden: true });
    this.node = el("div", { class: "tile", "data-index": String(index), "data-state": "empty" },
      this.video,
      el("div", { class: "tile-head" }, this.pick, this.badge),
      el("div", { class: "tile-overlay" }, this.msg, this.why),
      this.alert);
    this.pick.addEventListener("change", () => {
      const id = this.pick.value || null;
      this.setSource(id);
      W.layout.sources[this.index] = id;
      saveLayout();
    });
    this.pick.addEventListener("dblclick", (ev) => ev.stopPropagation());
    this.node.addEventListener("dblclick", () => toggleFull(this));
    this.video.addEventListener("timeupdate", () => this.progress());
    this.fillPicker();
    this.render();
  }

  fillPicker() {
    const current = this.source;
    const opts = [el("option", { value: "", text: s("pick.none") })];
    const known = new Set();
    const group = (label, items) => {
      if (!items.length) return;
      const g = el("optgroup", { label });
      for (const it of items) {
        known.add(it.id);
        g.append(el("option", { value: it.id, text: it.name ? `${it.name} (${it.id})` : it.id }));
      }
      opts.push(g);
    };
    group(s("pick.cameras"), W.cameras);
    group(s("pick.units"), W.units);
    const other = W.live.filter((id) => !known.has(id)).map((id) => ({ id }));
    if (current && !known.has(current) && !W.live.includes(current)) other.push({ id: current });
    group(s("pick.other"), other);
    this.pick.replaceChildren(...opts);
    this.pick.value = current || "";
  }

  setSource(id) {
    if (id === this.source && this.player) return;
    if (this.player) { this.player.close(); this.player = null; }
    this.source = id;
    this.sourceStatus = null;
    this.lastTime = -1;
    this.node.dataset.source = id || "";
    this.clearFlash();
    if (this.pick.value !== (id || "")) this.fillPicker();
    if (!id) { this.setState("empty"); return; }
    const h = W.health.get(id);
    if (h && h.status === "offline") this.sourceStatus = h.status;
    this.player = new Player(this, id);
    if (h && h.status === "offline") this.setState("offline", h.reason);
  }

  /** Status of the source itself (live socket status message or camera.health event). */
  setSourceStatus(status, reason) {
    this.sourceStatus = status;
    if (status === "offline" || status === "unsupported") this.setState(status, reason);
    else if (status === "degraded") this.setState(this.state === "playing" ? "playing" : "connecting", reason);
    else if (this.state === "offline" || this.state === "unsupported") this.setState("connecting");
  }

  setInfo(info) {
    this.node.dataset.codec = info.codec;
    this.node.dataset.size = `${info.width}x${info.height}`;
  }

  progress() {
    const t = this.video.currentTime;
    if (t > this.lastTime && this.lastTime >= 0 && this.sourceStatus !== "offline"
        && this.sourceStatus !== "unsupported" && this.state !== "playing") {
      this.setState("playing");
    }
    this.lastTime = t;
  }

  setState(state, reason = null) {
    this.state = state;
    this.reason = reason;
    this.render();
  }

  render() {
    this.node.dataset.state = this.state;
    this.badge.textContent = s(`state.${this.state}`);
    this.msg.textContent = s(`state.${this.state}`);
    this.why.textContent = this.reason || "";
    this.node.title = this.reason || "";
  }

  flash(severity, typeLabel) {
    clearTimeout(this.flashTimer);
    const sev = ["blue", "yellow", "orange", "red"].includes(severity) ? severity : "blue";
    delete this.node.dataset.flash;
    void this.node.offsetWidth; // restart the animation for a second incident
    this.node.dataset.flash = sev;
    this.alert.textContent = `${s("alert.new")} · ${s(`sev.${sev}`)}${typeLabel ? ` · ${typeLabel}` : ""}`;
    this.alert.hidden = false;
    this.flashTimer = setTimeout(() => this.clearFlash(), 15000);
  }

  clearFlash() {
    clearTimeout(this.flashTimer);
    delete this.node.dataset.flash;
    this.alert.hidden = true;
  }

  destroy() {
    if (this.player) this.player.close();
    this.player = null;
    this.clearFlash();
    this.node.remove();
  }

  snapshot() {
    const v = this.video;
    const q = v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : null;
    const b = v.buffered;
    return {
      index: this.index, source: this.source, state: this.state, reason: this.reason,
      currentTime: v.currentTime, frames: q ? q.totalVideoFrames : null,
      dropped: q ? q.droppedVideoFrames : null,
      lag: b.length ? b.end(b.length - 1) - v.currentTime : null,
    };
  }
}

function toggleFull(tile) {
  const node = tile.node;
  if (document.fullscreenElement === node || node.dataset.full === "1") {
    delete node.dataset.full;
    if (document.fullscreenElement) document.exitFullscreen().catch(() => {});
    return;
  }
  node.dataset.full = "1";
  if (node.requestFullscreen) node.requestFullscreen().catch(() => { /* CSS fallback keeps it big */ });
}

document.addEventListener("fullscreenchange", () => {
  for (const t of W.tiles) {
    if (t.node.dataset.full === "1" && document.fullscreenElement !== t.node && document.fullscreenElement === null) {
      delete t.node.dataset.full; // left full screen with Esc
    }
  }
});

document.addEventListener("visibilitychange", () => {
  if (!document.hidden) for (const t of W.tiles) if (t.player) t.player.catchUp();
});

// ---------------------------------------------------------------------------
// Layout
// ---------------------------------------------------------------------------
function applyLayout() {
  const n = W.layout.tiles;
  const grid = $("#wall");
  grid.dataset.tiles = String(n);
  while (W.tiles.length > n) W.tiles.pop().destroy();
  while (W.tiles.length < n) {
    const tile = new Tile(W.tiles.length);
    W.tiles.push(tile);
    grid.append(tile.node);
  }
  W.layout.sources = Array.from({ length: n }, (_, i) => W.layout.sources[i] || null);
  W.tiles.forEach((t, i) => t.setSource(W.layout.sources[i]));
  for (const b of document.querySelectorAll("#wall-sizes [data-tiles]")) {
    b.setAttribute("aria-pressed", String(Number(b.dataset.tiles) === n));
  }
}

function saveLayout() {
  clearTimeout(W.saveTimer);
  setSaved("saving");
  W.saveTimer = setTimeout(async () => {
    const seq = ++W.saveSeq;
    const body = { tiles: W.layout.tiles, sources: W.layout.sources.slice(0, W.layout.tiles) };
    try {
      await api("/api/me/wall-layout", { method: "PUT", json: body });
      if (seq === W.saveSeq) setSaved("saved");
    } catch (err) {
      if (seq === W.saveSeq) setSaved("error");
      if (err instanceof HttpError && err.status === 401) signOut();
    }
  }, 250);
}

function setSaved(state) {
  const node = $("#layout-status");
  node.dataset.state = state;
  node.textContent = s(`saved.${state}`);
}

// ---------------------------------------------------------------------------
// Events (/ws): camera health and new incidents
// ---------------------------------------------------------------------------
function connectEvents() {
  clearTimeout(W.eventsTimer);
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/ws?token=${encodeURIComponent(W.token)}&batch=1`);
  W.events = ws;
  setEvents(W.eventsRetry ? "reconnecting" : "connecting");
  ws.onopen = () => { if (ws === W.events) { W.eventsRetry = 0; setEvents("live"); } };
  ws.onmessage = (ev) => {
    if (ws !== W.events) return;
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    if (msg && msg.type === "batch" && Array.isArray(msg.data)) msg.data.forEach(onEvent);
    else onEvent(msg);
  };
  ws.onclose = () => {
    if (ws !== W.events) return;
    W.events = null;
    setEvents("reconnecting");
    const delay = BACKOFF_MS[Math.min(W.eventsRetry++, BACKOFF_MS.length - 1)];
    W.eventsTimer = setTimeout(connectEvents, delay);
  };
}

function setEvents(state) {
  const node = $("#events-status");
  node.hidden = false;
  node.dataset.state = state;
  $(".conn-label", node).textContent = s(`events.${state}`);
}

function onEvent(msg) {
  if (!msg || typeof msg !== "object" || !msg.data) return;
  if (msg.type === "camera.health") {
    const { camera_id: id, status, reason } = msg.data;
    W.health.set(id, { status, reason });
    for (const t of W.tiles) if (t.source === id) t.setSourceStatus(status, reason);
  } else if (msg.type === "incident.created") {
    const { camera_id: id, severity, type } = msg.data;
    for (const t of W.tiles) if (id && t.source === id) t.flash(severity, type);
  }
}

// ---------------------------------------------------------------------------
// Start, sign-in
// ---------------------------------------------------------------------------
function applyText() {
  document.documentElement.lang = W.lang;
  for (const node of document.querySelectorAll("[data-w]")) node.textContent = s(node.dataset.w);
  document.title = `${s("title")} · GridHub`;
  $("#wall-lang").textContent = s("lang");
  for (const t of W.tiles) { t.fillPicker(); t.render(); }
  const saved = $("#layout-status");
  if (saved.dataset.state !== "idle") setSaved(saved.dataset.state);
  if (W.events) setEvents($("#events-status").dataset.state);
}

function showLogin(error = null) {
  $("#wall").hidden = true;
  $("#wall-tools").hidden = true;
  $("#wall-login").hidden = false;
  const e = $("#wall-login-error");
  e.hidden = !error;
  e.textContent = error || "";
}

function signOut() {
  W.token = null;
  write(sessionStorage, TOKEN_KEY, null);
  for (const t of W.tiles) t.destroy();
  W.tiles = [];
  if (W.events) { const ws = W.events; W.events = null; ws.close(1000); }
  clearTimeout(W.eventsTimer);
  showLogin();
}

async function login(ev) {
  ev.preventDefault();
  const form = ev.target;
  const button = $("#wall-login-submit");
  button.disabled = true;
  try {
    const res = await api("/api/auth/token", {
      method: "POST", form: { username: form.elements.username.value, password: form.elements.password.value },
    });
    W.token = res.access_token;
    write(sessionStorage, TOKEN_KEY, W.token);
    form.elements.password.value = "";
    await boot();
  } catch (err) {
    showLogin(err instanceof HttpError && err.status === 401 ? s("login.failed") : s("error.network"));
  } finally {
    button.disabled = false;
  }
}

async function boot() {
  if (!W.token) { showLogin(); return; }
  try {
    W.user = await api("/api/me");
    const [cameras, units, live, layout] = await Promise.all([
      api("/api/cameras"), optional("/api/units"), optional("/api/live/sources"),
      api("/api/me/wall-layout"),
    ]);
    W.cameras = cameras.map((c) => ({ id: c.id, name: c.name }));
    W.units = units.map((u) => ({ id: u.id, name: u.name }));
    W.live = live.map((x) => x.id);
    for (const c of cameras) if (c.status === "offline") W.health.set(c.id, { status: c.status, reason: c.reason });
    W.layout = { tiles: SIZES.includes(layout.tiles) ? layout.tiles : 4, sources: layout.sources || [] };
  } catch (err) {
    if (err instanceof HttpError && err.status === 401) { signOut(); return; }
    const banner = $("#wall-error");
    banner.hidden = false;
    banner.textContent = `${s("error.network")} (${err.status || "?"})`;
    setTimeout(boot, 5000);
    return;
  }
  $("#wall-error").hidden = true;
  $("#wall-login").hidden = true;
  $("#wall").hidden = false;
  $("#wall-tools").hidden = false;
  const who = $("#wall-user");
  who.hidden = false;
  who.textContent = W.user.name || W.user.username;
  applyLayout();
  connectEvents();
}

function init() {
  applyText();
  $("#wall-lang").addEventListener("click", () => {
    W.lang = W.lang === "en" ? "zh-CN" : "en";
    write(localStorage, LANG_KEY, W.lang);
    applyText();
  });
  $("#wall-login-form").addEventListener("submit", login);
  for (const b of document.querySelectorAll("#wall-sizes [data-tiles]")) {
    b.addEventListener("click", () => {
      const n = Number(b.dataset.tiles);
      if (n === W.layout.tiles) return;
      W.layout.tiles = n;
      applyLayout();
      saveLayout();
    });
  }
  window.gridhubWall = { tiles: () => W.tiles.map((t) => t.snapshot()), live: LIVE };
  boot();
}

init();
