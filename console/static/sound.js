// Alert tones for orange and red incidents, generated with the Web Audio API (no audio
// files). Browsers may block audio until the user interacts with the page: then the tone
// is skipped silently, never an error. The mute choice is remembered in localStorage.

const KEY = "gridhub.mute";
let ctx = null;

export function isMuted() {
  try { return localStorage.getItem(KEY) === "1"; } catch { return false; }
}

export function setMuted(muted) {
  try { localStorage.setItem(KEY, muted ? "1" : "0"); } catch { /* storage unavailable */ }
}

/** Create or resume the audio context; call from a user gesture so later alerts can play. */
export function unlock() {
  try {
    const AC = window.AudioContext || window.webkitAudioContext;
    if (!AC) return;
    if (!ctx) ctx = new AC();
    if (ctx.state === "suspended") ctx.resume().catch(() => { /* still blocked */ });
  } catch { /* no audio on this device */ }
}

function beep(at, freq, dur) {
  const osc = ctx.createOscillator();
  const gain = ctx.createGain();
  osc.type = "square";
  osc.frequency.setValueAtTime(freq, at);
  gain.gain.setValueAtTime(0.0001, at);
  gain.gain.exponentialRampToValueAtTime(0.15, at + 0.01);
  gain.gain.exponentialRampToValueAtTime(0.0001, at + dur);
  osc.connect(gain).connect(ctx.destination);
  osc.start(at);
  osc.stop(at + dur + 0.02);
}

/** Play the tone for a severity (red: three high beeps, orange: two lower ones).
 * Returns true when it was played, false when muted or blocked. Never throws. */
export function alert(severity) {
  if (isMuted()) return false;
  try {
    unlock();
    if (!ctx || ctx.state !== "running") return false;
    const now = ctx.currentTime + 0.02;
    const [freq, n] = severity === "red" ? [988, 3] : [740, 2];
    for (let i = 0; i < n; i++) beep(now + i * 0.22, freq, 0.16);
    return true;
  } catch {
    return false;
  }
}
