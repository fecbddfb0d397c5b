// Small helpers shared by the single-purpose pages (/patrol, /report, /replay): storage that
// may be unavailable, DOM building, translation with {placeholders}, the hub's error text and
// the sign-in form.

export const $ = (sel) => document.querySelector(sel);

export function readStore(store, key) {
  try { return store.getItem(key); } catch { return null; }
}

export function writeStore(store, key, value) {
  try {
    if (value) store.setItem(key, value);
    else store.removeItem(key);
  } catch { /* storage unavailable: keep it in memory */ }
}

// dict: {lang: {key: text}}; zh-CN is the fallback.
export function translate(dict, lang, key, vars = null) {
  let s = dict[lang]?.[key] ?? dict["zh-CN"][key] ?? key;
  if (vars) for (const [k, v] of Object.entries(vars)) s = s.replaceAll(`{${k}}`, String(v));
  return s;
}

export function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") e.textContent = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of kids.flat()) if (c !== null && c !== undefined && c !== false) e.append(c);
  return e;
}

// The hub's error as one line: {"detail": text | [422 items] | {message, allowed}}.
export async function errorText(resp) {
  try {
    const body = await resp.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    if (body.detail && body.detail.message) {  // 409: {message, allowed}
      const allowed = (body.detail.allowed || []).join(", ");
      return allowed ? `${body.detail.message} (→ ${allowed})` : body.detail.message;
    }
    return JSON.stringify(body.detail);
  } catch {
    return resp.statusText || String(resp.status);
  }
}

// The sign-in form's submit handler (#login-error, #login-submit): asks the hub for a token,
// shows a refusal in the form, and hands the token to onToken (which stores it and enters).
export async function submitLogin(ev, t, onToken) {
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
        : t("login.error", { msg: await errorText(resp) });
      err.hidden = false;
      return;
    }
    const token = (await resp.json()).access_token;
    form.password.value = "";
    await onToken(token);
  } catch (e) {
    err.textContent = t("login.error", { msg: e.message });
    err.hidden = false;
  } finally {
    $("#login-submit").disabled = false;
  }
}
