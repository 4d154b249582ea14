// edgerec console: plain JavaScript over the service's JSON (/console/api/*, /feedback). No build step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { meta: null, ts: null, minuteOffset: 0, feed: null, runs: [], sort: { key: "i", dir: -1 } };
const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

// ---- small DOM and SVG helpers (text always goes in as text, never as HTML) -----------------------------
function el(tag, attrs = {}, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") n.className = v; else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) n.setAttribute(k, v);
  }
  for (const c of children) n.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return n;
}
function svg(tag, attrs = {}) {
  const n = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  return n;
}
const fmt = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));

async function api(path, body) {
  const r = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const data = await r.json().catch(() => ({ detail: `HTTP ${r.status}` }));
  if (!r.ok) {
    const d = data.detail;
    throw new Error(Array.isArray(d) ? d.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ") : String(d));
  }
  return data;
}
function showError(id, err) { const n = $(id); n.hidden = !err; n.textContent = err ? String(err.message || err) : ""; }

// ---- time: the slider is the hour of a week that starts at the first local midnight after the log ------
function localParts(ts) {
  const d = new Date((ts + state.meta.utc_offset_s) * 1000);
  return { day: DAYS[d.getUTCDay()], hh: String(d.getUTCHours()).padStart(2, "0"), mm: String(d.getUTCMinutes()).padStart(2, "0"),
           date: d.toISOString().slice(0, 10) };
}
function label(ts) { const p = localParts(ts); return `${p.day} ${p.hh}:${p.mm}`; }
function sliderTs() { return state.meta.week_start_ts + Number($("time").value) * 3600 + state.minuteOffset * 60; }
function updateTimeLabel() {
  const ts = sliderTs(), p = localParts(ts);
  $("time-label").textContent = `${p.day} ${p.hh}:${p.mm}`;
  $("time").setAttribute("aria-valuetext", `${p.day} ${p.hh}:${p.mm}, ${p.date} (${state.meta.tz})`);
}

// ---- tabs ---------------------------------------------------------------------------------------------
function selectTab(name) {
  for (const t of ["feed", "device", "runs"]) {
    $(`tab-${t}`).setAttribute("aria-selected", String(t === name));
    $(`view-${t}`).hidden = t !== name;
  }
  if (name === "device") loadDevice();
  if (name === "runs") loadRuns();
}

// ---- feed ---------------------------------------------------------------------------------------------
function userId() {
  const raw = $("user").value.trim();
  return /^\d+$/.test(raw) && typeof state.meta.users[0] === "number" ? Number(raw) : raw;
}
function request(extra = {}) {
  return { user_id: userId(), ts: sliderTs(), channel: $("channel").value, n_candidates: 100, k: 10, ...extra };
}

// Moving the slider by keyboard sends one request per step: only the newest answer is drawn, and the list
// is aria-busy until it is (an older answer arriving late must never overwrite a newer one).
let feedSeq = 0;
async function loadFeed() {
  const seq = ++feedSeq;
  $("ranking").setAttribute("aria-busy", "true");
  let f;
  try {
    f = await api("/console/api/feed", request());
  } catch (e) {
    if (seq === feedSeq) { showError("feed-error", e); $("ranking").setAttribute("aria-busy", "false"); }
    return;
  }
  if (seq !== feedSeq) return;
  showError("feed-error", null);
  state.feed = f;
  renderFeed(f);
  $("ranking").setAttribute("aria-busy", "false");
}

function renderFeed(f) {
  const r = f.reply;
  $("stage1-summary").textContent = `${f.stage1.n} candidates for ${label(r.ts)} (hour-of-week popularity × online CTR)`;
  const maxCount = Math.max(1, ...f.stage1.channels.map((c) => c.count));
  $("stage1").replaceChildren(...f.stage1.channels.map((c) => el("li", {},
    el("div", {}, el("b", {}, c.channel), ` ${c.count}`),
    el("div", { class: "bar", style: `width:${(100 * c.count) / maxCount}%` }),
    el("div", { class: "top" }, c.top.slice(0, 2).map((t) => t.title).join(" · ")))));
  const wn = f.why_now;
  $("why-legend").textContent = r.cold_start
    ? "Cold start: an unknown user without history gets stage 1's order."
    : `${r.history_length} clicks in history. The score is the tower's output; μ, excitation and λ are the point process's parts, ` +
      `one of the tower's inputs (not a sum that makes the score). Curve: the item's ${wn.quantity} over the next ` +
      `${state.meta.why_now_hours} h, all items on one scale (why now).`;
  // one scale for every item's curve, so a flat curve looks flat next to a real cycle
  const all = f.items.flatMap((it) => it.why_now || []);
  const scale = all.length ? [Math.min(...all), Math.max(...all)] : [0, 1];
  $("ranking").replaceChildren(...f.items.map((it, i) => rankedItem(it, i + 1, wn, scale)));
  renderHistory(f.history, f.clicks);
  renderExamination(f.examination);
}

function rankedItem(it, position, wn, scale) {
  const p = it.parts || {};
  const parts = el("div", { class: "parts" }, el("span", {}, "score ", el("b", {}, fmt(it.score))));
  if (p.intensity !== undefined) {
    parts.append(el("span", { title: "base rate μ: user, item and the request's time cycles" }, "base μ ", el("b", {}, fmt(p.base_rate, 2))),
      el("span", { title: "excitation from the user's past clicks" }, "excitation ", el("b", {}, fmt(p.excitation, 2))),
      el("span", { title: "intensity λ = softplus(μ + excitation)" }, "λ ", el("b", {}, fmt(p.intensity, 3))),
      el("span", { title: "past clicks of the same category, and the attention they get" },
        "same category ", el("b", {}, `${p.same_category.clicks}/${p.same_category.of}`),
        ` (${Math.round(100 * p.same_category.attention)}% attention)`));
  }
  const li = el("li", { "data-item": String(it.item_id) },
    el("div", {}, el("div", { class: "item-title" }, it.title || `item ${it.item_id}`),
      el("div", { class: "item-meta" }, `${it.category} · item ${it.item_id} · stage 1 rank ${it.stage1_rank ?? "–"}`), parts),
    el("button", { class: "order-btn", type: "button", "aria-label": `order ${it.title} (position ${position})`,
                   onclick: () => order(it, position) }, "Order"));
  if (it.why_now) {
    const h = state.meta.why_now_hours;
    li.append(el("div", { class: "spark" }, sparkline(it.why_now, wn, scale),
      el("div", { class: "axis" }, el("span", {}, "now"), el("span", {}, `+${h / 2} h`), el("span", {}, `+${h} h`))));
  }
  return li;
}

function sparkline(values, wn, [lo, hi]) {
  const W = 300, H = 38, span = hi - lo || 1;
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img",
                         "aria-label": `${wn.quantity} over the next ${values.length} h: from ${fmt(values[0])} to ${fmt(values[values.length - 1])}, peak ${fmt(Math.max(...values))}` });
  for (let h = 0; h < values.length; h++) {  // night hours shaded
    const hour = Number(localParts(wn.start_ts + h * wn.step_s).hh);
    if (hour < 6) s.append(svg("rect", { x: (h * W) / values.length, y: 0, width: W / values.length + 0.5, height: H, fill: "#eef1f5" }));
  }
  const pts = values.map((v, h) => `${(h * W) / (values.length - 1)},${H - 3 - ((v - lo) / span) * (H - 6)}`);
  s.append(svg("polyline", { points: pts.join(" "), fill: "none", stroke: "#d9480f", "stroke-width": 1.6 }));
  return s;
}

function renderHistory(rows, clicks, newest = false) {
  $("history-count").textContent = `${clicks} clicks in total; the ${rows.length} newest, newest first`;
  $("history").replaceChildren(...rows.map((h, i) => el("li", { class: newest && i === 0 ? "new" : "" },
    `${label(h.ts)} ${h.title || "item " + h.item_id} `, el("span", { class: "muted" }, `(${h.category}, position ${h.position || "–"})`))));
  if (!rows.length) $("history").append(el("li", { class: "muted" }, "no clicks yet"));
}

function renderExamination(ex) {
  const box = $("examination");
  if (!ex) { box.replaceChildren(el("p", { class: "muted small" }, "This model has no examination curve.")); return; }
  const W = 300, H = 150, P = ex.positions.length, x = (i) => 24 + (i * (W - 34)) / Math.max(P - 1, 1), y = (v) => H - 20 - v * (H - 32);
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `examination by position: user ${ex.user.map((v) => fmt(v, 2)).join(", ")}` });
  s.append(svg("line", { x1: 24, y1: y(0), x2: W - 8, y2: y(0), stroke: "#adb5bd" }));
  for (const [vals, color, dash] of [[ex.global, "#868e96", "4 3"], [ex.user, "#0b6bcb", ""]]) {
    s.append(svg("polyline", { points: vals.map((v, i) => `${x(i)},${y(v)}`).join(" "), fill: "none", stroke: color, "stroke-width": 2, "stroke-dasharray": dash }));
  }
  for (const p of [0, P - 1]) { const t = svg("text", { x: x(p), y: H - 5, "font-size": 10, "text-anchor": "middle" }); t.textContent = `p${ex.positions[p]}`; s.append(t); }
  const leg = el("div", { class: "legend" }, el("span", { style: "color:#0b6bcb" }, "— this user"), "  ", el("span", {}, "- - global"),
    ex.personalized ? "" : " (this model has one curve for everyone)");
  box.replaceChildren(s, leg);
}

// Clicking "Order": an exposure and a click at the shown position go to the real POST /feedback; the page
// then waits until the store (through the stream) has folded the click, and shows how long that took.
async function order(it, position) {
  const buttons = [...document.querySelectorAll(".order-btn")];
  buttons.forEach((b) => { b.disabled = true; });  // one click in flight at a time
  try { await sendOrder(it, position); } catch (e) { showError("feed-error", e); $("lag").textContent = ""; }
  finally { buttons.forEach((b) => { b.disabled = false; }); }
}

async function sendOrder(it, position) {
  const ts = sliderTs(), uid = userId();
  // a fresh id per click: the stream applies an event id once, so a repeated id would be a silent duplicate
  const tag = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
  const before = (await api("/console/api/history", { user_id: uid })).clicks;
  const events = [
    { event_id: `console-exp-${tag}`, user_id: uid, item_id: it.item_id, ts, kind: "exposure", position },
    { event_id: `console-click-${tag}`, user_id: uid, item_id: it.item_id, ts: ts + 5, kind: "click", position }];
  const t0 = performance.now();
  await api("/feedback", { events });
  $("lag").textContent = "sent; waiting for the stream…";
  for (let i = 0; i < 150; i++) {
    const h = await api("/console/api/history", { user_id: uid });
    if (h.clicks > before) {
      $("lag").textContent = `click applied to the store ${((performance.now() - t0) / 1000).toFixed(2)} s after /feedback`;
      state.minuteOffset += 1;  // the next request is a minute later: history is strictly before the request
      updateTimeLabel();
      await loadFeed();
      renderHistory(state.feed.history, state.feed.clicks, true);
      return;
    }
    await new Promise((res) => setTimeout(res, 100));
  }
  $("lag").textContent = `not applied after 15 s: is the stream running? (feedback goes to ${state.meta.feedback_to})`;
}

// ---- device -------------------------------------------------------------------------------------------
let deviceSeq = 0;  // as for the feed: only the newest answer is drawn; #edge-order is aria-busy until then
async function loadDevice() {
  const seq = ++deviceSeq;
  showError("device-error", null);
  const m = state.meta.edge;
  $("device-model").textContent = m ? `EI-BERT on the phone · ${(m.bytes / 1e6).toFixed(2)} MB · int8` : "no edge model";
  if (!m) { showError("device-error", "No edge model: start the service with `edgerec serve --edge-pack FILE`."); return; }
  $("edge-order").setAttribute("aria-busy", "true");
  let d;
  try { d = await api("/console/api/device", request({ query: $("query").value })); } catch (e) {
    if (seq === deviceSeq) { showError("device-error", e); $("edge-order").setAttribute("aria-busy", "false"); }
    return;
  }
  if (seq !== deviceSeq) return;
  const cloudRank = new Map(d.cloud.map((it, i) => [String(it.item_id), i]));
  $("cloud-order").replaceChildren(...d.cloud.map((it) => el("li", { "data-item": String(it.item_id) }, `${it.title} `, el("span", { class: "muted" }, fmt(it.score)))));
  $("edge-order").replaceChildren(...d.edge.map((it, i) => {
    const moved = cloudRank.get(String(it.item_id)) - i;
    return el("li", { "data-item": String(it.item_id) }, `${it.title} `, el("span", { class: "cat" }, it.edge_category), " ",
      el("span", { class: moved > 0 ? "moved-up" : moved < 0 ? "moved-down" : "muted" }, moved > 0 ? `▲${moved}` : moved < 0 ? `▼${-moved}` : "="));
  }));
  $("upload").textContent = JSON.stringify(d.upload, null, 2);
  $("edge-order").setAttribute("aria-busy", "false");
}

// ---- runs ---------------------------------------------------------------------------------------------
const COLUMNS = [["i", "#"], ["time", "time"], ["expid", "experiment"], ["model", "model"], ["position_mode", "position"],
  ["dataset", "dataset"], ["seed", "seed"], ["test.AUC", "test AUC"], ["test.GAUC", "test GAUC"], ["test.logloss", "test logloss"],
  ["valid.AUC", "valid AUC"], ["wall_seconds", "wall s"], ["plots", "plots"]];
const value = (row, key) => key.split(".").reduce((o, k) => (o == null ? undefined : o[k]), row);

async function loadRuns() {
  let d;
  try { d = await api("/console/api/runs"); } catch (e) { $("ledger-path").textContent = String(e.message); return; }
  state.runs = d.runs;
  $("ledger-path").textContent = d.ledger ? `${d.runs.length} runs in ${d.ledger}` + (d.unreadable_lines ? ` (${d.unreadable_lines} unreadable lines skipped)` : "")
    : "No ledger: start the service with `edgerec serve --ledger FILE`.";
  renderRuns();
}

function renderRuns() {
  const { key, dir } = state.sort;
  const rows = [...state.runs].sort((a, b) => {
    const x = value(a, key), y = value(b, key);
    return (x === y ? 0 : x === undefined || x === null ? 1 : y === undefined || y === null ? -1 : x < y ? -1 : 1) * dir;
  });
  const head = el("tr", {}, ...COLUMNS.map(([k, name]) => el("th", { "aria-sort": k === key ? (dir > 0 ? "ascending" : "descending") : "none" },
    el("button", { type: "button", onclick: () => { state.sort = { key: k, dir: k === key ? -dir : -1 }; renderRuns(); } }, name))));
  $("runs-table").tHead.replaceChildren(head);
  $("runs-table").tBodies[0].replaceChildren(...rows.map((r) => el("tr", { "data-run": String(r.i) }, ...COLUMNS.map(([k]) => {
    const v = value(r, k);
    if (k === "plots") return el("td", {}, el("button", { type: "button", class: "order-btn", onclick: () => showPlots(r.i) }, v ? `${v} plots` : "open"));
    return el("td", { class: typeof v === "number" ? "num" : "" }, typeof v === "number" && !Number.isInteger(v) ? fmt(v, 4) : v ?? "–");
  }))));
}

let plotsSeq = 0;  // the newest opened run wins
async function showPlots(i) {
  const seq = ++plotsSeq;
  let d;
  try { d = await api(`/console/api/runs/${i}`); } catch (e) { $("plots-note").textContent = String(e.message); return; }
  if (seq !== plotsSeq) return;
  $("plots-title").hidden = false;
  $("plots-title").textContent = `run ${i}: ${d.run.expid} (${d.run.model}, seed ${d.run.seed})`;
  $("plots-note").textContent = d.plots.length ? d.run.run_dir : `No plots yet: run \`${d.command}\`, then open the run again.`;
  $("plots").replaceChildren(...d.plots.map((p) => el("figure", {}, el("img", { src: p.url, alt: `${p.name} of run ${i}` }), el("figcaption", {}, p.name))));
  $("plots-title").scrollIntoView({ behavior: "smooth" });
}

// ---- start --------------------------------------------------------------------------------------------
async function start() {
  for (const t of ["feed", "device", "runs"]) $(`tab-${t}`).addEventListener("click", () => selectTab(t));
  document.querySelector("nav").addEventListener("keydown", (e) => {  // arrow keys move between tabs
    const tabs = ["feed", "device", "runs"], cur = tabs.findIndex((t) => $(`tab-${t}`).getAttribute("aria-selected") === "true");
    if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
      const next = tabs[(cur + (e.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
      selectTab(next); $(`tab-${next}`).focus();
    }
  });
  try { state.meta = await api("/console/api/meta"); } catch (e) { $("status").textContent = `console unavailable: ${e.message}`; return; }
  const m = state.meta;
  $("status").textContent = `${m.model}${m.point_process ? " (point process)" : ""} · ${m.users.length} users listed · zone ${m.tz} · feedback: ${m.feedback_to}`;
  $("users").replaceChildren(...m.users.map((u) => el("option", { value: String(u) })));
  $("user").value = String(m.users[0] ?? "");
  $("channel").replaceChildren(...m.channels.map((c) => el("option", { value: c }, c)));
  $("time").addEventListener("input", () => { state.minuteOffset = 0; updateTimeLabel(); });
  $("time").addEventListener("change", loadFeed);
  $("channel").addEventListener("change", loadFeed);
  $("controls").addEventListener("submit", (e) => { e.preventDefault(); state.minuteOffset = 0; loadFeed(); });
  $("device-form").addEventListener("submit", (e) => { e.preventDefault(); loadDevice(); });
  updateTimeLabel();
  await loadFeed();
}
start();
