// The xchanged dashboard: polls this daemon's JSON API (/api/...) and draws the page with the DOM and
// inline SVG. No framework, no build step, nothing from another host.
// Rule: text from the daemon (task names, commands, labels, reasons) only ever goes in through
// textContent or setAttribute, never as HTML.
"use strict";

const REFRESH_MS = 1000;          // how often the page asks for fresh documents
const DETAIL_LOGS_MS = 2000;      // how often a selected, unfinished task's output is asked for again
const TOKEN_KEY = "xchanged-token";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

const state = { selected: null, logsAt: 0, logs: null, timer: null, busy: false };

// -- small helpers ---------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "style") Object.assign(node.style, v);     // CSSOM: allowed by the page's CSP
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v; else node.setAttribute(k, String(v));
  }
  return node;
}

function bytes(n) {
  if (!n) return "0";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

function ago(ms) {
  if (!ms) return "";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  return s < 60 ? `${Math.round(s)}s ago` : s < 3600 ? `${Math.round(s / 60)}m ago` : `${(s / 3600).toFixed(1)}h ago`;
}

function span(seconds) {
  if (seconds === null || seconds === undefined) return "";
  return seconds < 1 ? `${Math.round(seconds * 1000)}ms` : seconds < 120 ? `${seconds.toFixed(1)}s`
    : `${Math.round(seconds / 60)}m`;
}

function clock(ms) { return ms ? new Date(ms).toLocaleTimeString() : ""; }

function bar(label, fraction, text, kind) {
  const pct = Math.max(0, Math.min(1, fraction || 0)) * 100;
  const level = kind || (pct >= 90 ? "high" : pct >= 60 ? "mid" : "low");
  return el("div", { class: "bar-row" },
    el("span", { class: "bar-label", text: label }),
    el("span", { class: "bar", title: text },
      el("span", { class: `fill ${level}`, style: { width: `${pct.toFixed(1)}%` } })),
    el("span", { class: "bar-text", text: text }));
}

function replace(node, ...children) { node.replaceChildren(...children.flat(Infinity).filter(Boolean)); }

// -- talking to the daemon -------------------------------------------------------------------------

class Unauthorized extends Error {}

async function api(path) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401) throw new Unauthorized("token needed");
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error((body && body.error) || `HTTP ${response.status}`);
    error.code = body && body.code;
    error.status = response.status;
    throw error;
  }
  return body;
}

function tasksPath() {
  const q = new URLSearchParams();
  if (document.getElementById("cluster").checked) q.set("cluster", "1");
  const st = document.getElementById("state").value;
  if (st) q.set("state", st);
  q.set("limit", document.getElementById("limit").value);
  return `/api/tasks?${q}`;
}

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  try {
    const [stats, peers, tasks, history, audit] = await Promise.all([
      api("/api/stats"), api("/api/peers"), api(tasksPath()), api("/api/history"), api("/api/audit/head")]);
    drawSummary(stats);
    drawPeers(peers);
    drawChart(history);
    drawTasks(tasks);
    drawAudit(audit);
    if (state.selected) await refreshDetail();
    setConn("live", `live · ${new Date().toLocaleTimeString()}`);
    document.getElementById("token-form").hidden = true;
  } catch (err) {
    if (err instanceof Unauthorized) {
      document.getElementById("token-form").hidden = false;
      setConn("auth", "token needed");
    } else {
      setConn("down", `cannot reach the daemon (${err.message}); retrying`);
    }
  } finally {
    state.busy = false;
  }
}

function setConn(kind, text) {
  const node = document.getElementById("conn");
  node.dataset.state = kind;
  node.textContent = text;
}

// -- summary ---------------------------------------------------------------------------------------

function tile(label, value, note) {
  return el("div", { class: "tile" }, el("div", { class: "tile-value", text: value }),
    el("div", { class: "tile-label", text: label }), note ? el("div", { class: "tile-note", text: note }) : null);
}

function drawSummary(s) {
  document.getElementById("node").textContent = `node ${s.node} · up ${span(s.uptime_s)}`;
  document.title = `xchanged · ${s.node}`;
  replace(document.getElementById("summary"),
    tile("nodes alive", `${s.healthy_agents} / ${s.total_agents}`),
    tile("utilisation", `${s.utilization_percent}%`, `${s.current_load} of ${s.total_capacity} slots busy`),
    tile("running", String(s.running_jobs), "managed here"),
    tile("queued", String(s.queued_jobs), `${s.queued_total ?? 0} at every manager`),
    tile("succeeded", String(s.succeeded ?? 0), "since start"),
    tile("failed", String(s.failed ?? 0), `${s.retries ?? 0} retries`));
}

// -- peers -----------------------------------------------------------------------------------------

function drawPeers(peers) {
  document.getElementById("peer-count").textContent =
    `${peers.filter((p) => p.health === "alive").length} alive of ${peers.length}`;
  replace(document.getElementById("peers"), peers.map(peerCard));
}

function peerCard(p) {
  const memUsed = p.mem_total ? 1 - p.mem_available / p.mem_total : 0;
  const slots = p.slots || 0;
  const badges = [
    el("span", { class: `health ${p.health}`, text: p.health }),
    p.self ? el("span", { class: "badge", text: "this node" }) : null,
    p.draining ? el("span", { class: "badge warn", text: "draining" }) : null,
    p.audit === "forked" ? el("span", { class: "badge bad", text: "audit log rewritten" }) : null,
    p.breaker && p.breaker !== "closed" ? el("span", { class: "badge warn", text: `breaker ${p.breaker}` }) : null,
  ];
  const gpus = (p.gpus || []).map((g) => bar(`GPU${g.index}`, (g.util_percent || 0) / 100,
    `${Math.round(g.util_percent || 0)}% · ${bytes(g.mem_total - g.mem_free)} / ${bytes(g.mem_total)}`));
  const labels = Object.entries(p.labels || {}).map(([k, v]) => el("span", { class: "label", text: `${k}=${v}` }));
  return el("article", { class: `peer ${p.health}`, "data-peer": p.name, "data-health": p.health },
    el("div", { class: "peer-head" }, el("strong", { text: p.name }), ...badges),
    el("div", { class: "peer-addr muted", text: `${p.address || ""}` +
      (p.self ? "" : ` · heard ${p.last_seen_s === null ? "never" : span(p.last_seen_s) + " ago"}`) }),
    bar("slots", slots ? p.running / slots : 0, `${p.running} running / ${slots} · ${p.slots_free} free`),
    bar("cpu", (p.cpu_percent || 0) / 100, `${Math.round(p.cpu_percent || 0)}% of ${p.cpus || "?"} CPUs`),
    bar("mem", memUsed, `${bytes(p.mem_total - p.mem_available)} / ${bytes(p.mem_total)}`),
    gpus,
    el("div", { class: "peer-foot" },
      el("span", { class: "muted", text: `queued ${p.queued || 0} · done ${p.completed || 0}` +
        (p.success_rate === null || p.success_rate === undefined ? "" : ` · ok ${Math.round(100 * p.success_rate)}%`) }),
      labels.length ? el("span", { class: "labels" }, labels) : null));
}

// -- chart -----------------------------------------------------------------------------------------

function drawChart(history) {
  const chart = document.getElementById("chart");
  const all = history.samples || [];
  const W = 900, H = 220, L = 40, R = 40, T = 10, B = 24;
  // the window: the history kept (ten minutes by default), shrunk to what has been sampled, at least 2 min
  const end = all.length ? all[all.length - 1].t : Date.now();
  const kept = history.interval_s * (history.capacity - 1) * 1000;
  const span = Math.min(kept, Math.max(120000, all.length ? end - all[0].t : 0));
  const start = end - span;
  const samples = all.filter((s) => s.t >= start);
  const qmax = Math.max(4, ...samples.map((s) => Math.max(s.queued, s.queued_here)));
  const x = (t) => L + ((t - start) / span) * (W - L - R);
  const yu = (u) => T + (1 - u / 100) * (H - T - B);
  const yq = (q) => T + (1 - q / qmax) * (H - T - B);
  const parts = [];
  for (const u of [0, 50, 100]) {
    parts.push(svg("line", { x1: L, x2: W - R, y1: yu(u), y2: yu(u), class: "grid" }));
    parts.push(svg("text", { x: L - 6, y: yu(u) + 4, "text-anchor": "end", class: "axis", text: `${u}%` }));
  }
  for (const q of [0, Math.round(qmax / 2), qmax]) {
    parts.push(svg("text", { x: W - R + 6, y: yq(q) + 4, class: "axis", text: String(q) }));
  }
  const step = [15, 30, 60, 120, 300].find((s) => span / (s * 1000) <= 6) * 1000;
  for (let back = 0; back <= span; back += step) {
    const label = back === 0 ? "now" : back % 60000 ? `-${back / 1000}s` : `-${back / 60000}m`;
    parts.push(svg("text", { x: x(end - back), y: H - 6, "text-anchor": "middle", class: "axis", text: label }));
  }
  const line = (key, y, cls) => {
    if (samples.length < 2) return null;
    const points = samples.map((s) => `${x(s.t).toFixed(1)},${y(s[key]).toFixed(1)}`).join(" ");
    return svg("polyline", { points, class: `series ${cls}` });
  };
  if (samples.length >= 2) {
    const area = `${x(samples[0].t).toFixed(1)},${yu(0)} ` +
      samples.map((s) => `${x(s.t).toFixed(1)},${yu(s.utilization_percent).toFixed(1)}`).join(" ") +
      ` ${x(samples[samples.length - 1].t).toFixed(1)},${yu(0)}`;
    parts.push(svg("polygon", { points: area, class: "area util" }));
  }
  parts.push(line("utilization_percent", yu, "util"), line("queued", yq, "queue"), line("queued_here", yq, "here"));
  if (samples.length < 2) {
    parts.push(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis",
      text: "collecting samples…" }));
  }
  chart.replaceChildren(...parts.filter(Boolean));
  chart.dataset.samples = String(samples.length);
  const last = samples[samples.length - 1];
  document.getElementById("chart-span").textContent = last
    ? `last ${span >= 60000 ? Math.round(span / 60000) + " min" : Math.round(span / 1000) + " s"} · now ${last.utilization_percent}% busy, ${last.queued} queued` : "";
}

// -- tasks -----------------------------------------------------------------------------------------

function drawTasks(answer) {
  const cluster = !Array.isArray(answer);
  const tasks = (cluster ? answer.tasks : answer).slice().reverse();      // newest first
  const table = document.getElementById("tasks");
  table.classList.toggle("cluster", cluster);
  let note = `${tasks.length} shown`;
  if (cluster) {
    const off = answer.managers.filter((m) => m.status !== "ok");
    note += ` from ${answer.managers.length} managers` +
      (off.length ? ` (${off.map((m) => `${m.name}: ${m.status}`).join(", ")})` : "");
  }
  document.getElementById("task-count").textContent = note;
  replace(table.tBodies[0], tasks.map(taskRow));
  if (!tasks.length) {
    table.tBodies[0].append(el("tr", {}, el("td", { colspan: 10, class: "muted", text: "no tasks" })));
  }
}

function progressCell(t) {
  if (!t.progress) return "";
  const p = t.progress;
  return el("span", { class: "progress" },
    el("span", { class: "bar small", title: `${p.done} of ${p.total} parts ended, ${p.failed} failed` },
      el("span", { class: `fill ${p.failed ? "high" : "ok"}`, style: { width: `${p.total ? (100 * p.done / p.total) : 0}%` } })),
    ` ${p.done}/${p.total}`);
}

function took(t) {
  const last = (t.attempts || [])[t.attempts.length - 1];
  if (!last || !last.started) return "";
  return span(((last.ended || Date.now()) - last.started) / 1000);
}

function taskRow(t) {
  const label = t.name || (t.command || []).join(" ");
  const row = el("tr", { "data-task-id": t.id, "data-state": t.state, class: state.selected === t.id ? "selected" : "",
    onclick: () => select(t.id) },
    el("td", { class: "mono id", text: t.id }),
    el("td", { class: "cmd", title: label, text: label }),
    el("td", {}, el("span", { class: `state ${t.state}`, text: t.state }),
      t.reason && !TERMINAL.has(t.state) ? el("div", { class: "reason muted", text: t.reason }) : null),
    el("td", { text: t.node || "" }),
    el("td", { class: "mgr", text: t.manager || "" }),
    el("td", { text: t.priority || "" }),
    el("td", { text: String((t.attempts || []).length) }),
    el("td", {}, progressCell(t)),
    el("td", { title: new Date(t.submitted).toLocaleString(), text: ago(t.submitted) }),
    el("td", { text: took(t) }));
  return row;
}

// -- one task --------------------------------------------------------------------------------------

function select(id) {
  state.selected = id;
  state.logs = null;
  state.logsAt = 0;
  document.getElementById("detail").hidden = false;
  document.getElementById("detail-id").textContent = id;
  const body = document.getElementById("detail-body");
  delete body.dataset.task;
  replace(body, el("p", { class: "muted", text: "loading…" }));
  for (const row of document.querySelectorAll("#tasks tr[data-task-id]")) {
    row.classList.toggle("selected", row.dataset.taskId === id);
  }
  refreshDetail().catch(() => {});
}

async function refreshDetail() {
  const id = state.selected;
  const path = encodeURIComponent(id);
  let doc;
  try {
    doc = await api(`/api/tasks/${path}`);
  } catch (err) {
    if (err instanceof Unauthorized) throw err;
    replace(document.getElementById("detail-body"), el("p", { class: "muted", text: err.message }));
    return;
  }
  if (id !== state.selected) return;
  const now = Date.now();
  if (!doc.composite && (state.logs === null || (!TERMINAL.has(doc.state) && now - state.logsAt > DETAIL_LOGS_MS)
                         || (TERMINAL.has(doc.state) && state.logs.live))) {
    state.logsAt = now;
    state.logs = await api(`/api/logs/${path}`).catch((err) => ({ error: err.message }));
  }
  drawDetail(doc, state.logs);
}

function drawDetail(t, logs) {
  const body = document.getElementById("detail-body");
  body.dataset.state = t.state;
  body.dataset.task = t.id;
  const facts = el("dl", { class: "facts" }, [
    ["state", el("span", { class: `state ${t.state}`, text: t.state })],
    ["node", t.node || "—"], ["priority", t.priority], ["exit code", t.exit_code ?? "—"],
    ["reason", t.reason || "—"], ["command", (t.command || []).join(" ") || (t.composite ? "(composite)" : "")],
    ["submitted", new Date(t.submitted).toLocaleString()],
    ["finished", t.finished ? new Date(t.finished).toLocaleString() : "—"],
  ].map(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
  const attempts = el("table", { class: "attempts" },
    el("thead", {}, el("tr", {}, ["#", "node", "state", "exit", "reason", "started", "ended", "took"]
      .map((h) => el("th", { text: h })))),
    el("tbody", {}, (t.attempts || []).map((a) => el("tr", { "data-attempt": a.attempt },
      el("td", { text: a.attempt }), el("td", { text: a.node }),
      el("td", {}, el("span", { class: `state ${a.state}`, text: a.state })),
      el("td", { text: a.exit_code ?? "" }), el("td", { class: "reason", text: a.reason || "" }),
      el("td", { text: clock(a.started) }), el("td", { text: clock(a.ended) }),
      el("td", { text: a.started ? span(((a.ended || Date.now()) - a.started) / 1000) : "" })))));
  const sections = [facts, el("h3", { text: `Attempts (${(t.attempts || []).length})` }), attempts];
  if (t.composite) {
    const p = t.progress || { done: 0, total: 0, failed: 0 };
    sections.push(el("h3", { text: "Parts" }),
      bar("parts", p.total ? p.done / p.total : 0, `${p.done} of ${p.total} ended · ${p.failed} failed`,
        p.failed ? "high" : "ok"),
      el("table", { class: "parts" },
        el("thead", {}, el("tr", {}, ["part", "state", "node", "exit", "took", "item"].map((h) => el("th", { text: h })))),
        el("tbody", {}, (t.parts || []).map((part) => el("tr", { "data-part": part.key },
          el("td", { class: "mono", text: part.key }),
          el("td", {}, el("span", { class: `state ${part.state}`, text: part.state })),
          el("td", { text: part.node || "" }), el("td", { text: part.exit_code ?? "" }),
          el("td", { text: part.runtime_ms ? span(part.runtime_ms / 1000) : "" }),
          el("td", { class: "cmd", text: part.item ?? "" }))))));
  } else if (logs) {
    sections.push(el("h3", { text: logs.live ? "Output so far" : "Output" }));
    if (logs.error) sections.push(el("p", { class: "muted", text: logs.error }));
    else {
      sections.push(el("pre", { class: "out", text: logs.stdout || "(no stdout)" }));
      if (logs.stderr) sections.push(el("pre", { class: "out err", text: logs.stderr }));
    }
  }
  replace(body, sections);
}

// -- audit -----------------------------------------------------------------------------------------

function drawAudit(a) {
  const head = a.head;
  const own = el("dl", { class: "facts" },
    [["node", `${a.node} (${a.node_id})`], ["records", String(a.records)],
      ["signed head", head ? `size ${head.size} at ${new Date(head.time_ms).toLocaleTimeString()}` : "none yet"],
      ["root", head ? head.root : "—"], ["signature", head ? `${head.signature.slice(0, 32)}…` : "—"],
    ].map(([k, v]) => [el("dt", { text: k }), el("dd", { class: k === "root" ? "mono" : "", text: v })]));
  const peers = (a.peers || []).map((p) => el("li", { class: p.status === "forked" ? "bad" : "" },
    `${p.name || p.node_id}: ${p.status}` + (p.head ? ` (head size ${p.head.size})` : "")));
  replace(document.getElementById("audit"), own,
    peers.length ? el("div", {}, el("h3", { text: "Other nodes' logs, as checked here" }), el("ul", {}, peers)) : null);
}

// -- start -----------------------------------------------------------------------------------------

function schedule() {
  clearTimeout(state.timer);
  state.timer = setTimeout(async () => {
    if (!document.hidden) await refresh();
    schedule();
  }, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const id of ["cluster", "state", "limit"]) document.getElementById(id).addEventListener("change", refresh);
  document.getElementById("detail-close").addEventListener("click", () => {
    state.selected = null;
    document.getElementById("detail").hidden = true;
    for (const row of document.querySelectorAll("#tasks tr.selected")) row.classList.remove("selected");
  });
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
    refresh();
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  refresh();
  schedule();
});
