// kv dashboard: polls /api/state (served by `kv dashboard`) and draws the nodes and two charts.
// No library, no network beyond that process: the page works offline.
"use strict";

const $ = (selector) => document.querySelector(selector);
let faults = false;
let busy = false; // a fault button's command is running
let actionToken = ""; // sent with every action: see kv_cli.dashboard.Dashboard.handle

function text(value) {
  return value === null || value === undefined ? "–" : String(value);
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function number(v) {
  if (v >= 10000) return Math.round(v / 1000) + "k";
  if (v >= 100) return String(Math.round(v));
  return v.toFixed(v >= 10 ? 1 : 2);
}

function cell(row, cls, content) {
  const td = document.createElement("td");
  td.className = cls;
  if (content instanceof Node) td.appendChild(content); else td.textContent = content;
  row.appendChild(td);
  return td;
}

function role(node) {
  const span = document.createElement("span");
  if (!node.reachable) { span.textContent = "unreachable"; return span; }
  if (node.is_leader) { span.innerHTML = '<span class="star">★</span> leader'; return span; }
  span.textContent = node.leader ? "follower of " + node.leader : "no leader known";
  return span;
}

function faultButtons(node) {
  const span = document.createElement("span");
  if (!faults || node.node_id === undefined || node.node_id === null) return span;
  for (const action of ["kill", "pause", "resume", "restart"]) {
    const button = document.createElement("button");
    button.className = "fault";
    button.dataset.action = action;
    button.dataset.node = node.node_id;
    button.textContent = action;
    button.disabled = busy;
    button.addEventListener("click", () => act(node.node_id, action));
    span.appendChild(button);
  }
  return span;
}

async function act(nodeId, action) {
  busy = true;
  $("#fault-note").textContent = action + " node " + nodeId + "…";
  try {
    const response = await fetch("/api/nodes/" + nodeId + "/" + action,
                                 { method: "POST", headers: { "X-KV-Action-Token": actionToken } });
    const result = await response.json();
    $("#fault-note").textContent = (result.ok ? "" : "failed: ") + result.output;
  } catch (error) {
    $("#fault-note").textContent = "failed: " + error;
  }
  busy = false;
  refresh();
}

function drawNodes(nodes) {
  const body = $("#nodes tbody");
  body.replaceChildren();
  for (const node of nodes) {
    const row = document.createElement("tr");
    const id = node.id !== null && node.id !== undefined ? node.id : node.node_id;
    row.className = "node" + (node.is_leader ? " leader" : "") + (node.reachable ? "" : " unreachable");
    row.dataset.id = text(id);
    row.dataset.reachable = node.reachable ? "1" : "0";
    cell(row, "id", text(id));
    cell(row, "address", text(node.address || node.endpoint));
    const process = cell(row, "process", node.process || "–");
    if (node.process) process.classList.add("process-" + node.process);
    if (node.pid) process.title = "pid " + node.pid;
    cell(row, "role", role(node));
    cell(row, "ballot", node.ballot ? "(" + node.ballot.join(",") + ")" : "–");
    cell(row, "decided", text(node.decided_slot));
    cell(row, "applied", text(node.applied_slot));
    cell(row, "lag", text(node.lag));
    cell(row, "learner", text(node.learner));
    cell(row, "backlog", text(node.apply_backlog));
    const disk = cell(row, "disk", text(node.disk));
    if (node.disk) disk.classList.add("disk-" + node.disk);
    if (node.disk_error) disk.title = node.disk_error;
    cell(row, "snapshot", text(node.snapshot_slot));
    cell(row, "log", bytes(node.log_bytes));
    cell(row, "keys", text(node.keys));
    cell(row, "faults", faultButtons(node));
    if (!node.reachable && node.error) row.title = node.error;
    body.appendChild(row);
  }
  for (const th of document.querySelectorAll("th.faults")) th.style.display = faults ? "" : "none";
  for (const td of document.querySelectorAll("td.faults")) td.style.display = faults ? "" : "none";
}

function drawChart(canvas, points, field, color, unit) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 48, bottom = 20, top = 8;
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#666";
  const values = points.map((p) => p[field]).filter((v) => v !== null && v !== undefined);
  const max = Math.max(1e-9, ...values) * 1.1;
  ctx.strokeStyle = "#ddd";
  for (let i = 0; i <= 4; i += 1) {
    const y = top + (h - top - bottom) * (1 - i / 4);
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w - 4, y); ctx.stroke();
    ctx.fillText(number(max * i / 4), 2, y + 4);
  }
  if (points.length < 2) { ctx.fillText("waiting for data…", left + 8, h / 2); return; }
  const t0 = points[0].t, t1 = points[points.length - 1].t;
  const x = (t) => left + (w - left - 4) * ((t - t0) / Math.max(1e-9, t1 - t0));
  const y = (v) => top + (h - top - bottom) * (1 - v / max);
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  let pen = false;
  for (const p of points) {
    const v = p[field];
    if (v === null || v === undefined) { pen = false; continue; }
    if (pen) ctx.lineTo(x(p.t), y(v)); else ctx.moveTo(x(p.t), y(v));
    pen = true;
  }
  ctx.stroke();
  ctx.fillStyle = color;
  for (const p of points) {  // a dot per sample, so that a lone sample shows too
    const v = p[field];
    if (v !== null && v !== undefined) { ctx.beginPath(); ctx.arc(x(p.t), y(v), 1.8, 0, 2 * Math.PI); ctx.fill(); }
  }
  ctx.fillStyle = "#666";
  ctx.fillText(Math.round(t1 - t0) + " s", w - 40, h - 4);
  const last = values.length ? values[values.length - 1] : null;
  canvas.dataset.last = last === null ? "" : String(last);
  canvas.dataset.points = String(points.length);
  ctx.fillText("now: " + (last === null ? "–" : last + " " + unit), left + 4, h - 4);
}

function drawEvents(events) {
  const list = $("#events");
  list.replaceChildren();
  for (const event of events.slice().reverse()) {
    const item = document.createElement("li");
    item.textContent = new Date(event.t * 1000).toLocaleTimeString() + "  " + event.text;
    list.appendChild(item);
  }
}

async function refresh() {
  let state;
  try {
    const response = await fetch("/api/state", { cache: "no-store" });
    state = await response.json();
  } catch (error) {
    $("#summary").textContent = "kv dashboard is not answering: " + error;
    return;
  }
  faults = state.faults;
  actionToken = state.action_token;
  const reachable = state.nodes.filter((n) => n.reachable).length;
  $("#summary").textContent = reachable + "/" + state.nodes.length + " nodes reachable, leader: " +
    (state.leader === null ? "none" : "node " + state.leader);
  $("#interval").textContent = state.interval;
  $("#polls").textContent = state.polls;
  document.body.dataset.polls = String(state.polls);
  drawNodes(state.nodes);
  drawChart($("#chart-throughput"), state.history, "writes_per_second", "#2b6cb0", "writes/s");
  drawChart($("#chart-latency"), state.history, "latency_ms", "#c05621", "ms");
  drawEvents(state.events);
}

refresh();
setInterval(refresh, 1000);
