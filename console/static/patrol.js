// GridHub patrol tablet: publish the unit's camera over WHIP and its GPS once a second.
// Plain ES module, no build step, no external resources. Labels in zh-CN (default) and
// English; the language choice is shared with the console (same storage key).

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
};

function readStore(store, key) {
  try { return store.getItem(key); } catch { return null; }
}
function writeStore(store, key, value) {
  try {
    if (value) store.setItem(key, value);
    else store.removeItem(key);
  } catch { /* storage unavailable: keep it in memory */ }
}

// ---------------------------------------------------------------------------
// i18n and DOM
// ---------------------------------------------------------------------------
const $ = (sel) => document.querySelector(sel);

function t(key, vars = null) {
  let s = DICT[S.lang][key] ?? DICT["zh-CN"][key] ?? key;
  if (vars) for (const [k, v] of Object.entries(vars)) s = s.replaceAll(`{${k}}`, String(v));
  return s;
}

function applyLang() {
  document.documentElement.lang = S.lang;
  for (const el of document.querySelectorAll("[data-t]")) el.textContent = t(el.dataset.t);
  document.title = `GridHub · ${t("app.subtitle")}`;
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

async function detail(resp) {
  try {
    const body = await resp.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    return resp.statusText || String(resp.status);
  }
}

async function onLogin(ev) {
  ev.preventDefault();
  const form = ev.target;
  const err = $("#login-error");
  err.hidden = true;
  $("#login-submit").disabled = true;
  try {
    const body = new URLSearchParams({
      username: form.username.value.trim(), password: form.password.value,
    });
    const resp = await fetch("/api/auth/token", { method: "POST", body });
    if (!resp.ok) {
      err.textContent = resp.status === 401 ? t("login.failed")
        : t("login.error", { msg: await detail(resp) });
      err.hidden = false;
      return;
    }
    S.token = (await resp.json()).access_token;
    writeStore(sessionStorage, TOKEN_KEY, S.token);
    form.password.value = "";
    await enter();
  } catch (e) {
    err.textContent = t("login.error", { msg: e.message });
    err.hidden = false;
  } finally {
    $("#login-submit").disabled = false;
  }
}

async function enter() {
  const resp = await api("/api/me");
  if (resp.status === 401) return showLogin();
  if (!resp.ok) throw new Error(await detail(resp));
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
  await listCameras();
}

function showLogin(message = "") {
  stop();
  stopGps();
  closeWs();
  S.token = null;
  S.user = null;
  S.unit = null;
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
      const msg = t("reason.refused", { status: resp.status, msg: await detail(resp) });
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
  ws.onopen = () => { S.wsRetry = 0; };
  ws.onclose = () => {
    if (S.ws !== ws) return;
    S.ws = null;
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
};

init();
