// omniq-tasks dashboard: polls the JSON API under /api/ once a second and renders
// the page (overview, queue or job, from <body data-page>). No framework, nothing
// fetched from elsewhere. Text from Redis is only ever set as textContent.
"use strict";

const POLL_MS = 1000;
const NS = "http://www.w3.org/2000/svg";
// Actions are POSTs carrying this header: the server refuses any POST without it, which
// a form or a page of another site cannot send.
const ACTION_HEADERS = { "X-OmniQ-Dashboard": "1", "Content-Type": "application/json" };
const params = new URLSearchParams(location.search);
let readOnly = true;  // until /api/config says otherwise: no buttons before we know

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = String(v);
    else if (k === "onclick") node.addEventListener("click", v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const err = new Error((body && body.error) || `HTTP ${response.status}`);
    err.status = response.status;
    throw err;
  }
  return body;
}

async function act(url, body, what) {
  const message = $("message");
  try {
    const response = await fetch(url, { method: "POST", credentials: "same-origin", headers: ACTION_HEADERS,
                                         body: JSON.stringify(body || {}) });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) throw new Error((data && data.error) || `HTTP ${response.status}`);
    message.className = "ok";
    message.textContent = what + ": " + summary(data);
    refreshNow();
    return data;
  } catch (e) {
    message.className = "error";
    message.textContent = what + " failed: " + e.message;
    return null;
  }
}

function summary(data) {
  if (!data) return "done";
  if (typeof data.done === "number") {
    const refused = Object.entries(data.refused || {});
    return `${data.done} done` + (refused.length ? `, ${refused.length} refused (${refused.slice(0, 3).map(([id, why]) => `${id}: ${why}`).join(", ")})` : "");
  }
  if (data.gid !== undefined) return `group ${data.gid} limit ${data.previous === null ? "unset" : data.previous} → ${data.limit}` + (data.made_ready ? " (ready now)" : "");
  if (data.paused !== undefined) return data.paused ? "paused" : (data.was_paused === false ? "was not paused" : "resumed");
  return "done";
}

function button(label, onclick, cls) {
  return el("button", { class: "action " + (cls || ""), type: "button", onclick }, label);
}

function ago(ms, now) {
  if (!ms) return "-";
  let d = (now - ms) / 1000;
  const ahead = d < 0;
  d = Math.abs(d);
  const text = d < 60 ? `${d.toFixed(0)}s` : d < 3600 ? `${(d / 60).toFixed(0)}m` : d < 86400 ? `${(d / 3600).toFixed(0)}h` : `${(d / 86400).toFixed(0)}d`;
  return ahead ? `in ${text}` : `${text} ago`;
}

function rate(x) { return x === null || x === undefined ? "–" : x >= 100 ? x.toFixed(0) : x.toFixed(1); }

// One row per key, rebuilt only when its data changed (buttons stay put while polling).
function syncRows(tbody, items, key, render) {
  const seen = new Set();
  let before = null;
  for (let i = items.length - 1; i >= 0; i--) {
    const item = items[i];
    const k = key(item);
    seen.add(k);
    const sig = JSON.stringify(item) + "|" + readOnly;
    let row = Array.from(tbody.children).find((r) => r.dataset.key === k);
    if (!row || row.dataset.sig !== sig) {
      const fresh = render(item);
      fresh.dataset.key = k;
      fresh.dataset.sig = sig;
      if (row) row.replaceWith(fresh);
      row = fresh;
    }
    if (row.nextSibling !== before || row.parentNode !== tbody) tbody.insertBefore(row, before);
    before = row;
  }
  for (const row of Array.from(tbody.children)) if (!seen.has(row.dataset.key)) row.remove();
}

function cell(text, attrs) { return el("td", attrs, text); }
function num(value, field, extra) { return el("td", { class: "num " + (extra || ""), "data-field": field }, String(value)); }

let refreshTimer = null;
let refreshFn = null;
function refreshNow() { if (refreshFn) { clearTimeout(refreshTimer); refreshFn(); } }

function poll(fn) {
  refreshFn = async () => {
    clearTimeout(refreshTimer);
    const status = $("status");
    try {
      await fn();
      status.className = "";
      status.textContent = "live · " + new Date().toLocaleTimeString();
    } catch (e) {
      status.className = "error";
      status.textContent = "cannot read: " + e.message;
    }
    refreshTimer = setTimeout(refreshFn, POLL_MS);
  };
  refreshFn();
}

// -- the overview ---------------------------------------------------------------------

function drawChart(node, throughput, now) {
  node.replaceChildren();
  const W = 800, H = 140, top = 10, bottom = 20, left = 40;
  const window_ms = throughput.window_s * 1000;
  const samples = throughput.samples;
  const total = (s, which) => Object.values(s[which]).reduce((a, b) => a + b, 0);
  const points = samples.map((s) => ({ t: s.at_ms, c: total(s, "completed_per_s"), f: total(s, "failed_per_s") }));
  const max = Math.max(1, ...points.map((p) => Math.max(p.c, p.f)));
  const x = (t) => left + (W - left) * (1 - Math.min(window_ms, Math.max(0, now - t)) / window_ms);
  const y = (v) => top + (H - top - bottom) * (1 - v / max);
  for (const frac of [0, 0.5, 1]) {
    node.append(svg("line", { class: "grid", x1: left, x2: W, y1: y(max * frac), y2: y(max * frac) }));
    const label = svg("text", { x: 2, y: y(max * frac) + 4 });
    label.textContent = rate(max * frac);
    node.append(label);
  }
  const minutes = Math.round(throughput.window_s / 60);
  for (const [text, xpos, anchor] of [[`${minutes} min ago`, left, "start"], ["now", W - 2, "end"]]) {
    const label = svg("text", { x: xpos, y: H - 4, "text-anchor": anchor });
    label.textContent = text;
    node.append(label);
  }
  if (points.length) {
    for (const which of ["c", "f"]) {
      node.append(svg("polyline", { class: which === "c" ? "completed" : "failed",
                                    points: points.map((p) => `${x(p.t).toFixed(1)},${y(p[which]).toFixed(1)}`).join(" ") }));
    }
    const last = points[points.length - 1];
    $("rate-now").textContent = `now: ${rate(last.c)} completed/s, ${rate(last.f)} failed/s`;
  } else {
    const label = svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" });
    label.textContent = `collecting (a sample every ${throughput.interval_s} s)…`;
    node.append(label);
  }
}

function sparkline(samples, queue) {
  const recent = samples.slice(-30).map((s) => s.completed_per_s[queue] || 0);
  const box = svg("svg", { class: "spark", viewBox: "0 0 90 22", preserveAspectRatio: "none" });
  if (recent.length > 1) {
    const max = Math.max(1, ...recent);
    box.append(svg("polyline", { points: recent.map((v, i) => `${(i * 90 / (recent.length - 1)).toFixed(1)},${(21 - 20 * v / max).toFixed(1)}`).join(" ") }));
  }
  return box;
}

async function overview() {
  const data = await getJSON("/api/overview");
  readOnly = data.read_only;
  drawChart($("chart"), data.throughput, data.now_ms);
  const samples = data.throughput.samples;
  const sparkKey = samples.length ? samples[samples.length - 1].at_ms : 0;
  // the sparkline moves with the samples: part of each row's data, so the row is redrawn
  const rows = data.queues.map((q) => ({ ...q, spark: sparkKey }));
  syncRows($("queues").tBodies[0], rows, (q) => q.queue, (q) => {
    const href = "/queue?name=" + encodeURIComponent(q.queue) + (q.failed ? "&lane=failed" : "");
    const actions = el("td", { class: "actions" });
    if (!readOnly) {
      actions.append(q.paused
        ? button("Resume", () => act(`/api/queues/${encodeURIComponent(q.queue)}/resume`, {}, `resume ${q.queue}`))
        : button("Pause", () => act(`/api/queues/${encodeURIComponent(q.queue)}/pause`, {}, `pause ${q.queue}`)));
    }
    return el("tr", { "data-queue": q.queue },
      el("td", {}, el("a", { href }, q.queue)),
      num(q.waiting, "waiting"), num(q.group_waiting, "group_waiting"), num(q.active, "active"),
      num(q.delayed, "delayed"), num(q.failed, "failed", q.failed ? "failed-count" : ""),
      num(q.completed_kept, "completed_kept"), num(q.groups_ready, "groups_ready"),
      num(rate(q.completed_per_s), "completed_per_s"),
      el("td", {}, sparkline(samples, q.queue)),
      num(q.workers, "workers"),
      el("td", { "data-field": "paused" }, q.paused ? el("span", { class: "badge paused" }, "paused") : el("span", { class: "badge running" }, "running")),
      actions);
  });
  $("no-queues").hidden = data.queues.length > 0;
  const now = Date.now();
  syncRows($("workers").tBodies[0], data.workers, (w) => w.id, (w) => el("tr", { "data-worker": w.id },
    cell(w.id, { class: "mono" }), cell(w.app), cell(w.queues.join(", ")), cell(`${w.pool} ×${w.concurrency}`),
    num(w.running, "running"), num(w.processed, "processed"), num(w.failures, "failures"), num(ago(w.started_ms, now).replace(" ago", ""), "up")));
  $("no-workers").hidden = data.workers.length > 0;
}

// -- a queue ----------------------------------------------------------------------------

const LANES = ["wait", "active", "delayed", "failed", "completed"];

async function queuePage() {
  const queue = params.get("name") || "";
  let lane = LANES.includes(params.get("lane")) ? params.get("lane") : "wait";
  let offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
  let goffset = 0;
  const limit = 20, glimit = 20;
  document.title = `${queue} · omniq-tasks`;
  $("title").textContent = queue;
  const base = `/api/queues/${encodeURIComponent(queue)}`;
  const go = (newLane, newOffset) => {
    lane = newLane; offset = newOffset;
    const url = new URL(location.href);
    url.searchParams.set("lane", lane);
    url.searchParams.set("offset", String(offset));
    history.replaceState(null, "", url);
    $("jobs").tBodies[0].replaceChildren();
    refreshNow();
  };
  $("prev").addEventListener("click", () => go(lane, Math.max(0, offset - limit)));
  $("next").addEventListener("click", () => go(lane, offset + limit));
  $("gprev").addEventListener("click", () => { goffset = Math.max(0, goffset - glimit); refreshNow(); });
  $("gnext").addEventListener("click", () => { goffset += glimit; refreshNow(); });
  let actionsSig = "";

  poll(async () => {
    const data = await getJSON(`${base}?lane=${lane}&limit=${limit}&offset=${offset}&group_limit=${glimit}&group_offset=${goffset}`);
    readOnly = data.read_only;
    const q = data.queue;
    const laneCounts = { wait: q.waiting + q.group_waiting, active: q.active, delayed: q.delayed, failed: q.failed, completed: q.completed_kept };
    $("paused-badge").replaceChildren(q.paused ? el("span", { class: "badge paused" }, "paused") : el("span", { class: "badge running" }, "running"));
    const sig = `${q.paused}|${q.failed > 0}|${readOnly}`;
    if (sig !== actionsSig) {
      actionsSig = sig;
      const bar = $("queue-actions");
      bar.replaceChildren($("paused-badge"));
      if (readOnly) bar.append(el("span", { class: "badge ro" }, "read-only"));
      else {
        bar.append(q.paused ? button("Resume queue", () => act(`${base}/resume`, {}, "resume"))
                            : button("Pause queue", () => act(`${base}/pause`, {}, "pause")));
        if (q.failed > 0) bar.append(button("Retry all failed", () => {
          if (confirm(`Retry every failed job of ${queue}?`)) act(`${base}/retry`, { all_failed: true }, "retry all failed");
        }, "retry-all"));
      }
    }
    $("counts").replaceChildren(...[["waiting", q.waiting], ["in groups", q.group_waiting], ["active", q.active], ["delayed", q.delayed],
      ["failed", q.failed], ["completed (kept)", q.completed_kept], ["groups ready", q.groups_ready],
      ["completed/s", data.rate ? rate(data.rate.completed_per_s) : "–"]].map(([label, value]) =>
      el("div", { "data-count": label }, el("b", {}, String(value)), el("span", {}, label))));
    $("lanes").replaceChildren(...LANES.map((name) => el("a", { href: "#", "data-lane": name, class: name === lane ? "current" : "",
      onclick: (e) => { e.preventDefault(); go(name, 0); } }, `${name} (${laneCounts[name]})`)));
    const page = data.lane;
    const when = { failed: "error", delayed: "due", active: "lease until" }[lane] || "since";
    $("when-col").textContent = when;
    const now = data.now_ms;
    syncRows($("jobs").tBodies[0], page.jobs, (j) => j.id, (j) => {
      const href = `/job?queue=${encodeURIComponent(queue)}&id=${encodeURIComponent(j.id)}`;
      const whenCell = lane === "failed" ? cell(j.last_error, { class: "mono" })
        : lane === "delayed" ? cell(ago(j.due_ms, now)) : lane === "active" ? cell(ago(j.lock_until_ms, now)) : cell(ago(j.entered_ms, now));
      const buttons = el("td", { class: "actions" });
      if (!readOnly) {
        if (lane === "failed") buttons.append(button("Retry", () => act(`${base}/retry`, { ids: [j.id] }, `retry ${j.id}`), "retry"));
        if (lane !== "active") buttons.append(" ", button("Remove", () => {
          if (confirm(`Remove job ${j.id}?`)) act(`${base}/remove`, { lane, ids: [j.id] }, `remove ${j.id}`);
        }, "danger remove"));
      }
      return el("tr", { "data-job": j.id }, el("td", { class: "mono" }, el("a", { href }, j.id)),
        cell(j.state ? (j.task || "(raw)") : "(gone)"), cell(j.gid || "-"), num(`${j.attempt}/${j.max_attempts}`, "try"), whenCell, buttons);
    });
    $("no-jobs").hidden = page.jobs.length > 0;
    $("page-info").textContent = page.total ? `${page.offset + 1}–${page.offset + page.jobs.length} of ${page.total} (${page.newest_first ? "newest" : "oldest"} first)` : "";
    $("prev").disabled = offset === 0;
    $("next").disabled = offset + limit >= page.total;
    const groups = data.groups;
    syncRows($("groups").tBodies[0], groups.groups, (g) => g.gid, (g) => {
      const set = el("td", { class: "actions" });
      if (!readOnly) {
        const input = el("input", { type: "number", min: "1", value: String(g.limit), "aria-label": `limit of ${g.gid}` });
        set.append(input, " ", button("Set limit", () => {
          const n = parseInt(input.value, 10);
          act(`${base}/group-limit`, { gid: g.gid, limit: n }, `limit of ${g.gid}`);
        }, "set-limit"));
      }
      return el("tr", { "data-gid": g.gid }, cell(g.gid, { class: "mono" }), num(g.inflight, "inflight"),
        num(g.limit_set === null ? `${g.limit} (unset)` : g.limit, "limit"), num(g.waiting, "waiting"), cell(g.ready ? "yes" : ""), set);
    });
    $("no-groups").hidden = groups.groups.length > 0;
    $("group-info").textContent = groups.total ? `${groups.offset + 1}–${groups.offset + groups.groups.length} of ${groups.total}` : "";
    $("gprev").disabled = goffset === 0;
    $("gnext").disabled = goffset + glimit >= groups.total;
    syncRows($("workers").tBodies[0], data.workers, (w) => w.id, (w) => el("tr", {},
      cell(w.id, { class: "mono" }), cell(`${w.pool} ×${w.concurrency}`), num(w.running, "running"), num(w.processed, "processed")));
  });
}

// -- a job ------------------------------------------------------------------------------

const TIME_FIELDS = new Set(["created_ms", "updated_ms", "queued_ms", "first_started_ms", "last_started_ms",
  "completed_ms", "failed_ms", "due_ms", "lock_until_ms", "last_error_ms"]);

function pairs(tbody, rows) {
  tbody.replaceChildren(...rows.map(([k, v, extra]) => el("tr", {}, el("th", {}, k), cell(v, { class: "mono" }), extra === undefined ? null : cell(extra, { class: "muted" }))));
}

async function jobPage() {
  const queue = params.get("queue") || "";
  const id = params.get("id") || "";
  const base = `/api/queues/${encodeURIComponent(queue)}`;
  $("back").textContent = `‹ ${queue}`;
  $("back").href = "/queue?name=" + encodeURIComponent(queue);
  $("title").textContent = id;
  document.title = `${id} · omniq-tasks`;
  let actionsSig = "";
  poll(async () => {
    let job;
    try {
      job = await getJSON(`${base}/jobs/${encodeURIComponent(id)}`);
    } catch (e) {
      if (e.status === 404) {
        $("state").replaceChildren(el("span", { class: "badge" }, "gone"));
        $("job-actions").replaceChildren();
        actionsSig = "";
        $("message").className = "";
        if (!$("message").textContent) $("message").textContent = "This job no longer exists (removed, or its record expired).";
        return;
      }
      throw e;
    }
    readOnly = job.read_only;
    $("state").replaceChildren(el("span", { class: "badge " + job.state, id: "state-badge" }, job.state || "?"));
    $("task").textContent = job.task ? `task ${job.task}` : "(raw payload)";
    const sig = job.state + "|" + readOnly;
    if (sig !== actionsSig) {
      actionsSig = sig;
      const bar = $("job-actions");
      bar.replaceChildren();
      if (readOnly) bar.append(el("span", { class: "badge ro" }, "read-only"));
      else {
        if (job.state === "failed") bar.append(button("Retry", () => act(`${base}/retry`, { ids: [id] }, "retry"), "retry"), " ");
        if (job.state && job.state !== "active") bar.append(button("Remove", () => {
          if (confirm(`Remove job ${id}?`)) act(`${base}/remove`, { lane: job.state, ids: [id] }, "remove");
        }, "danger remove"));
      }
    }
    pairs($("fields").tBodies[0], Object.entries(job.fields).filter(([k]) => k !== "payload" && k !== "last_error" && !TIME_FIELDS.has(k))
      .map(([k, v]) => [k, v === "" ? '""' : v]));
    pairs($("times").tBodies[0], job.times.map((t) => [t.field, t.utc, ago(t.ms, job.now_ms)]));
    pairs($("durations").tBodies[0], job.durations.map((d) => [d.name, d.text]));
    $("payload").textContent = job.payload_pretty || '""';
    $("error-card").hidden = !job.last_error;
    $("error").textContent = job.last_error;
    $("result-card").hidden = job.result === null || job.result === undefined;
    $("result").textContent = job.result || "";
  });
}

async function start() {
  try {
    const config = await getJSON("/api/config");
    readOnly = config.read_only;
    $("where").textContent = config.redis_url + (config.read_only ? " · read-only" : "");
  } catch (e) {
    $("status").textContent = "cannot read: " + e.message;
  }
  const page = document.body.dataset.page;
  if (page === "overview") poll(overview);
  else if (page === "queue") queuePage();
  else if (page === "job") jobPage();
}

document.addEventListener("DOMContentLoaded", start);
