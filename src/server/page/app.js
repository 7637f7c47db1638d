// pm-events dashboard. Plain JavaScript, no build step: everything it shows comes
// from /api/v1, and everything it writes into the page goes through textContent
// or DOM attributes (never innerHTML), so event data cannot become markup.
"use strict";

const $ = (id) => document.getElementById(id);
const MINUTE = 60000;
const MAX_EVENTS = 1000;
const SHOWN_EVENTS = 300;
const SEVERITIES = ["critical", "high", "medium", "low"];
const PALETTE = ["#2563eb", "#16a34a", "#dc2626", "#d97706", "#7c3aed", "#0891b2", "#64748b"];

const state = {
  events: [],               // newest first, at most MAX_EVENTS
  seen: new Set(),          // their ids
  types: new Set(),
  perMinute: new Map(),     // minute number -> {by: Map(type -> count), ids: Set}
  outcomes: {},             // delivery status -> count
  endpoints: [],
  view: null,
  stream: null,
  started: false,
  timers: {},
};

// ---- small helpers --------------------------------------------------------

/** An element with attributes (`text` sets textContent, `on*` adds a listener) and children. */
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    // Text is isolated from its neighbours (`dir=auto` implies
    // `unicode-bidi: isolate`), so its direction marks stay inside it.
    if (k === "text") { e.textContent = v; if (!attrs.dir) e.dir = "auto"; }
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of kids.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : el("bdi", {}, document.createTextNode(String(c))));
  }
  return e;
}

function svgEl(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  return e;
}

function pill(status) {
  return el("span", { class: `pill s-${status}`, text: status });
}

function time(t) {
  if (t === null || t === undefined || t === "") return "—";
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  if (Number.isNaN(d.getTime())) return String(t);
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
}

function toast(message) {
  const t = $("toast");
  t.textContent = message;
  clearTimeout(state.timers.toast);
  state.timers.toast = setTimeout(() => { t.textContent = ""; }, 4000);
}

/** Runs `fn` at most once per `ms`, the last call winning. */
function soon(name, ms, fn) {
  if (state.timers[name]) return;
  state.timers[name] = setTimeout(() => { state.timers[name] = null; fn(); }, ms);
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** A call of the API: `{status, data}`; a 401 shows the sign-in form. */
async function api(path, { method = "GET", body } = {}) {
  const opts = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const text = await r.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = { message: text }; }
  }
  if (r.status === 401 && path !== "/api/v1/session") showSignIn();
  if (!r.ok) throw new ApiError(r.status, (data && data.message) || r.statusText);
  return { status: r.status, data };
}

/** Runs an action of a button: disabled meanwhile, errors shown. */
async function act(button, fn) {
  button.disabled = true;
  try { await fn(); } catch (e) { toast(e.message); } finally { button.disabled = false; }
}

/** A button that asks for a second click before doing something hard to undo. */
function confirmButton(label, confirmLabel, cls, fn) {
  const b = el("button", { type: "button", class: cls, text: label });
  let armed = false;
  b.addEventListener("click", () => {
    if (!armed) {
      armed = true;
      b.textContent = confirmLabel;
      setTimeout(() => { armed = false; b.textContent = label; }, 5000);
      return;
    }
    armed = false;
    b.textContent = label;
    act(b, fn);
  });
  return b;
}

// ---- sign-in and start ----------------------------------------------------

async function boot() {
  try {
    const s = (await api("/api/v1/session")).data;
    $("sign-out").hidden = !(s.token_required && s.signed_in);
    if (!s.signed_in) { showSignIn(); return; }
    start();
  } catch (e) {
    $("live").textContent = `cannot reach the server: ${e.message}`;
  }
}

function showSignIn() {
  if (state.stream) { state.stream.close(); state.stream = null; }
  state.started = false;
  $("nav").hidden = true;
  for (const v of document.querySelectorAll(".view")) v.hidden = true;
  $("view-signin").hidden = false;
  $("live").textContent = "signed out";
  $("live").className = "live";
  $("token").focus();
}

$("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = $("token");
  $("signin-error").textContent = "";
  try {
    await api("/api/v1/session", { method: "POST", body: { token: input.value } });
    input.value = "";
    $("sign-out").hidden = false;
    start();
  } catch (e) {
    $("signin-error").textContent = e.status === 401 ? "That is not the token." : e.message;
  }
});

$("sign-out").addEventListener("click", async () => {
  await api("/api/v1/session", { method: "DELETE" }).catch(() => {});
  $("sign-out").hidden = true;
  showSignIn();
});

function start() {
  if (state.started) return;
  state.started = true;
  $("view-signin").hidden = true;
  $("nav").hidden = false;
  connect();
  loadEvents();
  loadChartEvents();
  loadOutcomes();
  loadRiskCount();
  route();
  clearInterval(state.timers.tick);
  state.timers.tick = setInterval(() => drawEventsChart(), 30000);
}

// ---- views ----------------------------------------------------------------

function route() {
  if (!state.started) return;
  const view = (location.hash || "#events").slice(1);
  const known = ["events", "risks", "endpoints", "deliveries"];
  const v = known.includes(view) ? view : "events";
  state.view = v;
  for (const name of known) $(`view-${name}`).hidden = name !== v;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.view === v) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (v === "risks") loadRisks();
  if (v === "endpoints") loadEndpoints();
  if (v === "deliveries") loadDeliveries();
}
window.addEventListener("hashchange", route);

// ---- the live stream ------------------------------------------------------

function connect() {
  const live = $("live");
  const es = new EventSource("/api/v1/stream");
  state.stream = es;
  es.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  es.onerror = () => {
    live.textContent = "reconnecting";
    live.className = "live off";
    // A closed stream is not retried by the browser (a 401, say): ask again.
    if (es.readyState === EventSource.CLOSED) { state.stream = null; setTimeout(reconnect, 3000); }
  };
  es.addEventListener("event", (m) => addEvent(JSON.parse(m.data), true));
  es.addEventListener("delivery", (m) => onDelivery(JSON.parse(m.data)));
  es.addEventListener("risks", () => soon("risks", 300, () => { loadRiskCount(); if (state.view === "risks") loadRisks(); }));
  es.addEventListener("lagged", () => soon("lagged", 1000, loadEvents));
}

/** After the server closed the stream: sign in again if the session ended, else reopen it. */
async function reconnect() {
  try {
    const s = (await api("/api/v1/session")).data;
    if (!s.signed_in) { showSignIn(); return; }
    if (!state.stream && state.started) { connect(); loadEvents(); }
  } catch (e) {
    setTimeout(reconnect, 3000);
  }
}

function onDelivery() {
  soon("outcomes", 1500, loadOutcomes);
  if (state.view === "deliveries") soon("deliveries", 1000, loadDeliveries);
  if (state.view === "endpoints") soon("endpoints", 2000, loadEndpoints);
  const open = $("detail").open && $("detail").dataset.event;
  if (open) soon("detail", 800, () => openEvent(open, false));
}

// ---- events ---------------------------------------------------------------

/**
 * `v` between Unicode isolates (FSI … PDI): a right-to-left override or mark
 * inside user text cannot reorder the text around it.
 */
function iso(v) {
  return `\u2068${v ?? ""}\u2069`;
}

function summary(e) {
  const d = e.data || {};
  switch (e.type) {
    case "file_change": return `${iso(d.change_type)} ${iso(d.file_path)}`;
    case "report_ready": return `${iso(d.report_type)} report ${iso(d.report_id)}`;
    case "risk_alert": return `${iso(d.severity)} · ${iso(d.title)} (${iso(d.alert_id)})`;
    case "risk_escalated": return `${iso(d.alert_id)} escalated to ${iso(d.escalated_to)}`;
    case "risk_resolved": return `${iso(d.alert_id)} resolved${d.note ? `: ${iso(d.note)}` : ""}`;
    case "endpoint_disabled": return `${iso(d.endpoint_id)} disabled: ${iso(d.reason)}`;
    default: {
      const s = JSON.stringify(d);
      return s.length > 140 ? `${s.slice(0, 140)}…` : s;
    }
  }
}

/** Counts an event in its minute of the chart, once however often it is seen. */
function countEvent(e) {
  const m = Math.floor(e.timestamp * 1000 / MINUTE);
  if (!state.perMinute.has(m)) state.perMinute.set(m, { by: new Map(), ids: new Set() });
  const slot = state.perMinute.get(m);
  if (slot.ids.has(e.event_id)) return;
  slot.ids.add(e.event_id);
  slot.by.set(e.type, (slot.by.get(e.type) || 0) + 1);
}

function addEvent(e, live) {
  if (state.seen.has(e.event_id)) return;
  state.seen.add(e.event_id);
  if (!state.types.has(e.type)) {
    state.types.add(e.type);
    const sel = $("event-type");
    const opts = [...sel.options].slice(1).map((o) => o.value).concat(e.type).sort();
    const current = sel.value;
    sel.replaceChildren(el("option", { value: "", text: "all types" }), ...opts.map((t) => el("option", { value: t, text: t })));
    sel.value = current;
  }
  if (live) {
    state.events.unshift(e);
    countEvent(e);
    soon("chart", 1000, drawEventsChart);
    if (matches(e)) {
      const list = $("events-list");
      list.prepend(eventRow(e, true));
      while (list.children.length > SHOWN_EVENTS) list.lastElementChild.remove();
      showSummary();
    }
  } else {
    state.events.push(e);
  }
  while (state.events.length > MAX_EVENTS) state.seen.delete(state.events.pop().event_id);
}

function matches(e) {
  const type = $("event-type").value;
  const text = $("event-text").value.trim().toLowerCase();
  if (type && e.type !== type) return false;
  return !text || JSON.stringify(e).toLowerCase().includes(text);
}

function eventRow(e, fresh) {
  return el("li", {},
    el("button", {
      type: "button", class: fresh ? "row fresh" : "row", "data-event-id": e.event_id,
      onclick: () => openEvent(e.event_id, true),
    },
    el("span", { class: "when", text: time(e.timestamp) }),
    el("span", { class: "type", text: e.type }),
    el("span", { class: "what", text: summary(e) })));
}

function renderEvents() {
  const shown = state.events.filter(matches).slice(0, SHOWN_EVENTS);
  $("events-list").replaceChildren(...shown.map((e) => eventRow(e, false)));
  showSummary();
}

function showSummary() {
  const n = $("events-list").children.length;
  $("events-summary").textContent = n === 0
    ? "No events yet. New ones appear here as they are published."
    : `${n} shown, newest first; new events appear as they arrive.`;
}

async function loadEvents() {
  try {
    const page = (await api("/api/v1/events?limit=200")).data;
    for (const e of page.data) addEvent(e, false);
    state.events.sort((a, b) => b.timestamp - a.timestamp);
    renderEvents();
  } catch (e) { toast(`events: ${e.message}`); }
}

let filterTimer = null;
$("event-text").addEventListener("input", () => { clearTimeout(filterTimer); filterTimer = setTimeout(renderEvents, 150); });
$("event-type").addEventListener("change", renderEvents);
$("event-filters").addEventListener("submit", (ev) => ev.preventDefault());

// ---- the event detail -----------------------------------------------------

async function openEvent(id, focus) {
  const dlg = $("detail");
  try {
    const d = (await api(`/api/v1/events/${encodeURIComponent(id)}`)).data;
    dlg.dataset.event = id;
    const e = d.event;
    $("detail-title").textContent = `${e.type} · ${time(e.timestamp)}`;
    const body = $("detail-body");
    body.replaceChildren(
      el("dl", { class: "item" },
        el("dt", { text: "Event id" }), el("dd", {}, el("code", { text: e.event_id })),
        el("dt", { text: "Source" }), el("dd", { text: e.source }),
        el("dt", { text: "Time" }), el("dd", { text: new Date(e.timestamp * 1000).toISOString() })),
      el("h3", { text: "Data" }),
      el("pre", { text: JSON.stringify(e.data, null, 2) }),
      el("h3", { text: `Handlers (${d.handlers.length})` }),
      d.handlers.length ? el("ul", { class: "rows" }, d.handlers.map(handlerItem)) : el("p", { class: "hint", text: "No handler logged this event." }),
      el("h3", { text: `Deliveries (${d.deliveries.length})` }),
      d.deliveries.length ? el("ul", { class: "rows", id: "detail-deliveries" }, d.deliveries.map((x) => deliveryItem(x, false))) : el("p", { class: "hint", text: "No webhook deliveries." }),
    );
    if (!dlg.open) dlg.showModal();
    if (focus) $("detail-close").focus();
  } catch (e) { toast(`event ${id}: ${e.message}`); }
}

function handlerItem(h) {
  const line = h.line || {};
  const status = line.status || "ok";
  const extra = Object.fromEntries(Object.entries(line).filter(([k]) => !["timestamp", "event_id", "status", "reason"].includes(k)));
  return el("li", { class: "item" },
    el("header", {}, el("strong", { text: h.handler }), pill(status), el("span", { class: "meta", text: `${h.log} · ${time(line.timestamp)}` })),
    line.reason ? el("p", { class: "error", text: line.reason }) : null,
    el("details", {}, el("summary", { text: "Log line" }), el("pre", { text: JSON.stringify(extra, null, 2) })));
}

$("detail-close").addEventListener("click", () => $("detail").close());
$("detail").addEventListener("close", () => { delete $("detail").dataset.event; });

// ---- deliveries -----------------------------------------------------------

function deliveryItem(x, withEvent) {
  const attempts = el("div", { class: "attempts" });
  const actions = el("div", { class: "actions" },
    el("button", {
      type: "button", class: "quiet", text: "Attempts",
      onclick: (ev) => act(ev.currentTarget, async () => {
        const d = (await api(`/api/v1/deliveries/${encodeURIComponent(x.id)}`)).data;
        attempts.replaceChildren(attemptList(d.attempt_log || []));
      }),
    }),
    x.status === "dead" ? el("button", {
      type: "button", text: "Retry", "data-retry": x.id,
      onclick: (ev) => act(ev.currentTarget, async () => {
        await api(`/api/v1/deliveries/${encodeURIComponent(x.id)}/retry`, { method: "POST" });
        toast("Sent again; the outcome appears here when it is known.");
        if (state.view === "deliveries") loadDeliveries();
        const open = $("detail").open && $("detail").dataset.event;
        if (open) openEvent(open, false);
      }),
    }) : null,
    withEvent ? el("button", { type: "button", class: "quiet", text: "Event", onclick: () => openEvent(x.event_id, true) }) : null);
  const last = x.last_status ? `HTTP ${x.last_status}` : (x.last_error || "");
  return el("li", { class: "item", "data-delivery-id": x.id, "data-status": x.status },
    el("header", {}, el("strong", { text: x.event_type }), el("span", { text: "→" }), el("span", { text: x.endpoint_id }), pill(x.status)),
    el("div", { class: "meta", text: [x.url, `${x.attempts} attempt${x.attempts === 1 ? "" : "s"}`, last, `queued ${time(x.created_at)}`, x.next_retry_at ? `next try ${time(x.next_retry_at)}` : ""].filter(Boolean).join(" · ") }),
    actions, attempts);
}

function attemptList(list) {
  if (!list.length) return el("p", { class: "hint", text: "No attempt yet." });
  return el("ul", {}, list.map((a) => el("li", {},
    `#${a.attempt} ${time(a.timestamp)} — `,
    a.status ? `HTTP ${a.status}` : (a.error || "no answer"),
    a.duration_ms !== undefined && a.duration_ms !== null ? ` in ${Number(a.duration_ms).toFixed(1)} ms` : "",
    a.response ? el("pre", { text: a.response }) : null)));
}

async function loadDeliveries() {
  try {
    const [dead, failed, recent] = await Promise.all([
      api("/api/v1/deliveries?status=dead&limit=200"),
      api("/api/v1/deliveries?status=failed&limit=200"),
      api("/api/v1/deliveries?limit=100"),
    ]);
    const shown = new Set();
    const section = (title, items) => {
      const rows = items.filter((x) => !shown.has(x.id));
      rows.forEach((x) => shown.add(x.id));
      if (!rows.length) return [];
      return [el("li", {}, el("h3", { text: `${title} (${rows.length})` })), ...rows.map((x) => deliveryItem(x, true))];
    };
    const items = [
      ...section("Dead — retry by hand", dead.data.data),
      ...section("Failed — will be retried", failed.data.data),
      ...section("Recent", recent.data.data),
    ];
    $("deliveries-list").replaceChildren(...(items.length ? items : [el("li", { class: "hint", text: "No deliveries yet." })]));
    $("dead-count").textContent = dead.data.data.length || "";
    fillRecoverSelect();
  } catch (e) { toast(`deliveries: ${e.message}`); }
}

async function fillRecoverSelect() {
  if (!state.endpoints.length) await fetchEndpoints();
  const sel = $("recover-endpoint");
  const current = sel.value;
  sel.replaceChildren(...state.endpoints.map((ep) => el("option", { value: ep.id, text: `${ep.id} — ${ep.url}` })));
  if (current) sel.value = current;
}

$("recover-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("recover-error").textContent = "";
  const id = $("recover-endpoint").value;
  try {
    const r = (await api(`/api/v1/endpoints/${encodeURIComponent(id)}/recover`, { method: "POST", body: { since: $("recover-since").value.trim() } })).data;
    toast(`${r.recovered} deliver${r.recovered === 1 ? "y" : "ies"} sent again`);
    loadDeliveries();
  } catch (e) { $("recover-error").textContent = e.message; }
});

// ---- risks ----------------------------------------------------------------

async function loadRiskCount() {
  try {
    const d = (await api("/api/v1/risks")).data;
    $("risk-count").textContent = d.open_alerts.length || "";
    return d;
  } catch (e) { return null; }
}

async function loadRisks() {
  const d = await loadRiskCount();
  if (!d) return;
  const counts = SEVERITIES.map((s) => `${d.counts_by_severity[s] || 0} ${s}`).join(", ");
  $("risks-summary").textContent = `${d.open_alerts.length} open (${counts}); ${d.alerts_received} alerts received, ${d.escalations} escalated, ${d.alerts_resolved || 0} resolved.`;
  const groups = SEVERITIES.map((sev) => {
    const alerts = d.open_alerts.filter((a) => a.severity === sev);
    if (!alerts.length) return null;
    return el("section", { "aria-label": `${sev} alerts` },
      el("h3", { text: `${sev[0].toUpperCase()}${sev.slice(1)} (${alerts.length})` }),
      el("ul", { class: "rows" }, alerts.map(riskItem)));
  }).filter(Boolean);
  $("risks-list").replaceChildren(...(groups.length ? groups : [el("p", { class: "hint", text: "No open risk alerts." })]));
}

function riskItem(a) {
  return el("li", { class: `item sev sev-${a.severity}`, "data-alert-id": a.alert_id },
    el("header", {}, el("strong", { text: a.title }), pill(a.severity),
      a.escalated_to ? el("span", { class: "meta", text: `escalated to ${a.escalated_to}` }) : null),
    el("div", { class: "meta", text: [a.alert_id, a.risk_type, a.detected_at ? `detected ${time(a.detected_at)}` : ""].filter(Boolean).join(" · ") }),
    el("dl", {},
      el("dt", { text: "Score" }),
      el("dd", {}, el("meter", { min: "0", max: "1", low: "0.5", high: "0.8", optimum: "0", value: String(a.risk_score), "aria-label": "risk score" }), ` ${a.risk_score}`),
      a.description ? [el("dt", { text: "About" }), el("dd", { text: a.description })] : [],
      el("dt", { text: "Resources" }),
      el("dd", {}, (a.affected_resources || []).length ? el("ul", {}, a.affected_resources.map((r) => el("li", {}, el("code", { text: r })))) : "—"),
      el("dt", { text: "Mitigation" }),
      el("dd", {}, (a.mitigation || []).length ? el("ul", {}, a.mitigation.map((m) => el("li", {}, `${m.step}: `, pill(m.status), m.detail ? ` ${m.detail}` : ""))) : "—")),
    el("div", { class: "actions" },
      el("button", {
        type: "button", text: "Resolve", "data-resolve": a.alert_id,
        onclick: (ev) => act(ev.currentTarget, async () => {
          const r = await api(`/api/v1/risks/${encodeURIComponent(a.alert_id)}/resolve`, { method: "POST", body: { resolved_by: "dashboard" } });
          toast(r.data.resolved ? `${a.alert_id} resolved` : `${a.alert_id}: resolution accepted, still being handled`);
          loadRisks();
        }),
      }),
      el("button", { type: "button", class: "quiet", text: "Event", onclick: () => openEvent(a.event_id, true) })));
}

// ---- endpoints ------------------------------------------------------------

async function fetchEndpoints() {
  const d = (await api("/api/v1/endpoints?limit=1000")).data;
  state.endpoints = d.data;
  return d.data;
}

async function loadEndpoints() {
  try {
    const eps = await fetchEndpoints();
    $("endpoints-list").replaceChildren(...(eps.length ? eps.map(endpointItem) : [el("li", { class: "hint", text: "No endpoints yet: add one above." })]));
  } catch (e) { toast(`endpoints: ${e.message}`); }
}

function endpointItem(ep) {
  const h = ep.health || {};
  const managed = ep.source !== "env";
  const stateName = !managed ? "read-only" : ep.enabled ? "enabled" : "disabled";
  const rate = h.success_rate_1h === null || h.success_rate_1h === undefined ? "no attempts in the last hour" : `${(h.success_rate_1h * 100).toFixed(1)} % of ${h.attempts_1h} in the last hour`;
  const ms = (v) => (v === null || v === undefined ? "—" : `${Number(v).toFixed(1)} ms`);
  const actions = managed ? el("div", { class: "actions" },
    el("button", {
      type: "button", class: ep.enabled ? "quiet" : "", text: ep.enabled ? "Disable" : "Enable",
      onclick: (ev) => act(ev.currentTarget, async () => {
        await api(`/api/v1/endpoints/${encodeURIComponent(ep.id)}`, { method: "PATCH", body: { enabled: !ep.enabled } });
        loadEndpoints();
      }),
    }),
    el("button", {
      type: "button", class: "quiet", text: "Send test",
      onclick: (ev) => act(ev.currentTarget, async () => {
        const r = (await api(`/api/v1/endpoints/${encodeURIComponent(ep.id)}/test`, { method: "POST" })).data;
        toast(`Test event ${r.event_id} queued`);
      }),
    }),
    confirmButton("Rotate secret", "Click again to rotate", "quiet", async () => {
      const r = (await api(`/api/v1/endpoints/${encodeURIComponent(ep.id)}/secret/rotate`, { method: "POST", body: {} })).data;
      showSecret(`New secret of ${ep.id} (the old one signs too until ${time(r.previous_valid_until)})`, r.secret || r.public_key || "");
    }),
    confirmButton("Remove", "Click again to remove", "danger", async () => {
      await api(`/api/v1/endpoints/${encodeURIComponent(ep.id)}`, { method: "DELETE" });
      loadEndpoints();
    })) : el("p", { class: "hint", text: "From the environment (a route variable): change it there." });
  return el("li", { class: "item", "data-endpoint-id": ep.id },
    el("header", {}, el("strong", { text: ep.url }), pill(stateName), h.breaker && h.breaker !== "closed" ? pill(h.breaker) : null),
    el("div", { class: "meta", text: [ep.id, (ep.event_types || ["*"]).join(", "), ep.description].filter(Boolean).join(" · ") }),
    ep.disabled_reason ? el("p", { class: "error", text: `Disabled: ${ep.disabled_reason}` }) : null,
    el("dl", {},
      el("dt", { text: "Success" }), el("dd", { text: rate }),
      el("dt", { text: "Latency" }), el("dd", { text: `p50 ${ms(h.p50_ms)}, p99 ${ms(h.p99_ms)}` }),
      el("dt", { text: "Last error" }), el("dd", { text: h.last_error ? `${h.last_error} (${time(h.last_error_at)})` : "—" }),
      el("dt", { text: "Last success" }), el("dd", { text: time(h.last_success_at) }),
      h.failing_since ? [el("dt", { text: "Failing since" }), el("dd", { text: `${time(h.failing_since)} (${h.failures_in_a_row} in a row)` })] : []),
    actions);
}

function showSecret(title, value) {
  $("secret-title").textContent = title;
  $("secret-value").textContent = value;
  $("secret-box").hidden = false;
  $("secret-close").focus();
}
$("secret-close").addEventListener("click", () => {
  $("secret-box").hidden = true;
  $("secret-value").textContent = "";
});

$("endpoint-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const err = $("endpoint-error");
  err.textContent = "";
  const body = {
    url: $("ep-url").value.trim(),
    event_types: $("ep-types").value.split(",").map((s) => s.trim()).filter(Boolean),
  };
  const description = $("ep-description").value.trim();
  if (description) body.description = description;
  const filter = $("ep-filter").value.trim();
  if (filter) {
    try { body.filter = JSON.parse(filter); } catch (e) { err.textContent = `filter: not JSON (${e.message})`; return; }
  }
  try {
    const r = (await api("/api/v1/endpoints", { method: "POST", body })).data;
    $("endpoint-form").reset();
    showSecret(`Signing ${r.public_key ? "public key" : "secret"} of ${r.id}`, r.secret || r.public_key || "");
    loadEndpoints();
  } catch (e) { err.textContent = e.message; }
});

// ---- charts ---------------------------------------------------------------

async function loadChartEvents() {
  try {
    let cursor = null;
    for (let page = 0; page < 10; page += 1) {
      const q = `/api/v1/events?since=60m&limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
      const d = (await api(q)).data;
      for (const e of d.data) { countEvent(e); state.types.add(e.type); }
      cursor = d.next_cursor;
      if (!cursor) break;
    }
    drawEventsChart();
  } catch (e) { toast(`chart: ${e.message}`); }
}

function drawEventsChart() {
  const svg = $("chart-events");
  const W = 360, H = 120, left = 24, bottom = 14, top = 6;
  const now = Math.floor(Date.now() / MINUTE);
  const minutes = Array.from({ length: 60 }, (_, i) => now - 59 + i);
  for (const m of state.perMinute.keys()) if (m < now - 59) state.perMinute.delete(m);
  const totals = new Map();
  for (const { by } of state.perMinute.values()) for (const [t, n] of by) totals.set(t, (totals.get(t) || 0) + n);
  const ranked = [...totals.entries()].sort((a, b) => b[1] - a[1]).map(([t]) => t);
  const named = ranked.slice(0, PALETTE.length - 1);
  const color = (t) => PALETTE[named.includes(t) ? named.indexOf(t) : PALETTE.length - 1];
  let max = 1;
  for (const m of minutes) {
    let sum = 0;
    for (const n of (state.perMinute.get(m)?.by || new Map()).values()) sum += n;
    max = Math.max(max, sum);
  }
  const kids = [svgEl("desc", { id: "chart-events-desc", text: `${[...totals.values()].reduce((a, b) => a + b, 0)} events in the last hour` })];
  const bw = (W - left) / 60;
  minutes.forEach((m, i) => {
    let y = H - bottom;
    const by = state.perMinute.get(m)?.by;
    if (!by) return;
    for (const t of ranked) {
      const n = by.get(t);
      if (!n) continue;
      const h = (n / max) * (H - bottom - top);
      y -= h;
      const r = svgEl("rect", { x: (left + i * bw + 0.5).toFixed(1), y: y.toFixed(1), width: Math.max(bw - 1, 1).toFixed(1), height: h.toFixed(1), fill: color(t) });
      r.append(svgEl("title", { text: `${new Date(m * MINUTE).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}: ${n} ${t}` }));
      kids.push(r);
    }
  });
  kids.push(svgEl("line", { class: "axis", x1: left, y1: H - bottom, x2: W, y2: H - bottom }));
  kids.push(svgEl("text", { x: 0, y: top + 8, text: String(max) }));
  kids.push(svgEl("text", { x: 0, y: H - bottom, text: "0" }));
  kids.push(svgEl("text", { x: left, y: H - 2, text: "−60 min" }));
  kids.push(svgEl("text", { x: left + (W - left) / 2 - 14, y: H - 2, text: "−30 min" }));
  kids.push(svgEl("text", { x: W - 18, y: H - 2, text: "now" }));
  svg.replaceChildren(...kids);
  const legend = named.concat(ranked.length > named.length ? ["other"] : []);
  $("legend-events").replaceChildren(...legend.map((t) => {
    const swatch = el("i", {});
    swatch.style.background = t === "other" ? PALETTE[PALETTE.length - 1] : color(t);
    return el("li", {}, swatch, t);
  }));
}

async function loadOutcomes() {
  try {
    const d = (await api("/api/v1/deliveries?limit=1000")).data;
    const counts = { delivered: 0, pending: 0, failed: 0, dead: 0 };
    for (const x of d.data) counts[x.status] = (counts[x.status] || 0) + 1;
    state.outcomes = counts;
    $("dead-count").textContent = counts.dead || "";
    drawOutcomes();
  } catch (e) { toast(`deliveries: ${e.message}`); }
}

function drawOutcomes() {
  const svg = $("chart-deliveries");
  const W = 360, rowH = 26, left = 70;
  const colors = { delivered: "#16a34a", pending: "#d97706", failed: "#dc2626", dead: "#7f1d1d" };
  const entries = Object.entries(state.outcomes);
  const max = Math.max(1, ...entries.map(([, n]) => n));
  const total = entries.reduce((a, [, n]) => a + n, 0);
  const kids = [svgEl("desc", { id: "chart-deliveries-desc", text: entries.map(([k, n]) => `${n} ${k}`).join(", ") || "No deliveries yet" })];
  entries.forEach(([k, n], i) => {
    const y = 6 + i * rowH;
    const w = ((W - left - 80) * n) / max;
    kids.push(svgEl("text", { x: 0, y: y + 13, text: k }));
    kids.push(svgEl("rect", { x: left, y, width: Math.max(w, n ? 2 : 0).toFixed(1), height: rowH - 8, fill: colors[k] || "#64748b", rx: 2 }));
    kids.push(svgEl("text", { x: left + w + 4, y: y + 13, text: total ? `${n} (${Math.round((n * 100) / total)} %)` : "0" }));
  });
  svg.replaceChildren(...kids);
}

boot();
