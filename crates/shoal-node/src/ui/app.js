// shoal's web view: every container of the fleet, kept live from
// GET /v1/watch (Server-Sent Events). Plain JavaScript, no build step.
"use strict";

const ROW_HEIGHT = 28;
const REMOVED_SHOWN_MS = 3000;
const FRESH_SHOWN_MS = 2000;

// One row per container, keyed engine/id: several nodes may watch one
// engine (the compose demo's three nodes share a Docker), and each reports
// it. key -> {nodes: Map(node -> record), c (the latest record),
// removedAt, freshAt}
const rows = new Map();
let view = [];
let dirty = true;
let source = null;
let synced = false;

const $ = (id) => document.getElementById(id);
const keyOf = (c) => `${c.engine_id}/${c.id}`;
const nodesOf = (r) => [...r.nodes.keys()].sort().join(", ");
// The node column: one node, or the first and how many more.
function nodesCell(r) {
  const all = [...r.nodes.keys()].sort();
  if (all.length === 0) return r.lastNodes || "-";
  return all.length === 1 ? all[0] : `${all[0]} +${all.length - 1}`;
}

function addresses(c) {
  const out = [];
  for (const [net, a] of Object.entries(c.networks || {})) {
    if (a.ip) out.push(`${net}=${a.ip}`);
    if (a.ipv6) out.push(`${net}=${a.ipv6}`);
  }
  return out.join(", ");
}

function ips(c) {
  const out = [];
  for (const a of Object.values(c.networks || {})) {
    if (a.ip) out.push(a.ip);
    if (a.ipv6) out.push(a.ipv6);
  }
  return out;
}

// The search box: label k=v, an IP address, an ID prefix, or part of a name
// or image.
function matcher(text) {
  const q = text.trim().toLowerCase();
  if (!q) return () => true;
  const eq = q.indexOf("=");
  if (eq > 0) {
    const k = text.trim().slice(0, eq), v = text.trim().slice(eq + 1);
    return (r) => (r.c.labels || {})[k] === v;
  }
  if (/^[0-9.]+$/.test(q) && q.includes(".") || /^[0-9a-f:]+$/.test(q) && q.includes(":")) {
    return (r) => ips(r.c).some((ip) => ip === q || ip.startsWith(q));
  }
  const hex = /^[0-9a-f]{3,64}$/.test(q);
  return (r) =>
    (hex && r.c.id.startsWith(q)) ||
    (r.c.names || []).some((n) => n.toLowerCase().includes(q)) ||
    (r.c.image || "").toLowerCase().includes(q);
}

function recompute() {
  const match = matcher($("search").value);
  const node = $("node").value, state = $("state").value, project = $("project").value;
  view = [];
  for (const [k, r] of rows) {
    if (node && !r.nodes.has(node)) continue;
    if (state && r.c.state !== state) continue;
    if (project && (r.c.project || "") !== project) continue;
    if (!match(r)) continue;
    view.push(k);
  }
  view.sort((a, b) => {
    const x = rows.get(a), y = rows.get(b);
    return (x.c.names[0] || "").localeCompare(y.c.names[0] || "") || x.c.id.localeCompare(y.c.id);
  });
  refreshOptions();
}

function refreshOptions() {
  const sets = { node: new Set(), state: new Set(), project: new Set() };
  for (const r of rows.values()) {
    for (const n of r.nodes.keys()) sets.node.add(n);
    sets.state.add(r.c.state);
    if (r.c.project) sets.project.add(r.c.project);
  }
  for (const [id, values] of Object.entries(sets)) {
    const select = $(id);
    const have = new Set([...select.options].map((o) => o.value));
    for (const v of [...values].sort()) {
      if (!have.has(v)) select.add(new Option(v, v));
    }
  }
}

function cell(text, cls) {
  const s = document.createElement("span");
  s.textContent = text;
  s.title = text;
  if (cls) s.className = cls;
  return s;
}

function render() {
  if (dirty) {
    recompute();
    dirty = false;
  }
  const viewport = $("viewport");
  $("spacer").style.height = `${view.length * ROW_HEIGHT}px`;
  const first = Math.max(0, Math.floor(viewport.scrollTop / ROW_HEIGHT) - 5);
  const last = Math.min(view.length, first + Math.ceil(viewport.clientHeight / ROW_HEIGHT) + 10);
  const box = $("rows");
  box.style.top = `${first * ROW_HEIGHT}px`;
  const now = Date.now();
  const out = [];
  for (let i = first; i < last; i++) {
    const r = rows.get(view[i]);
    const row = document.createElement("div");
    row.className = "row";
    if (r.removedAt) row.classList.add("removed");
    else if (r.freshAt && now - r.freshAt < FRESH_SHOWN_MS) row.classList.add("fresh");
    row.setAttribute("role", "row");
    row.dataset.key = view[i];
    row.dataset.id = r.c.id;
    row.dataset.name = (r.c.names || [])[0] || "";
    row.dataset.node = nodesOf(r);
    const nodesText = cell(nodesCell(r));
    nodesText.title = nodesOf(r) || r.lastNodes || "";
    row.append(
      nodesText,
      cell((r.c.names || []).join(", ") || r.c.id.slice(0, 12)),
      cell(r.c.image),
      cell(r.c.state, `state-${r.c.state}`),
      cell(r.c.health),
      cell(addresses(r.c)),
      cell(r.c.project || "-"),
    );
    out.push(row);
  }
  box.replaceChildren(...out);
  const live = [...rows.values()].filter((r) => !r.removedAt).length;
  const nodes = new Set([...rows.values()].flatMap((r) => [...r.nodes.keys()])).size;
  $("summary").textContent = `${live} containers on ${nodes} nodes`;
  $("count").textContent = `${view.length} shown`;
}

let frame = 0;
function schedule(changed) {
  if (changed) dirty = true;
  if (!frame) frame = requestAnimationFrame(() => { frame = 0; render(); });
}

function setStatus(text, cls) {
  const s = $("status");
  s.textContent = text;
  s.className = `status ${cls}`;
}

function take(e) {
  const d = JSON.parse(e.data);
  const k = keyOf(d.container);
  let r = rows.get(k);
  if (d.type === "removed") {
    if (!r) return;
    r.lastNodes = nodesOf(r);
    r.nodes.delete(d.node);
    r.c = d.container;
    if (r.nodes.size === 0) {
      // Shown struck through for a moment, then gone.
      r.removedAt = Date.now();
      setTimeout(() => {
        const now = rows.get(k);
        if (now && now.removedAt) { rows.delete(k); schedule(true); }
      }, REMOVED_SHOWN_MS);
    }
  } else {
    if (!r || r.removedAt) {
      r = { nodes: new Map(), freshAt: synced ? Date.now() : 0 };
      rows.set(k, r);
      if (synced) setTimeout(() => schedule(false), FRESH_SHOWN_MS);
    }
    r.nodes.set(d.node, d.container);
    r.c = d.container;
  }
  schedule(true);
  if ($("detail").dataset.key === k) showDetail(k);
}

// A fresh stream: the opening lists every container, then `synced`. The
// browser resumes a dropped stream by itself (Last-Event-ID); a `reset`
// means it cannot, so the page lists afresh.
function connect() {
  if (source) source.close();
  rows.clear();
  synced = false;
  schedule(true);
  setStatus("connecting", "connecting");
  source = new EventSource("/v1/watch");
  for (const kind of ["added", "updated", "removed"]) source.addEventListener(kind, take);
  source.addEventListener("synced", () => { synced = true; setStatus("live", "live"); schedule(true); });
  source.addEventListener("reset", () => setTimeout(connect, 250));
  source.addEventListener("node", () => refreshNodes());
  source.onopen = () => { if (synced) setStatus("live", "live"); };
  source.onerror = () => setStatus(source.readyState === EventSource.CLOSED ? "down" : "reconnecting", "down");
}

function showDetail(k) {
  const r = rows.get(k);
  if (!r) return;
  const d = $("detail");
  d.hidden = false;
  d.dataset.key = k;
  $("detail-title").textContent = `${(r.c.names || [])[0] || r.c.id.slice(0, 12)} on ${nodesOf(r) || "no node"}${r.removedAt ? " (removed)" : ""}`;
  $("detail-body").textContent = JSON.stringify(r.c, null, 2);
}

function age(ms) {
  if (ms == null) return "-";
  const s = Math.round(ms / 1000);
  return s < 60 ? `${s}s ago` : `${Math.round(s / 60)}m ago`;
}

async function refreshNodes() {
  try {
    const answer = await (await fetch("/v1/nodes", { cache: "no-store" })).json();
    const body = $("nodes").tBodies[0];
    body.replaceChildren(...answer.nodes.map((n) => {
      const tr = document.createElement("tr");
      const engines = (n.engines || []).map((e) => `${e.kind} (${e.state})`).join(", ") || "-";
      const lastEvent = n.last_event_age_s == null ? null : n.last_event_age_s * 1000;
      for (const [text, cls] of [
        [n.id], [n.state, n.state], [engines], [String(n.containers ?? "-")],
        [n.ring_share == null ? "-" : `${(n.ring_share * 100).toFixed(1)}%`], [age(lastEvent)],
      ]) {
        const td = document.createElement("td");
        td.textContent = text;
        if (cls) td.className = cls;
        tr.append(td);
      }
      return tr;
    }));
  } catch (e) {
    // The next round tries again; the status badge tells of a lost stream.
  }
}

$("viewport").addEventListener("scroll", () => schedule(false), { passive: true });
window.addEventListener("resize", () => schedule(false));
for (const id of ["search", "node", "state", "project"]) {
  $(id).addEventListener("input", () => schedule(true));
}
$("rows").addEventListener("click", (e) => {
  const row = e.target.closest(".row");
  if (row) showDetail(row.dataset.key);
});
$("detail-close").addEventListener("click", () => { $("detail").hidden = true; delete $("detail").dataset.key; });

connect();
refreshNodes();
setInterval(refreshNodes, 5000);
