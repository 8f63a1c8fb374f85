// The dashboard: reads /api/serve/status and follows /api/serve/events (Server-Sent Events).
// Everything shown comes from the bus, so it is written as text, never as HTML.
"use strict";

const kMaxEvents = 200;
// Traffic history per deployment, one sample a second from the status the page reads: the last
// five minutes, kept in the page only.
const kHistory = 300;
const history = new Map();
const kSvg = "http://www.w3.org/2000/svg";
let refreshTimer = null;
let lastStatusAt = 0;

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function pill(state) {
  return el("span", state, "pill " + state);
}

function fillTable(id, rows, cells) {
  const body = document.querySelector("#" + id + " tbody");
  const fresh = document.createDocumentFragment();
  for (const row of rows) {
    const tr = document.createElement("tr");
    tr.dataset.key = cells.key(row);
    for (const cell of cells.columns) {
      const td = document.createElement("td");
      const value = cell.value(row);
      if (value instanceof Node) td.appendChild(value);
      else td.textContent = value === undefined || value === null ? "" : String(value);
      if (cell.className) td.className = cell.className;
      tr.appendChild(td);
    }
    fresh.appendChild(tr);
  }
  body.replaceChildren(fresh);
}

function record(deployments) {
  const now = Date.now();
  for (const d of deployments) {
    let samples = history.get(d.name);
    if (!samples) history.set(d.name, (samples = []));
    if (samples.length > 0 && now - samples[samples.length - 1].t < 900) continue;
    samples.push({ t: now, rps: d.requests_per_s || 0, err: d.error_rate || 0,
                   p50: d.p50_ms || 0, p99: d.p99_ms || 0 });
    if (samples.length > kHistory) samples.shift();
  }
  for (const name of [...history.keys()]) {
    if (!deployments.some((d) => d.name === name)) history.delete(name);
  }
}

// A small chart of `keys` of the samples (newest at the right, five minutes across), scaled to
// the largest value shown, with the latest figure beside it.
function chart(samples, keys, label) {
  const box = el("span", null, "chart");
  const svg = document.createElementNS(kSvg, "svg");
  svg.setAttribute("viewBox", "0 0 120 30");
  svg.setAttribute("preserveAspectRatio", "none");
  let max = 0;
  for (const s of samples) for (const key of keys) max = Math.max(max, s[key]);
  const step = 120 / (kHistory - 1);
  keys.forEach((key, index) => {
    const line = document.createElementNS(kSvg, "polyline");
    const n = samples.length;
    line.setAttribute("points", samples.map((s, i) =>
      (120 - (n - 1 - i) * step).toFixed(1) + "," +
      (28 - (max > 0 ? (s[key] / max) * 26 : 0)).toFixed(1)).join(" "));
    line.setAttribute("class", "line" + index);
    svg.appendChild(line);
  });
  box.appendChild(svg);
  box.appendChild(el("span", label, "figure"));
  box.title = "the last " + Math.round(samples.length / 60) + " min; top: " + max.toPrecision(3);
  return box;
}

function number(value, unit) {
  if (!value) return "0" + unit;
  return (value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2)) + unit;
}

function ago(seconds) {
  if (seconds === undefined || seconds === null) return "";
  return seconds < 60 ? seconds.toFixed(1) + " s ago" : Math.round(seconds / 60) + " min ago";
}

function render(status) {
  document.getElementById("namespace").textContent = "namespace " + status.namespace;
  const warning = document.getElementById("warning");
  warning.hidden = !status.checkpoint_warning;
  warning.textContent = status.checkpoint_warning || "";

  const deployments = status.deployments || [];
  record(deployments);
  document.getElementById("deployment-count").textContent = "(" + deployments.length + ")";
  document.getElementById("no-deployments").hidden = deployments.length > 0;
  fillTable("deployments", deployments, {
    key: (d) => d.name,
    columns: [
      { value: (d) => d.name, className: "id" },
      { value: (d) => pill(d.status) },
      { value: (d) => d.replicas.filter((r) => r.state === "RUNNING").length + "/" + d.num_replicas },
      { value: (d) => d.version, className: "mono" },
      { value: (d) => d.route_prefix, className: "mono" },
      { value: (d) => d.runtime },
      { value: (d) => chart(history.get(d.name) || [], ["rps"], number(d.requests_per_s, "/s")),
        className: "rps" },
      { value: (d) => chart(history.get(d.name) || [], ["err"], number(d.error_rate * 100, "%")),
        className: "errors" },
      { value: (d) => chart(history.get(d.name) || [], ["p99", "p50"],
                            number(d.p50_ms, "") + " / " + number(d.p99_ms, " ms")),
        className: "latency" },
      { value: (d) => d.message, className: "message" },
    ],
  });
  const replicas = [];
  for (const d of deployments) for (const r of d.replicas) replicas.push(Object.assign({ deployment: d.name }, r));
  document.getElementById("replica-count").textContent = "(" + replicas.length + ")";
  fillTable("replicas", replicas, {
    key: (r) => r.id,
    columns: [
      { value: (r) => logButton(r.id), className: "id" },
      { value: (r) => r.deployment },
      { value: (r) => pill(r.state) },
      { value: (r) => r.node, className: "mono" },
      { value: (r) => r.version, className: "mono" },
      { value: (r) => r.pid || "" },
      { value: (r) => r.in_flight },
      { value: (r) => r.queued },
      { value: (r) => (r.heard_s >= 0 ? ago(r.heard_s) : "") },
      { value: (r) => r.message, className: "message" },
    ],
  });
  fillTable("nodes", status.nodes || [], {
    key: (n) => n.id,
    columns: [
      { value: (n) => n.id, className: "id" },
      { value: (n) => pill(n.state) },
      { value: (n) => n.host },
      { value: (n) => n.num_cpus },
      { value: (n) => n.num_gpus },
      { value: (n) => n.replicas },
      { value: (n) => ago(n.last_seen_s) },
    ],
  });
  fillTable("proxies", status.proxies || [], {
    key: (p) => p.id,
    columns: [
      { value: (p) => p.id, className: "id" },
      { value: (p) => pill(p.state) },
      { value: (p) => p.address, className: "mono" },
      { value: (p) => ago(p.last_seen_s) },
    ],
  });
  const services = [];
  for (const s of status.supervisors || []) for (const service of s.services) services.push(service);
  document.getElementById("supervisors-section").hidden = services.length === 0;
  fillTable("services", services, {
    key: (s) => s.name,
    columns: [
      { value: (s) => s.name, className: "id" },
      { value: (s) => pill(s.state) },
      { value: (s) => s.pid },
      { value: (s) => s.restarts },
      { value: (s) => s.last_exit, className: "message" },
    ],
  });
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

// The log viewer: one replica's log, its last lines, then what follows, read once a second
// from the node that holds it (through the controller).
const kMaxLogChars = 200000;
const log = { replica: null, offset: -1, reading: false };

function logButton(id) {
  const button = el("button", id, "link");
  button.type = "button";
  button.title = "follow this replica's log";
  button.addEventListener("click", () => showLog(id));
  return button;
}

function showLog(id) {
  log.replica = id;
  log.offset = -1;
  document.getElementById("log-replica").textContent = id;
  document.getElementById("log-hint").hidden = true;
  const pre = document.getElementById("log");
  pre.textContent = "";
  pre.hidden = false;
  readLog();
}

async function readLog() {
  if (log.replica === null || log.reading) return;
  const replica = log.replica;
  log.reading = true;
  try {
    const answer = await fetch("/api/serve/replicas/" + encodeURIComponent(replica) +
                               "/logs?tail=200&offset=" + log.offset, { cache: "no-store" });
    const body = await answer.json();
    if (replica !== log.replica) return;  // another replica was chosen meanwhile
    const hint = document.getElementById("log-hint");
    if (!answer.ok) {
      hint.textContent = body.error || answer.statusText;
      hint.hidden = false;
      return;
    }
    hint.hidden = true;
    const pre = document.getElementById("log");
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    let text = (body.restarted ? "" : pre.textContent) + body.data;
    if (text.length > kMaxLogChars) text = text.slice(text.indexOf("\n", text.length - kMaxLogChars) + 1);
    if (body.data.length > 0 || body.restarted) pre.textContent = text;
    log.offset = body.next_offset;
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  } catch (error) {
    // The controller is away: the connection pill says so; the next tick tries again.
  } finally {
    log.reading = false;
  }
}

async function refresh() {
  refreshTimer = null;
  lastStatusAt = Date.now();
  try {
    const answer = await fetch("/api/serve/status", { cache: "no-store" });
    const body = await answer.json();
    if (!answer.ok) {
      showConnection("waiting", body.error || answer.statusText);
      return;
    }
    render(body);
  } catch (error) {
    showConnection("lost", "the controller does not answer");
  }
}

// Changes come in bursts (a rolling update is dozens of events): one refresh per burst.
function refreshSoon() {
  if (refreshTimer === null) refreshTimer = setTimeout(refresh, 150);
}

function showConnection(state, title) {
  const connection = document.getElementById("connection");
  connection.textContent = state;
  connection.className = "pill " + state;
  connection.title = title || "";
}

function addEvent(event) {
  const list = document.getElementById("events");
  const item = el("li");
  item.dataset.seq = event.seq;
  item.appendChild(el("time", new Date(event.time_ms).toLocaleTimeString()));
  const what = el("span", null, "what");
  what.appendChild(el("span", event.kind + " " + event.name + " "));
  what.appendChild(pill(event.state));
  item.appendChild(what);
  if (event.message) item.appendChild(el("span", event.message, "message"));
  list.insertBefore(item, list.firstChild);
  while (list.children.length > kMaxEvents) list.removeChild(list.lastChild);
}

function follow() {
  const source = new EventSource("/api/serve/events");
  source.onopen = () => showConnection("live", "following events");
  source.onmessage = (message) => {
    addEvent(JSON.parse(message.data));
    refreshSoon();
  };
  // EventSource reconnects by itself (after `retry:`), resuming from the last id.
  source.onerror = () => showConnection("reconnecting", "the event stream was interrupted");
}

refresh();
follow();
// Ages ("3.2 s ago") move without events; a missed event is caught up within this period too.
setInterval(() => {
  if (Date.now() - lastStatusAt >= 1000) refresh();
  readLog();
}, 1000);
