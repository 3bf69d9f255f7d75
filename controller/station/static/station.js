// Ward station page. No build step: plain ES2020, one file.
// Data: Server-Sent Events from /events (a snapshot, then the tiles that changed,
// at most 4 times a second); drawing happens once per animation frame.
"use strict";

const PRIORITY = { high: "HIGH !!!", medium: "MEDIUM !!", low: "LOW !" };
const AUDIO_PAUSE_MS = 120000; // pausable for a bounded time, never disabled
const tiles = new Map(); // key -> {data, el, alarmsHtml}
let order = [];
let orderDirty = false;
const pending = new Set(); // keys to draw at the next frame
let skewMs = 0; // local clock - station clock
let me = { nurse: null, sign_in: "none", can_acknowledge: false };
// Measurements for tests and bench/station_load.py: display lag of every drawn update.
window.stationStats = { lagsMs: [], stationLagMs: [], renderMs: [], applyMs: [], updates: 0, snapshots: 0, alarmDrawnMs: {} };

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const mL = (ul) => (ul == null ? "–" : (ul / 1000).toFixed(2) + " mL");
const clock = (ms) => (ms == null ? "–" : new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }));
const stationNow = () => Date.now() - skewMs;
function duration(s) {
  if (s == null) return "–";
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h} h ${m} min` : m ? `${m} min ${String(r).padStart(2, "0")} s` : `${r} s`;
}

async function api(path, body) {
  const response = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers: { "Content-Type": "application/json", "X-Station": "1" },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function notice(text) { $("notice").textContent = text || ""; }

// ---------------------------------------------------------------- sign-in

function showWho() {
  const signedIn = !!me.nurse;
  $("signin").hidden = signedIn || me.sign_in !== "password";
  $("signout").hidden = !signedIn || me.sign_in !== "password";
  $("who").textContent = signedIn ? `Signed in: ${me.nurse}`
    : me.sign_in === "none" ? "No sign-in configured: acknowledgement off" : "";
  for (const t of tiles.values()) { t.alarmsHtml = null; pending.add(t.data.key); }
  schedule();
}

async function refreshMe() {
  me = await api("/api/me");
  $("title").textContent = me.title;
  document.title = me.title;
  showWho();
}

$("signin").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await api("/api/login", { name: $("name").value, password: $("password").value });
    $("password").value = "";
    notice("");
    await refreshMe();
    if (!source) connect();
  } catch (error) { notice(`Sign-in failed: ${error.message}`); }
});
$("signout").addEventListener("click", async () => { await api("/api/logout", {}); await refreshMe(); });

// ---------------------------------------------------------------- acknowledgement

async function acknowledge(ward, bed, code) {
  try {
    await api("/api/ack", { ward, bed, alarm_code: code });
    notice("");
  } catch (error) { notice(`Not acknowledged: ${error.message}`); }
}

$("beds").addEventListener("click", (event) => {
  const button = event.target.closest("button[data-ack]");
  if (button) {
    button.disabled = true;
    const t = tiles.get(button.dataset.key);
    acknowledge(t.data.ward, t.data.bed, button.dataset.ack);
    return;
  }
  const head = event.target.closest(".tile header");
  if (head) openDetail(head.parentElement.dataset.key);
});

// ---------------------------------------------------------------- tiles

function topAlarm(d) {
  const rank = { high: 0, medium: 1, low: 2 };
  let top = null;
  for (const a of d.alarms) {
    if (!top || (a.acknowledged === top.acknowledged ? rank[a.priority] < rank[top.priority] : !a.acknowledged)) top = a;
  }
  return top;
}

function alarmsHtml(d) {
  return d.alarms.map((a) => {
    const ack = [...d.acks].reverse().find((x) => x.code === a.code);
    let foot = "";
    if (a.acknowledged) {
      foot = `<span class="ack">Acknowledged${a.acknowledged_by ? " by " + esc(a.acknowledged_by) : ""}${ack && ack.status === "accepted" ? " at " + clock(ack.sent_ms) : ""}</span>`;
    } else if (ack && ack.status === "sent") {
      foot = `<span class="ack">Sent by ${esc(ack.nurse)} at ${clock(ack.sent_ms)}: waiting for the bed…</span>`;
    } else {
      if (ack && ack.status === "refused") foot = `<span class="ack">Bed refused ${esc(ack.nurse)}'s acknowledgement: ${esc(ack.reason)}</span>`;
      if (me.nurse && me.can_acknowledge) foot += `<button type="button" data-key="${esc(d.key)}" data-ack="${esc(a.code)}">Acknowledge</button>`;
    }
    return `<div class="alarm ${a.priority}${a.acknowledged ? " acked" : ""}" data-code="${esc(a.code)}">` +
      `<span class="prio">${PRIORITY[a.priority]}</span>${esc(a.message)}` +
      `<span class="action">${esc(a.action)}</span>` +
      `<span class="since">since ${clock(a.raised_ms)}</span>${foot}</div>`;
  }).join("");
}

function newTile(key) {
  const el = document.createElement("article");
  el.className = "tile";
  el.dataset.key = key;
  el.innerHTML = `<header><span class="bed"></span><span class="ward"></span><span class="state"></span></header>
    <div class="age"></div>
    <div class="silent" hidden></div><p class="hidden-note" hidden>Figures hidden: they are not current.</p>
    <div class="current"><div class="bar" title="delivered / cap"><span></span><em></em></div>
    <dl class="figures"><dt>Time left</dt><dd class="left"></dd><dt>Flow</dt><dd class="flow"></dd>
    <dt>Dose</dt><dd class="dose"></dd><dt class="breath-label">Breathing</dt><dd class="breath"></dd>
    <dt>Reservoir</dt><dd class="reservoir"></dd><dt>Link</dt><dd class="linkq"></dd>
    <dt class="rx-label">Prescription</dt><dd class="rx"></dd><dt class="lost-label">Lost samples</dt><dd class="lost"></dd></dl></div>
    <div class="alarms"></div>`;
  const q = (selector) => el.querySelector(selector);
  // Element references are kept: a frame only sets text, it never re-parses HTML.
  const t = {
    el, data: null, alarmsHtml: null, fresh: false, cls: "",
    bed: q(".bed"), ward: q(".ward"), state: q(".state"), age: q(".age"), silent: q(".silent"),
    note: q(".hidden-note"), current: q(".current"), fill: q(".bar > span"), barText: q(".bar > em"),
    left: q(".left"), flow: q(".flow"), reservoir: q(".reservoir"), linkq: q(".linkq"),
    dose: q(".dose"), breath: q(".breath"), breathLabel: q(".breath-label"),
    rx: q(".rx"), rxLabel: q(".rx-label"), lost: q(".lost"), lostLabel: q(".lost-label"), alarms: q(".alarms"),
  };
  tiles.set(key, t);
  $("beds").appendChild(el);
  orderDirty = true;
  return t;
}

function setText(node, text) { if (node.textContent !== text) node.textContent = text; }
function show(node, visible) { if (node.hidden === visible) node.hidden = !visible; }

function drawFigures(t, d) {
  const ok = d.status === "ok";
  show(t.current, ok);
  show(t.silent, !ok);
  show(t.note, !ok);
  if (!ok) {  // stale figures are hidden, never shown as if current
    setText(t.silent, `${d.status === "offline" ? "OFFLINE" : "NO DATA"} since ${clock(d.since_ms)}`);
    return;
  }
  const pct = d.cap_ul ? Math.min(100, (100 * (d.delivered_ul || 0)) / d.cap_ul) : 0;
  const width = `${pct.toFixed(1)}%`;
  if (t.fill.style.width !== width) t.fill.style.width = width;
  setText(t.barText, d.cap_ul ? `${mL(d.delivered_ul)} / ${mL(d.cap_ul)}` : "no dose running");
  setText(t.left, d.running ? duration(d.time_left_s) : "–");
  setText(t.flow, d.flow_ul_min == null ? "–" : (d.flow_ul_min / 1000).toFixed(2) + " mL/min");
  // Dose in the lot's units; "blinded" when the prescription hides the arm.
  setText(t.dose, d.dose || "–");
  if (t.dose.classList.contains("blinded") !== d.blinded) t.dose.classList.toggle("blinded", d.blinded);
  // Breathing (breath-aware heads only): rate and inspiratory-phase share, or WAITING.
  const b = d.breathing;
  show(t.breathLabel, !!b); show(t.breath, !!b);
  setText(t.breath, b ? b.text : "");
  const waiting = !!(b && b.waiting);
  if (t.breath.classList.contains("waiting") !== waiting) t.breath.classList.toggle("waiting", waiting);
  setText(t.reservoir, mL(d.reservoir_ul));
  setText(t.linkq, d.link_quality_pct == null ? "–" : d.link_quality_pct + " %");
  show(t.rxLabel, !!d.prescription); show(t.rx, !!d.prescription);
  setText(t.rx, d.prescription || "");
  show(t.lostLabel, !!d.lost); show(t.lost, !!d.lost);
  setText(t.lost, String(d.lost || ""));
}

function drawAge(t) {
  const d = t.data;
  const age = d.last_seen_ms == null ? null : (stationNow() - d.last_seen_ms) / 1000;
  setText(t.age, age == null ? "no data yet" : `data ${duration(age)} old`);
  const old = d.status !== "ok";
  if (t.age.classList.contains("old") !== old) t.age.classList.toggle("old", old);
}

function draw(t) {
  const d = t.data;
  const top = topAlarm(d);
  let cls = "tile";
  if (d.status !== "ok") cls += " " + d.status;
  if (top) cls += top.acknowledged ? " p-acked" : " p-" + top.priority;
  if (t.cls !== cls) { t.el.className = cls; t.cls = cls; }
  setText(t.bed, d.bed);
  setText(t.ward, d.ward);
  setText(t.state, d.status === "ok" ? (d.state || "–").replaceAll("_", " ") : d.status === "offline" ? "offline" : "no data");
  drawFigures(t, d);
  const alarms = alarmsHtml(d); // rebuilt only when it changed: a button under a finger stays put
  if (alarms !== t.alarmsHtml) {
    t.alarms.innerHTML = alarms;
    t.alarmsHtml = alarms;
    const drawn = window.stationStats.alarmDrawnMs; // when each alarm was first on screen
    for (const a of d.alarms) drawn[`${d.key}|${a.code}`] ??= Date.now();
  }
  drawAge(t);
}

function reorder() {
  const container = $("beds");
  let i = 0;
  for (const key of order) {
    const t = tiles.get(key);
    if (!t) continue;
    if (container.children[i] !== t.el) container.insertBefore(t.el, container.children[i] || null);
    i++;
  }
}

let frame = 0;
function schedule() { if (!frame) frame = requestAnimationFrame(render); }
function render() {
  frame = 0;
  const started = performance.now();
  const lags = window.stationStats.lagsMs;
  const drawn = [];
  for (const key of pending) {
    const t = tiles.get(key);
    if (!t || !t.data) continue;
    draw(t);
    if (t.data.data_ms != null && t.fresh) drawn.push(t.data.data_ms);
    t.fresh = false;
  }
  const drawnAt = Date.now();
  for (const ms of drawn) lags.push(drawnAt - ms);
  if (lags.length > 200000) lags.splice(0, lags.length - 100000);
  pending.clear();
  if (orderDirty) { reorder(); orderDirty = false; }
  summarise();
  audio.update();
  const stats = window.stationStats;
  stats.renderMs.push(performance.now() - started);
  if (stats.renderMs.length > 10000) stats.renderMs.splice(0, 5000);
}

function summarise() {
  let high = 0, medium = 0, low = 0, silent = 0;
  for (const t of tiles.values()) {
    const d = t.data;
    if (!d) continue;
    if (d.status !== "ok") silent++;
    for (const a of d.alarms) if (!a.acknowledged) { if (a.priority === "high") high++; else if (a.priority === "medium") medium++; else low++; }
  }
  $("summary").textContent = `${tiles.size} beds · ${high} high · ${medium} medium · ${low} low · ${silent} no data`;
}

function apply(message) {
  const started = performance.now();
  skewMs = Date.now() - message.server_ms;
  if (message.snapshot) window.stationStats.snapshots++;
  $("link").textContent = message.connected ? "broker connected" : "BROKER NOT CONNECTED";
  $("link").className = message.connected ? "link-up" : "link-down";
  for (const d of message.tiles) {
    const t = tiles.get(d.key) || newTile(d.key);
    t.fresh = !t.data || t.data.data_ms !== d.data_ms;
    if (t.fresh && d.data_ms != null) window.stationStats.stationLagMs.push(message.server_ms - d.data_ms);
    t.data = d;
    pending.add(d.key);
    window.stationStats.updates++;
  }
  if (message.order) { order = message.order; orderDirty = true; }
  schedule();
  window.stationStats.applyMs.push(performance.now() - started);
  if (window.stationStats.applyMs.length > 10000) window.stationStats.applyMs.splice(0, 5000);
}

let source = null;
function connect() {
  source = new EventSource("/events");
  source.onmessage = (event) => apply(JSON.parse(event.data));
  source.onerror = () => { $("link").textContent = "station not reachable: retrying"; $("link").className = "link-down"; };
}

// Data age on every tile, even with no news.
setInterval(() => { for (const t of tiles.values()) if (t.data) drawAge(t); }, 1000);

// ---------------------------------------------------------------- detail view

let detailKey = null;
async function openDetail(key) {
  detailKey = key;
  $("detail-title").textContent = `Bed ${key}`;
  if (!$("detail").open) $("detail").showModal();
  await refreshDetail();
}
async function refreshDetail() {
  if (!detailKey || !$("detail").open) return;
  const [ward, bed] = detailKey.split("/");
  try { drawDetail(await api(`/api/bed/${encodeURIComponent(ward)}/${encodeURIComponent(bed)}`)); }
  catch (error) { notice(`Detail: ${error.message}`); }
}
$("detail-close").addEventListener("click", () => { $("detail").close(); detailKey = null; });
setInterval(refreshDetail, 2000);

function drawDetail(d) {
  const svg = $("curve");
  const W = 600, H = 220, L = 50, B = 25;
  const runs = d.runs;
  const cap = Math.max(1, ...runs.map((r) => r.cap_ul), ...runs.flatMap((r) => r.delivered_ul));
  let span = Math.max(1000, ...runs.map((r) => r.utc_ms.length ? r.utc_ms[r.utc_ms.length - 1] - r.utc_ms[0] : 0));
  const cur = runs[runs.length - 1];
  if (cur && cur.utc_ms.length >= 2) { // a run in progress: the axis reaches its expected end
    const n = cur.utc_ms.length - 1;
    const rate = (cur.delivered_ul[n] - cur.delivered_ul[0]) / (cur.utc_ms[n] - cur.utc_ms[0]);
    if (rate > 0) span = Math.max(span, Math.min(4 * 3600e3, (cur.cap_ul - cur.delivered_ul[0]) / rate));
  }
  const x = (ms, r) => L + ((ms - r.utc_ms[0]) / span) * (W - L - 10);
  const y = (ul) => H - B - (ul / cap) * (H - B - 10);
  let out = `<line x1="${L}" y1="${y(0)}" x2="${W - 10}" y2="${y(0)}" stroke="#90a4ae"/>` +
    `<line x1="${L}" y1="10" x2="${L}" y2="${y(0)}" stroke="#90a4ae"/>` +
    `<text x="4" y="${y(cap) + 4}" font-size="11">${mL(cap)}</text><text x="4" y="${y(0)}" font-size="11">0</text>` +
    `<text x="${W - 10}" y="${H - 6}" font-size="11" text-anchor="end">${duration(span / 1000)}</text>`;
  runs.forEach((r, i) => {
    if (!r.utc_ms.length) return;
    const current = i === runs.length - 1;
    const pts = r.utc_ms.map((ms, j) => `${x(ms, r).toFixed(1)},${y(r.delivered_ul[j]).toFixed(1)}`).join(" ");
    out += `<line x1="${L}" x2="${W - 10}" y1="${y(r.cap_ul)}" y2="${y(r.cap_ul)}" stroke="#d50000" stroke-dasharray="4 3"/>`;
    out += `<polyline fill="none" stroke="${current ? "#1565c0" : "#9e9e9e"}" stroke-width="${current ? 2.5 : 1.5}" points="${pts}"/>`;
  });
  if (!runs.length) out += `<text x="${W / 2}" y="${H / 2}" text-anchor="middle">no run seen by this station yet</text>`;
  svg.innerHTML = out;
  drawCourse(d.course);
  $("history").querySelector("tbody").innerHTML = d.alarm_history.map((e) =>
    `<tr><td>${clock(e.utc_ms)}</td><td>${esc(e.event)}</td><td>${esc(e.priority)}</td><td>${esc(e.message)}</td><td>${esc(e.by || "")}</td></tr>`).join("")
    || `<tr><td colspan="5">no alarm seen by this station</td></tr>`;
}

// The last 24 h and the course so far: µL that count against the limits (a run whose
// delivery is not known counts its full cap), in the lot's units when not blinded.
function drawCourse(c) {
  const box = $("course");
  if (!c) { box.innerHTML = "<p>No course summary from this bed yet.</p>"; return; }
  const of = (used, max) => `${mL(used)}${max == null ? "" : " of " + mL(max)}`;
  const count = (n, max) => `${n}${max == null ? "" : " of " + max} dose${n === 1 && max == null ? "" : "s"}`;
  const unit = (text) => (text ? ` (${esc(text)})` : "");
  const peak = Math.max(1, ...c.days.map((x) => x.counted_ul));
  box.innerHTML =
    `<dl class="course-figures"><dt>Last 24 h</dt><dd class="last24">${of(c.rolling_24h_ul, c.rolling_24h_max_ul)}${unit(c.rolling_24h_dose)} · ${count(c.rolling_24h_sessions, c.rolling_24h_max_sessions)}</dd>` +
    `<dt>Course so far</dt><dd class="course-total">${of(c.course_ul, c.course_max_ul)}${unit(c.course_dose)} · ${count(c.course_sessions, c.course_max_sessions)}</dd>` +
    (c.uncertain_runs ? `<dt>Not yet known</dt><dd>${c.uncertain_runs} run(s) counted at their full cap</dd>` : "") +
    `</dl><table class="days"><tbody>` +
    c.days.map((x) => `<tr><td>${esc(x.day)}</td><td class="day-bar"><span style="width:${((100 * x.counted_ul) / peak).toFixed(1)}%"></span></td>` +
      `<td>${mL(x.counted_ul)}</td><td>${x.runs} run${x.runs === 1 ? "" : "s"}</td></tr>`).join("") +
    `</tbody></table><p class="as-of">As of ${clock(c.as_of_ms)} (days in ${esc(c.timezone)})</p>`;
}

// ---------------------------------------------------------------- audible signal

// Pulse patterns after IEC 60601-1-8 (pulse counts 10 / 3 / 1-2 for HIGH / MEDIUM / LOW;
// pitch and repetition simplified). Browsers allow sound only after a click, so the
// page says loudly that sound is off until then. Sound can be paused, not turned off.
const audio = {
  context: null, pausedUntil: 0, pausedCodes: new Set(), nextAt: 0, playing: null,
  enable() {
    if (this.context) return;
    this.context = new (window.AudioContext || window.webkitAudioContext)();
    $("sound").hidden = true;
    $("pause").hidden = false;
  },
  unacked() {
    const codes = new Set();
    let top = null;
    const rank = { high: 0, medium: 1, low: 2 };
    for (const t of tiles.values()) for (const a of t.data?.alarms || []) {
      if (a.acknowledged) continue;
      codes.add(t.data.key + "|" + a.code);
      if (!top || rank[a.priority] < rank[top]) top = a.priority;
    }
    return { codes, top };
  },
  pause() {
    this.pausedUntil = Date.now() + AUDIO_PAUSE_MS;
    this.pausedCodes = this.unacked().codes;
  },
  update() {
    const { codes, top } = this.unacked();
    // A new alarm ends the pause: the pause covered what the nurse had seen.
    for (const c of codes) if (!this.pausedCodes.has(c)) { this.pausedUntil = 0; break; }
    const paused = Date.now() < this.pausedUntil;
    $("pause").textContent = paused ? `Audio paused: ${duration((this.pausedUntil - Date.now()) / 1000)} left` : "Pause audio 2 min";
    this.playing = paused ? null : top;
    window.stationStats.audio = { enabled: !!this.context, paused, priority: top };
    if (!this.context || !top || paused || Date.now() < this.nextAt) return;
    const pattern = { high: [10, 150, 7000], medium: [3, 220, 15000], low: [2, 250, 30000] }[top];
    const [pulses, gapMs, repeatMs] = pattern;
    const pitch = { high: 880, medium: 660, low: 520 }[top];
    const t0 = this.context.currentTime;
    for (let i = 0; i < pulses; i++) {
      const osc = this.context.createOscillator(), gain = this.context.createGain();
      osc.frequency.value = pitch;
      gain.gain.value = 0.2;
      osc.connect(gain).connect(this.context.destination);
      osc.start(t0 + (i * gapMs) / 1000);
      osc.stop(t0 + (i * gapMs) / 1000 + 0.12);
    }
    this.nextAt = Date.now() + repeatMs;
  },
};
$("sound").addEventListener("click", () => audio.enable());
$("pause").addEventListener("click", () => { audio.pause(); audio.update(); });
setInterval(() => audio.update(), 500);

// ---------------------------------------------------------------- start

refreshMe().then(() => {
  if (!me.view_needs_sign_in || me.nurse) connect();
  else notice("Sign in to see the ward.");
}).catch((error) => notice(`Station not reachable: ${error.message}`));
