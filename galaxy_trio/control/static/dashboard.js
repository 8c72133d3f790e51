// galaxy_trio dashboard: the fleet live, from the control API of `python -m galaxy_trio run --control`.
// Plain JS, no dependencies. Data is only ever inserted as text (textContent), never as HTML.
"use strict";

const TOKEN_KEY = "galaxy_trio.control.token";
const FEED_LIMIT = 200;
const REFRESH_MS = 10000; // heartbeats carry no event: re-read the devices this often
const $ = (selector) => document.querySelector(selector);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  devices: new Map(), // device_id -> {row, receivedAt}
  stream: null, // AbortController of the running event stream
  retryMs: 500,
};

// --- the token: asked once, kept in sessionStorage (this tab only), never put in a URL -----------------------

function askToken(message) {
  const error = $("#token-error");
  error.hidden = !message;
  error.textContent = message || "";
  const dialog = $("#token-dialog");
  if (!dialog.open) dialog.showModal();
  $("#token-input").focus();
}

$("#token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("#token-input").value.trim();
  if (!token) return;
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#token-dialog").close();
  start();
});

$("#forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  stopStream();
  askToken("");
});

class Unauthorized extends Error {}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${state.token}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) throw new Unauthorized();
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function refused() {
  stopStream();
  sessionStorage.removeItem(TOKEN_KEY);
  setStreamState("down", "token refused");
  askToken("The control server refused this token (401). Paste the token that `run --control` printed.");
}

// --- the device table -------------------------------------------------------------------------------------

// Many events can arrive at once (a fleet coming up): the table is redrawn at most once per animation frame.
let renderPending = false;
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => {
    renderPending = false;
    render();
  });
}

function setDevices(rows) {
  const now = performance.now();
  state.devices = new Map(rows.map((row) => [row.device_id, { row, receivedAt: now }]));
  scheduleRender();
}

function setDevice(row) {
  if (!row) return;
  state.devices.set(row.device_id, { row, receivedAt: performance.now() });
  scheduleRender();
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${Math.floor(seconds)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${Math.floor(seconds % 60)}s`;
  return `${(seconds / 3600).toFixed(1)}h`;
}

// Ages tick in the browser: the server's age at receipt plus the time since (no clock-skew between machines).
function since(entry, field) {
  const value = entry.row[field];
  if (value === null || value === undefined) return null;
  return value + (performance.now() - entry.receivedAt) / 1000;
}

function matches(row, filter) {
  if (!filter) return true;
  const haystack = [row.device_id, row.status, row.phase, row.os, row.failure_reason, row.current_task, row.owner,
    ...(row.capabilities || [])].join(" ").toLowerCase();
  return filter.toLowerCase().split(/\s+/).every((word) => haystack.includes(word));
}

function cell(tr, text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  tr.appendChild(td);
  return td;
}

function render() {
  const filter = $("#filter").value.trim();
  const body = $("#devices tbody");
  const rows = [];
  const counts = {};
  const ids = [...state.devices.keys()].sort();
  for (const id of ids) {
    const entry = state.devices.get(id);
    const row = entry.row;
    counts[row.status] = (counts[row.status] || 0) + 1;
    if (!matches(row, filter)) continue;
    const tr = document.createElement("tr");
    tr.dataset.device = id;
    tr.dataset.status = row.status;
    cell(tr, id, "id");
    const status = document.createElement("span");
    status.className = `status s-${row.status}`;
    status.textContent = row.status;
    cell(tr, "", "status-cell").appendChild(status);
    cell(tr, row.phase || "–", "phase");
    cell(tr, String(row.attempt ?? row.connection_attempts ?? 0), "num attempt");
    cell(tr, age(since(entry, "time_in_phase_s")), "num in-phase").dataset.tick = "time_in_phase_s";
    cell(tr, age(since(entry, "heartbeat_age_s")), "num heartbeat").dataset.tick = "heartbeat_age_s";
    cell(tr, String(row.queue_depth ?? 0), "num queue");
    cell(tr, row.current_task || "–", "task");
    cell(tr, row.owner || "–", "owner");
    cell(tr, row.os || "–", "os");
    cell(tr, (row.capabilities || []).join(", "), "caps");
    cell(tr, row.failure_reason || "", "reason");
    const actions = cell(tr, "", "actions");
    const connectable = ["failed", "disconnected"].includes(row.status);
    actions.appendChild(button(connectable ? "connect" : "disconnect", id));
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  // Fleet mode (rows name their owner): show the owner column.
  document.body.classList.toggle("fleet", ids.some((id) => "owner" in state.devices.get(id).row));
  $("#shown").textContent = filter ? `${rows.length} of ${ids.length} shown` : `${ids.length} devices`;
  const countBar = $("#counts");
  countBar.replaceChildren(...Object.keys(counts).sort().map((status) => {
    const span = document.createElement("span");
    span.className = "count";
    span.dataset.status = status;
    span.textContent = `${counts[status]} ${status}`;
    return span;
  }));
  renderDeviceChoice(ids);
}

function button(action, id) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = action;
  b.textContent = action;
  b.addEventListener("click", async () => {
    b.disabled = true;
    b.textContent = action === "connect" ? "connecting…" : "disconnecting…";
    try {
      setDevice(await api("POST", `/api/devices/${encodeURIComponent(id)}/${action}`));
    } catch (error) {
      if (error instanceof Unauthorized) return refused();
      feedLine(Date.now() / 1000, id, `${action} failed: ${error.message}`, "error");
      scheduleRender();
    }
  });
  return b;
}

function renderDeviceChoice(ids) {
  const select = $("#task-device");
  const chosen = select.value;
  const current = [...select.options].map((o) => o.value);
  if (current.length === ids.length && current.every((v, i) => v === ids[i])) return;
  select.replaceChildren(...ids.map((id) => new Option(id, id)));
  if (ids.includes(chosen)) select.value = chosen;
}

function tick() {
  for (const td of document.querySelectorAll("#devices td[data-tick]")) {
    const entry = state.devices.get(td.parentElement.dataset.device);
    if (entry) td.textContent = age(since(entry, td.dataset.tick));
  }
}

$("#filter").addEventListener("input", scheduleRender);

// --- the event stream: fetch() streaming (it can send the Authorization header, EventSource cannot) -------------

function setStreamState(kind, text) {
  const el = $("#stream-state");
  el.className = `state-${kind}`;
  el.textContent = text;
}

function stopStream() {
  if (state.stream) state.stream.abort();
  state.stream = null;
}

function feedLine(at, deviceId, text, className) {
  const li = document.createElement("li");
  if (className) li.className = className;
  const time = document.createElement("time");
  time.textContent = new Date(at * 1000).toLocaleTimeString();
  li.append(time, `${deviceId} ${text}`);
  const list = $("#events");
  list.prepend(li);
  while (list.children.length > FEED_LIMIT) list.lastChild.remove();
}

function describe(name, event) {
  const parts = [name];
  if (event.old_status || event.new_status) parts.push(`${event.old_status} → ${event.new_status}`);
  if (event.task_id) parts.push(`task ${event.task_id}`);
  if (event.error_type) parts.push(event.error_type);
  if (event.reason) parts.push(`(${event.reason})`);
  return parts.join(" ");
}

function onMessage(name, data) {
  if (name === "snapshot") {
    setDevices(data);
  } else if (name === "dropped") {
    feedLine(Date.now() / 1000, "dashboard", `was too slow: ${data.dropped} event(s) dropped; resynchronised`, "error");
  } else if (name === "closed") {
    feedLine(Date.now() / 1000, "manager", "closed", "error");
  } else if (data && data.event) {
    feedLine(data.event.at, data.event.device_id, describe(name, data.event),
      data.event.new_status === "failed" ? "error" : "");
    setDevice(data.device);
  }
}

async function follow(controller) {
  const response = await fetch("/api/events", {
    headers: { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" },
    signal: controller.signal,
    cache: "no-store",
  });
  if (response.status === 401) throw new Unauthorized();
  if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
  setStreamState("live", "live");
  state.retryMs = 500;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      if (data.length) onMessage(name, JSON.parse(data.join("\n")));
    }
  }
}

// Runs until stopped: after the stream ends (a manager restart, a network cut) it reconnects by itself, with a
// growing pause, and the first message of the new stream (a snapshot) resynchronises the table.
async function streamForever() {
  const controller = new AbortController();
  state.stream = controller;
  while (state.stream === controller) {
    try {
      setStreamState("connecting", "connecting…");
      await follow(controller);
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error instanceof Unauthorized) return refused();
    }
    if (state.stream !== controller) return;
    setStreamState("down", `disconnected — retrying in ${Math.round(state.retryMs / 100) / 10}s`);
    await new Promise((resolve) => setTimeout(resolve, state.retryMs));
    state.retryMs = Math.min(state.retryMs * 2, 5000);
  }
}

// --- the task form ------------------------------------------------------------------------------------------

$("#task-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const out = $("#task-result");
  const run = $("#task-run");
  const body = { device_id: $("#task-device").value, request: $("#task-request").value };
  const timeout = parseFloat($("#task-timeout").value);
  if (timeout > 0) body.timeout = timeout;
  run.disabled = true;
  out.className = "";
  out.textContent = `running on ${body.device_id}…`;
  try {
    const result = await api("POST", "/api/tasks", body);
    out.className = result.status;
    out.textContent = `${result.task_id}: ${result.status}` +
      (result.error ? ` (${result.error_type}): ${result.error}` : "") +
      `\n${JSON.stringify(result.result, null, 2)}`;
  } catch (error) {
    if (error instanceof Unauthorized) return refused();
    out.className = "failed";
    out.textContent = `refused: ${error.message}`;
  } finally {
    run.disabled = false;
  }
});

// --- start ----------------------------------------------------------------------------------------------------

async function start() {
  try {
    setDevices(await api("GET", "/api/devices"));
  } catch (error) {
    if (error instanceof Unauthorized) return refused();
    setStreamState("down", `cannot reach the control server: ${error.message}`);
  }
  stopStream();
  streamForever();
}

setInterval(tick, 1000);
setInterval(async () => {
  if (!state.token || !state.stream) return;
  try {
    setDevices(await api("GET", "/api/devices"));
  } catch (error) {
    if (error instanceof Unauthorized) refused();
  }
}, REFRESH_MS);

if (state.token) start();
else askToken("");
