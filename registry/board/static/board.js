// Fleet board: load the fleet in pages (problems first), then apply the registry's
// events from the first page's position on (server-sent events).
//
// Built for 5,000-50,000 workspaces: events only change state and mark what is dirty;
// one animation frame per batch redraws the counts, the map (a canvas, one cell per
// workspace) and the tiles actually in view (virtualised: the DOM holds a screenful).
// Layout is never read after a write within a frame. Plain JS, no build step; text
// only via textContent.
"use strict";

// Problems first, then what is on its way, then the healthy bulk (as the server pages).
const STATUS_ORDER = [
  "failed", "offline", "degraded", "awaiting_agent", "provisioning",
  "paused", "hibernating", "hibernated", "online",
];
const PROBLEMS = new Set(["failed", "offline", "degraded", "awaiting_agent"]);
const STATUS_OF_EVENT = {
  WORKSPACE_ONLINE: "online",
  WORKSPACE_DEGRADED: "degraded",
  WORKSPACE_OFFLINE: "offline",
  WORKSPACE_AWAITING_AGENT: "awaiting_agent",
  WORKSPACE_PROVISION_FAILED: "failed",
  WORKSPACE_HIBERNATED: "hibernated",
};
const BEATS = new Set(["WORKSPACE_HEARTBEAT", "TASK_UPDATED"]);
const FIRST_PAGE = 1000; // the useful view: the first screens of problems, and the counts
const PAGE = 10000;
const MAX_EVENTS = 100;
const FEED_ROW_H = 60; // board.css agrees
const REFRESH_MS = 30000; // incremental: only rows whose status changed (no-event changes)
const REFRESH_OVERLAP_MS = 60000; // a transaction may commit after our last read began
const STREAM_RETRY_MS = 5000; // after the server refused the event stream (503)
const STALE_AFTER_S = 90;
// Tile geometry (board.css agrees): fixed sizes make the virtual list pure arithmetic.
const TILE_MIN_W = 210;
const TILE_H = 120;
const GAP = 12;
const ROW_H = TILE_H + GAP;
const HEAD_H = 34;
const OVERSCAN_PX = 300;
const MAP_MAX_H = 220;
const MAP_SIZES = [14, 12, 10, 8, 7, 6, 5, 4, 3, 2];
// Frames caused by the fleet changing are at most this often (a flood of events is drawn
// ten times a second); frames caused by the operator's input are drawn at once.
const DATA_FRAME_MS = 100;
const FEED_EVERY_MS = 250; // the event list is for reading, not for 100 rows a second
const FEED_ANIMATED = 3; // rows arriving in a calm moment glide in; a flood does not

const fleet = new Map(); // id -> workspace
const groups = new Map(STATUS_ORDER.map((s) => [s, []])); // status -> workspaces sorted by key
const runtimes = new Map(); // runtime -> how many
const unsorted = new Set(); // groups appended to by a page load, sorted before use
// The map's order: everyone by name, stable, so a status change repaints one cell.
const everyone = [];
let everyoneUnsorted = false;
// The hot loops (the map, a filter change) read typed arrays indexed by a workspace's
// slot, not 50,000 objects: no property reads per workspace, no writes into them, and
// nothing for the garbage collector to trace.
let slots = []; // slot -> workspace (null once dropped; slots are not reused until a reload)
let statusCode = new Uint8Array(1024); // slot -> status code (codeOf)
let matchBits = new Uint8Array(1024); // slot -> 1 if it passes the runtime filter and the search
let matchGen = -1; // the filterGen matchBits were computed for
let mapSlots = new Int32Array(0); // the map's order (everyone) as slots
let mapSlotsStale = true;
const STATUS_OF_CODE = [...STATUS_ORDER]; // code -> status (a status this page does not know is added)
const CODE_OF = new Map(STATUS_ORDER.map((s, i) => [s, i])); // status -> code
const palette = new Uint32Array(512); // code * 2 + shown -> the cell's colour
const statusPass = new Uint8Array(256); // code -> 1 if the status chips let it through
const mapCells = new Set(); // workspaces whose cell needs repainting (status changed)
const filters = { statuses: new Set(), runtime: "", q: "" };
const dirty = { view: true, counts: true, tiles: true, map: true, runtimes: true, feed: false };
const feedQueue = []; // events not drawn yet
const feed = []; // the newest MAX_EVENTS events, newest first
const feedRows = []; // the event list's rows (a panel's height of them)
let feedArrive = "a";
let feedFresh = 0; // how many rows on top just arrived (animated)
const fetching = new Set();
const mounted = new Map(); // workspace id -> its tile in the list
const heads = new Map(); // status -> its group header in the list
let view = { segments: [], height: 0, cols: 1, tileW: TILE_MIN_W };
let geometry = { listW: 0, listH: 0, mapW: 0, feedH: 0 };
const scrolled = { tiles: 0, feed: 0 }; // scroll positions, as the scroll events said
let mapLayout = { size: 6, cols: 1, rows: 0 };
let selected = null;
let clockOffsetMs = 0; // server clock minus ours: heartbeat ages use the server's clock
let source = null;
let generation = 0; // bumped by each (re)load; an older load stops adding pages
let loading = null; // while pages arrive: { counts, total, got }
let lastSync = null;
let frameWanted = false;
let filterGen = 0; // bumped when the runtime filter or the search changes: cached matches() go stale
// The groups narrowed by the runtime filter and the search (status -> workspaces, sorted),
// kept up to date by each status change while filterGen stays the same.
const shownIn = new Map();
let shownGen = -1;
// Search: every lowercase name and id in one string, searched with indexOf (native) per
// keystroke instead of two includes() per workspace. Rebuilt when workspaces come or go.
let searchText = "";
let searchStarts = new Int32Array(0); // where each workspace's entry begins in searchText
let searchOwners = new Int32Array(0); // ... and whose (slot) it is
let searchScratch = new Int32Array(0); // a search's hits before they are copied out
let searchStale = true;
const searchHits = new Map(); // query -> the slots it found (the last few queries)
const SEARCHES_KEPT = 4;
let versions = 0; // one counter for every change: a tile redraws when its version differs
let frameTimer = null;
let lastFrame = 0;
let lastFeed = 0;
let mapImage = null; // one pixel per cell, reused while the map's shape stays the same
let mapScratch = null; // the canvas that image is scaled up from
let painted = false;
let firstPageIn = false; // the first paint that counts is the first with the fleet's problems
let colours = {};

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

// ---- state: the fleet, kept grouped by status and sorted by name ------------------

function groupOf(status) {
  let group = groups.get(status);
  if (!group) { group = []; groups.set(status, group); } // a status this page does not know
  return group;
}

function keyOf(ws) { return `${ws.name || ""}\u0000${ws.id}`; }

// The sort key and the search's lowercase name: built when a row comes in, not per
// status change (a flood would make two strings per event for the collector).
function named(ws) {
  ws.key = keyOf(ws);
  ws.lname = (ws.name || "").toLowerCase();
}

function codeOf(status) {
  let code = CODE_OF.get(status);
  if (code === undefined) {
    code = STATUS_OF_CODE.length;
    CODE_OF.set(status, code);
    STATUS_OF_CODE.push(status);
    dirty.map = true; // the palette learns its colour
  }
  return code;
}

function grow(array, size) {
  if (array.length >= size) return array;
  const bigger = new array.constructor(Math.max(size, array.length * 2));
  bigger.set(array);
  return bigger;
}

function giveSlot(ws) {
  ws.slot = slots.length;
  slots.push(ws);
  statusCode = grow(statusCode, slots.length);
  matchBits = grow(matchBits, slots.length);
}

// The map's order as slots, rebuilt only when workspaces come or go.
function mapOrder() {
  sortGroups();
  if (mapSlotsStale) {
    if (mapSlots.length !== everyone.length) mapSlots = new Int32Array(everyone.length);
    for (let i = 0; i < everyone.length; i += 1) mapSlots[i] = everyone[i].slot;
    mapSlotsStale = false;
  }
  return mapSlots;
}

function indexIn(group, key) {
  let lo = 0;
  let hi = group.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (group[mid].key < key) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// Pages append (a sort per group per page, not a splice per row: 50,000 splices into a
// 30,000-row group would be quadratic); everything else inserts in place.
const byKey = (a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);

function sortGroups() {
  for (const status of unsorted) groupOf(status).sort(byKey);
  unsorted.clear();
  if (everyoneUnsorted) { everyone.sort(byKey); everyoneUnsorted = false; mapSlotsStale = true; }
}

function enlist(ws, bulk) {
  mapSlotsStale = true;
  if (bulk) { everyone.push(ws); everyoneUnsorted = true; return; }
  sortGroups();
  everyone.splice(indexIn(everyone, ws.key), 0, ws);
}

function delist(ws) {
  sortGroups();
  const at = indexIn(everyone, ws.key);
  if (everyone[at] === ws) everyone.splice(at, 1);
  mapSlotsStale = true;
}

function unlink(ws) {
  sortGroups();
  const group = groupOf(ws.status);
  const at = indexIn(group, ws.key);
  if (group[at] === ws) group.splice(at, 1);
  const shown = narrowedBy() && shownGen === filterGen && shownIn.get(ws.status);
  if (shown) {
    const i = indexIn(shown, ws.key);
    if (shown[i] === ws) shown.splice(i, 1);
  }
  const n = (runtimes.get(ws.runtime) || 1) - 1;
  if (n > 0) runtimes.set(ws.runtime, n); else { runtimes.delete(ws.runtime); dirty.runtimes = true; }
}

function link(ws, bulk) {
  statusCode[ws.slot] = codeOf(ws.status);
  const group = groupOf(ws.status);
  if (bulk) {
    group.push(ws);
    unsorted.add(ws.status);
    shownGen = -1;
  } else {
    sortGroups();
    group.splice(indexIn(group, ws.key), 0, ws);
    if (narrowedBy() && shownGen === filterGen && matches(ws)) {
      const shown = shownIn.get(ws.status);
      if (shown) shown.splice(indexIn(shown, ws.key), 0, ws); else shownGen = -1;
    }
  }
  if (!runtimes.has(ws.runtime)) dirty.runtimes = true;
  runtimes.set(ws.runtime, (runtimes.get(ws.runtime) || 0) + 1);
}

function changed() {
  dirty.view = dirty.counts = dirty.tiles = dirty.map = true;
  schedule();
}

// Put a row from the server in; `overwrite` false keeps what events already told us.
function upsert(row, overwrite, bulk) {
  const known = fleet.get(row.id);
  if (known && !overwrite) return;
  fleetChanged();
  if (known) {
    unlink(known);
    delist(known);
    Object.assign(known, row);
    named(known);
    known.v = ++versions;
    link(known);
    enlist(known);
  } else {
    named(row);
    row.v = ++versions;
    giveSlot(row);
    fleet.set(row.id, row);
    link(row, bulk);
    enlist(row, bulk);
  }
  changed();
}

function drop(id) {
  const ws = fleet.get(id);
  if (!ws) return;
  unlink(ws);
  delist(ws);
  slots[ws.slot] = null;
  fleet.delete(id);
  fleetChanged();
  changed();
}

function setStatus(ws, status) {
  if (ws.status === status) return;
  unlink(ws);
  ws.status = status;
  link(ws);
  mapCells.add(ws); // the map's order is by name: only this cell changes
  dirty.view = dirty.counts = dirty.tiles = true;
  schedule();
}

function clearFleet() {
  fleet.clear();
  for (const group of groups.values()) group.length = 0;
  unsorted.clear();
  everyone.length = 0;
  everyoneUnsorted = false;
  slots = [];
  mapSlotsStale = true;
  runtimes.clear();
  dirty.runtimes = true;
  fleetChanged();
  changed();
}

// A workspace came, went or was rewritten (name, runtime): the search index and every
// cached match go stale.
function fleetChanged() {
  searchStale = true;
  filterGen += 1;
  shownGen = -1;
}

function narrowedBy() { return Boolean(filters.runtime || filters.q); }

function buildSearch() {
  const parts = [];
  searchStarts = new Int32Array(fleet.size);
  searchOwners = new Int32Array(fleet.size);
  searchScratch = new Int32Array(fleet.size);
  let at = 0;
  let k = 0;
  for (const ws of fleet.values()) {
    const entry = `${ws.lname.replace(/[\t\n]/g, " ")}\t${ws.id}\n`;
    searchStarts[k] = at;
    searchOwners[k] = ws.slot;
    k += 1;
    parts.push(entry);
    at += entry.length;
  }
  searchText = parts.join("");
  searchStale = false;
}

// The slots of every workspace whose name or id contains q. The last few searches'
// hits are kept (typing and deleting a letter goes back to one of them).
function search(q) {
  if (searchStale) { buildSearch(); searchHits.clear(); }
  let hits = searchHits.get(q);
  if (!hits) {
    let n = 0;
    const last = searchStarts.length - 1;
    let from = 0;
    for (let at = searchText.indexOf(q); at >= 0; at = searchText.indexOf(q, from)) {
      let lo = 0;
      let hi = last;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (searchStarts[mid] <= at) lo = mid; else hi = mid - 1;
      }
      searchScratch[n] = searchOwners[lo];
      n += 1;
      if (lo === last) break;
      from = searchStarts[lo + 1]; // one hit per workspace is enough
    }
    hits = searchScratch.slice(0, n);
    if (searchHits.size >= SEARCHES_KEPT) searchHits.delete(searchHits.keys().next().value);
    searchHits.set(q, hits);
  }
  return hits;
}

// matchBits for the current runtime filter and search: once per filter generation, so
// the list, the map and every frame of a flood look a workspace up instead of testing it.
function refreshMatches() {
  if (matchGen === filterGen) return;
  matchGen = filterGen;
  const n = slots.length;
  if (!filters.q) matchBits.fill(1, 0, n);
  else {
    matchBits.fill(0, 0, n);
    const hits = search(filters.q);
    for (let k = 0; k < hits.length; k += 1) matchBits[hits[k]] = 1;
  }
  if (filters.runtime) {
    for (let i = 0; i < n; i += 1) {
      const ws = slots[i];
      if (matchBits[i] && (!ws || ws.runtime !== filters.runtime)) matchBits[i] = 0;
    }
  }
}

// Whether a workspace passes the runtime filter and the search.
function matches(ws) {
  refreshMatches();
  return matchBits[ws.slot] === 1;
}

// ---- the frame: everything drawn once per animation frame, reads before writes -----------

// A text change edits the node's text in place: replacing the text node (textContent)
// would take it out of layout and put a new one in.
function setText(node, text) {
  const only = node.firstChild;
  if (only && only.nodeType === Node.TEXT_NODE && !only.nextSibling) {
    if (only.data !== text) only.data = text;
  } else if (node.textContent !== text) node.textContent = text;
}

function schedule(urgent) {
  if (frameWanted) return;
  const wait = urgent ? 0 : lastFrame + DATA_FRAME_MS - performance.now();
  if (wait <= 0) {
    if (frameTimer !== null) { clearTimeout(frameTimer); frameTimer = null; }
    frameWanted = true;
    requestAnimationFrame(frame);
  } else if (frameTimer === null) {
    frameTimer = setTimeout(() => { frameTimer = null; schedule(true); }, wait);
  }
}

function frame(now) {
  frameWanted = false;
  lastFrame = now;
  // No layout is read here: the scroll positions come from the scroll events.
  if (feedQueue.length) {
    if (now - lastFeed >= FEED_EVERY_MS) { lastFeed = now; flushFeed(scrolled.feed); } else schedule();
  } else if (dirty.feed) renderFeed(scrolled.feed);
  if (dirty.view) buildView();
  if (dirty.counts) renderCounts();
  if (dirty.runtimes) renderRuntimes();
  if (dirty.map) drawMap(); else if (mapCells.size) paintCells();
  if (dirty.tiles) renderTiles(scrolled.tiles);
  if (!painted && firstPageIn) {
    painted = true;
    performance.mark("board-painted");
    document.documentElement.dataset.painted = "1";
  }
  if (linkOpened) setLink("live", "live");
}

// The list as one segment per status group (header + rows of tiles): the rows in view
// are arithmetic, so a flood costs a pass over the groups, not an object per row.
function buildView() {
  dirty.view = false;
  sortGroups();
  dirty.tiles = true;
  const width = geometry.listW || TILE_MIN_W;
  const cols = Math.max(1, Math.floor((width + GAP) / (TILE_MIN_W + GAP)));
  const tileW = (width - GAP * (cols - 1)) / cols;
  const segments = [];
  const narrowed = narrowedBy();
  if (narrowed && shownGen !== filterGen) narrowGroups(); // once, then kept up to date
  let y = 0;
  for (const [status, group] of groups) {
    if (!group.length) continue;
    if (filters.statuses.size && !filters.statuses.has(status)) continue;
    const list = narrowed ? shownIn.get(status) || [] : group;
    if (!list.length) continue;
    const height = HEAD_H + Math.ceil(list.length / cols) * ROW_H;
    segments.push({ status, list, of: group.length, top: y, height });
    y += height;
  }
  view = { segments, height: y, cols, tileW };
}

// The groups narrowed by the filters, in one pass over the map's order (sorted by key,
// as the groups are) reading typed arrays; the lists are rewritten in place, not
// reallocated (a 50,000-entry array per keystroke went straight to the old generation).
function narrowGroups() {
  refreshMatches();
  const order = mapOrder();
  const lists = [];
  for (const status of groups.keys()) {
    let list = shownIn.get(status);
    if (!list) { list = []; shownIn.set(status, list); }
    lists[codeOf(status)] = list;
  }
  const fill = new Int32Array(STATUS_OF_CODE.length);
  for (let i = 0; i < order.length; i += 1) {
    const s = order[i];
    if (matchBits[s] === 0) continue;
    const c = statusCode[s];
    lists[c][fill[c]] = slots[s];
    fill[c] += 1;
  }
  for (const [status, list] of shownIn) {
    const c = CODE_OF.get(status);
    list.length = c === undefined || !lists[c] ? 0 : fill[c];
  }
  shownGen = filterGen;
}

function scrollTiles(top) {
  if (top === scrolled.tiles) return; // setting it, even unchanged, lays the page out now
  $("tiles").scrollTop = top;
  scrolled.tiles = Math.min(top, Math.max(0, view.height - geometry.listH)); // as clamped
}

// What a frame wants in view, in visual order: reused from frame to frame (a flood draws
// ten frames a second; no array, key string or set per tile per frame).
const wantItems = []; // a segment (its header) or a workspace (its tile)
const wantX = []; // -1 for a header
const wantY = [];
const wantNodes = [];
const wantIds = new Set();
const wantHeads = new Set();
const spareTiles = [];

function renderTiles(scrollTop) {
  dirty.tiles = false;
  const inner = $("tiles-inner");
  const from = scrollTop - OVERSCAN_PX;
  const to = scrollTop + (geometry.listH || 600) + OVERSCAN_PX;
  let n = 0;
  wantIds.clear();
  wantHeads.clear();
  for (const segment of view.segments) {
    if (segment.top + segment.height <= from) continue;
    if (segment.top >= to) break;
    if (segment.top + HEAD_H > from) {
      wantItems[n] = segment;
      wantX[n] = -1;
      n += 1;
      wantHeads.add(segment.status);
    }
    const rowsTop = segment.top + HEAD_H;
    const rows = Math.ceil(segment.list.length / view.cols);
    const first = Math.max(0, Math.floor((from - rowsTop) / ROW_H));
    for (let r = first; r < rows && rowsTop + r * ROW_H < to; r += 1) {
      const end = Math.min((r + 1) * view.cols, segment.list.length);
      for (let i = r * view.cols; i < end; i += 1) {
        const ws = segment.list[i];
        wantItems[n] = ws;
        wantX[n] = (i % view.cols) * (view.tileW + GAP);
        wantY[n] = rowsTop + r * ROW_H;
        n += 1;
        wantIds.add(ws.id);
      }
    }
  }
  // Tiles no longer in view are given to the workspaces coming into view (a filter or a
  // scroll rewrites a screenful of text instead of building and dropping a screenful).
  for (const [id, node] of mounted) {
    if (wantIds.has(id)) continue;
    mounted.delete(id);
    spareTiles.push(node);
  }
  for (const [status, node] of heads) {
    if (wantHeads.has(status)) continue;
    heads.delete(status);
    node.remove();
  }
  for (let k = 0; k < n; k += 1) {
    wantNodes[k] = wantX[k] < 0 ? headNode(wantItems[k]) : tileNode(wantItems[k], wantX[k], wantY[k]);
  }
  for (const node of spareTiles) node.remove();
  spareTiles.length = 0;
  // DOM order follows the visual order (screen readers, find-in-page). Only the nodes out
  // of place move: a scroll by a row inserts that row, it does not re-insert the screen
  // (every node re-inserted is styled and laid out again).
  let child = inner.firstElementChild;
  for (let k = 0; k < n; k += 1) {
    const node = wantNodes[k];
    if (child === node) child = child.nextElementSibling;
    else inner.insertBefore(node, child);
  }
  wantItems.length = wantNodes.length = n; // hold no workspace or node past its frame
  if (inner.bh !== view.height) { inner.bh = view.height; inner.style.height = `${view.height}px`; }
  $("empty").hidden = fleet.size > 0 || Boolean(loading);
}

// Positions are remembered on the node: comparing numbers, not a style string read back
// and a new one built, for every tile of every frame.
function place(node, x, y, width) {
  if (node.px !== x || node.py !== y) {
    node.px = x;
    node.py = y;
    node.style.transform = `translate(${x}px, ${y}px)`;
  }
  if (width !== undefined && node.pw !== width) {
    node.pw = width;
    node.style.width = `${width}px`;
  }
}

function headNode(row) {
  let node = heads.get(row.status);
  if (!node) {
    node = el("h3", "group");
    node.dataset.status = row.status;
    node.append(el("span", "swatch"), el("span", "group-name", label(row.status)), el("b"));
    heads.set(row.status, node);
  }
  const count = row.list.length;
  const text = count === row.of ? String(row.of) : `${count} of ${row.of}`;
  setText(node.lastChild, text);
  node.classList.toggle("problem", PROBLEMS.has(row.status));
  place(node, 0, row.top);
  return node;
}

function buildTile() {
  const tile = el("article", "tile");
  const head = el("div", "tile-head");
  head.append(el("span", "status"), el("span", "runtime"));
  const facts = el("div", "facts");
  facts.append(el("span", "tasks"), el("span", "beat"));
  tile.append(head, el("div", "name"), el("div", "wsid"), facts, el("div", "task"));
  return tile;
}

function tileNode(ws, x, y) {
  let tile = mounted.get(ws.id);
  if (!tile) {
    tile = spareTiles.pop() || buildTile();
    tile.dataset.id = ws.id;
    delete tile.dataset.status; // another workspace's: no flash for this one
    delete tile.dataset.flash;
    tile.v = 0;
    mounted.set(ws.id, tile);
  }
  if (tile.v !== ws.v) fillTile(tile, ws);
  tile.classList.toggle("selected", ws.id === selected);
  place(tile, x, y, view.tileW);
  return tile;
}

function fillTile(tile, ws) {
  if (tile.dataset.status !== ws.status) {
    // A status change on a tile already shown flashes it; two names restart the animation
    // without reading layout.
    if (tile.dataset.status) tile.dataset.flash = tile.dataset.flash === "a" ? "b" : "a";
    tile.dataset.status = ws.status;
  }
  tile.v = ws.v;
  const [head, name, wsid, facts, task] = tile.children;
  setText(head.firstChild, label(ws.status));
  setText(head.lastChild, ws.runtime || "");
  setText(name, ws.name || ws.id);
  if (name.title !== name.textContent) name.title = name.textContent;
  setText(wsid, `${ws.id.slice(0, 8)} · tier ${ws.tier ?? "–"}`);
  setText(facts.firstChild, `${ws.active_tasks ?? 0}/${ws.max_concurrent_tasks || 1} active`);
  setText(task, ws.current_task ? `▸ ${ws.current_task}` : "");
  renderAge(ws, facts.lastChild);
}

function renderAge(ws, beat) {
  setText(beat, `♥ ${age(ws.last_heartbeat_at)}`);
  const live = ws.status === "online" || ws.status === "degraded";
  beat.classList.toggle("stale", live && isStale(ws.last_heartbeat_at));
}

// ---- counts, filters and the URL --------------------------------------------------------

function buildLegend() {
  const legend = $("legend");
  legend.replaceChildren(...STATUS_ORDER.map((status) => {
    const chip = el("button", PROBLEMS.has(status) ? "chip problem" : "chip");
    chip.type = "button";
    chip.dataset.status = status;
    chip.setAttribute("aria-pressed", "false");
    chip.append(el("span", "swatch"), el("span", "", label(status)), el("b", "", "0"));
    chip.addEventListener("click", () => toggleStatus(status));
    return chip;
  }));
}

function renderCounts() {
  dirty.counts = false;
  for (const chip of $("legend").children) {
    const status = chip.dataset.status;
    const n = String(loading ? loading.counts[status] || 0 : groupOf(status).length);
    // Tabular digits are 1ch each: the box changes size (and the legend flows again)
    // only when the number of digits does.
    const width = `${n.length}ch`;
    if (chip.lastChild.style.width !== width) chip.lastChild.style.width = width;
    setText(chip.lastChild, n);
    chip.classList.toggle("zero", n === "0");
    const pressed = String(filters.statuses.has(status));
    if (chip.getAttribute("aria-pressed") !== pressed) chip.setAttribute("aria-pressed", pressed);
  }
  setText($("total"), String(loading ? loading.total : fleet.size));
  setText($("loading"), loading ? ` · loading ${loading.got}/${loading.total}` : "");
  const clear = !(filters.statuses.size || filters.runtime || filters.q);
  if ($("clear").hidden !== clear) $("clear").hidden = clear;
}

function renderRuntimes() {
  dirty.runtimes = false;
  const select = $("runtime");
  const names = new Set(runtimes.keys());
  if (filters.runtime) names.add(filters.runtime); // keep a shared view's choice
  const wanted = ["", ...[...names].sort()];
  const have = [...select.options].map((o) => o.value);
  if (have.join("\u0000") === wanted.join("\u0000")) return;
  select.replaceChildren(...wanted.map((value) => {
    const option = el("option", "", value || "all runtimes");
    option.value = value;
    return option;
  }));
  select.value = filters.runtime;
}

function toggleStatus(status) {
  if (filters.statuses.has(status)) filters.statuses.delete(status);
  else filters.statuses.add(status);
  filtersChanged(false);
}

// `narrowing`: the runtime filter or the search changed (the status filter needs no
// workspace tested again).
function filtersChanged(narrowing) {
  if (narrowing) filterGen += 1;
  writeURL();
  scrollTiles(0);
  dirty.view = dirty.counts = dirty.tiles = dirty.map = true;
  schedule(true);
}

function readURL() {
  const params = new URLSearchParams(location.search);
  filters.statuses = new Set((params.get("status") || "").split(",").filter(Boolean));
  filters.runtime = params.get("runtime") || "";
  filters.q = (params.get("q") || "").trim().toLowerCase();
  selected = params.get("ws") || null;
  $("search").value = params.get("q") || "";
}

function writeURL() {
  const params = new URLSearchParams();
  if (filters.statuses.size) {
    params.set("status", STATUS_ORDER.filter((s) => filters.statuses.has(s)).join(","));
  }
  if (filters.runtime) params.set("runtime", filters.runtime);
  if (filters.q) params.set("q", $("search").value.trim());
  if (selected) params.set("ws", selected);
  const query = params.toString();
  history.replaceState(null, "", query ? `?${query}` : location.pathname);
}

// ---- the map: one cell per workspace, problems first -----------------------------------

function parseColour(css) {
  const hex = css.trim().replace("#", "");
  return [0, 2, 4].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

function loadColours() {
  const style = getComputedStyle(document.documentElement);
  const bg = parseColour(style.getPropertyValue("--panel"));
  const pack = ([r, g, b]) => ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0;
  const dim = (rgb) => rgb.map((c, i) => Math.round(c * 0.22 + bg[i] * 0.78));
  colours = { bg: pack(bg), unknown: pack([120, 130, 150]), full: {}, dim: {} };
  for (const status of STATUS_ORDER) {
    const rgb = parseColour(style.getPropertyValue(`--${status}`));
    colours.full[status] = pack(rgb);
    colours.dim[status] = pack(dim(rgb));
  }
}

function layoutMap(count) {
  const width = Math.max(40, Math.floor(geometry.mapW));
  for (const size of MAP_SIZES) {
    const cols = Math.floor(width / size);
    if (Math.ceil(count / cols) * size <= MAP_MAX_H || size === MAP_SIZES.at(-1)) {
      return { size, cols, rows: Math.max(1, Math.ceil(count / cols)), width };
    }
  }
  return mapLayout;
}

// The palette (dimmed and full per status code) and which codes the chips let through:
// recomputed per full draw, a few dozen entries.
function shades() {
  for (let c = 0; c < STATUS_OF_CODE.length; c += 1) {
    const status = STATUS_OF_CODE[c];
    palette[c * 2] = colours.dim[status] ?? colours.unknown;
    palette[c * 2 + 1] = colours.full[status] ?? colours.unknown;
    statusPass[c] = !filters.statuses.size || filters.statuses.has(status) ? 1 : 0;
  }
  refreshMatches();
}

// Dimmed unless the filters let it through.
function cellColour(slot) {
  const c = statusCode[slot];
  return palette[c * 2 + (statusPass[c] & matchBits[slot])];
}

function outlineSelected(ctx) {
  const at = selected ? everyone.findIndex((ws) => ws.id === selected) : -1;
  if (at < 0) return;
  const { size, cols } = mapLayout;
  ctx.strokeStyle = "#ffffff";
  ctx.lineWidth = 2;
  ctx.strokeRect((at % cols) * size - 1, Math.floor(at / cols) * size - 1, size + 1, size + 1);
}

// A flood of status changes repaints only the cells that changed (a rectangle each).
function paintCells() {
  sortGroups();
  shades();
  const { size, cols } = mapLayout;
  const cell = size >= 4 ? size - 1 : size;
  const ctx = $("map").getContext("2d");
  let outline = false;
  for (const ws of mapCells) {
    const at = indexIn(everyone, ws.key);
    if (everyone[at] !== ws) continue;
    const c = cellColour(ws.slot);
    ctx.fillStyle = `rgb(${c & 255}, ${(c >>> 8) & 255}, ${(c >>> 16) & 255})`;
    ctx.fillRect((at % cols) * size, Math.floor(at / cols) * size, cell, cell);
    outline = outline || ws.id === selected;
  }
  mapCells.clear();
  if (outline) outlineSelected(ctx);
}

// The whole map: one pixel per cell into a small image, scaled up by the canvas (no
// smoothing), then the gutters drawn over it: a pass over the fleet, a few draw calls.
function drawMap() {
  dirty.map = false;
  mapCells.clear();
  sortGroups();
  const canvas = $("map");
  mapLayout = layoutMap(everyone.length);
  const { size, cols, rows, width } = mapLayout;
  const height = rows * size;
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
    canvas.style.height = `${height}px`;
  }
  if (!mapImage || mapImage.width !== cols || mapImage.height !== rows) {
    mapImage = new ImageData(cols, rows);
    mapScratch = new OffscreenCanvas(cols, rows);
  }
  const pixels = new Uint32Array(mapImage.data.buffer);
  pixels.fill(colours.bg);
  shades();
  const order = mapOrder();
  for (let i = 0; i < order.length; i += 1) pixels[i] = cellColour(order[i]);
  mapScratch.getContext("2d").putImageData(mapImage, 0, 0);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, width, height);
  ctx.drawImage(mapScratch, 0, 0, cols * size, rows * size);
  if (size >= 4) { // a 1 px gutter when cells are big enough to tell apart
    const bg = colours.bg;
    ctx.fillStyle = `rgb(${bg & 255}, ${(bg >>> 8) & 255}, ${(bg >>> 16) & 255})`;
    for (let x = size - 1; x < width; x += size) ctx.fillRect(x, 0, 1, height);
    for (let y = size - 1; y < height; y += size) ctx.fillRect(0, y, width, 1);
  }
  outlineSelected(ctx);
}

function cellAt(event) {
  const { size, cols } = mapLayout;
  const col = Math.floor(event.offsetX / size);
  const row = Math.floor(event.offsetY / size);
  if (col < 0 || col >= cols || row < 0) return null;
  return everyone[row * cols + col] || null;
}

function hoverMap(event) {
  const ws = cellAt(event);
  const tip = $("map-tip");
  if (!ws) { tip.hidden = true; return; }
  tip.textContent = `${ws.name || ws.id} · ${label(ws.status)}`;
  tip.hidden = false;
  tip.style.transform = `translate(${event.offsetX + 12}px, ${event.offsetY + 14}px)`;
}

// ---- details of one workspace ----------------------------------------------------------

function select(id, scroll) {
  selected = id;
  writeURL();
  dirty.tiles = dirty.map = true;
  schedule(true);
  if (!id) { $("details").hidden = true; return; }
  if (scroll) scrollToWorkspace(id);
  showDetails(id);
}

function scrollToWorkspace(id) {
  if (dirty.view) buildView();
  for (const segment of view.segments) {
    const at = segment.list.findIndex((ws) => ws.id === id);
    if (at < 0) continue;
    const top = segment.top + HEAD_H + Math.floor(at / view.cols) * ROW_H;
    scrollTiles(Math.max(0, top - HEAD_H));
    return;
  }
}

async function showDetails(id) {
  const panel = $("details");
  const known = fleet.get(id);
  $("details-name").textContent = (known && known.name) || id;
  panel.hidden = false;
  let ws;
  try {
    ws = await getJSON(`api/workspaces/${encodeURIComponent(id)}`);
  } catch (err) {
    $("details-facts").replaceChildren(el("dd", "", `could not load: ${err.message}`));
    return;
  }
  if (selected !== id) return;
  showStrip(id);
  const facts = [
    ["status", label(ws.status)], ["runtime", ws.runtime], ["id", ws.id],
    ["tier", ws.tier], ["delivery", ws.delivery_mode || "–"],
    ["tasks", `${ws.active_tasks ?? 0}/${ws.max_concurrent_tasks || 1} active`],
    ["current task", ws.current_task || "–"], ["last heartbeat", age(ws.last_heartbeat_at)],
    ["error rate", ws.last_error_rate ?? "–"], ["last error", ws.last_sample_error || "–"],
    ["uptime", ws.uptime_seconds ? `${ws.uptime_seconds} s` : "–"],
    ["status since", ws.status_changed_at ? new Date(ws.status_changed_at).toLocaleString() : "–"],
    ["agent card", ws.card_name || "–"], ["parent", ws.parent_id || "–"],
  ];
  $("details-name").textContent = ws.name || ws.id;
  $("details-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", "", k), el("dd", "", String(v))]));
}

// ---- events --------------------------------------------------------------------------

// ---- incidents (CONTRACT §13) -----------------------------------------------------------

const incidents = new Map(); // incident_id -> the open incident, as the snapshot lists it

function loadIncidents(list) {
  incidents.clear();
  for (const inc of list || []) incidents.set(inc.incident_id, inc);
  renderIncidents();
}

function applyIncident(p) {
  if (p.state === "resolved") incidents.delete(p.incident_id);
  else incidents.set(p.incident_id, { ...(incidents.get(p.incident_id) || {}), ...p });
  renderIncidents();
}

function renderIncidents() {
  const panel = $("incidents");
  panel.hidden = incidents.size === 0;
  const rows = [...incidents.values()].sort((a, b) => b.incident_id - a.incident_id).map((inc) => {
    const row = el("li");
    row.dataset.incident = inc.incident_id;
    const what = inc.kind === "group_unreachable" ? `parent ${inc.parent_id || inc.signature}` : inc.signature || "(no sample error)";
    row.append(
      el("span", "count", `${inc.members} workspace${inc.members === 1 ? "" : "s"}`),
      el("span", "kind", inc.kind === "group_unreachable" ? "unreachable group" : "shared error"),
      el("span", "sig", what),
    );
    row.title = inc.sample_error || what;
    return row;
  });
  $("incident-list").replaceChildren(...rows);
}

// ---- the status strip of the selected workspace ---------------------------------------

async function showStrip(id) {
  const strip = $("strip");
  let found;
  try {
    found = await getJSON(`api/workspaces/${encodeURIComponent(id)}/strip`);
  } catch (err) {
    strip.hidden = true;
    return;
  }
  if (selected !== id) return;
  const from = Date.parse(found.since);
  const span = Math.max(1, Date.parse(found.until) - from);
  const segments = found.segments.map((s) => {
    const seg = el("div", "seg");
    const ms = Date.parse(s.end) - Date.parse(s.start);
    seg.style.flex = `0 0 ${(100 * ms / span).toFixed(3)}%`;
    seg.style.setProperty("--c", s.status ? `var(--${s.status})` : "var(--panel-2)");
    seg.dataset.status = s.status || "unknown";
    seg.title = `${s.status ? label(s.status) : "unknown"} · ${new Date(s.start).toLocaleString()} → ${new Date(s.end).toLocaleString()}`;
    return seg;
  });
  // Time before the first segment (the workspace is younger than 24 h) stays blank.
  const lead = found.segments.length ? Date.parse(found.segments[0].start) - from : span;
  if (lead > 0) segments.unshift(Object.assign(el("div", "seg"), { style: `flex: 0 0 ${(100 * lead / span).toFixed(3)}%; --c: transparent` }));
  $("strip-bar").replaceChildren(...segments);
  const avail = found.availability_percent;
  $("strip-availability").textContent = avail === null ? "" : `${avail.toFixed(2)}% available`;
  strip.hidden = false;
}

function renderPreservation(payload) {
  const banner = $("preservation");
  banner.hidden = !payload || !payload.active;
  if (!banner.hidden) {
    banner.textContent = "Self-preservation active: the registry has paused marking workspaces unreachable"
      + (payload.reason ? ` (${payload.reason})` : "") + ".";
  }
}

// The event list is virtual like the tiles: the newest MAX_EVENTS are kept here, and a
// pool of rows (a panel's height of them) shows the ones in view. A flood rewrites a few
// text nodes per draw instead of creating and removing a hundred rows a second.
function feedFacts(ev) {
  if (ev.facts) return ev.facts;
  if (ev.gap) {
    ev.facts = { gap: true, colour: "var(--degraded)", who: "", time: "", iso: "", gist: `⚠ ${ev.gap}`, type: "" };
    return ev.facts;
  }
  const ws = ev.workspace_id && fleet.get(ev.workspace_id);
  const status = STATUS_OF_EVENT[ev.event] || (ev.event === "WORKSPACE_REMOVED" ? "removed" : null);
  ev.facts = {
    gap: false,
    colour: status ? `var(--${status})` : "var(--muted)",
    who: ev.workspace_id ? (ws && ws.name) || ev.workspace_id.slice(0, 8) : "fleet",
    time: new Date(ev.timestamp).toLocaleTimeString(),
    iso: ev.timestamp,
    gist: ev.gist || "",
    type: ev.event,
  };
  return ev.facts;
}

function feedRow() {
  const row = el("li");
  const what = el("div", "what");
  what.append(el("span", "who", ""), el("time", "", ""));
  row.append(el("span", "dot"), what, el("div", "gist", ""), el("div", "type", ""));
  return row;
}

function fillFeedRow(row, ev) {
  if (row.ev === ev) return;
  row.ev = ev;
  const f = feedFacts(ev);
  const [, what, gist, type] = row.children;
  row.classList.toggle("gap", f.gap);
  if (row.colour !== f.colour) { row.colour = f.colour; row.style.setProperty("--c", f.colour); }
  setText(what.firstChild, f.who);
  setText(what.lastChild, f.time);
  if (what.lastChild.dateTime !== f.iso) what.lastChild.dateTime = f.iso;
  setText(gist, f.gist);
  if (gist.title !== f.gist) gist.title = f.gist; // the row is one line: the whole text on hover
  setText(type, f.type);
}

// New events go on top; a reader scrolled down keeps the rows they were reading.
function flushFeed(scrollTop) {
  const arrived = feedQueue.splice(0).slice(-MAX_EVENTS).reverse();
  feed.unshift(...arrived);
  feed.length = Math.min(feed.length, MAX_EVENTS);
  let top = scrollTop;
  if (top > 0) { // the rows being read moved down by as many rows as arrived
    top = Math.min(top + arrived.length * FEED_ROW_H, Math.max(0, feed.length * FEED_ROW_H - geometry.feedH));
    $("events-scroll").scrollTop = top;
    scrolled.feed = top;
  }
  // Rows arriving in a calm moment glide in (two names restart the animation); a flood does not.
  feedArrive = feedArrive === "a" ? "b" : "a";
  feedFresh = top === 0 && arrived.length <= FEED_ANIMATED ? arrived.length : 0;
  renderFeed(top);
}

function renderFeed(scrollTop) {
  dirty.feed = false;
  const list = $("events");
  const slots = Math.min(feed.length, Math.ceil((geometry.feedH || 600) / FEED_ROW_H) + 1);
  const first = Math.max(0, Math.min(Math.floor(scrollTop / FEED_ROW_H), feed.length - slots));
  while (feedRows.length < slots) { const row = feedRow(); feedRows.push(row); list.append(row); }
  while (feedRows.length > slots) feedRows.pop().remove();
  for (let k = 0; k < slots; k += 1) {
    const i = first + k;
    const row = feedRows[k];
    fillFeedRow(row, feed[i]);
    const arrive = i < feedFresh ? feedArrive : "";
    if ((row.dataset.arrive || "") !== arrive) row.dataset.arrive = arrive;
    place(row, 0, i * FEED_ROW_H);
  }
  feedFresh = 0;
  const height = `${feed.length * FEED_ROW_H}px`;
  if (list.style.height !== height) list.style.height = height;
}

function queueFeed(item) {
  feedQueue.push(item);
  schedule();
}

function apply(ev) {
  if (ev.event === "REGISTRY_SELF_PRESERVATION") renderPreservation(ev.payload);
  if (ev.event === "REGISTRY_INCIDENT" && ev.payload) applyIncident(ev.payload);
  const beat = ev.event === "WORKSPACE_HEARTBEAT";
  if (!beat || $("show-heartbeats").checked) queueFeed(ev);
  const id = ev.workspace_id;
  if (!id) return;
  if (ev.event === "WORKSPACE_REMOVED") { drop(id); return; }
  const ws = fleet.get(id);
  if (!ws) {
    // Created or registered since the snapshot (that publishes a recorded event). A beat
    // alone is not enough: pub/sub is server-wide, another database's beats reach us too.
    if (!BEATS.has(ev.event)) fetchWorkspace(id);
    return;
  }
  const p = ev.payload || {};
  switch (ev.event) {
    case "WORKSPACE_HEARTBEAT":
      ws.last_heartbeat_at = ev.timestamp;
      if (p.active_tasks !== undefined) ws.active_tasks = p.active_tasks;
      break;
    case "TASK_UPDATED":
      ws.current_task = p.current_task || null;
      if (p.active_tasks !== undefined) ws.active_tasks = p.active_tasks;
      break;
    default:
      if (STATUS_OF_EVENT[ev.event]) {
        setStatus(ws, STATUS_OF_EVENT[ev.event]);
        ws.status_changed_at = ev.timestamp;
        if (ev.event === "WORKSPACE_ONLINE") ws.last_heartbeat_at = ev.timestamp;
      }
  }
  ws.v = ++versions;
  dirty.tiles = true;
  if (selected === id && (STATUS_OF_EVENT[ev.event] || ev.event === "AGENT_CARD_UPDATED")) showDetails(id);
  schedule();
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
    const ws = await getJSON(`api/workspaces/${id}`);
    if (ws.status === "removed") drop(id); else upsert(ws, true);
  } catch (err) {
    console.warn("board: could not fetch workspace", id, err);
  } finally {
    fetching.delete(id);
  }
}

// ---- loading and following ---------------------------------------------------------------

// "live" is shown by the frame that has drawn the loaded fleet (openLink), never before
// it: the stream can open between the load and its first frame.
let linkOpened = false;

function setLink(state, text) {
  linkOpened = false;
  $("link").dataset.state = state;
  $("link-text").textContent = text;
}

function openLink() {
  linkOpened = true;
  schedule(true);
}

// The first page (problems first) is painted at once; the rest follows in pages, and the
// events are read from the first page's position once the fleet is in.
async function start() {
  const mine = ++generation;
  if (source) { source.close(); source = null; }
  setLink("connecting", "loading…");
  let first;
  try {
    first = await getJSON(`api/snapshot?limit=${FIRST_PAGE}`);
  } catch (err) {
    setLink("down", "registry unreachable, retrying…");
    setTimeout(() => { if (mine === generation) start(); }, 3000);
    return;
  }
  if (mine !== generation) return;
  clockOffsetMs = Date.parse(first.server_time) - Date.now();
  lastSync = first.server_time;
  renderPreservation(first.self_preservation);
  loadIncidents(first.incidents);
  clearFleet();
  loading = { counts: first.counts, total: first.total, got: first.workspaces.length };
  for (const ws of first.workspaces) upsert(ws, false, true);
  firstPageIn = true;
  // The next page is asked for before this one is added: the server works while we do.
  const pageAfter = (cursor) => {
    if (!cursor) return null;
    const pending = getJSON(`api/snapshot?limit=${PAGE}&after=${encodeURIComponent(cursor)}`);
    pending.catch(() => {}); // awaited below, unless a newer load took over
    return pending;
  };
  let pending = pageAfter(first.next);
  try {
    while (pending) {
      const page = await pending;
      if (mine !== generation) return;
      pending = pageAfter(page.next);
      for (const ws of page.workspaces) upsert(ws, false, true);
      loading.got += page.workspaces.length;
      dirty.counts = true;
    }
  } catch (err) {
    if (mine !== generation) return;
    setLink("down", "registry unreachable, retrying…");
    setTimeout(() => { if (mine === generation) start(); }, 3000);
    return;
  }
  loading = null;
  changed();
  if (selected && fleet.has(selected)) select(selected, true);
  follow(first.position);
}

function follow(position) {
  source = new EventSource(`api/events?since=${encodeURIComponent(position)}`);
  source.addEventListener("registry", (msg) => apply(JSON.parse(msg.data)));
  // Heartbeats and task updates, the newest per workspace, from the broadcast channel.
  source.addEventListener("beats", (msg) => { for (const ev of JSON.parse(msg.data)) apply(ev); });
  source.addEventListener("gap", (msg) => {
    queueFeed({ gap: JSON.parse(msg.data).text });
    start(); // heartbeats in the gap are gone: the database has the truth
  });
  source.onopen = openLink;
  const mine = source;
  source.onerror = () => {
    // A stream refused outright (503: the board's stream cap, or Redis down) is not
    // retried by EventSource: load again a little later. A dropped one is retried.
    if (mine === source && mine.readyState === EventSource.CLOSED) {
      setLink("down", "event stream refused, retrying…");
      setTimeout(() => { if (mine === source) start(); }, STREAM_RETRY_MS);
      return;
    }
    setLink("down", "reconnecting…");
  };
}

// Pick up what publishes no event (a workspace created in provisioning, a pause): only
// the rows whose status changed since the last look, not the fleet.
async function refresh() {
  if (!lastSync || loading) return;
  const since = new Date(Date.parse(lastSync) - REFRESH_OVERLAP_MS).toISOString();
  try {
    const delta = await getJSON(`api/snapshot?changed_since=${encodeURIComponent(since)}`);
    clockOffsetMs = Date.parse(delta.server_time) - Date.now();
    lastSync = delta.server_time;
    for (const row of delta.workspaces) {
      if (row.status === "removed") { drop(row.id); continue; }
      const known = fleet.get(row.id);
      if (!known || known.status !== row.status || known.name !== row.name) upsert(row, true);
    }
  } catch (err) {
    console.warn("board: refresh failed", err);
  }
}

// Heartbeat ages of the tiles on screen only: a screenful, not the fleet.
function tick() {
  for (const [id, tile] of mounted) {
    const ws = fleet.get(id);
    if (ws) renderAge(ws, tile.querySelector(".beat"));
  }
}

function watchGeometry() {
  new ResizeObserver(([entry]) => {
    const box = entry.contentRect;
    if (Math.round(box.width) !== Math.round(geometry.listW)) dirty.view = true;
    geometry.listW = box.width;
    geometry.listH = box.height;
    dirty.tiles = true;
    schedule(true);
  }).observe($("tiles"));
  new ResizeObserver(([entry]) => {
    geometry.mapW = entry.contentRect.width;
    dirty.map = true;
    schedule(true);
  }).observe(document.querySelector(".map-wrap"));
  new ResizeObserver(([entry]) => {
    geometry.feedH = entry.contentRect.height;
    dirty.feed = true;
    schedule(true);
  }).observe($("events-scroll"));
}

function wire() {
  buildLegend();
  loadColours();
  readURL();
  watchGeometry();
  $("tiles").addEventListener("scroll", (event) => {
    scrolled.tiles = event.target.scrollTop;
    dirty.tiles = true;
    schedule(true);
  }, { passive: true });
  $("events-scroll").addEventListener("scroll", (event) => {
    scrolled.feed = event.target.scrollTop;
    dirty.feed = true;
    schedule(true);
  }, { passive: true });
  $("tiles").addEventListener("click", (event) => {
    const tile = event.target.closest(".tile");
    if (tile) select(tile.dataset.id, false);
  });
  $("search").addEventListener("input", () => {
    filters.q = $("search").value.trim().toLowerCase();
    filtersChanged(true);
  });
  $("runtime").addEventListener("change", () => {
    filters.runtime = $("runtime").value;
    filtersChanged(true);
  });
  $("clear").addEventListener("click", () => {
    filters.statuses.clear();
    filters.runtime = "";
    filters.q = "";
    $("search").value = "";
    $("runtime").value = "";
    filtersChanged(true);
  });
  $("details-close").addEventListener("click", () => select(null, false));
  const map = $("map");
  map.addEventListener("mousemove", hoverMap);
  map.addEventListener("mouseleave", () => { $("map-tip").hidden = true; });
  map.addEventListener("click", (event) => {
    const ws = cellAt(event);
    if (ws) select(ws.id, true);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  wire();
  start();
  setInterval(tick, 1000);
  setInterval(refresh, REFRESH_MS);
});
