// GridHub console: labels in zh-CN (default) and English.
// Every visible label goes through t(); static markup uses data-i18n attributes.

const STORAGE_KEY = "gridhub.lang";
export const LANGS = ["zh-CN", "en"];

const DICT = {
  "zh-CN": {
    "app.title": "GridHub 网格化服务管理指挥中心",
    "app.brand": "GridHub",
    "app.subtitle": "网格化服务管理指挥中心",
    "lang.toggle": "English",
    "lang.toggle.title": "切换到英文",

    "login.title": "值班登录",
    "login.username": "用户名",
    "login.password": "密码",
    "login.submit": "登录",
    "login.submitting": "正在登录…",
    "login.hint": "请使用分配给您的账号登录。",

    "header.logout": "退出登录",
    "nav.wall": "视频墙",
    "nav.map": "网格地图",
    "header.clock": "当前时间",

    "age.now": "刚刚",
    "age.min": "{n} 分钟前",
    "age.hour": "{n} 小时前",
    "age.day": "{n} 天前",

    "conn.live": "实时",
    "conn.reconnecting": "重连中",
    "conn.connecting": "连接中",
    "conn.title.live": "实时推送已连接",
    "conn.title.reconnecting": "实时推送已断开，正在重连（{s} 秒后重试）",
    "conn.title.connecting": "正在连接实时推送",

    "role.operator": "值班员",
    "role.dispatcher": "调度员",
    "role.department": "部门用户",
    "role.reviewer": "审核员",
    "role.admin": "管理员",
    "role.patrol": "巡查员",

    "list.title": "事件列表",
    "list.count": "共 {n} 条",
    "list.empty": "暂无符合条件的事件",
    "list.loading": "正在加载…",
    "list.refresh": "刷新",
    "filter.state": "状态",
    "filter.type": "类型",
    "filter.severity": "等级",
    "filter.all": "全部",

    "detail.placeholder": "从左侧列表选择一个事件查看详情",
    "detail.close": "关闭",
    "detail.snapshot": "现场快照",
    "detail.snapshot.loading": "正在加载快照…",
    "detail.snapshot.none": "暂无快照",
    "detail.loading": "正在加载事件详情…",
    "detail.fields": "事件信息",
    "detail.id": "事件编号",
    "detail.type": "事件类型",
    "detail.state": "当前状态",
    "detail.severity": "预警等级",
    "detail.camera": "摄像头",
    "detail.grid": "所属网格",
    "detail.confidence": "置信度",
    "detail.track": "跟踪编号",
    "detail.created_at": "创建时间",
    "detail.started_at": "开始时间",
    "detail.last_seen_at": "最近检测",
    "detail.updated_at": "更新时间",
    "detail.suggested": "建议处置部门",
    "detail.assigned": "已派遣部门",
    "detail.lead": "牵头部门",
    "detail.none": "无",
    "detail.actions": "处置操作",
    "detail.note": "备注（可选）",
    "detail.note.placeholder": "填写派遣或受理说明…",
    "detail.no_actions": "当前角色或状态下无可执行的操作。",
    "detail.timeline": "处置时间线",
    "detail.timeline.empty": "暂无记录",

    "action.dispatch_to": "派遣至 {dept}",
    "action.dispatch_other": "派遣",
    "action.dispatch_other.label": "其他部门",
    "action.accept": "受理",
    "action.working": "处理中…",
    "action.done.dispatch": "已派遣至 {dept}",
    "action.done.accept": "已受理",
    "action.confirm": "确认属实",
    "action.dismiss": "误报",
    "action.dismiss.label": "实为",
    "action.done.confirm": "已确认",
    "action.done.dismiss": "已作误报处理",
    "dismiss.not_person": "非人员（物体、动物、阴影）",
    "dismiss.person_ok": "人员，无异常",
    "dismiss.other": "其他",
    "dept.handles": "（对口）",

    "type.person_down": "人员倒地",
    "type.stranded_person": "人员滞留",
    "type.flooding": "道路积水",

    "state.new": "新建",
    "state.confirmed": "已确认",
    "state.dispatched": "已派遣",
    "state.accepted": "已受理",
    "state.on_scene": "已到场",
    "state.resolved": "已处置",
    "state.closed": "已办结",
    "state.dismissed": "已排除",
    "state.escalated": "已上报",
    "state.reopened": "已重开",

    "severity.blue": "蓝色",
    "severity.yellow": "黄色",
    "severity.orange": "橙色",
    "severity.red": "红色",

    "tl.action.created": "创建",
    "tl.action.updated": "更新",
    "tl.action.dispatch": "派遣",
    "tl.action.accept": "受理",
    "tl.action.confirm": "确认",
    "tl.action.dismiss": "误报",
    "tl.action.cleared": "已消失",
    "tl.actor.detector": "智能检测",
    "tl.actor.system": "系统",
    "tl.detail.department": "部门",
    "tl.detail.note": "备注",
    "tl.detail.confidence": "置信度",
    "tl.detail.severity": "等级",

    "error.generic": "操作失败",
    "error.network": "无法连接服务器，请检查网络",
    "error.login": "用户名或密码错误",
    "error.session": "登录已过期，请重新登录",
    "error.forbidden": "无权限执行此操作",
    "error.not_found": "事件不存在或已被删除",
    "error.conflict": "事件状态已变化，操作无法完成",
    "error.bad_request": "请求无效",
    "error.server": "服务器错误",
    "error.load_list": "加载事件列表失败",
    "error.load_detail": "加载事件详情失败",
    "error.snapshot": "快照加载失败",
  },
  en: {
    "app.title": "GridHub Grid Management Command Center",
    "app.brand": "GridHub",
    "app.subtitle": "Grid Management Command Center",
    "lang.toggle": "中文",
    "lang.toggle.title": "Switch to Chinese",

    "login.title": "Duty sign-in",
    "login.username": "Username",
    "login.password": "Password",
    "login.submit": "Sign in",
    "login.submitting": "Signing in…",
    "login.hint": "Sign in with the account assigned to you.",

    "header.logout": "Sign out",
    "nav.wall": "Video wall",
    "nav.map": "Grid map",
    "header.clock": "Current time",

    "age.now": "just now",
    "age.min": "{n} min ago",
    "age.hour": "{n} h ago",
    "age.day": "{n} d ago",

    "conn.live": "Live",
    "conn.reconnecting": "Reconnecting",
    "conn.connecting": "Connecting",
    "conn.title.live": "Live updates connected",
    "conn.title.reconnecting": "Live updates lost, retrying in {s} s",
    "conn.title.connecting": "Connecting to live updates",

    "role.operator": "Operator",
    "role.dispatcher": "Dispatcher",
    "role.department": "Department",
    "role.reviewer": "Reviewer",
    "role.admin": "Administrator",
    "role.patrol": "Patrol",

    "list.title": "Incidents",
    "list.count": "{n} total",
    "list.empty": "No incidents match the filters",
    "list.loading": "Loading…",
    "list.refresh": "Refresh",
    "filter.state": "State",
    "filter.type": "Type",
    "filter.severity": "Severity",
    "filter.all": "All",

    "detail.placeholder": "Select an incident from the list to see details",
    "detail.close": "Close",
    "detail.snapshot": "Snapshot",
    "detail.snapshot.loading": "Loading snapshot…",
    "detail.snapshot.none": "No snapshot",
    "detail.loading": "Loading incident…",
    "detail.fields": "Incident",
    "detail.id": "ID",
    "detail.type": "Type",
    "detail.state": "State",
    "detail.severity": "Severity",
    "detail.camera": "Camera",
    "detail.grid": "Grid",
    "detail.confidence": "Confidence",
    "detail.track": "Track",
    "detail.created_at": "Created",
    "detail.started_at": "Started",
    "detail.last_seen_at": "Last seen",
    "detail.updated_at": "Updated",
    "detail.suggested": "Suggested department",
    "detail.assigned": "Dispatched to",
    "detail.lead": "Lead department",
    "detail.none": "None",
    "detail.actions": "Actions",
    "detail.note": "Note (optional)",
    "detail.note.placeholder": "Dispatch or acceptance note…",
    "detail.no_actions": "No actions available for your role in this state.",
    "detail.timeline": "Timeline",
    "detail.timeline.empty": "No entries",

    "action.dispatch_to": "Dispatch to {dept}",
    "action.dispatch_other": "Dispatch",
    "action.dispatch_other.label": "Other department",
    "action.accept": "Accept",
    "action.working": "Working…",
    "action.done.dispatch": "Dispatched to {dept}",
    "action.done.accept": "Accepted",
    "action.confirm": "Confirm",
    "action.dismiss": "False alarm",
    "action.dismiss.label": "It was",
    "action.done.confirm": "Confirmed",
    "action.done.dismiss": "Dismissed as a false alarm",
    "dismiss.not_person": "not a person (object, animal, shadow)",
    "dismiss.person_ok": "a person, not in trouble",
    "dismiss.other": "something else",
    "dept.handles": " (handles this)",

    "type.person_down": "Person down",
    "type.stranded_person": "Stranded person",
    "type.flooding": "Road flooding",

    "state.new": "New",
    "state.confirmed": "Confirmed",
    "state.dispatched": "Dispatched",
    "state.accepted": "Accepted",
    "state.on_scene": "On scene",
    "state.resolved": "Resolved",
    "state.closed": "Closed",
    "state.dismissed": "Dismissed",
    "state.escalated": "Escalated",
    "state.reopened": "Reopened",

    "severity.blue": "Blue",
    "severity.yellow": "Yellow",
    "severity.orange": "Orange",
    "severity.red": "Red",

    "tl.action.created": "Created",
    "tl.action.updated": "Updated",
    "tl.action.dispatch": "Dispatch",
    "tl.action.accept": "Accept",
    "tl.action.confirm": "Confirm",
    "tl.action.dismiss": "Dismissed",
    "tl.action.cleared": "Cleared",
    "tl.actor.detector": "Detector",
    "tl.actor.system": "System",
    "tl.detail.department": "Department",
    "tl.detail.note": "Note",
    "tl.detail.confidence": "Confidence",
    "tl.detail.severity": "Severity",

    "error.generic": "Action failed",
    "error.network": "Cannot reach the server; check the network",
    "error.login": "Wrong username or password",
    "error.session": "Session expired, please sign in again",
    "error.forbidden": "You are not allowed to do this",
    "error.not_found": "Incident not found",
    "error.conflict": "The incident changed; the action could not be completed",
    "error.bad_request": "Invalid request",
    "error.server": "Server error",
    "error.load_list": "Could not load incidents",
    "error.load_detail": "Could not load incident details",
    "error.snapshot": "Could not load snapshot",
  },
};

// Known enumerations, in display order.
export const INCIDENT_TYPES = ["person_down", "stranded_person", "flooding"];
export const STATES = [
  "new", "confirmed", "dispatched", "accepted", "on_scene",
  "resolved", "closed", "dismissed", "escalated", "reopened",
];
export const SEVERITIES = ["red", "orange", "yellow", "blue"];

function initialLang() {
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    if (LANGS.includes(saved)) return saved;
  } catch { /* storage unavailable */ }
  return "zh-CN";
}

let current = initialLang();
const listeners = new Set();

export function getLang() {
  return current;
}

export function setLang(lang) {
  if (!LANGS.includes(lang) || lang === current) return;
  current = lang;
  try { localStorage.setItem(STORAGE_KEY, lang); } catch { /* ignore */ }
  applyI18n(document);
  for (const fn of listeners) fn(lang);
}

export function toggleLang() {
  setLang(current === "zh-CN" ? "en" : "zh-CN");
}

export function onLangChange(fn) {
  listeners.add(fn);
}

/** Does the dictionary know this key? */
export function has(key) {
  return key in DICT[current] || key in DICT["zh-CN"];
}

/** Translate key with {name} placeholders; falls back to zh-CN, then `fallback`, then the key. */
export function t(key, vars = null, fallback = undefined) {
  let s = DICT[current][key];
  if (s === undefined) s = DICT["zh-CN"][key];
  if (s === undefined) s = fallback !== undefined ? fallback : key;
  if (vars) {
    s = s.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m));
  }
  return s;
}

/** Label of an enumerated value, e.g. label("state", "new"); unknown values show as-is. */
export function label(group, value) {
  if (value === null || value === undefined || value === "") return "";
  return t(`${group}.${value}`, null, String(value));
}

/** Apply translations to static markup below root. */
export function applyI18n(root = document) {
  document.documentElement.lang = current;
  document.title = t("app.title");
  for (const el of root.querySelectorAll("[data-i18n]")) {
    el.textContent = t(el.dataset.i18n);
  }
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) {
    el.setAttribute("placeholder", t(el.dataset.i18nPlaceholder));
  }
  for (const el of root.querySelectorAll("[data-i18n-title]")) {
    el.setAttribute("title", t(el.dataset.i18nTitle));
  }
  for (const el of root.querySelectorAll("[data-i18n-aria-label]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nAriaLabel));
  }
}
