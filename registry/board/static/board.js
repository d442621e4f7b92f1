// Fleet board: load the fleet, then apply the registry's events from the snapshot's
// position on (server-sent events). Plain JS, no build step; text only via textContent.
"use strict";

const STATUSES = [
  "online", "degraded", "offline", "awaiting_agent", "provisioning",
  "failed", "paused", "hibernating", "hibernated",
];
const STATUS_OF_EVENT = {
  WORKSPACE_ONLINE: "online",
  WORKSPACE_DEGRADED: "degraded",
  WORKSPACE_OFFLINE: "offline",
  WORKSPACE_AWAITING_AGENT: "awaiting_agent",
  WORKSPACE_PROVISION_FAILED: "failed",
  WORKSPACE_HIBERNATED: "hibernated",
};
const MAX_EVENTS = 200;
const RESYNC_MS = 30000; // changes that publish no event (a new provisioning row, a pause)
const STALE_AFTER_S = 90;

const fleet = new Map(); // id -> workspace (as /api/snapshot gives it)
const tiles = new Map(); // id -> tile element
const fetching = new Set();
let clockOffsetMs = 0; // server clock minus ours: heartbeat ages use the server's clock
let source = null;

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function label(status) { return status.replace("_", " "); }

function age(iso) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((Date.now() + clockOffsetMs - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

function isStale(iso) {
  return !iso || (Date.now() + clockOffsetMs - Date.parse(iso)) / 1000 > STALE_AFTER_S;
}

// ---- rendering -------------------------------------------------------------

function buildTile(ws) {
  const tile = el("article", "tile");
  tile.dataset.id = ws.id;
  const head = el("div", "tile-head");
  head.append(el("span", "status"), el("span", "runtime"));
  const facts = el("div", "facts");
  facts.append(el("span", "tasks"), el("span", "beat"));
  tile.append(head, el("div", "name"), el("div", "wsid"), facts, el("div", "task"));
  return tile;
}

function renderTile(ws, flash) {
  let tile = tiles.get(ws.id);
  if (!tile) {
    tile = buildTile(ws);
    tiles.set(ws.id, tile);
    placeTile(ws, tile);
  }
  if (tile.dataset.status !== ws.status) {
    tile.dataset.status = ws.status;
    if (flash) { tile.classList.remove("flash"); void tile.offsetWidth; tile.classList.add("flash"); }
  }
  tile.querySelector(".status").textContent = label(ws.status);
  tile.querySelector(".runtime").textContent = ws.runtime || "";
  tile.querySelector(".name").textContent = ws.name || ws.id;
  tile.querySelector(".name").title = ws.name || ws.id;
  tile.querySelector(".wsid").textContent = `${ws.id.slice(0, 8)} · tier ${ws.tier ?? "–"}`;
  const max = ws.max_concurrent_tasks || 1;
  tile.querySelector(".tasks").textContent = `${ws.active_tasks ?? 0}/${max} active`;
  tile.querySelector(".task").textContent = ws.current_task ? `▸ ${ws.current_task}` : "";
  renderAge(ws, tile);
}

function renderAge(ws, tile) {
  const beat = tile.querySelector(".beat");
  beat.textContent = `♥ ${age(ws.last_heartbeat_at)}`;
  const live = ws.status === "online" || ws.status === "degraded";
  beat.classList.toggle("stale", live && isStale(ws.last_heartbeat_at));
}

function byName(a, b) {
  return (a.name || "").localeCompare(b.name || "") || a.id.localeCompare(b.id);
}

function placeTile(ws, tile) {
  const grid = $("tiles");
  const after = [...fleet.values()].filter((o) => o.id !== ws.id && byName(ws, o) < 0).sort(byName)[0];
  const before = after && tiles.get(after.id);
  grid.insertBefore(tile, before && before.parentNode === grid ? before : null);
}

function dropTile(id) {
  const tile = tiles.get(id);
  if (tile) tile.remove();
  tiles.delete(id);
  fleet.delete(id);
}

function renderAll() {
  const grid = $("tiles");
  grid.replaceChildren();
  tiles.clear();
  [...fleet.values()].sort(byName).forEach((ws) => renderTile(ws, false));
  renderCounts();
}

function renderCounts() {
  const counts = Object.fromEntries(STATUSES.map((s) => [s, 0]));
  for (const ws of fleet.values()) counts[ws.status] = (counts[ws.status] || 0) + 1;
  const legend = $("legend");
  legend.replaceChildren(...STATUSES.map((status) => {
    const chip = el("span", counts[status] ? "chip" : "chip zero");
    chip.dataset.status = status;
    chip.style.setProperty("--c", `var(--${status})`);
    chip.append(el("span", "swatch"), el("span", "", label(status)), el("b", "", String(counts[status])));
    return chip;
  }));
  $("total").textContent = String(fleet.size);
  $("empty").hidden = fleet.size > 0;
}

function renderPreservation(payload) {
  const banner = $("preservation");
  banner.hidden = !payload || !payload.active;
  if (!banner.hidden) {
    banner.textContent = "Self-preservation active: the registry has paused marking workspaces unreachable"
      + (payload.reason ? ` (${payload.reason})` : "") + ".";
  }
}

function addEventRow(ev) {
  if (ev.event === "WORKSPACE_HEARTBEAT" && !$("show-heartbeats").checked) return;
  const ws = ev.workspace_id && fleet.get(ev.workspace_id);
  const row = el("li", "new");
  const status = STATUS_OF_EVENT[ev.event] || (ev.event === "WORKSPACE_REMOVED" ? "removed" : null);
  row.style.setProperty("--c", status ? `var(--${status})` : "var(--muted)");
  const what = el("div", "what");
  const who = ev.workspace_id ? (ws && ws.name) || ev.workspace_id.slice(0, 8) : "fleet";
  const time = el("time", "", new Date(ev.timestamp).toLocaleTimeString());
  time.dateTime = ev.timestamp;
  what.append(el("span", "who", who), time);
  row.append(el("span", "dot"), what, el("div", "gist", ev.gist || ""), el("div", "type", ev.event));
  prependRow(row);
}

function prependRow(row) {
  const list = $("events");
  list.prepend(row);
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

// ---- applying events -----------------------------------------------------------

function apply(ev) {
  if (ev.event === "REGISTRY_SELF_PRESERVATION") renderPreservation(ev.payload);
  const id = ev.workspace_id;
  const ws = id && fleet.get(id);
  addEventRow(ev);
  if (!id) return;
  if (ev.event === "WORKSPACE_REMOVED") {
    dropTile(id);
    renderCounts();
    return;
  }
  if (!ws) {
    fetchWorkspace(id); // created or registered since the snapshot
    return;
  }
  const p = ev.payload || {};
  let flash = false;
  switch (ev.event) {
    case "WORKSPACE_HEARTBEAT":
      ws.last_heartbeat_at = ev.timestamp;
      if (p.active_tasks !== undefined) ws.active_tasks = p.active_tasks;
      if (p.uptime_seconds !== undefined) ws.uptime_seconds = p.uptime_seconds;
      break;
    case "TASK_UPDATED":
      ws.current_task = p.current_task || null;
      if (p.active_tasks !== undefined) ws.active_tasks = p.active_tasks;
      break;
    case "AGENT_CARD_UPDATED":
      if (p.agent_card && p.agent_card.name) ws.card_name = p.agent_card.name;
      break;
    default:
      if (STATUS_OF_EVENT[ev.event]) {
        flash = ws.status !== STATUS_OF_EVENT[ev.event];
        ws.status = STATUS_OF_EVENT[ev.event];
        ws.status_changed_at = ev.timestamp;
        if (ev.event === "WORKSPACE_ONLINE") ws.last_heartbeat_at = ev.timestamp;
      }
  }
  renderTile(ws, flash);
  renderCounts();
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

async function fetchWorkspace(id) {
  if (fetching.has(id)) return;
  fetching.add(id);
  try {
    const ws = await getJSON(`/api/workspaces/${id}`);
    if (ws.status === "removed") dropTile(id);
    else { fleet.set(id, ws); renderTile(ws, true); }
    renderCounts();
  } catch (err) {
    console.warn("board: could not fetch workspace", id, err);
  } finally {
    fetching.delete(id);
  }
}

// ---- loading and following ---------------------------------------------------------

function setLink(state, text) {
  $("link").dataset.state = state;
  $("link-text").textContent = text;
}

async function loadSnapshot() {
  const snap = await getJSON("/api/snapshot");
  clockOffsetMs = Date.parse(snap.server_time) - Date.now();
  fleet.clear();
  for (const ws of snap.workspaces) fleet.set(ws.id, ws);
  renderAll();
  renderPreservation(snap.self_preservation);
  return snap.position;
}

// Load the fleet, then follow the events from the position the snapshot was taken at.
async function start() {
  if (source) { source.close(); source = null; }
  setLink("connecting", "loading…");
  let position;
  try {
    position = await loadSnapshot();
  } catch (err) {
    setLink("down", "registry unreachable, retrying…");
    setTimeout(start, 3000);
    return;
  }
  source = new EventSource(`/api/events?since=${encodeURIComponent(position)}`);
  source.addEventListener("registry", (msg) => apply(JSON.parse(msg.data)));
  source.addEventListener("gap", (msg) => {
    const gap = JSON.parse(msg.data);
    const row = el("li", "gap new", `⚠ ${gap.text}`);
    prependRow(row);
    start(); // heartbeats in the gap are gone: the database has the truth
  });
  source.onopen = () => setLink("live", "live");
  source.onerror = () => setLink("down", "reconnecting…"); // EventSource retries by itself
}

// Pick up what publishes no event (a workspace created in provisioning, a pause).
async function resync() {
  try {
    const snap = await getJSON("/api/snapshot");
    clockOffsetMs = Date.parse(snap.server_time) - Date.now();
    const seen = new Set();
    for (const ws of snap.workspaces) {
      seen.add(ws.id);
      const known = fleet.get(ws.id);
      fleet.set(ws.id, ws);
      renderTile(ws, Boolean(known) && known.status !== ws.status);
    }
    for (const id of [...fleet.keys()]) if (!seen.has(id)) dropTile(id);
    renderCounts();
  } catch (err) {
    console.warn("board: resync failed", err);
  }
}

function tick() {
  for (const [id, tile] of tiles) {
    const ws = fleet.get(id);
    if (ws) renderAge(ws, tile);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  start();
  setInterval(tick, 1000);
  setInterval(resync, RESYNC_MS);
});
