// GridHub patrol tablet: publish the unit's camera over WHIP and its GPS once a second.
// Plain ES module, no build step, no external resources. Labels in zh-CN (default) and
// English; the language choice is shared with the console (same storage key).

import { $, el, errorText, readStore, submitLogin, translate, writeStore } from "./pagekit.js";

const LANG_KEY = "gridhub.lang";
const TOKEN_KEY = "gridhub.patrol.token";
const RETRY_MS = [1000, 2000, 4000, 8000, 15000];
const GATHER_TIMEOUT_MS = 5000;
const DISCONNECTED_GRACE_MS = 5000;
const TELEMETRY_PERIOD_MS = 1000;

const DICT = {
  "zh-CN": {
    "app.subtitle": "巡逻车视频回传",
    "lang.toggle": "English",
    "logout": "退出登录",
    "login.title": "巡逻车登录",
    "login.hint": "使用本车账号登录（如 patrol-01）。",
    "login.username": "用户名",
    "login.password": "密码",
    "login.submit": "登录",
    "login.failed": "用户名或密码错误",
    "login.not_patrol": "该账号不是巡逻车账号",
    "login.error": "登录失败：{msg}",
    "camera": "摄像头",
    "camera.default": "默认摄像头",
    "start": "开始回传",
    "stop": "停止",
    "state.idle": "未回传",
    "state.connecting": "连接中",
    "state.live": "直播中",
    "state.reconnecting": "重连中",
    "state.error": "错误",
    "reason.retry": "{reason}，{s} 秒后重试",
    "reason.camera": "无法打开摄像头：{msg}",
    "reason.network": "网络错误：{msg}",
    "reason.dropped": "连接中断（{what}）",
    "reason.refused": "中心拒绝（{status}）：{msg}",
    "reason.unsupported": "此浏览器不支持 WebRTC",
    "facts.video": "视频",
    "facts.gps": "定位",
    "facts.channel": "遥测通道",
    "gps.none": "无定位",
    "gps.error": "定位失败：{msg}",
    "channel.datachannel": "数据通道",
    "channel.websocket": "WebSocket（备用）",
    "channel.none": "未发送",
    "unit": "车辆 {unit}",
    "dispatches.title": "派遣任务",
    "dispatches.empty": "暂无派遣给本车的任务",
    "dispatches.count": "共 {n} 条",
    "act.accept": "签收",
    "act.en_route": "已出发",
    "act.on_scene": "已到场",
    "act.feedback": "反馈",
    "act.resolve": "处置完毕",
    "act.working": "处理中…",
    "act.done": "已提交",
    "act.need_text": "请填写反馈内容或处置结果",
    "form.text": "反馈 / 处置结果",
    "form.photo": "现场照片",
    "lead": "牵头",
    "due.ack": "签收时限",
    "due.resolve": "处置时限",
    "due.left": "剩余 {t}",
    "due.over": "已超时 {t}",
    "state.new": "新建", "state.confirmed": "已确认", "state.dispatched": "已派遣",
    "state.accepted": "已受理", "state.on_scene": "已到场", "state.resolved": "已处置",
    "state.closed": "已办结", "state.dismissed": "已排除", "state.escalated": "已上报",
    "state.reopened": "已重开",
    "sev.blue": "蓝色", "sev.yellow": "黄色", "sev.orange": "橙色", "sev.red": "红色",
    "error.http": "操作失败（{status}）：{msg}",
  },
  en: {
    "app.subtitle": "Patrol video uplink",
    "lang.toggle": "中文",
    "logout": "Log out",
    "login.title": "Patrol unit sign-in",
    "login.hint": "Sign in with this vehicle's account (e.g. patrol-01).",
    "login.username": "Username",
    "login.password": "Password",
    "login.submit": "Sign in",
    "login.failed": "Wrong username or password",
    "login.not_patrol": "This account is not a patrol unit",
    "login.error": "Sign-in failed: {msg}",
    "camera": "Camera",
    "camera.default": "Default camera",
    "start": "Start streaming",
    "stop": "Stop",
    "state.idle": "Not streaming",
    "state.connecting": "Connecting",
    "state.live": "Live",
    "state.reconnecting": "Reconnecting",
    "state.error": "Error",
    "reason.retry": "{reason}; retrying in {s} s",
    "reason.camera": "Cannot open the camera: {msg}",
    "reason.network": "Network error: {msg}",
    "reason.dropped": "Connection lost ({what})",
    "reason.refused": "Refused by the hub ({status}): {msg}",
    "reason.unsupported": "This browser has no WebRTC",
    "facts.video": "Video",
    "facts.gps": "Position",
    "facts.channel": "Telemetry via",
    "gps.none": "No fix",
    "gps.error": "Position error: {msg}",
    "channel.datachannel": "data channel",
    "channel.websocket": "WebSocket (fallback)",
    "channel.none": "not sent",
    "unit": "Unit {unit}",
    "dispatches.title": "Dispatches",
    "dispatches.empty": "Nothing dispatched to this unit",
    "dispatches.count": "{n} total",
    "act.accept": "Accept",
    "act.en_route": "On the way",
    "act.on_scene": "On scene",
    "act.feedback": "Send feedback",
    "act.resolve": "Resolved",
    "act.working": "Working…",
    "act.done": "Sent",
    "act.need_text": "Write the feedback or the result first",
    "form.text": "Feedback / result",
    "form.photo": "Photo",
    "lead": "lead",
    "due.ack": "Accept by",
    "due.resolve": "Resolve by",
    "due.left": "{t} left",
    "due.over": "overdue by {t}",
    "state.new": "New", "state.confirmed": "Confirmed", "state.dispatched": "Dispatched",
    "state.accepted": "Accepted", "state.on_scene": "On scene", "state.resolved": "Resolved",
    "state.closed": "Closed", "state.dismissed": "Dismissed", "state.escalated": "Escalated",
    "state.reopened": "Reopened",
    "sev.blue": "Blue", "sev.yellow": "Yellow", "sev.orange": "Orange", "sev.red": "Red",
    "error.http": "Failed ({status}): {msg}",
  },
};

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------
const S = {
  lang: readStore(localStorage, LANG_KEY) === "en" ? "en" : "zh-CN",
  token: readStore(sessionStorage, TOKEN_KEY),
  user: null,
  unit: null,
  state: "idle", // idle | connecting | live | reconnecting | error
  reason: "",
  reasonKey: null,
  wanted: false, // the crew pressed Start and not Stop
  gen: 0, // bumps on every (re)connect and stop; stale callbacks check it
  pc: null,
  dc: null,
  stream: null,
  location: null,
  retry: 0,
  retryTimer: 0,
  disconnectedTimer: 0,
  statsTimer: 0,
  lastBytes: null,
  position: null,
  gpsError: null,
  gpsWatch: null,
  telemetryTimer: 0,
  telemetrySent: 0,
  channel: "none",
  ws: null,
  wsRetry: 0,
  wsTimer: 0,
  dispatches: new Map(), // incident id -> incident assigned to this unit
  types: new Map(), // type id -> {name, name_en}
  busy: new Map(), // incident id -> action in flight
};

// ---------------------------------------------------------------------------
// i18n and DOM
// ---------------------------------------------------------------------------
function t(key, vars = null) {
  return translate(DICT, S.lang, key, vars);
}

function applyLang() {
  document.documentElement.lang = S.lang;
  for (const el of document.querySelectorAll("[data-t]")) el.textContent = t(el.dataset.t);
  document.title = `GridHub · ${t("app.subtitle")}`;
  renderDispatches();
  renderState();
  renderFacts();
  if (S.unit) $("#current-unit").textContent = t("unit", { unit: S.unit });
}

function setState(state, reason = "") {
  S.state = state;
  S.reason = reason;
  renderState();
}

function renderState() {
  const el = $("#state");
  el.dataset.state = S.state;
  el.textContent = t(`state.${S.state}`);
  $("#state-reason").textContent = S.reason;
  $("#start-btn").hidden = S.wanted;
  $("#stop-btn").hidden = !S.wanted;
  $("#camera-select").disabled = S.wanted;
}

function renderFacts() {
  const p = S.position;
  $("#gps-facts").textContent = S.gpsError ? t("gps.error", { msg: S.gpsError })
    : p ? `${p.lat.toFixed(6)}, ${p.lon.toFixed(6)} ±${Math.round(p.accuracy ?? 0)} m` : t("gps.none");
  $("#channel-facts").textContent = `${t(`channel.${S.channel}`)} (${S.telemetrySent})`;
}

// ---------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------
async function api(path, opts = {}) {
  const headers = { ...(opts.headers || {}) };
  if (S.token) headers.Authorization = `Bearer ${S.token}`;
  return fetch(path, { ...opts, headers });
}

function onLogin(ev) {
  return submitLogin(ev, t, async (token) => {
    S.token = token;
    writeStore(sessionStorage, TOKEN_KEY, S.token);
    await enter();
  });
}

async function enter() {
  const resp = await api("/api/me");
  if (resp.status === 401) return showLogin();
  if (!resp.ok) throw new Error(await errorText(resp));
  const user = await resp.json();
  const unit = new URLSearchParams(location.search).get("unit") || user.unit;
  if (!unit || !(user.role === "patrol" || user.role === "admin")) {
    showLogin(t("login.not_patrol"));
    return;
  }
  S.user = user;
  S.unit = unit;
  $("#login-view").hidden = true;
  $("#patrol-view").hidden = false;
  $("#logout-btn").hidden = false;
  $("#current-unit").hidden = false;
  $("#current-unit").textContent = t("unit", { unit });
  startGps();
  connectWs();
  loadTypes();
  loadDispatches();
  await listCameras();
}

function showLogin(message = "") {
  stop();
  stopGps();
  closeWs();
  S.token = null;
  S.user = null;
  S.unit = null;
  S.dispatches.clear();
  renderDispatches();
  writeStore(sessionStorage, TOKEN_KEY, null);
  $("#patrol-view").hidden = true;
  $("#logout-btn").hidden = true;
  $("#current-unit").hidden = true;
  $("#login-view").hidden = false;
  const err = $("#login-error");
  err.textContent = message;
  err.hidden = !message;
}

// ---------------------------------------------------------------------------
// Cameras
// ---------------------------------------------------------------------------
const BACK = /back|rear|environment|后置|后/i;

async function listCameras() {
  const select = $("#camera-select");
  let devices = [];
  try {
    devices = (await navigator.mediaDevices.enumerateDevices())
      .filter((d) => d.kind === "videoinput");
  } catch { /* no media devices: the default camera is tried on Start */ }
  const previous = select.value;
  select.replaceChildren();
  const auto = document.createElement("option");
  auto.value = "";
  auto.textContent = t("camera.default");
  select.append(auto);
  devices.forEach((d, i) => {
    const o = document.createElement("option");
    o.value = d.deviceId;
    o.textContent = d.label || `${t("camera")} ${i + 1}`;
    select.append(o);
  });
  const back = devices.find((d) => BACK.test(d.label));
  select.value = previous && [...select.options].some((o) => o.value === previous) ? previous
    : back ? back.deviceId : "";
}

async function openCamera() {
  const id = $("#camera-select").value;
  const video = {
    width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30, max: 30 },
  };
  if (id) video.deviceId = { exact: id };
  else video.facingMode = { ideal: "environment" }; // the back camera by default
  const stream = await navigator.mediaDevices.getUserMedia({ video, audio: false });
  const [track] = stream.getVideoTracks();
  if ("contentHint" in track) track.contentHint = "detail"; // keep resolution, drop fps
  $("#preview").srcObject = stream;
  return stream;
}

// ---------------------------------------------------------------------------
// WHIP publishing
// ---------------------------------------------------------------------------
async function start() {
  if (S.wanted) return;
  if (!window.RTCPeerConnection) {
    setState("error", t("reason.unsupported"));
    return;
  }
  S.wanted = true;
  S.retry = 0;
  setState("connecting");
  try {
    S.stream = await openCamera();
    await listCameras(); // labels are visible once the camera permission is granted
  } catch (e) {
    S.wanted = false;
    setState("error", t("reason.camera", { msg: e.message || e.name }));
    return;
  }
  connect();
}

async function connect() {
  const gen = ++S.gen;
  clearTimeout(S.retryTimer);
  setState(S.retry ? "reconnecting" : "connecting", S.retry ? S.reason : "");
  await teardownPeer(); // the old session is gone before the new one is offered
  if (gen !== S.gen || !S.stream) return;
  const pc = new RTCPeerConnection({ iceServers: [], bundlePolicy: "max-bundle" });
  S.pc = pc;
  const [track] = S.stream.getVideoTracks();
  const tx = pc.addTransceiver(track, {
    direction: "sendonly", streams: [S.stream],
    sendEncodings: [{ maxBitrate: 2_500_000, maxFramerate: 30 }],
  });
  const dc = pc.createDataChannel("telemetry", { ordered: false, maxRetransmits: 0 });
  S.dc = dc;
  dc.onclose = () => { if (gen === S.gen && S.wanted) dropped("data channel closed"); };
  pc.onconnectionstatechange = () => {
    if (gen !== S.gen) return;
    const st = pc.connectionState;
    clearTimeout(S.disconnectedTimer);
    if (st === "connected") {
      S.retry = 0;
      setState("live");
      preferResolution(tx.sender);
      startStats(pc);
    } else if (st === "failed" || st === "closed") {
      dropped(st);
    } else if (st === "disconnected") {
      S.disconnectedTimer = setTimeout(() => {
        if (gen === S.gen && pc.connectionState === "disconnected") dropped("disconnected");
      }, DISCONNECTED_GRACE_MS);
    }
  };
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    if (gen !== S.gen) return;
    const resp = await api(`/whip/${encodeURIComponent(S.unit)}`, {
      method: "POST", headers: { "Content-Type": "application/sdp" },
      body: pc.localDescription.sdp,
    });
    if (gen !== S.gen) {
      if (resp.ok) deleteSession(new URL(resp.headers.get("Location"), location.href).href);
      return;
    }
    if (resp.status === 401) {
      showLogin(t("login.failed"));
      return;
    }
    if (resp.status !== 201) {
      const msg = t("reason.refused", { status: resp.status, msg: await errorText(resp) });
      // 409: our old session is still ending; 5xx: the hub is busy. Both are worth a retry.
      if (resp.status === 409 || resp.status >= 500) retryLater(msg);
      else fail(msg);
      return;
    }
    S.location = new URL(resp.headers.get("Location"), location.href).href;
    await pc.setRemoteDescription({ type: "answer", sdp: await resp.text() });
  } catch (e) {
    if (gen === S.gen) retryLater(t("reason.network", { msg: e.message || e.name }));
  }
}

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, GATHER_TIMEOUT_MS); // send what we have
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

async function preferResolution(sender) {
  // A patrol video is evidence: under pressure lower the frame rate, not the resolution.
  try {
    const params = sender.getParameters();
    params.degradationPreference = "maintain-resolution";
    await sender.setParameters(params);
  } catch { /* older browsers: contentHint already says so */ }
}

function dropped(what) {
  if (!S.wanted) return;
  retryLater(t("reason.dropped", { what }));
}

function retryLater(reason) {
  const gen = ++S.gen;
  teardownPeer();
  const delay = RETRY_MS[Math.min(S.retry, RETRY_MS.length - 1)];
  S.retry += 1;
  setState("reconnecting", t("reason.retry", { reason, s: Math.round(delay / 1000) }));
  S.reason = reason;
  clearTimeout(S.retryTimer);
  S.retryTimer = setTimeout(() => { if (gen === S.gen && S.wanted) connect(); }, delay);
}

function fail(reason) {
  S.wanted = false;
  S.gen += 1;
  stopCamera(teardownPeer());
  setState("error", reason);
}

function stop() {
  S.wanted = false;
  S.gen += 1;
  clearTimeout(S.retryTimer);
  stopCamera(teardownPeer());
  setState("idle");
}

function teardownPeer() {
  clearTimeout(S.disconnectedTimer);
  clearInterval(S.statsTimer);
  const pc = S.pc;
  const url = S.location;
  S.location = null;
  S.pc = null;
  if (S.dc) {
    S.dc.onclose = null;
    S.dc = null;
  }
  if (pc) pc.onconnectionstatechange = null;
  S.lastBytes = null;
  $("#video-facts").textContent = "—";
  // DELETE first; the media stops once the hub has answered it (at most 2 s later), so the
  // hub ends the session for the DELETE, not for the media that stopped a moment earlier.
  const answered = url ? Promise.race([deleteSession(url), sleep(2000)]) : Promise.resolve();
  return answered.then(() => { if (pc) pc.close(); });
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function deleteSession(url) {
  // Best effort: if the network is gone, the hub ends the session when video stops.
  return api(url, { method: "DELETE", keepalive: true }).catch(() => {});
}

function stopCamera(after = Promise.resolve()) {
  const stream = S.stream;
  S.stream = null;
  $("#preview").srcObject = null;
  after.then(() => { if (stream) for (const tr of stream.getTracks()) tr.stop(); });
}

function startStats(pc) {
  clearInterval(S.statsTimer);
  S.statsTimer = setInterval(async () => {
    if (pc !== S.pc) return;
    const report = await pc.getStats();
    for (const s of report.values()) {
      if (s.type !== "outbound-rtp" || s.kind !== "video") continue;
      let kbps = 0;
      if (S.lastBytes) {
        kbps = ((s.bytesSent - S.lastBytes.bytes) * 8) / (s.timestamp - S.lastBytes.t);
      }
      S.lastBytes = { bytes: s.bytesSent, t: s.timestamp };
      $("#video-facts").textContent =
        `${s.frameWidth ?? "?"}x${s.frameHeight ?? "?"} ${Math.round(s.framesPerSecond ?? 0)} fps ` +
        `${Math.round(kbps)} kbit/s`;
    }
  }, 1000);
}

// ---------------------------------------------------------------------------
// GPS telemetry: data channel when open, else the console WebSocket
// ---------------------------------------------------------------------------
function startGps() {
  if (!navigator.geolocation || S.gpsWatch !== null) return;
  S.gpsWatch = navigator.geolocation.watchPosition(
    (pos) => {
      const c = pos.coords;
      S.gpsError = null;
      S.position = {
        lat: c.latitude, lon: c.longitude,
        speed: Number.isFinite(c.speed) ? c.speed : null,
        heading: Number.isFinite(c.heading) ? c.heading : null,
        accuracy: Number.isFinite(c.accuracy) ? c.accuracy : null,
        time: Math.round(pos.timestamp || Date.now()),
      };
      renderFacts();
    },
    (err) => { S.gpsError = err.message || String(err.code); renderFacts(); },
    { enableHighAccuracy: true, maximumAge: 1000, timeout: 30000 },
  );
  clearInterval(S.telemetryTimer);
  S.telemetryTimer = setInterval(sendTelemetry, TELEMETRY_PERIOD_MS);
}

function stopGps() {
  if (S.gpsWatch !== null) navigator.geolocation.clearWatch(S.gpsWatch);
  S.gpsWatch = null;
  clearInterval(S.telemetryTimer);
}

function sendTelemetry() {
  const p = S.position;
  if (!p) return;
  const text = JSON.stringify(p);
  if (S.dc && S.dc.readyState === "open") {
    S.dc.send(text);
    S.channel = "datachannel";
  } else if (S.ws && S.ws.readyState === WebSocket.OPEN) {
    S.ws.send(JSON.stringify({ type: "telemetry", data: p }));
    S.channel = "websocket";
  } else {
    S.channel = "none";
    renderFacts();
    return;
  }
  S.telemetrySent += 1;
  renderFacts();
}

function connectWs() {
  closeWs();
  if (!S.token) return;
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/ws?token=${encodeURIComponent(S.token)}`);
  S.ws = ws;
  ws.onopen = () => {
    S.wsRetry = 0;
    $("#dispatches-conn").dataset.state = "live";
    loadDispatches(); // what was missed while disconnected
  };
  ws.onmessage = (ev) => {
    if (S.ws !== ws) return;
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    if (msg && (msg.type === "incident.created" || msg.type === "incident.updated")) upsertDispatch(msg.data);
  };
  ws.onclose = () => {
    if (S.ws !== ws) return;
    S.ws = null;
    $("#dispatches-conn").dataset.state = "reconnecting";
    const delay = RETRY_MS[Math.min(S.wsRetry++, RETRY_MS.length - 1)];
    S.wsTimer = setTimeout(connectWs, delay);
  };
}

function closeWs() {
  clearTimeout(S.wsTimer);
  const ws = S.ws;
  S.ws = null;
  if (ws) ws.close();
}

// ---------------------------------------------------------------------------
// Dispatches: the cases assigned to this unit, live over the WebSocket
// ---------------------------------------------------------------------------
// Mirrors hub/states.py for the unit's own actions (the server is the authority).
const ACTIONS = [
  ["accept", ["dispatched"]],
  ["en_route", ["accepted"]],
  ["on_scene", ["dispatched", "accepted"]],
  ["feedback", ["dispatched", "accepted", "on_scene"]],
  ["resolve", ["accepted", "on_scene"]],
];
const DONE = new Set(["resolved", "closed", "dismissed"]);

async function loadTypes() {
  try {
    const resp = await api("/api/types");
    if (!resp.ok) return;
    for (const ty of await resp.json()) S.types.set(ty.id, ty);
    renderDispatches(true);
  } catch { /* names fall back to ids */ }
}

async function loadDispatches() {
  if (!S.token) return;
  try {
    const resp = await api("/api/incidents?limit=200");
    if (resp.status === 401) return showLogin(t("login.failed"));
    if (!resp.ok) throw new Error(await errorText(resp));
    const items = (await resp.json()).items || [];
    const seen = new Set();
    for (const inc of items) {
      if (!mine(inc)) continue;
      seen.add(inc.id);
      const old = S.dispatches.get(inc.id);
      if (!old || Date.parse(inc.updated_at) >= Date.parse(old.updated_at)) S.dispatches.set(inc.id, inc);
    }
    for (const id of [...S.dispatches.keys()]) if (!seen.has(id)) S.dispatches.delete(id);
    $("#dispatches-error").hidden = true;
  } catch (e) {
    $("#dispatches-error").textContent = e.message || String(e);
    $("#dispatches-error").hidden = false;
  }
  renderDispatches();
}

/** Assigned to this unit and not closed (a resolved case stays until the center closes it). */
function mine(inc) {
  return !!inc && Array.isArray(inc.units) && inc.units.includes(S.unit)
    && (!DONE.has(inc.state) || inc.state === "resolved");
}

function upsertDispatch(inc) {
  if (!inc || !inc.id) return;
  const old = S.dispatches.get(inc.id);
  if (old && Date.parse(old.updated_at) > Date.parse(inc.updated_at)) return;
  if (mine(inc)) S.dispatches.set(inc.id, inc);
  else S.dispatches.delete(inc.id);
  renderDispatches();
}

function typeName(id) {
  const ty = S.types.get(id);
  if (!ty) return id;
  return S.lang === "en" ? ty.name_en || ty.name || id : ty.name || id;
}


function dueText(iso) {
  const left = Math.round((Date.parse(iso) - Date.now()) / 1000);
  const a = Math.abs(left);
  const p2 = (n) => String(n).padStart(2, "0");
  const hms = `${a >= 3600 ? `${Math.floor(a / 3600)}:` : ""}${p2(Math.floor((a % 3600) / 60))}:${p2(a % 60)}`;
  return { text: t(left >= 0 ? "due.left" : "due.over", { t: hms }), over: left < 0 };
}

/** One row per case; the form (text, photo) persists across live updates. */
function renderDispatches() {
  const ul = $("#dispatch-list");
  const items = [...S.dispatches.values()].sort((a, b) => Date.parse(b.created_at) - Date.parse(a.created_at));
  const keep = new Set(items.map((i) => i.id));
  for (const li of [...ul.children]) if (!keep.has(li.dataset.id)) li.remove();
  items.forEach((inc, i) => {
    let li = ul.querySelector(`li.dispatch[data-id="${CSS.escape(inc.id)}"]`);
    if (!li) {
      li = el("li", { class: "dispatch", dataset: { id: inc.id } },
        el("div", { class: "d-head" }),
        el("div", { class: "d-actions" }),
        el("div", { class: "d-form" },
          el("label", { class: "field" }, el("span", { class: "d-text-label" }),
            el("textarea", { class: "d-text", rows: "2", maxlength: "4000" })),
          el("label", { class: "field" }, el("span", { class: "d-photo-label" }),
            el("input", { class: "d-photo", type: "file", accept: "image/*", capture: "environment" })),
        ),
        el("p", { class: "error d-error", role: "alert", hidden: true }),
        el("p", { class: "info d-info", role: "status", hidden: true }),
      );
    }
    if (ul.children[i] !== li) ul.insertBefore(li, ul.children[i] || null);
    li.dataset.state = inc.state;
    li.dataset.severity = inc.severity || "blue";
    renderDispatch(li, inc);
  });
  $("#dispatches-empty").hidden = items.length > 0;
  $("#dispatches-count").textContent = t("dispatches.count", { n: items.length });
}

function renderDispatch(li, inc) {
  const busy = S.busy.get(inc.id);
  const pos = Array.isArray(inc.position) ? `${Number(inc.position[0]).toFixed(5)}, ${Number(inc.position[1]).toFixed(5)}` : null;
  const deps = (inc.departments || []).map((d) => (d === inc.lead_department ? `${d} (${t("lead")})` : d)).join(", ");
  const dues = [["due.ack", inc.ack_due], ["due.resolve", inc.resolve_due]].filter(([, v]) => v).map(([k, v]) => {
    const d = dueText(v);
    return el("span", { class: `d-due${d.over ? " overdue" : ""}`, dataset: { due: v } }, `${t(k)}: ${d.text}`);
  });
  li.querySelector(".d-head").replaceChildren(
    el("div", { class: "d-title" },
      el("span", { class: `sev-chip sev-${inc.severity || "blue"}`, text: t(`sev.${inc.severity || "blue"}`) }),
      el("span", { class: "d-type", text: typeName(inc.type) }),
      el("span", { class: `badge state-${inc.state}`, dataset: { state: inc.state }, text: t(`state.${inc.state}`) }),
      el("span", { class: "muted", text: inc.id })),
    el("div", { class: "d-meta" }, [inc.grid_name || inc.grid_id, inc.camera_name, pos].filter(Boolean).join(" · ")),
    inc.description ? el("div", { class: "d-desc", text: inc.description }) : null,
    deps ? el("div", { class: "d-meta", text: `→ ${deps}` }) : null,
    inc.last_note ? el("div", { class: "d-meta", text: `“${inc.last_note}”` }) : null,
    dues.length ? el("div", { class: "d-meta" }, dues.map((d, i) => [i ? " · " : "", d])) : null,
  );
  li.querySelector(".d-actions").replaceChildren(...ACTIONS.filter(([, from]) => from.includes(inc.state)).map(([a]) =>
    el("button", {
      type: "button", class: `btn ${a === "accept" || a === "resolve" ? "btn-primary" : ""}`,
      dataset: { action: a }, disabled: !!busy,
      text: busy === a ? t("act.working") : t(`act.${a}`),
      onclick: () => act(inc.id, a),
    })));
  li.querySelector(".d-text-label").textContent = t("form.text");
  li.querySelector(".d-photo-label").textContent = t("form.photo");
  li.querySelector(".d-form").hidden = !["dispatched", "accepted", "on_scene"].includes(inc.state);
}

async function act(id, action) {
  const li = document.querySelector(`#dispatch-list li.dispatch[data-id="${CSS.escape(id)}"]`);
  if (!li || S.busy.get(id)) return;
  const err = li.querySelector(".d-error");
  const info = li.querySelector(".d-info");
  const text = li.querySelector(".d-text").value.trim();
  const fileInput = li.querySelector(".d-photo");
  err.hidden = true;
  info.hidden = true;
  if ((action === "feedback" || action === "resolve") && !text) {
    err.textContent = t("act.need_text");
    err.hidden = false;
    return;
  }
  S.busy.set(id, action);
  renderDispatches();
  try {
    const path = `/api/incidents/${encodeURIComponent(id)}`;
    let body = text ? { note: text } : {};
    if (action === "feedback" || action === "resolve") {
      const photos = [];
      for (const f of fileInput.files || []) {
        const fd = new FormData();
        fd.append("photo", f, f.name || "photo.jpg");
        const r = await api(`${path}/photos`, { method: "POST", body: fd });
        if (!r.ok) throw new Error(t("error.http", { status: r.status, msg: await errorText(r) }));
        photos.push((await r.json()).id);
      }
      body = action === "feedback" ? { text, photos } : { result: text, photos };
    }
    const r = await api(`${path}/${action}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (r.status === 401) return showLogin(t("login.failed"));
    if (!r.ok) throw new Error(t("error.http", { status: r.status, msg: await errorText(r) }));
    li.querySelector(".d-text").value = "";
    fileInput.value = "";
    info.textContent = t("act.done");
    info.hidden = false;
    S.busy.delete(id);
    upsertDispatch(await r.json());
  } catch (e) {
    err.textContent = e.message || String(e);
    err.hidden = false;
  } finally {
    S.busy.delete(id);
    renderDispatches();
  }
}

function tickDues() {
  for (const span of document.querySelectorAll("#dispatch-list .d-due[data-due]")) {
    const d = dueText(span.dataset.due);
    span.classList.toggle("overdue", d.over);
    span.textContent = `${span.textContent.split(":")[0]}: ${d.text}`;
  }
}

// ---------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------
function init() {
  $("#login-form").addEventListener("submit", onLogin);
  $("#start-btn").addEventListener("click", start);
  $("#stop-btn").addEventListener("click", stop);
  $("#logout-btn").addEventListener("click", () => showLogin());
  $("#lang-toggle").addEventListener("click", () => {
    S.lang = S.lang === "zh-CN" ? "en" : "zh-CN";
    writeStore(localStorage, LANG_KEY, S.lang);
    applyLang();
  });
  window.addEventListener("pagehide", () => { if (S.location) deleteSession(S.location); });
  setInterval(tickDues, 1000);
  applyLang();
  if (S.token) enter().catch(() => showLogin());
  else showLogin();
}

// For tests and field diagnostics (read-only view of the page's state).
window.gridhubPatrol = {
  get state() { return S.state; },
  get reason() { return S.reason; },
  get pc() { return S.pc; },
  get telemetrySent() { return S.telemetrySent; },
  get channel() { return S.channel; },
  get dispatches() { return [...S.dispatches.keys()]; },
};

init();
